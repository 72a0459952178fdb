_base_ = [
    '../_base_/models/fpn_xcit.py', '../_base_/datasets/ade20k.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/ade20k_80k_adamw.py'
]

# XCiT-S12/16: ImageNet-1k, distilled, 384 px
pretrained = 'https://dl.fbaipublicfiles.com/xcit/xcit_small_12_p16_384_dist.pth'
model = dict(
    backbone=dict(
        arch='small-12',
        patch_size=16,
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384] * 4))
