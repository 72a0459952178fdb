"""Stock configs and upstream tools work unchanged with XCiT.

mmdet's and mmseg's own tools, from the installed packages
(``<pkg>/.mim/tools``), run in subprocesses as a user would run them, on a
tiny generated shapes dataset (64 x 64 images) and tiny models for 2
iterations:

- stock mmdet Mask R-CNN and stock mmseg UperNet configs with ``XCiT``
  swapped in by a small config that inherits them (``train.py``,
  ``test.py``; mmseg's ``model.pretrained=PATH`` through ``--cfg-options``);
- our COCO and ADE20k configs through the upstream ``train.py`` (COCO with
  the documented CPU override ``optim_wrapper.type=AutoAmpOptimWrapper``);
- mmdet's ``get_flops.py`` (XCA's einsums counted), our
  ``tools/analysis/get_flops.py`` for mmseg (whose own one is broken);
- ``DetInferencer`` / ``MMSegInferencer``, ``publish_model.py`` after
  ``import xcit_mm``, mmseg's ``browse_dataset.py`` path, and ``mim train`` /
  ``mim test``.

The known upstream breaks the README lists are asserted too, so that its
notes stay true: mmseg's ``get_flops.py`` and ``browse_dataset.py`` fail,
and plain ``torch.load`` (``publish_model.py``) without xcit_mm refuses
checkpoints that hold mmengine's message hub.

Self-contained: the module's fixtures generate the data and run the few
trainings once (module scope); each test reads their outputs.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PY = sys.executable
MIM = osp.join(osp.dirname(PY), 'mim')

CLASSES = ('circle', 'rectangle', 'triangle')  # ShapesDataset.METAINFO
SEG_CLASSES = ('background', ) + CLASSES  # ShapesSegDataset.METAINFO
PALETTE = [(220, 20, 60), (0, 130, 200), (255, 180, 0)]
SEG_PALETTE = [(120, 120, 120)] + PALETTE

# The tiny backbone of the stock-config runs (the README's example).
TINY_ARCH = dict(embed_dims=64, depth=4, num_heads=4)


def _tools(package):
    root = importlib.util.find_spec(package).submodule_search_locations[0]
    return osp.join(root, '.mim', 'tools')


MMDET_TOOLS = _tools('mmdet')
MMSEG_TOOLS = _tools('mmseg')


def run(args, cwd, timeout=300, check=True):
    """Runs ``args`` (a command line) in a subprocess with one thread;
    returns its combined output (raises with the tail on failure)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
    env.pop('PYTHONPATH', None)  # xcit_mm only as installed in the venv
    start = time.time()
    proc = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env,
                          text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    out = proc.stdout
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(map(str, args))} failed ({proc.returncode}, '
            f'{time.time() - start:.0f} s):\n{out[-8000:]}')
    return out if check else (proc.returncode, out)


