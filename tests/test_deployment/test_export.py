"""ONNX export (tools/deployment/export_onnx.py, segmentor.py): backbone,
Semantic FPN and UperNet in ONNX Runtime against eager PyTorch at sizes
other than the traced one, the rewrites against the parts they replace, the
command line end to end and its errors."""
import copy
import os.path as osp
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT
from tests.helpers import SMALL_ARCH, randomize_, tools_module

E = tools_module('export_onnx', 'deployment')
S = tools_module('segmentor', 'deployment')

TRACED = (96, 128)
# the traced size, then about half of it, not a multiple of 32 (nor of the
# patch), batch 2
OTHER = [(1, 96, 128), (2, 45, 70)]
FPN_DEMO = 'configs/demo/fpn_xcit_n12_p8_shapes.py'
UPERNET = 'configs/ade20k/upernet_xcit_t12_p16_160k.py'
SMALL_SEG = f"""_base_ = '{REPO_ROOT}/{FPN_DEMO}'
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=64, depth=4,
                            num_heads=4), patch_size=16),
    neck=dict(in_channels=[64] * 4, out_channels=32),
    decode_head=dict(in_channels=[32] * 4, channels=16))
"""


def small(config, **decode_head):
    """``config`` with a 4-block, 64-channel backbone and random weights."""
    cfg = E.load_config(osp.join(REPO_ROOT, config))
    cfg.model.backbone.update(arch=SMALL_ARCH, patch_size=16)
    width = SMALL_ARCH['embed_dims']
    if cfg.model.get('neck'):
        cfg.model.neck.update(in_channels=[width] * 4, out_channels=32)
        width = 32
    cfg.model.decode_head.update(in_channels=[width] * 4, **decode_head)
    if cfg.model.get('auxiliary_head'):
        cfg.model.auxiliary_head.in_channels = width
    torch.manual_seed(0)
    return cfg, randomize_(E.build_model(cfg))


@pytest.fixture(scope='module')
def fpn():
    return small(FPN_DEMO)


@pytest.fixture(scope='module')
def upernet():
    return small(UPERNET, channels=32)


def export(model, task, **kwargs):
    kwargs = dict(dict(shape=TRACED, batch=1, opset=17, dynamic=True,
                       dynamic_batch=True), **kwargs)
    return E.export_bytes(model, task, **kwargs)


@pytest.mark.parametrize('name,task', [('fpn', 'backbone'),
                                       ('fpn', 'segmentor'),
                                       ('upernet', 'segmentor')])
def test_onnx_runtime_matches_eager(request, name, task):
    """Traced at 96x128, right at 45x70 with batch 2 too."""
    cfg, model = request.getfixturevalue(name)
    data = export(model, task)
    found = E.self_check(model, task, data, OTHER, log=lambda _: None)
    assert set(found) == set(OTHER)
    names = [o.name for o in ort.InferenceSession(data).get_outputs()]
    if task == 'segmentor':
        assert names == ['logits']
        num = cfg.model.decode_head.num_classes
        sess = ort.InferenceSession(data)
        logits = sess.run(None, {'input': np.zeros((2, 3, 45, 70),
                                                   np.float32)})[0]
        assert logits.shape == (2, num, 45, 70)
    else:
        assert names == ['feat0', 'feat1', 'feat2', 'feat3']
    for diffs in found.values():
        assert max(diffs.values()) <= E.TOLERANCE


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_without_the_rewrites_fpn_is_wrong_off_the_traced_size(fpn):
    """The self-check catches what a plain export gets wrong: mmseg's
    Upsample frozen at the traced size."""
    model = fpn[1]
    import io
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            S.SegmentorExport(model), (torch.zeros(1, 3, *TRACED), ),
            buf, input_names=['input'], output_names=['logits'],
            dynamic_axes={'input': {0: 'b', 2: 'h', 3: 'w'}},
            opset_version=17, dynamo=False)
    model.eval()
    E.self_check(model, 'segmentor', buf.getvalue(), [(1, *TRACED)],
                 log=lambda _: None)
    with pytest.raises(E.ExportError, match=r'logits .* at 1x3x45x70'):
        E.self_check(model, 'segmentor', buf.getvalue(), [(1, 45, 70)],
                     log=lambda _: None)


