"""Nothing lost, nothing silent: what a user gets from the tools when the
checkpoint, the images or the config are wrong. Each case runs the real
tool in a subprocess on the tiny generated data and checks the exit code
and that the message names the culprit (no bare traceback)."""
import os.path as osp
import re
import shutil

import pytest
import torch
from PIL import Image

from .utils import (DET_CLASSES, build_model, metrics, run_tool)


def _no_traceback(res):
    assert 'Traceback (most recent call last)' not in res.out + res.err


def _resnet18_mask_rcnn(path):
    """mmdet's own Mask R-CNN with a ResNet-18, 3 classes: its state dict
    saved with torch.save, as a user might have one lying around."""
    import mmdet
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'configs', 'mask_rcnn',
        'mask-rcnn_r50_fpn_1x_coco.py'))
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    cfg.model.roi_head.bbox_head.num_classes = len(DET_CLASSES)
    cfg.model.roi_head.mask_head.num_classes = len(DET_CLASSES)
    init_default_scope('mmdet')
    torch.save(MODELS.build(cfg.model).state_dict(), path)


@pytest.fixture(scope='module')
def foreign_checkpoints(tmp_path_factory, make_config):
    """Checkpoints of other architectures: a ResNet-18 Mask R-CNN (for the
    COCO config) and a wider XCiT Semantic FPN (for the ADE20k one)."""
    folder = tmp_path_factory.mktemp('foreign')
    resnet = folder / 'mask_rcnn_r18.pth'
    _resnet18_mask_rcnn(resnet)
    wide = make_config('ade', 'ade_wide_xcit',
                       arch=dict(embed_dims=96, depth=4, num_heads=2))
    xcit96 = folder / 'fpn_xcit_96.pth'
    torch.save({'state_dict': build_model(wide).state_dict(), 'meta': {}},
               xcit96)
    return dict(coco=str(resnet), ade=str(xcit96))


# what the strict load names, kind by kind: the ResNet's tensors the model
# lacks and the XCiT's it misses; the wider XCiT's tensors of other shapes
# (each with both shapes)
NAMED = dict(
    coco=(r'\d+ tensors of the model are not in the checkpoint: '
          r'backbone\.blocks\.\* \(\d+\)',
          r'\d+ tensors of the checkpoint are not in the model: .*'
          r'backbone\.layer1\.\* \(\d+\)',
          r'backbone\.conv1'),
    ade=(r'\d+ tensors have another shape \(backbone\.blocks\.\* \(\d+\)',
         r'backbone\.[\w.]+: \(\d+[\d, ]*\) in the checkpoint, '
         r'\(\d+[\d, ]*\) in the model'))


def test_checkpoint_of_another_architecture_is_refused(
        task, tiny, foreign_checkpoints, tmp_path):
    ckpt = foreign_checkpoints[task]
    res = run_tool(['tools/test.py', tiny, ckpt, '--work-dir', tmp_path],
                   check=False)
    assert res.code != 0
    assert f'error: {ckpt} does not fit the model of {tiny}' in res.out
    for pattern in NAMED[task]:
        assert re.search(pattern, res.out), pattern
    assert '--allow-partial-load' in res.out
    assert 'Iter(test)' not in res.out  # nothing evaluated
    _no_traceback(res)


def test_allow_partial_load_evaluates_anyway(ade_config, foreign_checkpoints,
                                             tmp_path):
    res = run_tool([
        'tools/test.py', ade_config, foreign_checkpoints['ade'],
        '--work-dir', tmp_path, '--allow-partial-load'
    ])
    # still said, and evaluated
    assert 'does not fit the model' in res.out
    assert '--allow-partial-load: evaluating anyway' in res.out
    assert re.search(NAMED['ade'][0], res.out)
    metrics(res.out, 'ade')


def test_text_file_named_pth_is_named(coco_config, tmp_path):
    bad = tmp_path / 'model.pth'
    bad.write_text('this is not a checkpoint\n')
    res = run_tool(['tools/test.py', coco_config, bad, '--work-dir',
                    tmp_path / 'work'], check=False)
    assert res.code != 0
    assert f"error: Cannot read '{bad}'" in res.out
    assert 'not a PyTorch checkpoint' in res.out
    _no_traceback(res)


