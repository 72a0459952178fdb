"""mmseg's EncoderDecoder (and our backbone) as traceable modules for ONNX.

``torch.onnx.export`` (TorchScript exporter) records the sizes a module
computes in Python as constants. Three parts of our models do so and are
replaced, on a copy of the model, by modules whose sizes follow the input:

- mmseg's ``Upsample`` (FPNHead's scale heads) computes
  ``int(size * scale_factor)``: exported, the upsampled size stays the traced
  one and the head's sum resizes it back, silently wrong at any other input
  size. :class:`ScaleUpsample` interpolates by ``scale_factor`` instead
  (the same maths: with ``size = 2 * h`` the source step is ``h / 2h``).
- ``nn.AdaptiveAvgPool2d`` (UPerHead's pyramid pooling) has no ONNX form at a
  dynamic size. :class:`AdaptiveAvgPoolExport` averages by two matrices whose
  rows are the bins ``floor(i * H / s) .. ceil((i + 1) * H / s)``, built from
  the input's traced size: exactly ``adaptive_avg_pool2d``.
- the pyramid adapter's ``MaxPoolAtLeastOne`` pads a map smaller than its
  window after a Python ``if`` on the size, which the trace freezes.
  :class:`MaxPoolAtLeastOneExport` always appends a window of ``-inf`` and
  keeps ``max(size, k)`` rows and columns (traced).

One more is for speed: XCA's two ``einsum`` products become ONNX ``Einsum``
nodes; :class:`XCAExport` states them as batched matrix products
(``MatMul``), the same sums, which ONNX Runtime runs faster.

The rewrites are applied by :func:`exportable_copy`; the model given is left
as it is. The result is checked against the original model, never trusted.
"""
import copy
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor

SEGMENTOR_OUTPUTS = ('logits', )
BACKBONE_OUTPUTS = ('feat0', 'feat1', 'feat2', 'feat3')
# decode heads whose export was verified against eager mmseg
SUPPORTED_HEADS = ('FPNHead', 'UPerHead')


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,
                                                                  value)


class ScaleUpsample(nn.Module):
    """mmseg's ``Upsample(scale_factor=s)`` with the output size following
    the input in a trace."""

    def __init__(self, scale_factor, mode: str, align_corners):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(
            x,
            scale_factor=self.scale_factor,
            mode=self.mode,
            align_corners=self.align_corners)


def _bins(size: Tensor, out: int, like: Tensor) -> Tensor:
    """``out x size`` averaging matrix of adaptive pooling along one axis.

    ``size`` is the traced length (an int64 tensor); ``like`` a float
    tensor of that length (its values are unused).
    """
    j = (torch.ones_like(like).cumsum(0) - 1)[None, :]
    i = torch.arange(out, dtype=torch.int64)
    start = (i * size).div(out, rounding_mode='floor')
    end = ((i + 1) * size + out - 1).div(out, rounding_mode='floor')
    start, end = start.to(like)[:, None], end.to(like)[:, None]
    inside = ((j >= start) & (j < end)).to(like)
    return inside / (end - start)


