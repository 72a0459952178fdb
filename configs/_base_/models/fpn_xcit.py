# Semantic FPN on the XCiT backbone (the authors' ADE20k model): an FPN neck
# to 384 channels with 4 outputs and an FPN head of 128 channels.
# Leaves choose the preset, patch size, drop-path, pretrained weights and the
# FPN input width (the preset's embed_dims).
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))  # the training crop
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='XCiT',
        arch='small-12',
        patch_size=16,
        drop_path_rate=0.05,
        norm_cfg=norm_cfg),
    neck=dict(
        type='FPN',
        in_channels=[384, 384, 384, 384],
        out_channels=384,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[384, 384, 384, 384],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
