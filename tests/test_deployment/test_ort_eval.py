"""Exported models evaluated and drawn by the tools as a user runs them:
``export_onnx.py``, then ``tools/test.py CONFIG FILE.onnx`` and
``tools/infer.py CONFIG FILE.onnx`` against the same checkpoint's ``.pth``
evaluation (metrics and predictions); files that do not fit the config
refused."""
import glob
import json
import os
import os.path as osp
import pickle
from typing import NamedTuple

import cv2
import numpy as np
import pytest
import torch

from tests.helpers import randomize_, tools_module
from tests.test_tools.utils import (DET_CLASSES, SEG_CLASSES, build_model,
                                    run_tool, tiny_config, write_config)

# 4 held-out 64 px images; the tiny configs test 2 images a batch
NUM_TRAIN, NUM_VAL, SIZE, SEED = 2, 4, 64, 0
BATCH = ['--cfg-options', 'test_dataloader.batch_size=2']


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    tools_module('shapes_data').generate(
        root, NUM_TRAIN, NUM_VAL, SIZE, SEED, progress=False)
    return root


class Exported(NamedTuple):
    task: str
    config: str
    ckpt: str
    onnx: str


def _random_checkpoint(task, config, path):
    """The tiny model with random weights, saved as tools/train.py saves
    (state dict and the dataset's classes); the detector's classifier
    biases are raised so that it finds boxes."""
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights()
    randomize_(model)
    with torch.no_grad():
        if task == 'coco':
            model.rpn_head.rpn_cls.bias.add_(2.0)
            model.roi_head.bbox_head.fc_cls.bias[-1] -= 3.0
    classes = DET_CLASSES if task == 'coco' else SEG_CLASSES
    torch.save(
        dict(
            state_dict=model.state_dict(),
            meta=dict(dataset_meta=dict(classes=classes))), path)


def _export(task, shapes, tmp_path_factory):
    """A tiny model of ``task``, its checkpoint and its export (by the
    export tool, dynamic sizes and batch)."""
    work = tmp_path_factory.mktemp(f'{task}_onnx')
    cfg = tiny_config(task, shapes)
    if task == 'coco':
        # 64 -> 128 px, a multiple of 32: no padding (see the README's limits)
        for step in cfg.test_dataloader.dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (128, 128)
    config = write_config(cfg, work / f'{task}.py')
    ckpt, onnx = str(work / 'model.pth'), str(work / 'model.onnx')
    _random_checkpoint(task, config, ckpt)
    run_tool([
        'tools/deployment/export_onnx.py', config, '--checkpoint', ckpt,
        '--out', onnx
    ])
    return Exported(task, config, ckpt, onnx)


@pytest.fixture(scope='module')
def coco_export(shapes, tmp_path_factory):
    return _export('coco', shapes, tmp_path_factory)


@pytest.fixture(scope='module')
def ade_export(shapes, tmp_path_factory):
    return _export('ade', shapes, tmp_path_factory)


@pytest.fixture(params=['coco', 'ade'])
def exported(request):
    return request.getfixturevalue(f'{request.param}_export')


def _saved_metrics(work_dir):
    """The metrics tools/test.py saved (``<stamp>/<stamp>.json``)."""
    [path] = glob.glob(osp.join(work_dir, '*', '*.json'))
    with open(path) as f:
        return {
            k: v
            for k, v in json.load(f).items()
            if '/' in k or 'IoU' in k or 'Acc' in k
        }


def _evaluate(exported, model, out, tmp_path, name):
    work = str(tmp_path / name)
    res = run_tool([
        'tools/test.py', exported.config, model, '--work-dir', work, '--out',
        out
    ] + BATCH)
    return res, _saved_metrics(work)


