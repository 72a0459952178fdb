"""Weights of PaddlePaddle PASSL and MindSpore MindCV, made by those
frameworks' own XCiT code (tests/data/foreign/make_fixtures.py), reproduce
the features those frameworks computed, read without either framework."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from xcit_mm.models import XCiT
from xcit_mm.weights import CheckpointError, load_pretrained

MINDCV_MATHS = dict(qk_norm=False,
                    act_cfg=dict(type='GELU', approximate='tanh'))
CASES = [
    ('passl_p16.pdparams', 'passl', 16),
    ('passl_p16_train.pdparams', 'passl', 16),
    ('passl_p16_distill.pdparams', 'passl', 16),
    ('passl_p8.pdparams', 'passl', 8),
    ('mindcv_p16.ckpt', 'mindcv', 16),
    ('mindcv_p16_optim.ckpt', 'mindcv', 16),
    ('mindcv_p8.ckpt', 'mindcv', 8),
]


def _model(patch_size, maths=None, checkpoint=None):
    """The fixtures' size: embed 64, depth 4, heads 4, MLP ratio 0.5."""
    init_cfg = None if checkpoint is None else dict(
        type='Pretrained', checkpoint=str(checkpoint))
    return XCiT(arch=dict(embed_dims=64, depth=4, num_heads=4,
                          out_indices=(0, 1, 2, 3)),
                patch_size=patch_size, mlp_ratio=0.5,
                norm_cfg=dict(type='BN'), init_cfg=init_cfg,
                **(maths or {}))


def _check_features(model, features_file):
    """Relative error of the last block's tokens on both recorded inputs."""
    ref = np.load(features_file)
    model.eval()
    for i in (0, 1):
        x = torch.from_numpy(ref[f'input_{i}'])
        with torch.no_grad():
            got = model.forward_blocks(x)[-1].flatten(2).transpose(1, 2)
        want = torch.from_numpy(ref[f'features_{i}'])
        assert got.shape == want.shape
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-4, f'{features_file.name} input {i}: {err:.2e}'


@pytest.mark.parametrize('name, framework, patch_size', CASES)
def test_init_cfg_reproduces_their_features(foreign_dir, name, framework,
                                             patch_size):
    maths = MINDCV_MATHS if framework == 'mindcv' else None
    model = _model(patch_size, maths, foreign_dir / name)
    model.init_weights()
    _check_features(model,
                    foreign_dir / f'{framework}_p{patch_size}_features.npz')


@pytest.mark.parametrize('name, framework, patch_size',
                         [CASES[0], CASES[4], CASES[6]])
def test_converter_cli_output_reproduces_their_features(
        foreign_dir, tmp_path, repo_root, name, framework, patch_size):
    dst = tmp_path / 'converted.pth'
    res = subprocess.run(
        [sys.executable, 'tools/model_converters/xcit2mm.py',
         str(foreign_dir / name), str(dst)], cwd=repo_root, text=True,
        capture_output=True)
    assert res.returncode == 0, res.stderr
    assert f'{framework} layout' in res.stdout
    assert ('note: these weights need the backbone built with qk_norm=False'
            in res.stdout) == (framework == 'mindcv')
    assert ('qk_norm' in res.stdout) == (framework == 'mindcv')
    maths = MINDCV_MATHS if framework == 'mindcv' else None
    model = _model(patch_size, maths, dst)
    model.init_weights()
    _check_features(model,
                    foreign_dir / f'{framework}_p{patch_size}_features.npz')
    if framework == 'mindcv':  # the converted file still says what it needs
        with pytest.raises(CheckpointError, match='qk_norm=False'):
            _model(patch_size, None, dst).init_weights()


def test_mindcv_weights_refuse_a_model_without_their_switches(foreign_dir):
    with pytest.raises(CheckpointError) as err:
        load_pretrained(_model(16), str(foreign_dir / 'mindcv_p16.ckpt'))
    text = str(err.value)
    assert 'qk_norm=False' in text and "'approximate': 'tanh'" in text
    # a model with only one of the two switches is refused too
    with pytest.raises(CheckpointError, match='act_cfg'):
        load_pretrained(_model(16, dict(qk_norm=False)),
                        str(foreign_dir / 'mindcv_p16.ckpt'))


def test_published_weights_refuse_a_model_built_for_mindcv(foreign_dir):
    with pytest.raises(CheckpointError, match='qk_norm=True'):
        load_pretrained(_model(16, MINDCV_MATHS),
                        str(foreign_dir / 'passl_p16.pdparams'))


def test_distillation_checkpoint_takes_the_student_or_the_prefix(
        foreign_dir):
    path = str(foreign_dir / 'passl_p16_distill.pdparams')
    student, teacher = _model(16), _model(16)
    load_pretrained(student, path)
    load_pretrained(teacher, path, prefix='Teacher.backbone.')
    s, t = student.state_dict(), teacher.state_dict()
    key = 'blocks.0.attn.qkv.weight'
    assert not torch.equal(s[key], t[key])
    _check_features(student, foreign_dir / 'passl_p16_features.npz')
