_base_ = [
    '../_base_/models/fpn_xcit.py', '../_base_/datasets/ade20k.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/ade20k_80k_adamw.py'
]

# XCiT-S24/8: ImageNet-1k, distilled, 384 px
pretrained = 'https://dl.fbaipublicfiles.com/xcit/xcit_small_24_p8_384_dist.pth'
model = dict(
    backbone=dict(
        arch='small-24',
        patch_size=8,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384] * 4))
