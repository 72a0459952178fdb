# Runtime of the segmentation configs: mmseg's (default_scope 'mmseg',
# visualizer, env, SegTTAModel for --tta) plus the plugin import and its
# safety hooks (a stop on a non-finite loss, a start-up check of num_classes
# and channels, a lock on the work dir, a saved stop on SIGTERM / SIGINT). The
# default hooks, with the atomic checkpoint hook, are in the schedules, as in
# mmseg.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)

custom_hooks = [
    dict(type='WorkDirLockHook'),
    dict(type='FiniteLossHook'),
    dict(type='XCiTConfigCheckHook'),
    dict(type='PreemptionHook'),
]
