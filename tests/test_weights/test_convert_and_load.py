import collections
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import (BN, randomize_, timm_to_authors,
                           timm_to_mmpretrain)
from xcit_mm.models import XCiT
from xcit_mm.weights import (CheckpointError, convert_backbone_state_dict,
                             convert_model_state_dict, detect_layout,
                             read_checkpoint, load_pretrained)

timm = pytest.importorskip('timm')


class ForeignObject:
    """Not on any allow-list."""


@pytest.fixture(scope='module', params=[8, 16])
def timm_model(request):
    model = timm.create_model(
        f'xcit_nano_12_p{request.param}_224').eval()
    randomize_(model, seed=3)
    model.patch_size = request.param
    return model


def _reference(timm_model, x):
    with torch.no_grad():
        return timm_model.forward_intermediates(
            x, indices=[3, 5, 7, 11], intermediates_only=True)


def _build(patch_size, path):
    model = XCiT('nano-12', patch_size=patch_size, norm_cfg=BN,
                 init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    return model.eval()


def _check_loaded(model, timm_model):
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        got = model.forward_blocks(x)
    for a, b in zip(got, _reference(timm_model, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _save_layout(timm_model, layout, tmp_path):
    sd = timm_model.state_dict()
    if layout == 'timm-safetensors':
        path = tmp_path / 'xcit.safetensors'
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path
    obj = {
        'timm': sd,
        'authors': timm_to_authors(sd),
        'mmpretrain': timm_to_mmpretrain(sd, timm_model.patch_size),
    }[layout]
    path = tmp_path / f'{layout}.pth'
    torch.save(obj, path)
    return path


@pytest.mark.parametrize('layout',
                         ['authors', 'timm', 'timm-safetensors', 'mmpretrain'])
def test_each_layout_loads(timm_model, layout, tmp_path, caplog):
    path = _save_layout(timm_model, layout, tmp_path)
    model = _build(timm_model.patch_size, path)
    _check_loaded(model, timm_model)
    conv = convert_backbone_state_dict(read_checkpoint(str(path)))
    assert conv.layout == layout.split('-')[0]
    # what a classifier has and a dense backbone has not is dropped
    assert any(k.endswith('cls_token') for k in conv.dropped)
    assert any('head' in k for k in conv.dropped)
    assert not any(k.startswith(('blocks.', 'patch_embed.'))
                   for k in conv.dropped)


def test_load_reports_counts(timm_model, tmp_path):
    import logging
    records = []

    class Collect(logging.Handler):

        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger('xcit-test')
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    model = XCiT('nano-12', patch_size=timm_model.patch_size, norm_cfg=BN)
    load_pretrained(model, str(_save_layout(timm_model, 'authors', tmp_path)),
                    logger=logger)
    text = '\n'.join(records)
    n_adapter = len([k for k in model.state_dict() if k.startswith('adapter')])
    n_loaded = len(model.state_dict()) - n_adapter
    assert f'loaded {n_loaded} of {len(model.state_dict())} tensors' in text
    assert 'cls_attn_blocks.* (' in text and 'cls_token' in text
    assert 'missing (kept as initialised): adapter.*' in text


def test_own_layout_round_trip_and_detector_checkpoint(timm_model, tmp_path):
    src = XCiT('nano-12', patch_size=timm_model.patch_size, norm_cfg=BN)
    randomize_(src, seed=5)
    src.eval()
    det = {'meta': {'epoch': 3},
           'state_dict': {'backbone.' + k: v
                          for k, v in src.state_dict().items()}}
    det['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    path = tmp_path / 'det.pth'
    torch.save(det, path)
    model = _build(timm_model.patch_size, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), src(x)):
            torch.testing.assert_close(a, b)


def test_authors_dense_layout_converts_adapters():
    model = XCiT('nano-12', patch_size=16, norm_cfg=BN)
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace('pos_embed.', 'pos_embeder.')
        if k.startswith('adapter.levels.'):
            level, rest = k[len('adapter.levels.'):].split('.', 1)
            k = f'fpn{int(level) + 1}.{rest}'
        sd['backbone.' + k] = v
    sd['neck.fpn_convs.0.conv.weight'] = torch.ones(2)
    sd['roi_head.bbox_head.fc_cls.weight'] = torch.ones(3)
    assert detect_layout(sd) == 'authors-dense'
    conv = convert_model_state_dict({'state_dict': sd, 'meta': {}})
    expected = {'backbone.' + k for k in model.state_dict()}
    expected |= {'neck.fpn_convs.0.conv.weight',
                 'roi_head.bbox_head.fc_cls.weight'}
    assert set(conv.state_dict) == expected


def test_checkpoint_matching_nothing_raises(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7),
                               'bn1.weight': torch.zeros(64)}}, path)
    with pytest.raises(CheckpointError, match='Not an XCiT checkpoint'):
        _build(16, path)


def test_wrong_size_checkpoint_raises(tmp_path):
    other = XCiT('tiny-12', patch_size=16, norm_cfg=BN)
    path = tmp_path / 'tiny.pth'
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match='does not fit the backbone'):
        _build(16, path)


