# Semantic FPN on the XCiT backbone (the authors' ADE20k model): mmseg's with
# XCiT (SyncBN) for ResNet-50, an FPN neck to 384 channels with 4 outputs, an
# FPN head of 128 channels, 150 classes and 512x512 training crops.
# Leaves choose the preset, patch size, drop-path, pretrained weights and the
# FPN input width (the preset's embed_dims).
_base_ = 'mmseg::_base_/models/fpn_r50.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(size=(512, 512))  # the training crop
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='XCiT',
        arch='small-12',
        patch_size=16,
        drop_path_rate=0.05,
        norm_cfg=norm_cfg),
    neck=dict(in_channels=[384] * 4, out_channels=384),
    decode_head=dict(in_channels=[384] * 4, num_classes=150))
