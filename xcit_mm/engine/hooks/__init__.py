"""Hooks that make training runs safer to interrupt, resume and configure,
one module each, all in mmengine's root ``HOOKS`` registry (so mmdet and
mmseg configs name them alike): :class:`AtomicCheckpointHook`,
:class:`FiniteLossHook`, :class:`XCiTConfigCheckHook` (and
:func:`check_model_config` without a runner), :class:`WorkDirLockHook`.

The config lines that enable them::

    default_hooks = dict(
        checkpoint=dict(type='AtomicCheckpointHook', interval=1,
                        max_keep_ckpts=3))
    custom_hooks = [
        dict(type='WorkDirLockHook'),
        dict(type='FiniteLossHook'),
        dict(type='XCiTConfigCheckHook'),
    ]
"""
from .checkpoint_hook import (AtomicCheckpointHook, AtomicLocalBackend,
                              CheckpointResumeError, atomic_write,
                              checkpoint_problem, decode_checkpoint,
                              encode_checkpoint)
from .config_check_hook import (XCiTConfigCheckHook, check_model_config,
                                model_config_problems)
from .finite_loss_hook import FiniteLossHook
from .work_dir_lock_hook import WorkDirLockedError, WorkDirLockHook

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CheckpointResumeError',
    'FiniteLossHook', 'WorkDirLockHook', 'WorkDirLockedError',
    'XCiTConfigCheckHook', 'atomic_write', 'check_model_config',
    'checkpoint_problem', 'decode_checkpoint', 'encode_checkpoint',
    'model_config_problems'
]