def write_config(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        path = f.read().strip()
    assert osp.isfile(path), path
    return path


# --------------------------------------------------------------------------
# Configs (written into the module's temporary directory)
# --------------------------------------------------------------------------
# The parts shared by both detection configs: shapes data at 64 x 64, no
# workers, 1 epoch of 2 batches of 4, no validation while training.
DET_DATA = """
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=(
            'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
    ]
    train_dataloader = dict(
        batch_size=4, num_workers=0, persistent_workers=False,
        dataset=dict(
            {dataset}data_root=data_root,
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'), pipeline=train_pipeline))
    val_dataloader = dict(
        batch_size=4, num_workers=0, persistent_workers=False,
        dataset=dict(
            {dataset}data_root=data_root,
            ann_file='annotations/instances_val.json',
            data_prefix=dict(img='val/'), pipeline=test_pipeline))
    test_dataloader = val_dataloader
    val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
    test_evaluator = val_evaluator
    train_cfg = dict(max_epochs=1, val_begin=2)
    default_hooks = dict(logger=dict(interval=1))
    randomness = dict(seed=0)
"""

# Narrower FPN and heads, for the test's speed only.
TINY_HEADS = """
        neck=dict(in_channels=[{width}] * 4, out_channels=64),
        rpn_head=dict(in_channels=64, feat_channels=64),
        roi_head=dict(
            bbox_roi_extractor=dict(out_channels=64),
            bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=3),
            mask_roi_extractor=dict(out_channels=64),
            mask_head=dict(in_channels=64, conv_out_channels=64,
                           num_classes=3)))
"""

# Stock mmdet Mask R-CNN, XCiT swapped in (the README's example + data).
DET_STOCK = """
    _base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
    custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)
    model = dict(
        backbone=dict(
            _delete_=True,
            type='XCiT',
            arch=dict(embed_dims=64, depth=4, num_heads=4),
            patch_size=16,
            norm_cfg=dict(type='BN')),
""" + TINY_HEADS.replace('{width}', '64') + """
    data_root = {root!r}
    metainfo = dict(classes={classes!r}, palette={palette!r})
""" + DET_DATA.replace('{dataset}', 'metainfo=metainfo, ')

# Our COCO config, tiny: no Pretrained init, BN, shapes data, 2 iterations;
# its AmpOptimWrapper is overridden on the command line (CPU).
DET_OURS = """
    _base_ = {base!r}
    custom_imports = dict(
        imports=['xcit_mm', 'xcit_mm.datasets'], allow_failed_imports=False)
    model = dict(
        backbone=dict(
            init_cfg=None, norm_cfg=dict(type='BN', requires_grad=True)),
""" + TINY_HEADS.replace('{width}', '192') + """
    data_root = {root!r}
""" + DET_DATA.replace('{dataset}', "type='ShapesDataset', ")

SEG_DATA = """
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    train_dataloader = dict(
        batch_size=4, num_workers=0, persistent_workers=False,
        dataset=dict(
            dataset,
            data_prefix=dict(img_path='images/training',
                             seg_map_path='annotations/training'),
            pipeline=train_pipeline))
    val_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False,
        dataset=dict(
            dataset,
            data_prefix=dict(img_path='images/validation',
                             seg_map_path='annotations/validation'),
            pipeline=test_pipeline))
    test_dataloader = val_dataloader
    train_cfg = dict(max_iters=2, val_interval=100, val_begin=100)
    default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
    randomness = dict(seed=0)
"""

# Stock mmseg UperNet, XCiT swapped in (the README's example + data).
SEG_STOCK = """
    _base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
    custom_imports = dict(imports=['xcit_mm'], allow_failed_imports=False)
    norm_cfg = dict(type='BN', requires_grad=True)
    model = dict(
        data_preprocessor=dict(size=(64, 64)),
        pretrained=None,  # the stock ResNet's; or an XCiT checkpoint
        backbone=dict(
            _delete_=True,
            type='XCiT',
            arch=dict(embed_dims=64, depth=4, num_heads=4),
            patch_size=16,
            norm_cfg=norm_cfg),
        decode_head=dict(
            in_channels=[64] * 4, channels=64, num_classes=4,
            norm_cfg=norm_cfg),
        auxiliary_head=dict(
            in_channels=64, channels=32, num_classes=4, norm_cfg=norm_cfg))

    data_root = {root!r}
    dataset = dict(
        type='BaseSegDataset', data_root=data_root,
        metainfo=dict(classes={classes!r}, palette={palette!r}),
        img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=True)
""" + SEG_DATA

# Our ADE20k config, tiny: no Pretrained init, BN, shapes data, 2 iterations.
SEG_OURS = """
    _base_ = {base!r}
    custom_imports = dict(
        imports=['xcit_mm', 'xcit_mm.datasets'], allow_failed_imports=False)
    norm_cfg = dict(type='BN', requires_grad=True)
    model = dict(
        data_preprocessor=dict(size=(64, 64)),
        backbone=dict(init_cfg=None, norm_cfg=norm_cfg),
        decode_head=dict(num_classes=4, norm_cfg=norm_cfg))
    data_root = {root!r}
    dataset = dict(type='ShapesSegDataset', data_root=data_root)
""" + SEG_DATA


# --------------------------------------------------------------------------
# Module fixtures: the data, a backbone checkpoint, the trainings (one
# pytest-xdist worker runs this module, so each of them runs once)
# --------------------------------------------------------------------------
pytestmark = pytest.mark.xdist_group('upstream')


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp('upstream')


@pytest.fixture(scope='module')
def data_root(tmp):
    sys.path.insert(0, osp.join(REPO, 'tools'))
    try:
        import shapes_data
    finally:
        sys.path.pop(0)
    root = tmp / 'shapes'
    shapes_data.generate(str(root), num_train=8, num_val=4, size=64, seed=0,
                         progress=False)
    return str(root) + '/'


@pytest.fixture(scope='module')
def configs(tmp, data_root):
    kw = dict(root=data_root)
    return dict(
        det_stock=write_config(
            tmp / 'det_stock.py',
            DET_STOCK.format(classes=CLASSES, palette=PALETTE, **kw)),
        seg_stock=write_config(
            tmp / 'seg_stock.py',
            SEG_STOCK.format(classes=SEG_CLASSES, palette=SEG_PALETTE, **kw)),
        det_ours=write_config(
            tmp / 'det_ours.py',
            DET_OURS.format(base=osp.join(
                REPO, 'configs/coco/mask_rcnn_xcit_t12_p16.py'), **kw)),
        seg_ours=write_config(
            tmp / 'seg_ours.py',
            SEG_OURS.format(base=osp.join(
                REPO, 'configs/ade20k/fpn_xcit_t12_p16_80k.py'), **kw)))


@pytest.fixture(scope='module')
def xcit_checkpoint(tmp):
    """A checkpoint of the tiny backbone (its state dict, as a user would
    save one), with a recognisable layer scale."""
    from xcit_mm import XCiT
    torch.manual_seed(0)
    model = XCiT(arch=TINY_ARCH, patch_size=16, norm_cfg=dict(type='BN'))
    state = model.state_dict()
    state['blocks.0.gamma1'] = torch.full_like(state['blocks.0.gamma1'], 0.37)
    path = tmp / 'xcit_tiny_backbone.pth'
    torch.save(dict(state_dict=state), path)
    return str(path)


@pytest.fixture(scope='module')
def det_stock_run(tmp, configs):
    work_dir = tmp / 'det_stock'
    out = run([PY, osp.join(MMDET_TOOLS, 'train.py'), configs['det_stock'],
               '--work-dir', work_dir], cwd=tmp)
    return dict(config=configs['det_stock'], work_dir=str(work_dir),
                checkpoint=last_checkpoint(work_dir), out=out)


@pytest.fixture(scope='module')
def seg_stock_run(tmp, configs, xcit_checkpoint):
    work_dir = tmp / 'seg_stock'
    out = run([PY, osp.join(MMSEG_TOOLS, 'train.py'), configs['seg_stock'],
               '--work-dir', work_dir, '--cfg-options',
               f'model.pretrained={xcit_checkpoint}'], cwd=tmp)
    return dict(config=configs['seg_stock'], work_dir=str(work_dir),
                checkpoint=last_checkpoint(work_dir), out=out)


@pytest.fixture(scope='module')
def det_ours_run(tmp, configs):
    """Our COCO config through mmdet's train.py with the documented CPU
    override (bf16 autocast where the CPU has it, mmcv's NMS and RoIAlign
    then in float32)."""
    args = [PY, osp.join(MMDET_TOOLS, 'train.py'), configs['det_ours'],
            '--cfg-options', 'optim_wrapper.type=AutoAmpOptimWrapper']
    work_dir = tmp / 'det_ours'
    out = run(args + ['--work-dir', work_dir], cwd=tmp)
    return dict(config=configs['det_ours'], work_dir=str(work_dir),
                checkpoint=last_checkpoint(work_dir), out=out)


def iterations(out, total):
    """The iterations the training log shows (logger interval 1)."""
    seen = re.findall(rf'\[\s*(\d+)/{total}\]', out)
    return sorted({int(i) for i in seen})


# --------------------------------------------------------------------------
# Stock configs with XCiT: train.py + test.py
# --------------------------------------------------------------------------
def test_mmdet_train_test_stock_mask_rcnn(tmp, det_stock_run):
    out = det_stock_run['out']
    assert iterations(out, 2) == [1, 2], out[-3000:]
    assert 'loss_mask' in out and 'XCiT' in out
    test = run([PY, osp.join(MMDET_TOOLS, 'test.py'), det_stock_run['config'],
                det_stock_run['checkpoint'], '--work-dir',
                tmp / 'det_stock_test'], cwd=tmp)
    assert re.search(r'coco/bbox_mAP: \d', test), test[-3000:]
    assert re.search(r'coco/segm_mAP: \d', test), test[-3000:]


def test_mmseg_train_test_stock_upernet_pretrained(tmp, seg_stock_run,
                                                   xcit_checkpoint):
    out = seg_stock_run['out']
    assert iterations(out, 2) == [1, 2], out[-3000:]
    # model.pretrained reached the backbone (as mmseg does for its own),
    # and the backbone loaded every tensor of the checkpoint
    loaded = re.search(r'XCiT: loaded (\d+) of (\d+) tensors from (\S+)', out)
    assert loaded, out[-3000:]
    assert loaded.group(1) == loaded.group(2)
    assert loaded.group(3) == xcit_checkpoint
    state = torch.load(seg_stock_run['checkpoint'], map_location='cpu',
                       weights_only=False)['state_dict']
    gamma = state['backbone.blocks.0.gamma1']  # 0.37 before 2 SGD steps
    assert torch.allclose(gamma, torch.full_like(gamma, 0.37), atol=0.02)
    test = run([PY, osp.join(MMSEG_TOOLS, 'test.py'), seg_stock_run['config'],
                seg_stock_run['checkpoint'], '--work-dir',
                tmp / 'seg_stock_test'], cwd=tmp)
    assert re.search(r'mIoU: \d', test), test[-3000:]
    for name in SEG_CLASSES:  # the per-class table
        assert re.search(rf'\|\s*{name}\s*\|', test), test[-3000:]


# --------------------------------------------------------------------------
# Our configs through the upstream train.py
# --------------------------------------------------------------------------
def test_our_coco_config_upstream_train_cpu_override(det_ours_run):
    out = det_ours_run['out']
    assert iterations(out, 2) == [1, 2], out[-3000:]
    assert "type='AutoAmpOptimWrapper'" in out  # the config dump
    assert not re.search(r'loss: (nan|inf)', out)


def test_our_ade20k_config_upstream_train(tmp, configs):
    work_dir = tmp / 'seg_ours'
    out = run([PY, osp.join(MMSEG_TOOLS, 'train.py'), configs['seg_ours'],
               '--work-dir', work_dir], cwd=tmp)
    assert iterations(out, 2) == [1, 2], out[-3000:]
    last_checkpoint(work_dir)


# --------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------
def test_mmdet_get_flops_counts_xca(tmp, data_root):
    """mmdet's get_flops.py on the demo detector (RoIAlign from torchvision,
    imported by xcit_mm.datasets before the trace); XCA's einsums are
    counted, in the tool's run and by FlopAnalyzer on the backbone."""
    out = run([PY, osp.join(MMDET_TOOLS, 'analysis_tools/get_flops.py'),
               osp.join(REPO, 'configs/demo/mask_rcnn_xcit_n12_p8_shapes.py'),
               '--num-images', '1', '--cfg-options',
               f'val_dataloader.dataset.data_root={data_root}',
               'val_dataloader.num_workers=0',
               'val_dataloader.persistent_workers=False'], cwd=tmp)
    flops = re.search(r'Flops: ([\d.]+)G', out)
    assert flops and float(flops.group(1)) > 0, out[-3000:]
    assert 'Unsupported operator aten::einsum' not in out

    from mmengine.analysis import FlopAnalyzer

    from xcit_mm import XCiT
    model = XCiT(arch=TINY_ARCH, patch_size=16,
                 norm_cfg=dict(type='BN')).eval()
    analyzer = FlopAnalyzer(model, (torch.zeros(1, 3, 64, 64), ))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    by_op = analyzer.by_operator()
    assert 'aten::einsum' not in analyzer.unsupported_ops()
    # two einsums per block: q^T k and attn v, (B, heads, d, d) x N each
    d, n, depth = TINY_ARCH['embed_dims'] // TINY_ARCH['num_heads'], 16, 4
    # (mmengine counts einsums through numpy's einsum_path: within 0.1%)
    expected = 2 * depth * TINY_ARCH['embed_dims'] * d * n
    assert abs(by_op['einsum'] / expected - 1) < 1e-3, (by_op, expected)


def test_seg_get_flops_ours_and_mmseg_known_break(tmp):
    config = osp.join(REPO, 'configs/ade20k/fpn_xcit_t12_p16_80k.py')
    out = run([PY, osp.join(REPO, 'tools/analysis/get_flops.py'), config,
               '--shape', '64', '64'], cwd=tmp)
    gmacs = re.search(r'M parameters, ([\d.]+) GMACs', out)
    assert gmacs and float(gmacs.group(1)) > 0, out[-3000:]
    # mmseg 1.2.2's own tool fails for every model (the README says so)
    rc, out = run([PY, osp.join(MMSEG_TOOLS, 'analysis_tools/get_flops.py'),
                   config, '--shape', '64', '64'], cwd=tmp, check=False)
    assert rc != 0 and \
        '"input_shape" and "inputs" cannot be both set' in out, out[-3000:]


# --------------------------------------------------------------------------
# Inferencers, publish_model, browse_dataset
# --------------------------------------------------------------------------
# Records the labels a visualizer writes on the images (mmengine's
# draw_texts for mmdet, cv2.putText for mmseg), printed as "DRAWN a,b".
RECORD_DRAWN = """
import atexit, sys
import cv2
from mmengine.visualization import Visualizer
drawn = set()
put_text, draw_texts = cv2.putText, Visualizer.draw_texts
def record_put_text(img, text, *args, **kwargs):
    drawn.add(text)
    return put_text(img, text, *args, **kwargs)
def record_draw_texts(self, texts, *args, **kwargs):
    drawn.update([texts] if isinstance(texts, str) else texts)
    return draw_texts(self, texts, *args, **kwargs)
cv2.putText, Visualizer.draw_texts = record_put_text, record_draw_texts
atexit.register(lambda: print('DRAWN', '|'.join(sorted(drawn))))
"""

DET_INFER = RECORD_DRAWN + """
import json
from mmdet.apis import DetInferencer
config, weights, image, out_dir = sys.argv[1:]
inferencer = DetInferencer(model=config, weights=weights, device='cpu',
                           show_progress=False)
result = inferencer(image, out_dir=out_dir, return_vis=True,
                    no_save_pred=False, pred_score_thr=0.0)
print('RESULT', json.dumps(dict(
    classes=list(inferencer.visualizer.dataset_meta['classes']),
    model_classes=list(inferencer.model.dataset_meta['classes']),
    keys=sorted(result['predictions'][0]),
    vis=list(result['visualization'][0].shape))))
"""

SEG_INFER = RECORD_DRAWN + """
import json
from mmseg.apis import MMSegInferencer
config, weights, image, out_dir = sys.argv[1:]
inferencer = MMSegInferencer(model=config, weights=weights, device='cpu')
result = inferencer(image, out_dir=out_dir, return_vis=True)
print('RESULT', json.dumps(dict(
    classes=list(inferencer.visualizer.dataset_meta['classes']),
    model_classes=list(inferencer.model.dataset_meta['classes']),
    pred=list(result['predictions'].shape),
    vis=list(result['visualization'].shape))))
"""


def _printed(out, tag):
    found = re.search(rf'^{tag} (.*)$', out, re.M)
    assert found, out[-3000:]
    return found.group(1)


def _drawn_labels(out):
    """The class names among the texts drawn ('circle: 0.31' -> circle)."""
    texts = [t for t in _printed(out, 'DRAWN').split('|') if t]
    return {t.split(':')[0].strip() for t in texts}


def test_det_inferencer(tmp, data_root, det_stock_run):
    """DetInferencer on a checkpoint of the stock-config run: the class
    names (the config's metainfo, saved in the checkpoint) are the
    visualizer's and label the drawn boxes."""
    out_dir = tmp / 'det_infer'
    out = run([PY, '-c', DET_INFER, det_stock_run['config'],
               det_stock_run['checkpoint'], data_root + 'val/val_00000.png',
               out_dir], cwd=tmp)
    res = json.loads(_printed(out, 'RESULT'))
    assert res['classes'] == res['model_classes'] == list(CLASSES)
    assert {'labels', 'scores', 'bboxes', 'masks'} <= set(res['keys'])
    assert res['vis'] == [64, 64, 3]
    labels = _drawn_labels(out)
    assert labels and labels <= set(CLASSES), labels
    assert os.listdir(out_dir / 'vis') and os.listdir(out_dir / 'preds')


def test_mmseg_inferencer(tmp, data_root, seg_stock_run):
    out_dir = tmp / 'seg_infer'
    out = run([PY, '-c', SEG_INFER, seg_stock_run['config'],
               seg_stock_run['checkpoint'],
               data_root + 'images/validation/val_00000.png', out_dir],
              cwd=tmp)
    res = json.loads(_printed(out, 'RESULT'))
    assert res['classes'] == res['model_classes'] == list(SEG_CLASSES)
    assert res['pred'] == [64, 64] and res['vis'] == [64, 64, 3]
    labels = _drawn_labels(out)
    assert labels and labels <= set(SEG_CLASSES), labels
    assert os.listdir(out_dir / 'vis')


PUBLISH = """
import runpy, sys
tool = sys.argv[1]
sys.argv = sys.argv[1:]
{first}
runpy.run_path(tool, run_name='__main__')
print('XCIT_MM_IMPORTED', any(m == 'xcit_mm' for m in sys.modules))
"""


def _publish(tmp, tool, checkpoint, out, with_xcit_mm):
    script = PUBLISH.format(
        first='import xcit_mm' if with_xcit_mm else 'pass')
    return run([PY, '-c', script, tool, checkpoint, out], cwd=tmp,
               check=False)


def test_publish_model(tmp, det_ours_run, det_stock_run):
    """mmdet's publish_model.py (plain ``torch.load``, weights-only) reads
    our checkpoints in a process that has imported xcit_mm, as the README
    says (the weights-only allow-list); without it, stock and our files are
    refused alike (torch >= 2.6 refuses mmengine's message hub)."""
    out_dir = tmp / 'published'
    out_dir.mkdir()
    tool = osp.join(MMDET_TOOLS, 'model_converters/publish_model.py')
    rc, out = _publish(tmp, tool, det_ours_run['checkpoint'],
                       out_dir / 'xcit_det.pth', with_xcit_mm=True)
    assert rc == 0 and 'XCIT_MM_IMPORTED True' in out, out[-3000:]
    path = _printed(out, r'.*The published model is saved at').rstrip('.')
    for _ in range(100):  # the tool renames with a `mv` it does not wait for
        if osp.isfile(path):
            break
        time.sleep(0.1)
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert sorted(ckpt) == ['meta', 'state_dict']
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == CLASSES
    assert any(k.startswith('backbone.blocks.') for k in ckpt['state_dict'])
    for run_dir in (det_ours_run, det_stock_run):
        rc, out = _publish(tmp, tool, run_dir['checkpoint'],
                           out_dir / 'plain.pth', with_xcit_mm=False)
        assert rc != 0 and 'Weights only load failed' in out, out[-3000:]


# mmseg's browse_dataset.py, step by step, with the image made C-contiguous
# (see test_mmseg_browse_dataset_class_names).
BROWSE_PATH = RECORD_DRAWN + """
import os.path as osp
import numpy as np
from mmengine.config import Config
from mmseg.registry import DATASETS, VISUALIZERS
from mmseg.utils import register_all_modules
config, out_dir, root = sys.argv[1:]
cfg = Config.fromfile(config)
cfg.merge_from_dict(dict(train_dataloader=dict(dataset=dict(data_root=root))))
register_all_modules()
dataset = DATASETS.build(cfg.train_dataloader.dataset)
visualizer = VISUALIZERS.build(cfg.visualizer)
visualizer.dataset_meta = dataset.metainfo
for item in dataset:
    img = item['inputs'].permute(1, 2, 0).numpy()[..., [2, 1, 0]]
    img = np.ascontiguousarray(img)  # the one change
    name = osp.basename(item['data_samples'].img_path)
    visualizer.add_datasample(
        name=name, image=img, data_sample=item['data_samples'].numpy(),
        draw_gt=True, draw_pred=False, out_file=osp.join(out_dir, name),
        show=False)
"""


def test_mmseg_browse_dataset_class_names(tmp, data_root):
    """The demo seg config's dataset (ShapesSegDataset) gives mmseg's
    visualizer its class names, through browse_dataset.py's own steps.
    The tool itself fails in this stack before drawing anything, for any
    dataset: it hands the visualizer a non-contiguous image, which OpenCV
    4.13 refuses to draw the labels on (an mmseg 1.2.2 bug, kept true
    here)."""
    config = osp.join(REPO, 'configs/demo/fpn_xcit_n12_p8_shapes.py')
    out_dir = tmp / 'browse'
    tool = osp.join(MMSEG_TOOLS, 'analysis_tools/browse_dataset.py')
    rc, out = run([PY, tool, config, '--output-dir', out_dir, '--not-show',
                   '--cfg-options',
                   f'train_dataloader.dataset.data_root={data_root}'],
                  cwd=tmp, check=False)
    assert rc != 0 and 'Layout of the output array img is incompatible' \
        in out, out[-3000:]
    out = run([PY, '-c', BROWSE_PATH, config, out_dir, data_root], cwd=tmp)
    assert len(os.listdir(out_dir)) == 8
    labels = _drawn_labels(out)
    # the labels drawn are ShapesSegDataset's class names
    assert 'background' in labels and labels & set(CLASSES), labels
    assert labels <= set(SEG_CLASSES), labels


# --------------------------------------------------------------------------
# openmim
# --------------------------------------------------------------------------
PLAIN_LOAD = """
import sys, torch
import xcit_mm  # its weights-only allow-list (README)
ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
print('LOADED', sorted(ckpt))
"""


@pytest.mark.skipif(not osp.isfile(MIM), reason='openmim is not installed')
def test_mim_train_test_mmdet(tmp, configs):
    """``mim train mmdet`` / ``mim test mmdet`` on the stock-config file,
    with the checkpoint hook of xcit_mm; plain weights-only ``torch.load``
    reads its checkpoint after ``import xcit_mm``."""
    config = write_config(tmp / 'det_stock_atomic.py', f"""
        _base_ = {configs['det_stock']!r}
        default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
    """)
    work_dir = tmp / 'mim_det'
    out = run([MIM, 'train', 'mmdet', config, '--work-dir', work_dir],
              cwd=tmp)
    assert iterations(out, 2) == [1, 2], out[-3000:]
    checkpoint = last_checkpoint(work_dir)
    assert 'state_dict' in _printed(
        run([PY, '-c', PLAIN_LOAD, checkpoint], cwd=tmp), 'LOADED')
    test = run([MIM, 'test', 'mmdet', config, '--checkpoint', checkpoint,
                '--work-dir', tmp / 'mim_det_test'], cwd=tmp)
    assert re.search(r'coco/bbox_mAP: \d', test), test[-3000:]
