"""Hooks that keep runs safe, in mmengine's root ``HOOKS`` registry (so
mmdet and mmseg configs name them alike)::

    default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook',
                                         interval=1, max_keep_ckpts=3))
    custom_hooks = [dict(type='WorkDirLockHook'), dict(type='FiniteLossHook'),
                    dict(type='XCiTConfigCheckHook'),
                    dict(type='PreemptionHook')]
"""
from .checkpoint_hook import AtomicCheckpointHook, CheckpointResumeError
from .config_check_hook import XCiTConfigCheckHook, check_model_config
from .finite_loss_hook import FiniteLossHook
from .preemption_hook import PreemptionHook, ResumeError, TrainingInterrupted
from .work_dir_lock_hook import (WorkDirLockedError, WorkDirLockHook,
                                 lock_work_dir)

__all__ = [
    'AtomicCheckpointHook', 'CheckpointResumeError', 'FiniteLossHook',
    'WorkDirLockHook', 'WorkDirLockedError', 'XCiTConfigCheckHook',
    'check_model_config', 'PreemptionHook',
    'ResumeError', 'TrainingInterrupted', 'lock_work_dir'
]
