# The built-in demo, segmentation: a small XCiT Semantic FPN learning the
# label maps of the generated shapes dataset (0 unlabelled and ignored, as in
# ADE20k; 1 background; 2.. the shapes). `bash tools/run_demo.sh --seg`.
# The ADE20k optimizer (AdamW, no decay on norms and temperatures, warm-up
# then poly decay) at lr 1e-3 for 400 iterations of 8 images.
_base_ = [
    '../_base_/models/fpn_xcit.py', '../_base_/seg_runtime.py',
    '../_base_/schedules/ade20k_80k_adamw.py'
]
custom_imports = dict(
    imports=['xcit_mm', 'xcit_mm.datasets'], allow_failed_imports=False)

data_root = 'data/shapes/'
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (128, 128)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='nano-12', patch_size=8, drop_path_rate=0.0, norm_cfg=norm_cfg),
    neck=dict(in_channels=[128] * 4, out_channels=128),
    decode_head=dict(
        in_channels=[128] * 4, channels=64, num_classes=4, norm_cfg=norm_cfg))

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
dataset = dict(type='ShapesSegDataset', data_root=data_root)
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
warmup_iters = 50
train_cfg = dict(max_iters=max_iters, val_interval=200)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [  # the ADE20k warm-up and poly decay, shorter
    dict(_base_.param_scheduler[0], start_factor=0.01, end=warmup_iters),
    dict(_base_.param_scheduler[1], begin=warmup_iters, end=max_iters)
]
auto_scale_lr = dict(base_batch_size=8)  # the lr is for 8 images in all
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=200, max_keep_ckpts=1, save_last=True))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