@pytest.fixture(scope='module')
def infer_folder(demo, tmp_path_factory):
    """tools/infer.py with the demo's detector on a folder of a good
    held-out image, a 24x24 one, a 1x4000 one and an empty .png."""
    folder = tmp_path_factory.mktemp('images')
    good = osp.join(demo.root, 'data', 'val', 'val_00000.png')
    shutil.copy(good, folder / 'good.png')
    with Image.open(good) as img:
        img.resize((24, 24)).save(folder / 'small.png')
    Image.new('RGB', (1, 4000), (30, 90, 200)).save(folder / 'thin.png')
    (folder / 'empty.png').write_bytes(b'')
    out = tmp_path_factory.mktemp('infer_out')
    det = demo.metrics('det')
    res = run_tool(['tools/infer.py', det['config'], det['checkpoint'],
                    folder, '--out', out, '--score-thr', '0.0'],
                   check=False, split=True)
    return folder, out, res


@pytest.mark.xdist_group('demo')  # with the demo's tests
def test_infer_skips_bad_images_by_name_and_does_the_rest(infer_folder):
    folder, out, res = infer_folder
    assert res.code == 1, res.out + res.err
    assert f'skipped {folder / "thin.png"}: 1x4000 pixels' in res.err
    assert f'skipped {folder / "empty.png"}: the file is empty' in res.err
    assert 'good.png' not in res.err and 'small.png' not in res.err
    assert sorted(p.name for p in (out / 'vis').iterdir()) == [
        'good.png', 'small.png']
    with Image.open(out / 'vis' / 'good.png') as img, \
            Image.open(folder / 'good.png') as src:
        assert img.size == src.size
    assert (out / 'preds' / 'good.json').is_file()
    assert 'wrote 2 overlays' in res.out
    _no_traceback(res)


@pytest.mark.xdist_group('demo')  # with the demo's tests
def test_infer_names_a_missing_input(demo, tmp_path):
    det = demo.metrics('det')
    res = run_tool(['tools/infer.py', det['config'], det['checkpoint'],
                    tmp_path / 'nope.png', '--out', tmp_path], check=False)
    assert res.code != 0
    assert f"no such image or folder: '{tmp_path / 'nope.png'}'" in res.out
    _no_traceback(res)


@pytest.mark.xdist_group('demo')  # with the demo's tests
def test_infer_on_an_image_smaller_than_the_pooled_levels(
        infer_folder, demo, tmp_path):
    """24x24 px: the demo's detector (resized to its 128 px scale) and its
    segmentor, which sees the 24 px as they are: a 3x3 token grid, smaller
    than the 4x4 window of the stride-32 level."""
    folder, out, _ = infer_folder
    with Image.open(out / 'vis' / 'small.png') as img:
        assert img.size == (24, 24)
    assert (out / 'preds' / 'small.json').is_file()
    seg = demo.metrics('seg')
    res = run_tool(['tools/infer.py', seg['config'], seg['checkpoint'],
                    folder / 'small.png', '--out', tmp_path])
    with Image.open(tmp_path / 'vis' / 'small.png') as img:
        assert img.size == (24, 24)
    with Image.open(tmp_path / 'pred' / 'small.png') as img:  # labels
        assert img.size == (24, 24)
        assert set(img.getdata()) <= set(range(4))
    assert 'wrote 1 overlays' in res.out


# A head's classes against the data's, and the neck against the backbone's
# width, in one config: both named, each with both sides, before the first
# iteration.
MISMATCH = dict(
    coco=('model.roi_head.bbox_head.num_classes=5',
          ('model.roi_head.bbox_head.num_classes=5 but', 'ShapesDataset',
           'has 3 classes')),
    ade=('model.decode_head.num_classes=5',
         ('model.decode_head.num_classes=5 but', 'ShapesSegDataset',
          'has 4 classes')))