@pytest.mark.parametrize('out', [1, 2, 3, 6, (2, 3)])
def test_adaptive_pooling_rewrite_is_exact(out):
    pool = S.AdaptiveAvgPoolExport(out)
    for h, w in [(1, 1), (2, 5), (7, 6), (13, 29), (32, 17)]:
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(
            pool(x), F.adaptive_avg_pool2d(x, out), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('k', [2, 4])
def test_small_map_pooling_rewrite_matches_the_adapter(k):
    from xcit_mm.models.adapter import MaxPoolAtLeastOne
    ref = MaxPoolAtLeastOne(kernel_size=k, stride=k)
    new = S.MaxPoolAtLeastOneExport(ref)
    for h, w in [(1, 1), (1, 5), (3, 2), (4, 9), (9, 11)]:
        x = torch.randn(1, 2, h, w)
        assert torch.equal(new(x), ref(x))


def test_rewrites_leave_the_model_alone(upernet):
    model = upernet[1]
    copy, done = S.exportable_copy(model)
    assert any('AdaptiveAvgPool2d -> AdaptiveAvgPoolExport' in d
               for d in done), done
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d)
               for m in model.modules())
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d)
                   for m in copy.modules())


def test_unsupported_parts_are_named(fpn):
    cfg, _ = fpn
    cfg = copy.deepcopy(cfg)
    cfg.model.decode_head = dict(
        type='ASPPHead', in_channels=32, in_index=3, channels=16,
        dilations=(1, 12), num_classes=4)
    model = E.build_model(cfg)
    with pytest.raises(E.ExportError, match='decode_head is ASPPHead'):
        export(model, 'segmentor')
    with pytest.raises(E.ExportError, match='opset >= 12'):
        export(fpn[1], 'segmentor', opset=11)


def test_fingerprint_follows_the_model(fpn, upernet):
    import json
    a = json.loads(E.model_fingerprint(fpn[0].model))
    b = json.loads(E.model_fingerprint(upernet[0].model))
    assert a['backbone']['embed_dims'] == SMALL_ARCH['embed_dims']
    assert a['heads']['decode_head'] == 'FPNHead'
    assert b['heads']['decode_head'] == 'UPerHead'
    assert a != b


@pytest.fixture(scope='module')
def cli_files(tmp_path_factory):
    """A small segmentor config and a checkpoint of it in mmengine's
    layout, as tools/train.py saves it (with the dataset's classes)."""
    from mmengine.config import Config
    tmp = tmp_path_factory.mktemp('cli')
    config = tmp / 'small_fpn.py'
    config.write_text(SMALL_SEG)
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = randomize_(E.build_model(cfg))
    ckpt = tmp / 'small_fpn.pth'
    classes = ['unlabelled', 'background', 'square', 'disc']
    torch.save({'meta': {'dataset_meta': {'classes': classes}},
                'state_dict': model.state_dict()}, ckpt)
    return config, ckpt, classes, model


