"""FiniteLossHook: a NaN loss stops training before its checkpoint, in a
Runner and through tools/train.py."""
import os.path as osp
import subprocess

import pytest

import xcit_mm  # noqa: F401  (registers the hooks, as configs import it)
from tests.test_engine.test_hooks.toy import (PYTHON, REPO_ROOT, ckpt_files,
                                              subprocess_env, toy_cfg, train)


def test_nan_loss_stops_before_its_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError) as err:
        train(
            tmp_path,
            max_iters=8,
            interval=1,
            model=dict(nan_at=4),
            custom_hooks=[dict(type='FiniteLossHook')])
    message = str(err.value)
    assert 'iteration 4' in message
    assert 'loss=nan' in message and 'loss_main=nan' in message
    assert 'loss_aux' not in message  # finite terms are not blamed
    assert 'clip_grad' in message and 'optim_wrapper.optimizer.lr' in message
    # iter_3.pth's weights gave the NaN: the one before is recommended
    assert 'before the divergence is' in message and 'iter_2.pth' in message
    assert 'iter_3.pth' not in message
    assert ckpt_files(tmp_path) == ['iter_1.pth', 'iter_2.pth', 'iter_3.pth']


def test_nan_loss_exits_tools_train_nonzero(tmp_path):
    """tools/train.py on a config naming the hook, as a user runs it."""
    cfg = toy_cfg(
        str(tmp_path / 'work'),
        max_iters=8,
        interval=1,
        model=dict(nan_at=4),
        default_scope='mmdet',
        custom_hooks=[dict(type='FiniteLossHook')])
    cfg.pop('experiment_name')
    cfg['custom_imports'] = dict(
        imports=['xcit_mm.engine.hooks', 'tests.test_engine.test_hooks.toy'],
        allow_failed_imports=False)
    config = tmp_path / 'toy_nan.py'
    config.write_text('\n'.join(f'{k} = {v!r}' for k, v in cfg.items()))
    proc = subprocess.run(
        [PYTHON, osp.join(REPO_ROOT, 'tools', 'train.py'),
         str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        env=subprocess_env(),
        cwd=tmp_path)
    assert proc.returncode != 0
    assert 'FloatingPointError: Non-finite loss at iteration 4' in \
        proc.stderr, proc.stderr[-3000:]
    assert ckpt_files(tmp_path /
                      'work') == ['iter_1.pth', 'iter_2.pth', 'iter_3.pth']
