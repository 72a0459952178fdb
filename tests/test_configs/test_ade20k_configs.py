"""The ADE20k configs: the published recipe; every model builds and runs."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from tests.config_utils import config_paths, to_bn
from xcit_mm.models import resolve_arch

ADE_CONFIGS = config_paths('ade20k')
# size -> (preset, drop-path Semantic FPN, drop-path UperNet)
EXPECTED = {
    't12': ('tiny-12', 0.0, 0.0),
    's12': ('small-12', 0.05, 0.05),
    's24': ('small-24', 0.1, 0.1),
    'm24': ('medium-24', 0.2, 0.15),
}
NAME = re.compile(r'^(fpn|upernet)_xcit_(t12|s12|s24|m24)_p(8|16)_(80|160)k'
                  r'\.py$')


def _parse(path):
    head, size, patch, iters = NAME.match(osp.basename(path)).groups()
    return head, size, int(patch), int(iters) * 1000


def test_every_published_model_has_a_config():
    names = {osp.basename(p) for p in ADE_CONFIGS}
    expected = {f'fpn_xcit_{s}_p{p}_80k.py' for s in EXPECTED
                for p in (8, 16)}
    expected |= {f'upernet_xcit_{s}_p{p}_160k.py' for s in EXPECTED
                 for p in (8, 16)}
    assert names == expected


@pytest.mark.parametrize('path', ADE_CONFIGS, ids=osp.basename)
def test_recipe(path):
    head, size, patch, iters = _parse(path)
    arch, dpr_fpn, dpr_upernet = EXPECTED[size]
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports.imports == ['xcit_mm']
    assert cfg.custom_imports.allow_failed_imports is False

    # backbone
    model = cfg.model
    backbone = model.backbone
    assert model.type == 'EncoderDecoder'
    assert backbone.type == 'XCiT' and backbone.arch == arch
    assert backbone.patch_size == patch
    assert backbone.drop_path_rate == (dpr_fpn if head == 'fpn' else
                                       dpr_upernet)
    assert backbone.norm_cfg.type == 'SyncBN'
    assert backbone.init_cfg.type == 'Pretrained'
    url_name = arch.replace('-', '_')
    assert backbone.init_cfg.checkpoint == (
        f'https://dl.fbaipublicfiles.com/xcit/xcit_{url_name}_p{patch}'
        '_384_dist.pth')
    dims = resolve_arch(arch)['embed_dims']

    # neck and heads
    decode = model.decode_head
    assert decode.num_classes == 150 and decode.norm_cfg.type == 'SyncBN'
    if head == 'fpn':
        assert model.neck.type == 'FPN'
        assert model.neck.in_channels == [dims] * 4
        assert model.neck.out_channels == 384 and model.neck.num_outs == 4
        assert decode.type == 'FPNHead'
        assert decode.in_channels == [384] * 4 and decode.channels == 128
        assert decode.feature_strides == [4, 8, 16, 32]
        assert 'auxiliary_head' not in model
    else:
        assert 'neck' not in model
        assert decode.type == 'UPerHead'
        assert decode.in_channels == [dims] * 4 and decode.channels == 512
        assert tuple(decode.pool_scales) == (1, 2, 3, 6)
        aux = model.auxiliary_head
        assert aux.type == 'FCNHead' and aux.in_index == 2
        assert aux.in_channels == dims and aux.num_classes == 150
        assert aux.loss_decode.loss_weight == 0.4
        assert aux.norm_cfg.type == 'SyncBN'
    assert model.data_preprocessor.type == 'SegDataPreProcessor'
    assert tuple(model.data_preprocessor.size) == (512, 512)

    # optimizer and schedule
    optim = cfg.optim_wrapper
    assert optim.optimizer.type == 'AdamW' and optim.optimizer.lr == 6e-5
    assert tuple(optim.optimizer.betas) == (0.9, 0.999)
    assert optim.optimizer.weight_decay == 0.01
    assert optim.paramwise_cfg.norm_decay_mult == 0.
    assert optim.paramwise_cfg.custom_keys['.temperature'].decay_mult == 0.
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.start_factor == 1e-6
    assert (warmup.begin, warmup.end, warmup.by_epoch) == (0, 1500, False)
    assert poly.type == 'PolyLR' and poly.power == 1.0
    assert poly.eta_min == 0 and not poly.by_epoch
    assert (poly.begin, poly.end) == (1500, iters)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == iters
    assert cfg.train_cfg.val_interval == iters // 10
    ckpt = cfg.default_hooks.checkpoint
    assert ckpt.type == 'CheckpointHook' and ckpt.by_epoch is False
    assert ckpt.interval == iters // 10
    assert cfg.default_hooks.visualization.type == 'SegVisualizationHook'
    assert cfg.visualizer.type == 'SegLocalVisualizer'
    assert cfg.log_processor.by_epoch is False

    # data
    train = cfg.train_dataloader
    assert train.batch_size == 2  # 8 GPUs x 2 images
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert train.dataset.type == 'ADE20KDataset'
    assert train.dataset.reduce_zero_label is True
    assert train.dataset.data_root == 'data/ade/ADEChallengeData2016'
    assert train.dataset.data_prefix == dict(
        img_path='images/training', seg_map_path='annotations/training')
    steps = {t.type: t for t in train.dataset.pipeline}
    assert tuple(steps['RandomResize'].scale) == (2048, 512)
    assert tuple(steps['RandomResize'].ratio_range) == (0.5, 2.0)
    assert tuple(steps['RandomCrop'].crop_size) == (512, 512)
    assert steps['RandomCrop'].cat_max_ratio == 0.75
    assert steps['RandomFlip'].prob == 0.5
    assert 'PhotoMetricDistortion' in steps
    val = cfg.val_dataloader.dataset
    assert val.data_prefix == dict(
        img_path='images/validation', seg_map_path='annotations/validation')
    test_steps = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert test_steps == ['LoadImageFromFile', 'Resize', 'LoadAnnotations',
                          'PackSegInputs']
    assert tuple(cfg.test_dataloader.dataset.pipeline[1].scale) == (2048,
                                                                     512)
    assert cfg.val_evaluator == dict(type='IoUMetric', iou_metrics=['mIoU'])
    assert cfg.tta_model.type == 'SegTTAModel'
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug'
    assert [t.scale_factor for t in tta.transforms[0]] == [
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t.prob for t in tta.transforms[1]] == [0., 1.]


def _config(name):
    return Config.fromfile(osp.join(osp.dirname(ADE_CONFIGS[0]), name))


def bn_model(cfg):
    """``cfg.model`` with every SyncBN as BN (no process group here)."""
    model = to_bn(cfg.model)  # a ConfigDict: to_bn walks dicts only
    assert 'SyncBN' not in repr(model)
    return model


def test_m24_p16_really_is_patch_16():
    """The authors' medium-24 patch-16 configs built patch 8."""
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    fpn = bn_model(_config('fpn_xcit_m24_p16_80k.py')).backbone
    upernet = bn_model(_config('upernet_xcit_m24_p16_160k.py')).backbone
    assert dict(fpn, drop_path_rate=0.15) == upernet
    backbone = MODELS.build(fpn)
    assert backbone.patch_size == 16
    assert len(backbone.patch_embed.proj) == 7  # 4 conv+BN, 3 GELU
    assert backbone.forward_blocks(
        torch.rand(1, 3, 32, 32))[0].shape[-2:] == (2, 2)
    assert backbone.init_cfg['checkpoint'].endswith('_p16_384_dist.pth')


