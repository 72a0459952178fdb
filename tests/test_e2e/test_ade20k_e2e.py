"""ADE20k-style semantic segmentation end to end: the real scripts on a tiny
generated dataset, 2 processes where the scripts launch them."""
import os.path as osp
import re

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.e2e_utils import run_tool
from xcit_mm.datasets.shapes import SEG_CLASSES, SEG_PALETTE, generate
from xcit_mm.weights import load_checkpoint_file

BASE = osp.join(REPO_ROOT, 'configs/ade20k/fpn_xcit_t12_p16_80k.py')
MIOU = re.compile(r'Iter\((val|test)\) \[\d+/\d+\]\s+aAcc: [\d.]+\s+'
                  r'mIoU: ([\d.]+)')

# The published Semantic FPN config, shrunk: a 4-block XCiT of width 64,
# BN, the 4 classes of the generated data, 64 px crops, 4 iterations.
TINY = """
_base_ = [{base!r}]
data_root = {root!r}
metainfo = dict(classes={classes!r}, palette={palette!r})
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, depth=4, num_heads=2),
        drop_path_rate=0.0,
        norm_cfg=norm_cfg,
        init_cfg=None),
    neck=dict(in_channels=[64] * 4, out_channels=32),
    decode_head=dict(
        in_channels=[32] * 4, channels=16, num_classes=4, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# ADE20KDataset only knows ADE's 150 classes and .jpg images: the generated
# data (same folder layout, label 0 ignored) uses the generic dataset.
dataset = dict(
    type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
    img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0,
         end=4)
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0)
"""


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade_shapes')
    generate(str(root), num_train=8, num_val=4, size=64, seed=1,
             progress=False)
    cfg = root / 'tiny_fpn_xcit.py'
    cfg.write_text(TINY.format(base=BASE, root=str(root),
                               classes=SEG_CLASSES,
                               palette=[tuple(c) for c in SEG_PALETTE]))
    return root, str(cfg)


@pytest.fixture(scope='module')
def trained(tiny, tmp_path_factory):
    _, cfg = tiny
    work = tmp_path_factory.mktemp('ade_work')
    _, out, seconds = run_tool(
        ['tools/dist_train.sh', cfg, '2', '--work-dir', str(work)])
    print(f'tiny distributed segmentation training: {seconds:.1f} s')
    return work, out


def _miou(out, mode):
    found = [m.group(2) for m in MIOU.finditer(out) if m.group(1) == mode]
    assert found, f'no {mode} mIoU line in the output:\n{out[-3000:]}'
    value = float(found[-1])
    assert 0 <= value <= 100
    print(f'{mode} mIoU: {value}')
    return value


def test_distributed_training_writes_a_checkpoint(trained):
    work, out = trained
    assert 'distributed on the CPU with gloo, 2 processes' in out
    assert 'Iter(train) [4/4]' in out
    _miou(out, 'val')  # IoUMetric ran at the end of training
    assert osp.isfile(work / 'iter_2.pth') and osp.isfile(work / 'iter_4.pth')
    ckpt = load_checkpoint_file(str(work / 'iter_4.pth'))
    assert ckpt['meta']['iter'] == 4
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == SEG_CLASSES
    state = ckpt['state_dict']
    assert state['decode_head.conv_seg.weight'].shape[0] == 4
    assert any(k.startswith('backbone.blocks.3.attn.') for k in state)
    assert not any(k.startswith('module.') for k in state)


def test_distributed_test_prints_miou(tiny, trained, tmp_path):
    _, cfg = tiny
    work, _ = trained
    _, out, seconds = run_tool([
        'tools/dist_test.sh', cfg, str(work / 'iter_4.pth'), '2',
        '--work-dir', str(tmp_path)
    ])
    print(f'tiny distributed segmentation test: {seconds:.1f} s')
    _miou(out, 'test')
    assert 'Iter(test) [2/2]' in out  # 4 images over 2 processes
    # mmseg's per-class table, with the data's class names
    assert re.search(r'\|\s+triangle\s+\|\s+[\d.]+\s+\|', out)


def test_tta_prints_miou(tiny, trained, tmp_path):
    _, cfg = tiny
    work, _ = trained
    _, out, seconds = run_tool([
        'tools/test.py', cfg, str(work / 'iter_4.pth'), '--work-dir',
        str(tmp_path), '--tta'
    ])
    print(f'tiny segmentation test with TTA: {seconds:.1f} s')
    assert "type='SegTTAModel'" in out
    assert 'TestTimeAug' in out
    _miou(out, 'test')


