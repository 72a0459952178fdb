"""Runtime pieces that configs name: the CPU-capable DDP and mixed-precision
wrappers, and the hooks that keep a run safe (atomic checkpoints and resume
fallback, a stop on non-finite losses, config checks, a work-dir lock, a
saved stop on SIGTERM / SIGINT)."""
from .ddp import CPUCompatibleDDP
from .hooks import (AtomicCheckpointHook, FiniteLossHook, PreemptionHook,
                    WorkDirLockHook, XCiTConfigCheckHook, check_model_config)
from .optim_wrapper import (AutoAmpOptimWrapper, cpu_supports_bf16,
                            fp32_mmcv_ops_on_cpu)

__all__ = [
    'CPUCompatibleDDP', 'AutoAmpOptimWrapper', 'cpu_supports_bf16',
    'AtomicCheckpointHook', 'FiniteLossHook', 'WorkDirLockHook',
    'XCiTConfigCheckHook', 'check_model_config', 'fp32_mmcv_ops_on_cpu',
    'PreemptionHook'
]
