# Runtime of the detection configs: mmdet's (default_scope 'mmdet', hooks,
# visualizer, env) plus the plugin import and its safety hooks: atomic
# checkpoints (the last 3 kept) with a resume that falls back to the newest
# intact one, a stop on a non-finite loss, a start-up check of num_classes and
# channels against the data, a lock on the work dir, and a saved stop on
# SIGTERM / SIGINT.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)

default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', max_keep_ckpts=3))
custom_hooks = [
    dict(type='WorkDirLockHook'),
    dict(type='FiniteLossHook'),
    dict(type='XCiTConfigCheckHook'),
    dict(type='PreemptionHook'),
]
