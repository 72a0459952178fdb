"""FiniteLossHook: a NaN loss stops training before its checkpoint, in a
Runner and through tools/train.py."""
import os.path as osp
import re
import subprocess

import pytest

import xcit_mm  # noqa: F401  (registers the hooks, as configs import it)
from tests.test_engine.test_hooks.toy import (PYTHON, REPO_ROOT,
                                              build_runner, ckpt_files,
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


def test_infinite_grad_norm_stops_the_run(tmp_path):
    """A finite but huge loss whose gradient norm (logged under clip_grad)
    overflows: stopped like a NaN."""
    cfg = toy_cfg(str(tmp_path), max_iters=8, interval=1,
                  model=dict(scale_from=(3, 1e30)),
                  custom_hooks=[dict(type='FiniteLossHook')])
    cfg['optim_wrapper']['clip_grad'] = dict(max_norm=10.0)
    with pytest.raises(FloatingPointError) as err:
        build_runner(cfg).train()
    message = str(err.value)
    assert 'iteration 3: grad_norm=inf' in message
    assert 'loss=' not in message  # the loss itself was finite
    assert ckpt_files(tmp_path) == ['iter_1.pth', 'iter_2.pth']


def test_recommends_a_checkpoint_from_before_the_divergence(tmp_path):
    """The loss blows up (x1e6) from iteration 4 and turns NaN at 7: the
    checkpoints of iterations 3 to 6 hold weights that gave blown-up
    losses, so iter_2.pth is named."""
    with pytest.raises(FloatingPointError) as err:
        train(tmp_path, max_iters=10, interval=1,
              model=dict(scale_from=(4, 1e6), nan_at=7),
              custom_hooks=[dict(type='FiniteLossHook')])
    message = str(err.value)
    assert 'Non-finite loss at iteration 7' in message
    assert 'before the divergence is' in message
    assert re.search(r'is \S+iter_2\.pth;', message), message
    assert ckpt_files(tmp_path)[-1] == 'iter_6.pth'


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
