"""Linear layers whose float32 CPU products run through oneDNN.

PyTorch sends float32 CPU matrix products to MKL; on AMD EPYC (Zen 5,
AVX-512) MKL's ``sgemm`` runs XCiT's token projections at about half the
speed of oneDNN's kernels, which PyTorch ships as well (the ones it uses for
convolutions and for ``torch.compile``'s CPU linear layers). :class:`Linear`
is ``nn.Linear`` with the same parameters and state-dict keys; its forward
and backward products go through oneDNN when all of these hold:

- the input and weight are float32 CPU tensors and CPU autocast is off
  (under autocast PyTorch already uses oneDNN's bfloat16 products);
- the machine is x86-64, PyTorch was built with oneDNN and it is not
  turned off (``torch.backends.mkldnn.flags(enabled=False)``);
- the call is not being traced or compiled (``torch.jit.trace``, the FLOP
  counter, ``torch.compile`` and export see a plain ``aten::linear``);
- :func:`onednn_linear` has not turned it off.

Otherwise it is ``F.linear``. The results equal ``F.linear``'s up to the
order of the float32 sums (a relative difference of about 1e-6).
"""
import contextlib
import platform
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_enabled = True
_available: Optional[bool] = None


def _onednn_available() -> bool:
    global _available
    if _available is None:
        _available = (platform.machine().lower() in ('x86_64', 'amd64')
                      and torch.backends.mkldnn.is_available()
                      and hasattr(torch.ops.mkldnn, '_linear_pointwise'))
    return _available


@contextlib.contextmanager
def onednn_linear(enabled: bool):
    """Turns the oneDNN path of :class:`Linear` on or off inside the
    block (for comparisons; it is on by default where available)."""
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
            and torch.backends.mkldnn.enabled and _onednn_available())


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def _product(x: torch.Tensor, weight: torch.Tensor,
             bias: Optional[torch.Tensor] = None,
             act: str = 'none', algorithm: str = '') -> torch.Tensor:
    """``act(x @ weight.T + bias)`` by oneDNN; ``weight`` may be a
    transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [],
                                              algorithm)


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` with both passes' products by oneDNN (the
    backward is not differentiable again: no second-order gradients)."""

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
    """``gelu(x @ weight.T + bias)`` in one oneDNN call when no gradient
    is needed (the activation applied as the product is written); None
    where :func:`linear` would not use oneDNN or a gradient is needed."""
    if _needs_grad(x, weight, bias) or not _use_onednn(x, weight):
        return None
    return _product(x, weight, bias, 'gelu', approximate)


class Linear(nn.Linear):
    """``nn.Linear`` whose float32 CPU products run through oneDNN (see the
    module docstring); same parameters, state dict and results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
