# UperNet on the XCiT backbone (the authors' ADE20k model): mmseg's with XCiT
# (SyncBN) for ResNet-50, a UPerHead of 512 channels with pool scales
# (1, 2, 3, 6), an FCN auxiliary head on the third map (stride 16, loss
# weight 0.4), 150 classes and 512x512 training crops.
# Leaves choose the preset, patch size, drop-path, pretrained weights and the
# head input widths (the preset's embed_dims).
_base_ = 'mmseg::_base_/models/upernet_r50.py'

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
    decode_head=dict(in_channels=[384] * 4, num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
