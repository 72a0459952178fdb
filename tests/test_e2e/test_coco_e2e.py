"""COCO instance segmentation end to end: the real scripts, 2 processes."""
import os.path as osp
import re

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.e2e_utils import run_tool
from xcit_mm.datasets.shapes import generate
from xcit_mm.weights import load_checkpoint_file

DEMO = osp.join(REPO_ROOT, 'configs/demo/mask_rcnn_xcit_n12_p8_shapes.py')

TINY = """
_base_ = [{base!r}]
data_root = {root!r}
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, depth=4, num_heads=2),
        with_cp=True),  # gradient checkpointing under DDP
    neck=dict(in_channels=[64] * 4))
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader = dict(loader, dataset=dict(data_root=data_root))
val_dataloader = dict(loader, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=4, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=2, max_keep_ckpts=3))
"""


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    generate(str(root), num_train=8, num_val=4, size=64, seed=1,
             progress=False)
    cfg = root / 'tiny_mask_rcnn.py'
    cfg.write_text(TINY.format(base=DEMO, root=str(root) + '/'))
    return root, str(cfg)


@pytest.fixture(scope='module')
def trained(tiny, tmp_path_factory):
    root, cfg = tiny
    work = tmp_path_factory.mktemp('work')
    _, out, seconds = run_tool(
        ['tools/dist_train.sh', cfg, '2', '--work-dir', str(work)])
    print(f'tiny distributed training: {seconds:.1f} s')
    return work, out


def _lr_at(log, iteration):
    m = re.search(rf'Iter\(train\) \[\s*{iteration}/\d+\].*? lr: ([\d.e+-]+)',
                  log)
    assert m, f'no log line for iteration {iteration}'
    return float(m.group(1))


def test_distributed_training_writes_checkpoints(trained):
    work, out = trained
    assert 'distributed on the CPU with gloo, 2 processes' in out
    assert osp.isfile(work / 'iter_2.pth') and osp.isfile(work / 'iter_4.pth')
    assert re.search(r'coco/bbox_mAP: [\d.]+', out)  # validation ran
    ckpt = load_checkpoint_file(str(work / 'iter_4.pth'))
    assert ckpt['meta']['iter'] == 4
    assert any(k.startswith('backbone.blocks.0.attn') for k in
               ckpt['state_dict'])


def test_distributed_test_prints_box_and_mask_ap(tiny, trained,
                                                 tmp_path):
    _, cfg = tiny
    work, _ = trained
    _, out, seconds = run_tool([
        'tools/dist_test.sh', cfg, str(work / 'iter_4.pth'), '2',
        '--work-dir', str(tmp_path)
    ])
    print(f'tiny distributed test: {seconds:.1f} s')
    assert re.search(r'coco/bbox_mAP: [\d.]+', out)
    assert re.search(r'coco/segm_mAP: [\d.]+', out)
    # the real COCO evaluator's summary table
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in out


def test_resume_continues_iteration_optimizer_and_schedule(tiny, trained,
                                                           tmp_path):
    _, cfg = tiny
    work, first_log = trained
    resumed = tmp_path / 'resumed'
    _, out, _ = run_tool([
        'tools/train.py', cfg, '--work-dir', str(resumed), '--resume',
        str(work / 'iter_2.pth'), '--cfg-options',
        'train_dataloader.batch_size=4'  # one process, same global batch
    ])
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'Iter(train) [1/4]' not in out and 'Iter(train) [3/4]' in out
    assert _lr_at(out, 3) == pytest.approx(_lr_at(first_log, 3))
    ckpt = load_checkpoint_file(str(resumed / 'iter_4.pth'))
    assert ckpt['meta']['iter'] == 4
    steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert steps == {4}  # AdamW state carried over from iteration 2


def test_test_tool_out_and_show_dir(tiny, trained, tmp_path):
    _, cfg = tiny
    work, _ = trained
    out_pkl = tmp_path / 'preds.pkl'
    _, out, _ = run_tool([
        'tools/test.py', cfg, str(work / 'iter_4.pth'), '--work-dir',
        str(tmp_path), '--out', str(out_pkl), '--show-dir', 'shows'
    ])
    assert re.search(r'coco/segm_mAP: [\d.]+', out)
    assert out_pkl.is_file()
    assert len(list(tmp_path.glob('*/shows/*.png'))) == 4
    # mmdet cannot merge masks across augmentations: --tta says so
    code, out, _ = run_tool([
        'tools/test.py', cfg, str(work / 'iter_4.pth'), '--work-dir',
        str(tmp_path), '--tta'
    ], check=False)
    assert code != 0 and 'cannot merge instance masks' in out


