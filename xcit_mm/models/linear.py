"""Float32 CPU products by oneDNN's ``mkldnn::_linear_pointwise``, not MKL
(2x faster on AMD Zen 5): where the inputs are float32 CPU tensors, autocast,
tracing, compiling and :func:`onednn_linear` are off, oneDNN is enabled, the
process allows it (:func:`onednn_chosen`, once: the op present and equal to
``F.linear`` forward and backward, else one warning; and
``XCIT_MM_ONEDNN_LINEAR`` not 0) and, for this product's shape, it is the
faster: always with ``XCIT_MM_ONEDNN_LINEAR=1``; unset, where a timing at
the shape's first use found it >= 5% faster (:func:`linear_choices`; on a
Zen 2 with two threads the two were about even at XCiT nano's sizes and
oneDNN 20-30% faster at small's). Else ``F.linear``; results differ only in
the order of the float32 sums."""
import contextlib
import os
import platform
import time
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_enabled = True
_chosen: Optional[bool] = None
_forced = False  # XCIT_MM_ONEDNN_LINEAR=1, read with _chosen
# (rows rounded up to a power of two, in features, out features) -> oneDNN?
_by_shape: Dict[Tuple[int, int, int], bool] = {}
_TIMED_ROWS = 4096  # larger products are timed on this many rows


def _mode() -> str:
    mode = os.environ.get('XCIT_MM_ONEDNN_LINEAR', '')
    if mode not in ('', '0', '1'):
        raise ValueError(f'XCIT_MM_ONEDNN_LINEAR={mode!r}: set 0 (off), '
                         '1 (on) or leave it unset (chosen by timing)')
    return mode


def onednn_chosen() -> bool:
    """Whether this process may run float32 CPU products through oneDNN
    (the op checked, the variable not 0); which products do is decided per
    shape (:func:`linear_choices`)."""
    global _chosen, _forced
    if _chosen is None:
        mode = _mode()
        _chosen, _forced = mode != '0' and _self_check(), mode == '1'
        _by_shape.clear()
    return _chosen


def linear_choices() -> Dict[str, str]:
    """The choices made so far: ``'rows<=R, K->N'`` -> ``'oneDNN'`` or
    ``'F.linear'``."""
    return {f'rows<={rows}, {k}->{n}': 'oneDNN' if fast else 'F.linear'
            for (rows, k, n), fast in sorted(_by_shape.items())}


def _faster_here(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN for this product's shape: forced by the variable, or timed
    once per (rows up to a power of two, in, out features)."""
    if _forced:
        return True
    rows = x.numel() // x.shape[-1]
    key = (1 << (rows - 1).bit_length(), weight.shape[1], weight.shape[0])
    if key not in _by_shape:
        _by_shape[key] = _onednn_faster(min(rows, _TIMED_ROWS), *key[1:])
    return _by_shape[key]


def _self_check() -> bool:
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return False
    results = []
    # own saved-tensor hooks: inside an activation-checkpointed block the
    # outer ones would recompute that block for this check's backward
    with torch.inference_mode(False), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(_same, _same):
        try:
            for fn in (_OneDNNLinear.apply, F.linear):
                gen = torch.Generator().manual_seed(0)
                args = [torch.randn(*s, generator=gen, requires_grad=True)
                        for s in ((3, 5, 24), (40, 24), (40, ))]
                out = fn(*args)
                results.append([out] + list(torch.autograd.grad(
                    (out + out**2).sum(), args)))
            problem = '' if all(a.shape == b.shape and torch.allclose(
                a, b, 1e-4, 1e-4) for a, b in zip(*results)) else 'mismatch'
        except Exception as err:  # noqa: BLE001 (the op missing or changed)
            problem = f'{type(err).__name__}: {err}'
    if problem:
        warnings.warn('xcit_mm: torch.ops.mkldnn._linear_pointwise is not '
                      f'usable ({problem}); linear layers use F.linear')
    return not problem


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _onednn_faster(rows: int = 2048, k: int = 128, n: int = 512) -> bool:
    """Whether oneDNN computes a ``rows x k -> n`` product >= 5% faster than
    ``F.linear``: best of 6 interleaved calls each, in process CPU time (the
    wall clock of a loaded machine chose at random). Defaults: an MLP
    product of XCiT nano, 8 images of 16x16 tokens."""
    gen = torch.Generator().manual_seed(0)  # the global stream untouched
    x, weight, best = (torch.randn(rows, k, generator=gen),
                       torch.randn(n, k, generator=gen), {})
    with torch.no_grad():
        for _, fn in [(i, f) for i in range(6) for f in (F.linear, _product)]:
            start = time.process_time()
            fn(x, weight)
            best[fn] = min(best.get(fn, 1e9), time.process_time() - start)
    return best[_product] < 0.95 * best[F.linear]


@contextlib.contextmanager
def onednn_linear(enabled: bool):
    """Turns the oneDNN path on or off inside the block (comparisons)."""
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_enabled and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and x.device.type == 'cpu' and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled('cpu')
            and torch.backends.mkldnn.enabled and onednn_chosen()
            and _faster_here(x, weight))


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def _product(x, weight, bias=None, act='none', algorithm=''):
    """``act(x @ weight.T + bias)`` by oneDNN (``weight`` may be a view)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [],
                                              algorithm)


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias``, both passes by oneDNN (no 2nd order)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        grad2d = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = _product(grad, weight.t())
        if ctx.needs_input_grad[1]:
            x2d = x.reshape(-1, x.shape[-1])
            # oneDNN is fastest with the shorter side as the output's rows
            if weight.shape[0] <= weight.shape[1]:
                grad_weight = _product(grad2d.t(), x2d.t())
            else:
                grad_weight = _product(x2d.t(), grad2d.t()).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad2d.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear``, through oneDNN where the module docstring says."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if _needs_grad(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return _product(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor], approximate: str = 'none'
                ) -> Optional[torch.Tensor]:
    """``gelu(x @ weight.T + bias)`` in one oneDNN call; None where a
    gradient is needed or :func:`linear` would not use oneDNN."""
    if _needs_grad(x, weight, bias) or not _use_onednn(x, weight):
        return None
    return _product(x, weight, bias, 'gelu', approximate)


class Linear(nn.Linear):
    """``nn.Linear`` through :func:`linear` (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