def test_config_not_fitting_data_or_backbone_fails_at_start(
        task, tiny, tmp_path):
    option, classes_message = MISMATCH[task]
    res = run_tool([
        'tools/train.py', tiny, '--work-dir', tmp_path, '--cfg-options',
        option, 'model.neck.in_channels=[96,96,96,96]'
    ], check=False)
    assert res.code != 0
    for part in classes_message:
        assert part in res.out, part
    assert re.search(r'model\.neck\.in_channels=\[96, 96, 96, 96\] but '
                     r'model\.backbone .*embed_dims=64', res.out)
    assert 'Iter(train)' not in res.out
    assert not list(tmp_path.glob('*.pth'))


def test_missing_data_is_named(tiny, tmp_path):
    res = run_tool([
        'tools/train.py', tiny, '--work-dir', tmp_path, '--cfg-options',
        'train_dataloader.dataset.data_root=/nonexistent/data/'
    ], check=False)
    assert res.code != 0
    assert "data_root not found: '/nonexistent/data/'" in res.out
    _no_traceback(res)


def test_unknown_config_name_suggests_the_real_ones():
    res = run_tool(['tools/train.py', 'configs/coco/mask_rcnn_xcit_s13_p8.py'],
                   check=False)
    assert res.code != 0
    assert "Config file not found: 'configs/coco/mask_rcnn_xcit_s13_p8.py'" \
        in res.out
    assert 'mask_rcnn_xcit_s12_p8.py' in res.out
    _no_traceback(res)


@pytest.mark.parametrize('kind', ['empty', 'text', 'truncated'])
def test_resume_from_a_broken_file_is_named(coco_config, kind, tmp_path):
    bad = tmp_path / f'{kind}.pth'
    if kind == 'text':
        bad.write_text('this is not a checkpoint\n')
    elif kind == 'truncated':  # a zip cut short, as a killed copy leaves it
        import io
        buffer = io.BytesIO()
        torch.save({'state_dict': {'w': torch.zeros(1000)}}, buffer)
        bad.write_bytes(buffer.getvalue()[:2000])
    else:
        bad.write_bytes(b'')
    work = tmp_path / 'work'
    res = run_tool(['tools/train.py', coco_config, '--work-dir', work,
                    '--resume', bad], check=False)
    assert res.code != 0
    assert f'error: --resume {bad}: ' in res.out
    assert 'Name an intact checkpoint, or give --resume without a file' \
        in res.out
    _no_traceback(res)
    assert not work.exists()  # nothing started


def test_config_syntax_error_names_the_file_and_its_child(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text("_base_ = 'mmdet::_base_/default_runtime.py'\n"
                    'model = dict(type=\n')
    child = tmp_path / 'child.py'
    child.write_text("_base_ = './base.py'\nx = 1\n")
    res = run_tool(['tools/train.py', child], check=False)
    assert res.code != 0
    assert f'error: {base} (a _base_ of {child}), line 2:' in res.out
    _no_traceback(res)


def test_infer_refuses_a_checkpoint_of_another_model(
        coco_config, foreign_checkpoints, tmp_path):
    """A segmentor's checkpoint into the detector's config: refused with
    what does not fit, no overlays."""
    image = tmp_path / 'image.png'
    Image.new('RGB', (64, 64), (30, 90, 200)).save(image)
    ckpt = foreign_checkpoints['ade']
    res = run_tool(['tools/infer.py', coco_config, ckpt, image, '--out',
                    tmp_path / 'out'], check=False)
    assert res.code != 0
    assert f'error: {ckpt} does not fit the model of {coco_config}' in res.out
    assert re.search(r'tensors of the checkpoint are not in the model: '
                     r'.*decode_head', res.out)
    assert not (tmp_path / 'out' / 'vis').exists()
    _no_traceback(res)


def test_infer_names_an_unreadable_checkpoint(coco_config, tmp_path):
    bad = tmp_path / 'model.pth'
    bad.write_text('this is not a checkpoint\n')
    res = run_tool(['tools/infer.py', coco_config, bad, tmp_path, '--out',
                    tmp_path / 'out'], check=False)
    assert res.code != 0
    assert f"error: Cannot read '{bad}'" in res.out
    _no_traceback(res)
