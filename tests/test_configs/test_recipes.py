"""The published recipes (merged configs): the facts that matter for
reproducing the authors' COCO and ADE20k results."""
import pytest
import torch

from tests.test_configs.utils import (ADE, ALL, ARCHS, COCO, DEMO, PUBLISHED,
                                      SIZES, build_model, config_id, load,
                                      parse_name)
from xcit_mm.models import ARCH_SETTINGS

DROP_PATH = {
    'mask_rcnn': dict(t12=0.0, s12=0.05, s24=0.1, m24=0.15),
    'fpn': dict(t12=0.0, s12=0.05, s24=0.1, m24=0.2),
    'upernet': dict(t12=0.0, s12=0.05, s24=0.1, m24=0.15),
}
URL = 'https://dl.fbaipublicfiles.com/xcit/xcit_{}_{}_p{}_384_dist.pth'


def test_every_published_model_has_a_config():
    names = {config_id(p) for p in PUBLISHED}
    expected = {
        f'coco/mask_rcnn_xcit_{s}_p{p}.py'
        for s in SIZES
        for p in (8, 16)
    }
    expected |= {
        f'ade20k/fpn_xcit_{s}_p{p}_80k.py'
        for s in SIZES
        for p in (8, 16)
    }
    expected |= {
        f'ade20k/upernet_xcit_{s}_p{p}_160k.py'
        for s in SIZES
        for p in (8, 16)
    }
    assert names == expected
    assert len(DEMO) == 2


@pytest.mark.parametrize('path', PUBLISHED, ids=config_id)
def test_backbone(path):
    model, size, patch, _ = parse_name(path)
    backbone = load(path).model.backbone
    assert backbone.type == 'XCiT'
    assert backbone.arch == ARCHS[size] and backbone.patch_size == patch
    assert backbone.drop_path_rate == DROP_PATH[model][size]
    assert backbone.norm_cfg == dict(type='SyncBN', requires_grad=True)
    # the authors' ImageNet-1k distilled 384 px weights of this arch/patch
    width, depth = ARCHS[size].split('-')
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=URL.format(width, depth, patch))


@pytest.mark.parametrize('path', ALL, ids=config_id)
def test_input_widths_are_the_presets_embed_dims(path):
    model = load(path).model
    dims = ARCH_SETTINGS[model.backbone.arch]['embed_dims']
    head = model.get('decode_head', {}).get('type')
    if model.type == 'MaskRCNN' or head == 'FPNHead':
        assert model.neck.in_channels == [dims] * 4
    if head == 'FPNHead':
        assert model.decode_head.in_channels == \
            [model.neck.out_channels] * 4
    if head == 'UPerHead':
        assert model.decode_head.in_channels == [dims] * 4
        assert model.auxiliary_head.in_channels == dims
        assert model.auxiliary_head.in_index == 2  # the stride-16 map


@pytest.mark.parametrize('path', ADE, ids=config_id)
def test_ade20k_heads_use_syncbn_and_150_classes(path):
    model = load(path).model
    heads = [model.decode_head
             ] + ([model.auxiliary_head] if 'auxiliary_head' in model else [])
    for head in heads:
        assert head.norm_cfg.type == 'SyncBN' and head.num_classes == 150


def _check_adamw(cfg, lr, weight_decay):
    optim = cfg.optim_wrapper
    assert optim.optimizer == dict(
        type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    # no decay for the norms and the XCA temperatures
    assert optim.paramwise_cfg == dict(
        norm_decay_mult=0., custom_keys={'.temperature': dict(decay_mult=0.)})


def _check_batch(cfg):
    # 8 GPUs x 2 images; auto_scale_lr rescales other totals when enabled
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)


