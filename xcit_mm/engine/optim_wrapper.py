"""Mixed precision on any device: mmengine's AMP on GPUs, bfloat16 on CPUs
(where mmcv's NMS and RoIAlign, float32 only, run in float32)."""
import functools
import warnings
from contextlib import contextmanager

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from ..registry import OPTIM_WRAPPERS


@functools.lru_cache(maxsize=None)
def fp32_mmcv_ops_on_cpu():
    """mmcv's NMS and RoIAlign in float32 while CPU autocast is on (the
    output cast back), unchanged otherwise. Idempotent."""
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlign
    nms_forward, roi_forward = NMSop.forward, RoIAlign.forward

    def nms(ctx, bboxes, scores, *args):
        if bboxes.is_cpu and torch.is_autocast_enabled('cpu'):
            bboxes, scores = bboxes.float(), scores.float()
        return nms_forward(ctx, bboxes, scores, *args)

    def roi_align(self, input, rois):
        if not (input.is_cpu and torch.is_autocast_enabled('cpu')):
            return roi_forward(self, input, rois)
        with torch.autocast('cpu', enabled=False):
            return roi_forward(self, input.float(),
                               rois.float()).to(input.dtype)

    NMSop.forward = staticmethod(nms)
    RoIAlign.forward = roi_align


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX, by oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - no oneDNN
        return False


@OPTIM_WRAPPERS.register_module()
class AutoAmpOptimWrapper(OptimWrapper):
    """mmengine's ``AmpOptimWrapper`` (which asserts a GPU) on an
    accelerator; on a CPU bf16 autocast without a loss scaler (mmcv's NMS
    and RoIAlign in fp32), or fp32 without native bf16 or with
    ``cpu_dtype='float32'``. On a CPU ``dtype`` may only be bfloat16."""

    def __new__(cls, *args, **kwargs):
        from mmengine.device import get_device
        if get_device() != 'cpu':
            kwargs.pop('cpu_dtype', None)
            return AmpOptimWrapper(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 cpu_dtype: str = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        if cpu_dtype not in ('bfloat16', 'float32') or dtype not in (
                None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                "On a CPU: cpu_dtype 'bfloat16' or 'float32', dtype None or "
                f"'bfloat16' (got {cpu_dtype!r}, {dtype!r}).")
        bf16 = cpu_dtype == 'bfloat16' and cpu_supports_bf16()
        self.cast_dtype = torch.bfloat16 if bf16 else None
        if bf16:
            fp32_mmcv_ops_on_cpu()
        elif cpu_dtype == 'bfloat16':
            warnings.warn('This CPU has no native bfloat16 (AVX512-BF16 or '
                          'AMX): training in fp32.')

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast(
                'cpu', dtype=torch.bfloat16, enabled=bool(self.cast_dtype)):
            yield
