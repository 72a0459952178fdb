_base_ = [
    '../_base_/models/upernet_xcit.py', '../_base_/datasets/ade20k.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/ade20k_160k_adamw.py'
]

# XCiT-T12/8: ImageNet-1k, distilled, 384 px
pretrained = 'https://dl.fbaipublicfiles.com/xcit/xcit_tiny_12_p8_384_dist.pth'
model = dict(
    backbone=dict(
        arch='tiny-12',
        patch_size=8,
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[192] * 4),
    auxiliary_head=dict(in_channels=192))