class AdaptiveAvgPoolExport(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two products by averaging
    matrices, exportable at a dynamic input size."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _pair(output_size)
        if any(s is None for s in self.output_size):
            raise ValueError('AdaptiveAvgPool2d with a None output size '
                             'cannot be exported')

    def forward(self, x: Tensor) -> Tensor:
        size = shape_as_tensor(x)
        rows = _bins(size[2], self.output_size[0], x[0, 0, :, 0])
        cols = _bins(size[3], self.output_size[1], x[0, 0, 0, :])
        return rows @ x @ cols.transpose(0, 1)


class MaxPoolAtLeastOneExport(nn.Module):
    """The adapter's ``MaxPoolAtLeastOne`` with its padding traced."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride or pool.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        size = shape_as_tensor(x)
        for dim, k in ((2, self.kernel_size[0]), (3, self.kernel_size[1])):
            pad_shape = [-1] * 4
            pad_shape[dim] = k
            index = [slice(None)] * 4
            index[dim] = slice(0, 1)
            pad = torch.full_like(x[tuple(index)],
                                  float('-inf')).expand(*pad_shape)
            index[dim] = slice(None, torch.clamp(size[dim], min=k))
            x = torch.cat([x, pad], dim=dim)[tuple(index)]
        return F.max_pool2d(x, self.kernel_size, self.stride)


class XCAExport(nn.Module):
    """Our ``XCA`` (inference) with its products as ``matmul``; shares the
    original's parameters."""

    def __init__(self, xca: nn.Module):
        super().__init__()
        self.num_heads = xca.num_heads
        self.qk_norm = xca.qk_norm
        self.temperature = xca.temperature
        self.qkv = xca.qkv
        self.proj = xca.proj

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        # (3, B, heads, N, d)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads,
                                  -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = q.transpose(-2, -1) @ k  # (B, heads, d, d)
        if self.qk_norm:
            q_norm = q.square().sum(dim=2).sqrt().clamp_min(1e-12)
            k_norm = k.square().sum(dim=2).sqrt().clamp_min(1e-12)
            attn = attn / (q_norm[..., :, None] * k_norm[..., None, :])
        attn = (attn * self.temperature).softmax(dim=-1)
        out = v @ attn.transpose(-2, -1)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def _replace(model: nn.Module) -> List[str]:
    """Swaps the parts named in the module docstring in place; returns
    ``'name: Old -> New'`` lines."""
    done = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            kind = type(child).__name__
            new = None
            if kind == 'Upsample' and type(child).__module__.startswith(
                    'mmseg') and not child.size:
                new = ScaleUpsample(child.scale_factor, child.mode,
                                    child.align_corners)
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                new = AdaptiveAvgPoolExport(child.output_size)
            elif kind == 'MaxPoolAtLeastOne':
                new = MaxPoolAtLeastOneExport(child)
            elif kind == 'XCA' and type(child).__module__.startswith(
                    'xcit_mm'):
                new = XCAExport(child)
            if new is not None:
                setattr(parent, name, new)
                full = f'{parent_name}.{name}' if parent_name else name
                done.append(f'{full}: {kind} -> {type(new).__name__}')
    return done


def exportable_copy(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """A deep copy of ``model`` in eval mode with the traceable rewrites;
    returns it and what was replaced."""
    model = copy.deepcopy(model).eval()
    return model, _replace(model)


def check_segmentor(model: nn.Module) -> None:
    """Raises ValueError naming the part that the export does not support."""
    kind = type(model).__name__
    if kind != 'EncoderDecoder':
        raise ValueError(
            f'cannot export the segmentor: model is {kind}; the export '
            'supports EncoderDecoder')
    head = type(model.decode_head).__name__
    if isinstance(model.decode_head, nn.ModuleList) or \
            head not in SUPPORTED_HEADS:
        raise ValueError(
            f'cannot export the segmentor: decode_head is {head}, whose '
            f'export is not verified; supported: {", ".join(SUPPORTED_HEADS)}')


class SegmentorExport(nn.Module):
    """``EncoderDecoder.encode_decode``: N x C x H x W logits at the input
    size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_segmentor(model)
        self.model = model

    def forward(self, img: Tensor) -> Tensor:
        return self.model.encode_decode(img, [dict(img_shape=img.shape[2:])])


class BackboneExport(nn.Module):
    """The backbone's four pyramid maps."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        feats = tuple(self.backbone(img))
        if len(feats) != len(BACKBONE_OUTPUTS):
            raise ValueError(f'the backbone returns {len(feats)} maps; the '
                             f'export names {len(BACKBONE_OUTPUTS)}')
        return feats


def eager_logits(model: nn.Module, img: Tensor) -> Tensor:
    """The original segmentor's ``encode_decode`` (the reference)."""
    with torch.no_grad():
        return model.encode_decode(img, [dict(img_shape=img.shape[2:])])
