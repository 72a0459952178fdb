"""RoI feature extraction that trains fast on a CPU (imports mmdet: name
``xcit_mm.models.roi_extractor`` in ``custom_imports`` where a config uses
``SparseRoIExtractor``).

On a CPU, mmcv's and torchvision's RoIAlign accumulate the gradient one RoI
at a time on one thread; in the demo detector that backward took 15% of a
training step. ``SparseRoIAlign`` computes the same average RoIAlign as a
product of the features with a sparse matrix of bilinear weights (CSR, built
from the RoIs), whose forward and backward use every thread.
"""
import warnings

import torch
from mmcv.ops import RoIAlign
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from torch import Tensor

from ..registry import MODELS


def _csr(crow: Tensor, cols: Tensor, vals: Tensor, shape) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter('ignore', UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape,
                                       check_invariants=False)


class _SparseRows(torch.autograd.Function):
    """``S @ feats`` for a matrix ``S`` given as ``cols`` and ``vals``, each
    R x nnz: the columns and weights of row r's nonzeros (repeats add)."""

    @staticmethod
    def forward(ctx, feats: Tensor, cols: Tensor, vals: Tensor) -> Tensor:
        rows, nnz = cols.shape
        ctx.save_for_backward(cols, vals)
        ctx.num_feats = feats.shape[0]
        crow = torch.arange(0, rows * nnz + 1, nnz, device=cols.device)
        return _csr(crow, cols.reshape(-1), vals.reshape(-1),
                    (rows, feats.shape[0])) @ feats

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        cols, vals = ctx.saved_tensors
        flat = cols.reshape(-1)
        # S transposed, as CSR (int32 keys sort twice as fast; a stable
        # sort keeps the sums' order, so training repeats bit for bit)
        order = torch.argsort(flat.int() if ctx.num_feats < 2**31 else flat,
                              stable=True)
        crow = torch.bincount(flat, minlength=ctx.num_feats).cumsum(0)
        crow = torch.cat([crow.new_zeros(1), crow])
        transposed = _csr(crow, order.div(cols.shape[1], rounding_mode='floor'),
                          vals.reshape(-1)[order],
                          (ctx.num_feats, cols.shape[0]))
        return transposed @ grad.contiguous(), None, None


class SparseRoIAlign(RoIAlign):
    """mmcv's ``RoIAlign``, computed on a CPU as a sparse matrix product
    when ``pool_mode='avg'`` and ``sampling_ratio > 0``; elsewhere (another
    device, the adaptive sampling of ``sampling_ratio=0``, max pooling) it
    is mmcv's own op. Under CPU autocast it computes in float32 and returns
    the features' dtype."""

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if (input.device.type != 'cpu' or self.sampling_ratio <= 0
                or self.pool_mode != 'avg'):
            return super().forward(input, rois)
        with torch.autocast('cpu', enabled=False):
            out = self._sparse_align(input.float(), rois.float())
        return out.to(input.dtype)

    def _axis(self, start: Tensor, length: Tensor, bins: int, size: int):
        """Columns and weights of the bilinear samples along one axis:
        K x bins x 2*sampling_ratio each (a sample outside [-1, size] has
        weight 0, as in mmcv's kernel)."""
        ratio = self.sampling_ratio
        steps = (torch.arange(bins * ratio, device=start.device,
                              dtype=start.dtype) + 0.5) / ratio
        pos = start[:, None] + (length / bins)[:, None] * steps
        inside = ((pos >= -1) & (pos <= size)).to(pos.dtype)
        pos = pos.clamp(min=0)
        low = pos.floor().clamp(max=size - 1)
        pos = torch.where(low >= size - 1, low, pos)
        frac = pos - low
        low = low.long()
        cols = torch.stack([low, (low + 1).clamp(max=size - 1)], -1)
        weights = torch.stack([1 - frac, frac], -1) * inside[..., None]
        shape = (-1, bins, 2 * ratio)
        return cols.reshape(shape), weights.reshape(shape)

    def _sparse_align(self, feats: Tensor, rois: Tensor) -> Tensor:
        n, c, h, w = feats.shape
        k, (ph, pw) = rois.shape[0], self.output_size
        offset = 0.5 if self.aligned else 0.0
        box = rois[:, 1:] * self.spatial_scale - offset
        size = box[:, 2:] - box[:, :2]
        if not self.aligned:
            size = size.clamp(min=1.0)
        xcols, xw = self._axis(box[:, 0], size[:, 0], pw, w)
        ycols, yw = self._axis(box[:, 1], size[:, 1], ph, h)
        image = rois[:, 0].long() * (h * w)
        cols = (image[:, None, None, None, None] +
                ycols[:, :, None, :, None] * w + xcols[:, None, :, None, :])
        vals = (yw[:, :, None, :, None] * xw[:, None, :, None, :] /
                self.sampling_ratio**2)
        flat = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)
        shape = (k * ph * pw, (2 * self.sampling_ratio)**2)
        out = _SparseRows.apply(flat, cols.reshape(shape), vals.reshape(shape))
        return out.view(k, ph, pw, c).permute(0, 3, 1, 2)


@MODELS.register_module()
class SparseRoIExtractor(SingleRoIExtractor):
    """mmdet's ``SingleRoIExtractor`` whose ``roi_layer`` (which must be
    ``RoIAlign``) is a ``SparseRoIAlign``: the same features, a faster
    backward on a CPU."""

    def build_roi_layers(self, layer_cfg, featmap_strides):
        cfg = dict(layer_cfg)
        if cfg.get('type') not in ('RoIAlign', RoIAlign, SparseRoIAlign):
            raise ValueError(
                f'SparseRoIExtractor: roi_layer type {cfg.get("type")!r} is '
                'not RoIAlign; use SingleRoIExtractor for other RoI layers')
        return super().build_roi_layers(dict(cfg, type=SparseRoIAlign),
                                        featmap_strides)