def test_external_config_inherits_mmdet_base(tiny, tmp_path):
    root, _ = tiny
    cfg = tmp_path / 'my_xcit_mask_rcnn.py'
    cfg.write_text(f"""
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)
data_root = {str(root) + '/'!r}
metainfo = dict(classes=('circle', 'rectangle', 'triangle'))
model = dict(
    backbone=dict(_delete_=True, type='XCiT', arch='nano-12', patch_size=16,
                  norm_cfg=dict(type='BN')),
    neck=dict(in_channels=[128] * 4),
    roi_head=dict(bbox_head=dict(num_classes=3),
                  mask_head=dict(num_classes=3)))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'),
                 pipeline=[
                     dict(type='LoadImageFromFile'),
                     dict(type='LoadAnnotations', with_bbox=True,
                          with_mask=True),
                     dict(type='Resize', scale=(96, 96), keep_ratio=True),
                     dict(type='PackDetInputs')]))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1,
                 val_interval=100)
param_scheduler = []
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1),
                     logger=dict(interval=1))
""")
    _, out, _ = run_tool(['tools/train.py', str(cfg), '--work-dir',
                          str(tmp_path / 'work')])
    assert re.search(r'\(train\).*\[1/\d+\].*loss_mask', out)
    assert (tmp_path / 'work' / 'iter_1.pth').is_file()


def test_authors_coco_checkpoint_converts_with_no_missing_keys(tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from tests.config_utils import to_bn

    cfg = to_bn(Config.fromfile(
        osp.join(REPO_ROOT, 'configs/coco/mask_rcnn_xcit_t12_p16.py')))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    authors = {}
    for k, v in model.state_dict().items():
        k = k.replace('backbone.pos_embed.', 'backbone.pos_embeder.')
        m = re.match(r'backbone\.adapter\.levels\.(\d)\.(.+)', k)
        if m:
            k = f'backbone.fpn{int(m.group(1)) + 1}.{m.group(2)}'
        authors[k] = torch.randn_like(v.float()).to(v.dtype) \
            if v.is_floating_point() else v
    authors_path = tmp_path / 'authors_maskrcnn.pth'
    torch.save({'state_dict': authors,
                'meta': {'CLASSES': ('person', ), 'mmdet_version': '2.11.0'}},
               authors_path)
    converted = tmp_path / 'converted.pth'
    _, out, _ = run_tool(['tools/model_converters/xcit2mm.py',
                          str(authors_path), str(converted)])
    assert 'authors-dense layout, whole model' in out
    fresh = MODELS.build(cfg.model)
    load_checkpoint(fresh, str(converted), strict=True)  # raises on any
    for k, v in fresh.state_dict().items():
        src = k.replace('backbone.pos_embed.', 'backbone.pos_embeder.')
        m = re.match(r'backbone\.adapter\.levels\.(\d)\.(.+)', src)
        if m:
            src = f'backbone.fpn{int(m.group(1)) + 1}.{m.group(2)}'
        assert torch.equal(v, authors[src]), k


@pytest.mark.parametrize('override, message', [
    ('train_dataloader.dataset.data_root=/nonexistent/coco/',
     "data_root not found: '/nonexistent/coco/'"),
    ('train_dataloader.dataset.ann_file=annotations/missing.json',
     'Annotation file not found'),
])
def test_missing_data_is_named(tiny, override, message, tmp_path):
    _, cfg = tiny
    code, out, _ = run_tool(['tools/train.py', cfg, '--work-dir',
                             str(tmp_path), '--cfg-options', override],
                            check=False)
    assert code != 0 and message in out


def test_unknown_config_name_says_so(tmp_path):
    code, out, _ = run_tool(['tools/train.py', 'configs/coco/mask_rcnn_xcit_s13_p8.py'],
                            check=False)
    assert code != 0
    assert "Config file not found: 'configs/coco/mask_rcnn_xcit_s13_p8.py'" \
        in out
    assert 'mask_rcnn_xcit_s12_p8.py' in out  # suggests the real ones
