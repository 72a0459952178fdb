# The authors' 3x recipe: AdamW lr 1e-4, betas (0.9, 0.999), weight decay
# 0.05; 36 epochs, lr x0.1 at epochs 27 and 33 after a linear warm-up; mixed
# precision; 8 GPUs x 2 images (auto_scale_lr rescales other batch sizes).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=36, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # no decay for the norms and the XCA temperatures
    paramwise_cfg=dict(
        norm_decay_mult=0., custom_keys={'.temperature': dict(decay_mult=0.)}))

auto_scale_lr = dict(enable=False, base_batch_size=16)
