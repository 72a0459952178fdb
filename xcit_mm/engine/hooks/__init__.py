"""Hooks that keep runs safe, in mmengine's root ``HOOKS`` registry (so
mmdet and mmseg configs name them alike)."""
from ...fileio import WorkDirLockedError, lock_work_dir
from .checkpoint_hook import (AtomicCheckpointHook, CheckpointResumeError,
                              ResumeError)
from .config_check_hook import XCiTConfigCheckHook, check_model_config
from .guard_hooks import (FiniteLossHook, PreemptionHook, TrainingInterrupted,
                          WorkDirLockHook)

__all__ = [
    'AtomicCheckpointHook', 'CheckpointResumeError', 'FiniteLossHook',
    'WorkDirLockHook', 'WorkDirLockedError', 'XCiTConfigCheckHook',
    'check_model_config', 'PreemptionHook', 'ResumeError',
    'TrainingInterrupted', 'lock_work_dir'
]
