# Mask R-CNN + FPN on the XCiT backbone (the authors' detection model):
# mmdet's Mask R-CNN with XCiT (SyncBN) for ResNet-50.
# Leaves choose the preset, patch size, drop-path, pretrained weights and the
# FPN input width (the preset's embed_dims).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='XCiT',
        arch='small-12',
        patch_size=16,
        drop_path_rate=0.05,
        norm_cfg=norm_cfg),
    neck=dict(in_channels=[384] * 4))
