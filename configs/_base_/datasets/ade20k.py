# ADE20k (ADEChallengeData2016, 150 classes), mmseg's augmentation: resize to
# 2048x512 with a random ratio in 0.5..2.0, random 512x512 crop (no class
# over 75% of it), flip, photometric distortion; multi-scale + flip test with
# --tta. Label 0 (other) is ignored and 1..150 become 0..149: the dataset's
# reduce_zero_label (mmseg's base sets the deprecated LoadAnnotations
# argument instead). 8 GPUs x 2 images (mmseg's: 4).
_base_ = 'mmseg::_base_/datasets/ade20k.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=_base_.crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # annotations load after Resize: the metric compares at the original size
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(reduce_zero_label=True, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(reduce_zero_label=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