def test_out_and_show_dir(tiny, trained, tmp_path):
    _, cfg = tiny
    work, _ = trained
    preds = tmp_path / 'preds'
    _, out, _ = run_tool([
        'tools/test.py', cfg, str(work / 'iter_4.pth'), '--work-dir',
        str(tmp_path / 'work'), '--out', str(preds), '--show-dir', 'shows'
    ])
    _miou(out, 'test')
    maps = sorted(preds.glob('*.png'))
    assert [p.name for p in maps] == [f'val_{i:05d}.png' for i in range(4)]
    from PIL import Image
    labels = np.array(Image.open(maps[0]))
    # saved in the dataset's own numbering: 1..4 (0 stays "ignored")
    assert labels.shape == (64, 64) and labels.min() >= 1
    assert labels.max() <= 4
    # drawn predictions inside the work dir, not the current directory
    drawn = list((tmp_path / 'work' / 'shows').rglob('*.png'))
    assert len(drawn) == 4
    assert not osp.exists(osp.join(REPO_ROOT, 'shows'))


def test_external_config_inherits_mmseg_base(tiny, tmp_path):
    root, _ = tiny
    cfg = tmp_path / 'my_upernet_xcit.py'
    cfg.write_text(f"""
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)
data_root = {str(root)!r}
metainfo = dict(classes={SEG_CLASSES!r})
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True, type='XCiT', arch='nano-12', patch_size=16,
        norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[128] * 4, channels=64, num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=128, channels=32, num_classes=4, norm_cfg=norm_cfg))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(
        type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
        img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='RandomCrop', crop_size=crop_size),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackSegInputs')
        ]))
train_cfg = dict(max_iters=1, val_interval=100)
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
""")
    work = tmp_path / 'work'
    _, out, _ = run_tool(['tools/train.py', str(cfg), '--work-dir',
                          str(work)])
    assert 'Iter(train) [1/1]' in out
    assert re.search(r'decode\.loss_ce: [\d.]+\s+decode\.acc_seg: [\d.]+\s+'
                     r'aux\.loss_ce: [\d.]+', out)
    ckpt = load_checkpoint_file(str(work / 'iter_1.pth'))
    assert ckpt['state_dict'][
        'backbone.blocks.11.attn.temperature'].shape == (4, 1, 1)


def _to_authors_name(key):
    key = key.replace('backbone.pos_embed.', 'backbone.pos_embeder.')
    m = re.match(r'backbone\.adapter\.levels\.(\d)\.(.+)', key)
    if m:
        key = f'backbone.fpn{int(m.group(1)) + 1}.{m.group(2)}'
    return key


@pytest.mark.parametrize('patch', [16, 8])
def test_authors_ade20k_checkpoint_converts_and_loads(patch, tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from tests.config_utils import to_bn

    cfg = Config.fromfile(osp.join(
        REPO_ROOT, f'configs/ade20k/upernet_xcit_t12_p{patch}_160k.py'))
    model_cfg = to_bn(cfg.model)
    model_cfg.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(model_cfg)
    gen = torch.Generator().manual_seed(patch)
    authors = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=gen)
        authors[_to_authors_name(k)] = v
    assert any(k.startswith('backbone.fpn1.') for k in authors)
    assert any(k.startswith('backbone.pos_embeder.') for k in authors)
    assert any(k.startswith('auxiliary_head.') for k in authors)
    src = tmp_path / 'authors_upernet_ade20k.pth'
    torch.save({'state_dict': authors,
                'meta': {'CLASSES': ('wall', 'building'),
                         'PALETTE': [[120, 120, 120], [180, 120, 120]],
                         'mmseg_version': '0.11.0'}}, src)
    dst = tmp_path / 'converted.pth'
    _, out, _ = run_tool(['tools/model_converters/xcit2mm.py', str(src),
                          str(dst)])
    assert 'authors-dense layout, whole model' in out
    converted = load_checkpoint_file(str(dst))
    assert converted['meta']['CLASSES'] == ('wall', 'building')
    fresh = MODELS.build(model_cfg)
    result = fresh.load_state_dict(converted['state_dict'], strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, authors[_to_authors_name(k)]), k