def _infer(exported, images, out):
    res = run_tool([
        'tools/infer.py', exported.config, exported.onnx, images, '--out', out,
        '--device', 'cpu'
    ])
    assert f'wrote {NUM_VAL} overlays' in res.out
    for name in os.listdir(images):
        vis = cv2.imread(osp.join(out, 'vis', name))
        assert vis is not None and vis.shape[:2] == (SIZE, SIZE), name


def test_onnx_evaluates_and_draws_as_the_checkpoint(exported, shapes,
                                                    tmp_path):
    """tools/test.py: the same metric keys and values, and the same
    predictions, for the checkpoint in PyTorch and its export in ONNX
    Runtime (2 images a batch); tools/infer.py on the export: overlays of
    every image and the checkpoint's predictions. The random detector's
    boxes score 0 mAP: its predictions are what is compared."""
    det = exported.task == 'coco'
    outs = [str(tmp_path / (n + ('.pkl' if det else ''))) for n in 'ab']
    _, eager = _evaluate(exported, exported.ckpt, outs[0], tmp_path, 'pth')
    res, ort = _evaluate(exported, exported.onnx, outs[1], tmp_path, 'onnx')
    assert 'Iter(test)' in res.out
    assert sorted(ort) == sorted(eager), (ort, eager)
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(ort) if det else \
        'mIoU' in ort
    for key, value in eager.items():
        assert ort[key] == pytest.approx(value, abs=0.01 if det else 0.1), key
    drawn = str(tmp_path / 'infer')
    images = osp.join(shapes, 'val' if det else 'images/validation')
    _infer(exported, images, drawn)
    if det:
        with open(outs[0], 'rb') as f, open(outs[1], 'rb') as g:
            ref, got = pickle.load(f), pickle.load(g)
        assert len(ref) == len(got) == NUM_VAL
        for r, g in zip(ref, got):
            name = osp.splitext(osp.basename(r['img_path']))[0]
            with open(osp.join(drawn, 'preds', name + '.json')) as f:
                inferred = json.load(f)
            r, g = r['pred_instances'], g['pred_instances']
            assert (r['scores'] > 0.05).sum() > 0
            assert torch.equal(r['labels'], g['labels'])
            torch.testing.assert_close(
                g['bboxes'], r['bboxes'], atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(
                g['scores'], r['scores'], atol=1e-5, rtol=1e-4)
            assert inferred['labels'] == r['labels'].tolist()
            np.testing.assert_allclose(
                inferred['bboxes'], r['bboxes'].numpy(), atol=1e-3)
        return
    maps = sorted(glob.glob(osp.join(outs[0], '*.png')))
    assert len(maps) == NUM_VAL
    for path in maps:
        ref = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        got = cv2.imread(
            osp.join(outs[1], osp.basename(path)), cv2.IMREAD_UNCHANGED)
        assert got.shape == ref.shape == (SIZE, SIZE)
        assert (got != ref).mean() < 1e-3
        # tools/test.py --out writes ADE20k's labels (the reduced ones + 1)
        inferred = cv2.imread(
            osp.join(drawn, 'pred', osp.basename(path)), cv2.IMREAD_UNCHANGED)
        assert (inferred.astype(int) + 1 != ref).mean() < 1e-3


def test_file_of_another_model_is_refused(coco_export, tmp_path):
    """A file whose model differs from the config's: a one-line error
    naming both files and the difference, and a non-zero exit."""
    res = run_tool([
        'tools/test.py', coco_export.config, coco_export.onnx, '--work-dir',
        str(tmp_path), '--cfg-options', 'model.backbone.arch.num_heads=4'
    ],
                   check=False,
                   split=True)
    assert res.code != 0
    last = res.err.strip().splitlines()[-1]
    assert last.startswith(f'error: {coco_export.onnx} does not match '
                           f'{coco_export.config}: '), res.err[-2000:]
    assert 'model.backbone.num_heads: 2 in the file, 4 in the config' in last


def test_check_names_every_difference(exported):
    """In-process: another task, other classes and unexpected names."""
    from mmengine.config import Config
    ort_model = tools_module('ort_model', 'deployment')
    cfg = Config.fromfile(exported.config)
    model = build_model(exported.config)
    onnx = ort_model.OnnxSession(exported.onnx)
    ort_model.check_onnx(onnx, model, cfg, onnx.classes)  # fits

    classes = list(onnx.classes)
    classes[-1] = 'hexagon'
    with pytest.raises(ort_model.OnnxError, match='hexagon.* in the test'):
        ort_model.check_onnx(onnx, model, cfg, classes)
    onnx.output_names = ['out']
    with pytest.raises(ort_model.OnnxError, match=r"outputs \['out'\]"):
        ort_model.check_onnx(onnx, model, cfg)
    onnx.meta = dict(onnx.meta, **{'xcit_mm.task': 'backbone'})
    with pytest.raises(ort_model.OnnxError, match='with --backbone-only'):
        ort_model.check_onnx(onnx, model, cfg)
    onnx.meta = {}
    with pytest.raises(ort_model.OnnxError, match='no xcit_mm'):
        ort_model.check_onnx(onnx, model, cfg)


def test_unreadable_file_is_named(tmp_path):
    ort_model = tools_module('ort_model', 'deployment')
    broken = tmp_path / 'broken.onnx'
    broken.write_text('not a model')
    with pytest.raises(
            ort_model.OnnxError,
            match=f'^{broken} is not a readable ONNX model'):
        ort_model.OnnxSession(str(broken))
    with pytest.raises(ort_model.OnnxError, match='ONNX file not found'):
        ort_model.OnnxSession(str(tmp_path / 'missing.onnx'))


class _Session:
    """Stands for an ONNX Runtime session: records the inputs, returns
    them."""

    def __init__(self):
        self.calls = []

    def run(self, names, feeds):
        self.calls.append(feeds['input'].shape)
        return [feeds['input'] * 2]


@pytest.mark.parametrize('static,shape,calls', [
    ([None, 3, None, None], (3, 3, 40, 56), [(3, 3, 40, 56)]),
    ([2, 3, None, None], (3, 3, 40, 56), [(2, 3, 40, 56)] * 2),
    ([1, 3, 64, 64], (2, 3, 40, 56), [(1, 3, 64, 64)] * 2),
])
def test_fixed_batch_and_size(static, shape, calls):
    """A file exported with --batch runs a batch in parts of that size; one
    with --shape takes smaller inputs padded with 0 at the bottom and
    right, and refuses larger ones."""
    ort_model = tools_module('ort_model', 'deployment')
    onnx = ort_model.OnnxSession.__new__(ort_model.OnnxSession)
    onnx.path, onnx.session, onnx.static = 'm.onnx', _Session(), static
    x = torch.randn(shape)
    [out] = onnx.run(x)
    assert onnx.session.calls == calls
    n, _, h, w = shape
    assert out.shape[0] == n
    torch.testing.assert_close(out[:, :, :h, :w], x * 2)
    assert (out[:, :, h:] == 0).all() and (out[:, :, :, w:] == 0).all()
    if static[2]:
        with pytest.raises(
                ort_model.OnnxError,
                match='exported for inputs '
                'of 64x64 .* gives 72x56'):
            onnx.run(torch.randn(1, 3, 72, 56))


def test_segmentor_tta_runs_the_onnx_module(ade_export, tmp_path):
    """--tta: mmseg's SegTTAModel around the exported segmentor gives the
    checkpoint's metrics."""
    found = []
    for model in (ade_export.ckpt, ade_export.onnx):
        work = str(tmp_path / osp.basename(model))
        run_tool([
            'tools/test.py', ade_export.config, model, '--tta', '--work-dir',
            work
        ])
        found.append(_saved_metrics(work))
    assert 'mIoU' in found[1] and sorted(found[1]) == sorted(found[0])
    for key, value in found[0].items():
        assert found[1][key] == pytest.approx(value, abs=0.1), key