@pytest.mark.parametrize('path', COCO, ids=config_id)
def test_coco_3x_recipe(path):
    cfg = load(path)
    _check_adamw(cfg, lr=1e-4, weight_decay=0.05)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'  # mixed precision
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop'
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert warmup == dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500)
    assert steps == dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
    _check_batch(cfg)
    # the DETR augmentation: multi-scale, or resize + crop + multi-scale
    choice = [
        t for t in cfg.train_dataloader.dataset.pipeline
        if t.type == 'RandomChoice'
    ]
    assert len(choice) == 1
    scales = [(1333, s) for s in range(480, 801, 32)]
    multi, crop = choice[0].transforms
    assert [t.type for t in multi] == ['RandomChoiceResize']
    assert [tuple(s) for s in multi[0].scales] == scales
    assert [t.type for t in crop
            ] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert tuple(crop[1].crop_size) == (384, 600)
    assert [tuple(s) for s in crop[2].scales] == scales


@pytest.mark.parametrize('path', ADE, ids=config_id)
def test_ade20k_recipe(path):
    cfg = load(path)
    _, _, _, iters = parse_name(path)
    _check_adamw(cfg, lr=6e-5, weight_decay=0.01)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.train_cfg == dict(
        type='IterBasedTrainLoop', max_iters=iters, val_interval=iters // 10)
    warmup, poly = cfg.param_scheduler
    assert warmup == dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500)
    assert poly == dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=1500,
        end=iters)
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.by_epoch is False and checkpoint.interval == iters // 10
    _check_batch(cfg)
    # label 0 ignored, 1..150 -> 0..149: by the dataset, not the deprecated
    # LoadAnnotations argument
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        assert loader.dataset.reduce_zero_label is True
        assert all('reduce_zero_label' not in t
                   for t in loader.dataset.pipeline)


@pytest.mark.parametrize(
    'name', ['fpn_xcit_t12_p16_80k.py', 'upernet_xcit_t12_p16_160k.py'])
def test_ade20k_learning_rate_curve(name):
    """Warm-up from 1e-6 of the lr over 1500 iterations, then linear decay
    to 0 at the last iteration, as mmengine steps the schedulers."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load(next(p for p in ADE if p.endswith(name)))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [
        PARAM_SCHEDULERS.build(
            dict(s), default_args=dict(optimizer=optimizer))
        for s in cfg.param_scheduler
    ]
    iters = cfg.train_cfg.max_iters
    lrs = []
    for _ in range(iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        for scheduler in schedulers:
            scheduler.step()
    assert lrs[0] == pytest.approx(6e-11)
    assert lrs[750] == pytest.approx(3e-5, rel=1e-3)
    assert lrs[1500] == pytest.approx(6e-5) == max(lrs)
    assert lrs[1500 + (iters - 1500) // 2] == pytest.approx(3e-5, rel=1e-3)
    assert lrs[-1] == 0.0


@pytest.mark.parametrize(
    'name',
    ['coco/mask_rcnn_xcit_t12_p16.py', 'ade20k/upernet_xcit_t12_p16_160k.py'])
def test_no_weight_decay_for_norms_and_temperatures(name):
    """On the built model: every norm parameter and XCA temperature has
    weight decay 0, everything else the recipe's."""
    from mmengine.optim import build_optim_wrapper
    from torch.nn.modules.batchnorm import _BatchNorm
    cfg = load(next(p for p in ALL if config_id(p) == name))
    model = build_model(cfg)
    wrapper_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')
    wrapper_cfg.pop('loss_scale', None)  # AmpOptimWrapper needs a GPU
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    base = cfg.optim_wrapper.optimizer.weight_decay
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {
        names[id(p)]: group['weight_decay']
        for group in wrapper.optimizer.param_groups
        for p in group['params']
    }
    assert set(decay) == set(names.values())
    norms = (_BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
    no_decay = {
        f'{m_name}.{p_name}' if m_name else p_name
        for m_name, m in model.named_modules() if isinstance(m, norms)
        for p_name, _ in m.named_parameters(recurse=False)
    }
    no_decay |= {n for n in decay if n.endswith('.temperature')}
    assert any(n.endswith('.temperature') for n in no_decay)
    assert any(n.startswith('backbone.') and 'norm' in n for n in no_decay)
    assert {n for n, wd in decay.items() if wd == 0} == no_decay
    assert all(wd == base for n, wd in decay.items() if n not in no_decay)