def test_other_patch_size_raises(timm_model, tmp_path):
    """A patch-16 checkpoint into a patch-8 model (and back) is an error
    naming the patch embedding, not a warning over random weights."""
    path = _save_layout(timm_model, 'timm', tmp_path)
    other = 8 if timm_model.patch_size == 16 else 16
    with pytest.raises(CheckpointError, match='patch_embed'):
        _build(other, path)


def test_any_block_missing_raises(timm_model, tmp_path):
    sd = {k: v for k, v in timm_model.state_dict().items()
          if not k.startswith('blocks.7.')}
    path = tmp_path / 'partial.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r'blocks\.7'):
        _build(timm_model.patch_size, path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        _build(16, tmp_path / 'nope.pth')


def test_foreign_global_is_refused(timm_model, tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'model': timm_model.state_dict(), 'x': ForeignObject()},
               path)
    with pytest.raises(CheckpointError, match='ForeignObject'):
        read_checkpoint(str(path))
    # the global allow-list is untouched: plain torch.load refuses it too
    with pytest.raises(Exception, match='ForeignObject'):
        torch.load(path, weights_only=True)


def test_allowed_globals_load_with_weights_only(tmp_path):
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.5)
    path = tmp_path / 'runner.pth'
    torch.save({'state_dict': {'w': torch.ones(1)},
                'meta': {'hub': {'loss': buf}, 'seed': np.int64(3),
                         'arr': np.arange(3.0), 'order': collections.OrderedDict()}},
               path)
    ckpt = read_checkpoint(str(path))
    assert ckpt['meta']['hub']['loss'].current() == 1.5
    assert ckpt['meta']['hub']['loss'].statistics('mean') == 1.5


def test_getattr_is_allowed_for_history_buffers_only(tmp_path):
    """getattr on anything but HistoryBuffer's statistics is refused."""

    class Reduce:

        def __reduce__(self):
            return (getattr, (argparse_namespace(), '__class__'))

    path = tmp_path / 'gadget.pth'
    torch.save({'x': Reduce()}, path)
    with pytest.raises(CheckpointError, match='getattr'):
        read_checkpoint(str(path))


def argparse_namespace():
    import argparse
    return argparse.Namespace(a=1)


def test_offline_converter_tool(timm_model, tmp_path, repo_root):
    src = _save_layout(timm_model, 'mmpretrain', tmp_path)
    dst = tmp_path / 'out' / 'xcit_mm.pth'
    res = subprocess.run(
        [sys.executable, 'tools/model_converters/xcit2mm.py', str(src),
         str(dst)], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'mmpretrain' in res.stdout
    sd = torch.load(dst, weights_only=True)['state_dict']
    model = XCiT('nano-12', patch_size=timm_model.patch_size,
                 norm_cfg=BN).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and all(k.startswith('adapter.')
                                    for k in missing)
    _check_loaded(model, timm_model)


@pytest.mark.parametrize(
    'layout', ['authors', 'timm', 'timm-safetensors', 'mmpretrain', 'twice'])
def test_converter_report_asks_for_no_switch_for_published_maths(
        timm_model, layout, tmp_path, repo_root):
    """These layouts compute the published maths (the backbone's defaults):
    the report says so and asks for no switch; converting a converted file
    ('twice') keeps that."""
    src = _save_layout(timm_model, 'timm' if layout == 'twice' else layout,
                       tmp_path)
    for step in range(2 if layout == 'twice' else 1):
        dst = tmp_path / f'converted{step}.pth'
        res = subprocess.run(
            [sys.executable, 'tools/model_converters/xcit2mm.py', str(src),
             str(dst)], cwd=repo_root, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        src = dst
    assert 'note:' not in res.stdout and 'qk_norm' not in res.stdout
    assert "maths: the published one, the backbone's defaults" in res.stdout
    # a converted backbone has timm's keys (and no adapter yet)
    assert f"{'timm' if layout == 'twice' else layout.split('-')[0]} " \
        'layout' in res.stdout


def test_offline_converter_refuses_to_half_write(timm_model, tmp_path,
                                                  repo_root):
    """A file-size limit below the output's size: one line naming the
    file, exit 1, no partial file left (as on a full disk)."""
    src = _save_layout(timm_model, 'timm', tmp_path)
    dst = tmp_path / 'dst.pth'
    code = ('import resource, runpy, sys; '
            'resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000)); '
            'sys.argv = sys.argv[1:]; '
            'runpy.run_path(sys.argv[0], run_name="__main__")')
    res = subprocess.run(
        [sys.executable, '-c', code, 'tools/model_converters/xcit2mm.py',
         str(src), str(dst)], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert f'error: [Errno 27] Could not write {dst} (File too large); it ' \
        'was not created and nothing was half-written' in res.stderr
    assert 'Traceback' not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['timm.pth']


def test_offline_converter_refuses_bad_input(tmp_path, repo_root):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    dst = tmp_path / 'dst.pth'
    res = subprocess.run(
        [sys.executable, 'tools/model_converters/xcit2mm.py', str(bad),
         str(dst)], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode != 0
    assert 'Cannot read' in res.stderr
    assert not dst.exists()
