# The built-in demo, segmentation: a small XCiT Semantic FPN learning the
# label maps of the generated shapes dataset (0 unlabelled and ignored, as in
# ADE20k; 1 background; 2.. the shapes). `bash tools/run_demo.sh --seg`.
_base_ = ['../_base_/models/fpn_xcit.py', '../_base_/seg_runtime.py']
default_scope = 'mmseg'
custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)

data_root = 'data/shapes/'
metainfo = dict(
    classes=('background', 'circle', 'rectangle', 'triangle'),
    palette=[(120, 120, 120), (220, 20, 60), (0, 130, 200), (255, 180, 0)])
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (128, 128)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='nano-12', patch_size=8, drop_path_rate=0.0, norm_cfg=norm_cfg),
    neck=dict(in_channels=[128] * 4, out_channels=128),
    decode_head=dict(
        in_channels=[128] * 4, channels=64, num_classes=4,
        norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        dataset,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        dataset,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 400
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=200)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999),
                   weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0., custom_keys={'.temperature': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50,
         end=max_iters)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=200,
        max_keep_ckpts=1, save_last=True))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
