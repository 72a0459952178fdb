"""The wrappers that CPU training needs: DDP on gloo, and mixed precision
on any device (mmengine's AMP on GPUs, bfloat16 on CPUs, where mmcv's NMS
and RoIAlign, float32 only, run in float32)."""
import functools
import warnings
from contextlib import contextmanager

import torch
from mmengine.device import get_device
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from ..registry import MODEL_WRAPPERS, OPTIM_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPUs (gloo): without
    a GPU, no ``device_ids`` (DDP rejects them there) and BN for SyncBN."""

    def __init__(self, module, device_ids=None, **kwargs):
        if not torch.cuda.is_available():
            device_ids, module = None, revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


@functools.lru_cache(maxsize=None)
def fp32_mmcv_ops_on_cpu():
    """mmcv's NMS and RoIAlign in float32 (inputs cast, autocast off inside,
    by ``torch.amp.custom_fwd``; RoIAlign's features cast back) while CPU
    autocast is on. Idempotent."""
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlign
    fp32 = functools.partial(torch.amp.custom_fwd, device_type='cpu',
                             cast_inputs=torch.float32)
    NMSop.forward = staticmethod(fp32(NMSop.forward))
    roi_align = fp32(RoIAlign.forward)

    @functools.wraps(RoIAlign.forward)
    def forward(self, input, rois):  # features in the dtype they came in
        return roi_align(self, input, rois).to(input.dtype)
    RoIAlign.forward = forward


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
