"""Runtime pieces that configs name: the CPU-capable DDP and mixed-precision
wrappers (:mod:`.wrappers`), the hooks that keep a run safe (:mod:`.hooks`)."""
from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks
from .wrappers import (AutoAmpOptimWrapper, CPUCompatibleDDP,
                       cpu_supports_bf16, fp32_mmcv_ops_on_cpu)

__all__ = _hooks + ['CPUCompatibleDDP', 'AutoAmpOptimWrapper',
                    'cpu_supports_bf16', 'fp32_mmcv_ops_on_cpu']
