_base_ = [
    '../_base_/models/mask_rcnn_xcit_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/coco_3x_adamw.py', '../_base_/det_runtime.py'
]

# XCiT-S12/8: ImageNet-1k, distilled, 384 px
pretrained = 'https://dl.fbaipublicfiles.com/xcit/xcit_small_12_p8_384_dist.pth'
model = dict(
    backbone=dict(
        arch='small-12',
        patch_size=8,
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384] * 4))
