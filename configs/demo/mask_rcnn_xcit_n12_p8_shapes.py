# The built-in demo: a small XCiT Mask R-CNN learning the generated shapes
# dataset (ShapesDataset, xcit_mm.datasets) from scratch on a CPU: 560
# iterations of 8 images, held-out box mAP above 0.5.
# Run it with `bash tools/run_demo.sh` (or tools/train.py on this file after
# `python tools/shapes_data.py data/shapes`).
_base_ = ['../_base_/models/mask_rcnn_xcit_fpn.py', '../_base_/det_runtime.py']
custom_imports = dict(
    imports=['xcit_mm', 'xcit_mm.datasets', 'xcit_mm.models.roi_extractor'],
    allow_failed_imports=False)

data_root = 'data/shapes/'
norm_cfg = dict(type='BN', requires_grad=True)
img_scale = (128, 128)
width = 64  # FPN and head channels, narrower than COCO's 256

model = dict(
    backbone=dict(
        arch='nano-12', patch_size=8, drop_path_rate=0.0, norm_cfg=norm_cfg),
    neck=dict(in_channels=[128] * 4, out_channels=width),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        anchor_generator=dict(scales=[4])),
    roi_head=dict(
        # RoIAlign with a fixed 2x2 sampling per bin, as a sparse product
        # whose backward runs on every CPU thread (SparseRoIExtractor)
        bbox_roi_extractor=dict(
            type='SparseRoIExtractor',
            out_channels=width,
            roi_layer=dict(sampling_ratio=2, use_torchvision=True)),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(
            type='SparseRoIExtractor',
            out_channels=width,
            roi_layer=dict(sampling_ratio=2, use_torchvision=True)),
        mask_head=dict(
            in_channels=width,
            conv_out_channels=64,
            num_convs=2,
            num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='ShapesDataset',
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ShapesDataset',
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_iters = 560
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=140)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW',
        lr=1e-3,
        betas=(0.9, 0.999),
        weight_decay=0.05,
        fused=True),  # one kernel for all parameters
    paramwise_cfg=dict(
        norm_decay_mult=0., custom_keys={'.temperature': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=50,
        end=max_iters,
        eta_min=1e-6)
]
default_hooks = dict(
    logger=dict(interval=20, log_metric_by_epoch=False),
    checkpoint=dict(
        by_epoch=False, interval=140, max_keep_ckpts=1, save_last=True))
log_processor = dict(window_size=20, by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
