"""Mixed precision on any device: mmengine's AMP on GPUs, bfloat16 on CPUs."""
import warnings
from contextlib import contextmanager, nullcontext

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from ..registry import OPTIM_WRAPPERS
from .cpu_amp import fp32_mmcv_ops_on_cpu


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (oneDNN's check: AVX512-BF16
    or AMX); elsewhere bf16 autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - no oneDNN
        return False


@OPTIM_WRAPPERS.register_module()
class AutoAmpOptimWrapper(OptimWrapper):
    """mmengine's ``AmpOptimWrapper`` (which asserts a GPU) on an
    accelerator, built with the given ``loss_scale`` and ``dtype``; on a CPU
    bfloat16 autocast without a loss scaler (with mmcv's NMS and RoIAlign in
    fp32), or fp32 where the CPU has no native bf16 or ``cpu_dtype`` is
    ``'float32'``. On a CPU ``dtype`` may only be None or bfloat16.
    """

    def __new__(cls, *args, **kwargs):
        from mmengine.device import get_device
        if get_device() != 'cpu':
            kwargs.pop('cpu_dtype', None)
            return AmpOptimWrapper(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 cpu_dtype: str = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        if cpu_dtype not in ('bfloat16', 'float32'):
            raise ValueError("cpu_dtype must be 'bfloat16' or 'float32', "
                             f'got {cpu_dtype!r}.')
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'On a CPU, autocast runs in bfloat16 only; dtype={dtype!r} '
                'is for GPUs. Drop it or set it to bfloat16.')
        self.cast_dtype = None
        if cpu_dtype == 'bfloat16' and cpu_supports_bf16():
            self.cast_dtype = torch.bfloat16
            fp32_mmcv_ops_on_cpu()
        elif cpu_dtype == 'bfloat16':
            warnings.warn('This CPU has no native bfloat16 (AVX512-BF16 or '
                          'AMX): training in fp32.')
        self.reason = ('bfloat16 autocast on the CPU'
                       if self.cast_dtype else 'fp32 on the CPU')

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        cast = torch.autocast('cpu', dtype=self.cast_dtype) \
            if self.cast_dtype else nullcontext()
        with super().optim_context(model), cast:
            yield