def test_command_line_end_to_end(cli_files, tmp_path):
    config, ckpt, classes, model = cli_files
    out = tmp_path / 'sub' / 'fpn.onnx'
    run = subprocess.run(
        [sys.executable, 'tools/deployment/export_onnx.py', str(config),
         '--checkpoint', str(ckpt), '--out', str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert 'check 1x3x128x128: logits' in run.stdout
    assert 'check 2x3x67x69: logits' in run.stdout
    meta = E.read_metadata(str(out))
    assert meta['xcit_mm.task'] == 'segmentor'
    assert meta['xcit_mm.num_classes'] == '4'
    assert meta['xcit_mm.classes'] == (
        '["unlabelled", "background", "square", "disc"]')
    assert meta['xcit_mm.dynamic'] == '1'
    assert 'xcit_mm.shape' not in meta and 'xcit_mm.batch' not in meta
    assert meta['xcit_mm.model'] == E.model_fingerprint(
        __import__('mmengine').config.Config.fromfile(str(config)).model)
    # the file serves another size and batch: the weights are the checkpoint's
    img = torch.randn(3, 3, 77, 150)
    got = ort.InferenceSession(str(out)).run(None, {'input': img.numpy()})[0]
    ref = S.eager_logits(model.eval(), img).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        E.main(argv)
    assert exc.value.code not in (0, None)
    return str(exc.value.code) + capsys.readouterr().err


def test_static_shape_and_batch(cli_files, tmp_path, capsys):
    config, ckpt, _, _ = cli_files
    out = tmp_path / 'static.onnx'
    E.main([str(config), '--checkpoint', str(ckpt), '--out', str(out),
            '--shape', '72', '100', '--batch', '2'])
    assert 'check 2x3x72x100' in capsys.readouterr().out
    meta = E.read_metadata(str(out))
    assert (meta['xcit_mm.dynamic'], meta['xcit_mm.shape'],
            meta['xcit_mm.batch']) == ('0', '72,100', '2')
    shape = ort.InferenceSession(str(out)).get_inputs()[0].shape
    assert shape == [2, 3, 72, 100]


def test_bad_input(cli_files, tmp_path, capsys):
    config, ckpt, _, model = cli_files
    out = tmp_path / 'x.onnx'
    base = [str(config), '--checkpoint']
    err = run_main(base + [str(tmp_path / 'none.pth'), '--out', str(out)],
                   capsys)
    assert 'checkpoint not found' in err
    other = {k: v for k, v in model.state_dict().items()
             if not k.startswith('decode_head.conv_seg')}
    bad = tmp_path / 'other.pth'
    torch.save({'state_dict': other}, bad)
    err = run_main(base + [str(bad), '--out', str(out)], capsys)
    assert 'does not fit the model of' in err and 'conv_seg' in err
    blocker = tmp_path / 'file'
    blocker.write_text('')
    err = run_main(base + [str(ckpt), '--out', str(blocker / 'x.onnx')],
                   capsys)
    assert 'cannot be written' in err
    err = run_main(base + [str(ckpt), '--out', str(tmp_path)], capsys)
    assert 'is a directory' in err
    err = run_main(base + [str(ckpt), '--out', str(out), '--opset', '9'],
                   capsys)
    assert 'opset >= 12' in err
    for args in (['--batch', '0'], ['--shape', '-1', '64']):
        err = run_main(base + [str(ckpt), '--out', str(out)] + args, capsys)
        assert 'must be' in err
    assert not out.exists()
    assert list(tmp_path.glob('.*.tmp')) == []


def test_detector_that_is_not_mask_rcnn_is_named(tmp_path):
    cfg = E.load_config(
        osp.join(REPO_ROOT, 'configs/demo/mask_rcnn_xcit_n12_p8_shapes.py'))
    cfg.model.backbone.update(arch=SMALL_ARCH, patch_size=16)
    cfg.model.neck.in_channels = [SMALL_ARCH['embed_dims']] * 4
    cfg.model.test_cfg.rcnn.nms = dict(type='soft_nms', iou_threshold=0.5)
    model = E.build_model(cfg)
    with pytest.raises(E.ExportError, match=r'test_cfg\.rcnn\.nms'):
        E.export(cfg, model, 'x.py', str(tmp_path / 'x.onnx'), 'detector')
    with pytest.raises(E.ExportError, match='detector needs|opset >= 16'):
        E.export(cfg, model, 'x.py', str(tmp_path / 'x.onnx'), 'detector',
                 opset=13)
    assert not (tmp_path / 'x.onnx').exists()
