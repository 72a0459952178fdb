"""Runtime pieces that configs name: the CPU-capable DDP and mixed-precision
wrappers (:mod:`.wrappers`), the hooks that keep a run safe (:mod:`.hooks`)."""
from .hooks import (AtomicCheckpointHook, FiniteLossHook, PreemptionHook,
                    WorkDirLockHook, XCiTConfigCheckHook, check_model_config)
from .wrappers import (AutoAmpOptimWrapper, CPUCompatibleDDP,
                       cpu_supports_bf16, fp32_mmcv_ops_on_cpu)

__all__ = [
    'CPUCompatibleDDP', 'AutoAmpOptimWrapper', 'cpu_supports_bf16',
    'fp32_mmcv_ops_on_cpu', 'AtomicCheckpointHook', 'FiniteLossHook',
    'WorkDirLockHook', 'XCiTConfigCheckHook', 'check_model_config',
    'PreemptionHook'
]