def _samples(n, size, num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, ) + size))
        samples.append(sample)
    return samples


@pytest.mark.parametrize('path', ADE_CONFIGS, ids=osp.basename)
def test_builds_and_runs(path):
    from mmseg.registry import MODELS
    head, size, patch, _ = _parse(path)
    model_cfg = bn_model(Config.fromfile(path))
    hw = (64, 64)
    model_cfg.data_preprocessor.size = hw
    init_default_scope('mmseg')
    model = MODELS.build(model_cfg)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm)
                   for m in model.modules())
    # building must not download: the weights load only in init_weights()
    assert model.backbone.init_cfg['type'] == 'Pretrained'
    assert model.backbone.patch_size == patch
    assert model.backbone.arch == EXPECTED[size][0]
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, ) + hw, generator=gen,
                            dtype=torch.uint8) for _ in range(2)]
    # batch 2: UperNet's 1x1 pooled branch needs 2 values per channel for BN
    data = dict(inputs=images, data_samples=_samples(2, hw, 150))
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    expected = {'decode.loss_ce', 'decode.acc_seg'}
    if head == 'upernet':
        expected |= {'aux.loss_ce', 'aux.acc_seg'}
    assert set(losses) == expected
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor(
            dict(inputs=images[:1], data_samples=_samples(1, hw, 150)), False)
        results = model(**batch, mode='predict')
    assert len(results) == 1
    assert results[0].seg_logits.data.shape == (150, ) + hw
    assert results[0].pred_sem_seg.data.shape == (1, ) + hw


@pytest.mark.parametrize('name, iters', [('fpn_xcit_t12_p16_80k.py', 80000),
                                         ('upernet_xcit_t12_p8_160k.py',
                                          160000)])
def test_learning_rate_curve(name, iters):
    """Warm-up from 1e-6 of the lr over 1500 iterations, then linear decay
    to 0 at the last iteration, as mmengine steps the schedulers."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = _config(name)
    init_default_scope('mmseg')
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [
        PARAM_SCHEDULERS.build(dict(s), default_args=dict(optimizer=optimizer))
        for s in cfg.param_scheduler
    ]
    lrs = []
    for _ in range(cfg.train_cfg.max_iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        for scheduler in schedulers:
            scheduler.step()
    assert len(lrs) == iters
    assert lrs[0] == pytest.approx(6e-11)
    assert lrs[750] == pytest.approx(3e-5, rel=1e-3)
    assert lrs[1500] == pytest.approx(6e-5)
    assert max(lrs) == pytest.approx(6e-5)
    middle = 1500 + (iters - 1500) // 2
    assert lrs[middle] == pytest.approx(3e-5, rel=1e-3)
    assert lrs[-1] == 0.0
    assert all(b <= a for a, b in zip(lrs[1500:], lrs[1501:]))


def test_no_weight_decay_for_norms_and_temperatures():
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    cfg = _config('upernet_xcit_t12_p16_160k.py')
    init_default_scope('mmseg')
    model = MODELS.build(bn_model(cfg))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    assert decay['backbone.blocks.0.attn.temperature'] == 0
    assert decay['backbone.blocks.0.norm1.weight'] == 0  # LayerNorm
    assert decay['backbone.blocks.0.local_mp.bn.weight'] == 0  # BN
    assert decay['decode_head.bottleneck.bn.bias'] == 0
    assert decay['backbone.blocks.0.attn.qkv.weight'] == 0.01
    assert decay['decode_head.conv_seg.weight'] == 0.01
