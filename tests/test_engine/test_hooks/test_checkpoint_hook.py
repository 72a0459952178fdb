"""AtomicCheckpointHook: mmengine's CheckpointHook behaviour kept, complete
files, removal last, resume past a broken ``last_checkpoint`` (also after
SIGKILL inside a save), and plain ``torch.load``."""
import os.path as osp
import re
import signal
import subprocess

import numpy as np
import pytest
import torch

from tests.test_engine.test_hooks.toy import (PYTHON, XCiTMMToyMetric,
                                              ckpt_files, probe, run_script,
                                              subprocess_env, train)
from xcit_mm.engine.hooks import CheckpointResumeError
from xcit_mm.fileio import checkpoint_problem


def log_text(runner):
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        return f.read()


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def truncate(path):
    size = osp.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size // 2)


def test_atomic_checkpoint_keeps_checkpoint_hook_behaviour(tmp_path):
    runner = train(tmp_path, max_iters=7, interval=2, max_keep_ckpts=2)
    # interval 2 plus save_last; max_keep_ckpts=2 keeps the newest two
    assert ckpt_files(tmp_path) == ['iter_6.pth', 'iter_7.pth']
    assert last_checkpoint(tmp_path) == osp.join(runner.work_dir, 'iter_7.pth')
    assert runner.message_hub.get_info('keep_ckpt_ids') == [6, 7]
    for name in ckpt_files(tmp_path):
        assert checkpoint_problem(str(tmp_path / name)) is None


def test_best_checkpoint_replaced_after_the_new_one(tmp_path):
    XCiTMMToyMetric.calls = 0
    train(
        tmp_path,
        max_iters=6,
        interval=2,
        max_keep_ckpts=1,
        val=2,
        checkpoint=dict(save_best='acc', rule='greater'))
    files = ckpt_files(tmp_path)
    assert files == ['best_acc_iter_6.pth', 'iter_6.pth'], files


def test_checkpoints_load_with_plain_torch_load(tmp_path):
    """A fresh process that imports xcit_mm reads the runner's checkpoints
    with torch's weights-only loader, numpy values in the meta included;
    without the import the message hub is refused (what the docs say)."""
    runner = train(tmp_path, max_iters=2, interval=2)
    path = str(tmp_path / 'iter_2.pth')
    ckpt = torch.load(path, weights_only=False)
    ckpt['meta']['dataset_meta'] = dict(
        classes=('a', 'b'),
        palette=np.arange(6).reshape(2, 3).astype(np.uint8))
    ckpt['message_hub']['runtime_info']['best_score'] = np.float64(41.5)
    torch.save(ckpt, path)
    code = ('import sys, torch\n'
            'if sys.argv[1] == "import": import xcit_mm\n'
            'ckpt = torch.load(sys.argv[2], weights_only=True)\n'
            'hub = ckpt["message_hub"]\n'
            'print(sorted(ckpt), ckpt["meta"]["iter"],\n'
            '      ckpt["meta"]["dataset_meta"]["palette"].tolist(),\n'
            '      type(hub["log_scalars"]["train/loss"]).__name__,\n'
            '      hub["runtime_info"]["best_score"])\n')
    ours = subprocess.run([PYTHON, '-c', code, 'import', path],
                          capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split('\n')[0] == (
        "['message_hub', 'meta', 'optimizer', 'param_schedulers', "
        "'state_dict'] 2 [[0, 1, 2], [3, 4, 5]] HistoryBuffer 41.5")
    plain = subprocess.run([PYTHON, '-c', code, 'no', path],
                           capture_output=True, text=True)
    assert plain.returncode != 0
    assert 'weights_only' in plain.stderr or 'Unsupported global' in \
        plain.stderr


def test_checkpoints_of_earlier_versions_still_resume(tmp_path):
    """Earlier versions stored history buffers and arrays as marked dicts
    of tensors; they resume with the history restored."""
    train(tmp_path, max_iters=2, interval=2)
    path = str(tmp_path / 'iter_2.pth')
    ckpt = torch.load(path, weights_only=False)
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    logs, counts = buffer.data
    ckpt['message_hub']['log_scalars']['train/loss'] = {
        '__xcit_mm_encoded__': 'HistoryBuffer',
        'log_history': torch.from_numpy(logs),
        'count_history': torch.from_numpy(counts),
        'max_length': buffer.max_length}
    ckpt['meta']['palette'] = {'__xcit_mm_encoded__': 'ndarray',
                               'data': torch.arange(3, dtype=torch.uint8)}
    torch.save(ckpt, path)
    runner = train(tmp_path, max_iters=3, interval=3, resume=True)
    assert probe(runner).start_iter == 2
    loss = runner.message_hub.get_scalar('train/loss').data[0]
    assert loss[:2].tolist() == logs.tolist() and len(loss) == 3


def test_resume_restores_message_hub_exactly(tmp_path):
    first = train(tmp_path, max_iters=4, interval=4)
    saved_loss = first.message_hub.get_scalar('train/loss').data
    saved_lr = first.message_hub.get_scalar('train/lr').data
    second = train(tmp_path, max_iters=6, interval=2, resume=True)
    assert probe(second).start_iter == 4
    text = log_text(second)
    assert 'not HistoryBuffer' not in text
    loss = second.message_hub.get_scalar('train/loss').data
    lr = second.message_hub.get_scalar('train/lr').data
    # the first 4 entries came from the checkpoint, bit for bit
    assert loss[0][:4].tolist() == saved_loss[0].tolist()
    assert loss[0].dtype == saved_loss[0].dtype
    assert lr[0][:4].tolist() == saved_lr[0].tolist()
    assert len(loss[0]) == 6
    # the MultiStepLR milestone (iteration 3) was resumed, not replayed
    assert second.optim_wrapper.get_lr()['lr'][0] == pytest.approx(1e-3)


@pytest.mark.parametrize('damage, resumed_from, says', [
    ('empty', 6, 'is empty'),
    ('dangling', 6, 'iter_8.pth, which is missing'),
    ('truncated', 4, 'iter_6.pth, which is truncated'),
    ('no-pointer', 6, 'last_checkpoint is missing'),
])
def test_auto_resume_falls_back_to_newest_intact(tmp_path, damage,
                                                 resumed_from, says):
    train(tmp_path, max_iters=6, interval=2)
    assert ckpt_files(tmp_path) == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']
    pointer = tmp_path / 'last_checkpoint'
    if damage == 'empty':
        pointer.write_text('')
    elif damage == 'dangling':
        pointer.write_text(str(tmp_path / 'iter_8.pth'))
    elif damage == 'truncated':
        truncate(tmp_path / 'iter_6.pth')
    else:
        pointer.unlink()

    runner = train(tmp_path, max_iters=8, interval=2, resume=True)
    assert probe(runner).start_iter == resumed_from
    assert runner.iter == 8
    text = log_text(runner)
    assert says in text, text[-3000:]
    assert f'iter_{resumed_from}.pth (iteration {resumed_from})' in text
    assert last_checkpoint(tmp_path).endswith('iter_8.pth')


def test_auto_resume_without_any_intact_checkpoint_fails_clearly(tmp_path):
    train(tmp_path, max_iters=4, interval=2)
    for name in ('iter_2.pth', 'iter_4.pth'):
        truncate(tmp_path / name)
    with pytest.raises(CheckpointResumeError) as err:
        train(tmp_path, max_iters=6, interval=2, resume=True)
    message = str(err.value)
    assert 'iter_4.pth, which is truncated' in message
    assert 'iter_2.pth (truncated' in message
    assert '--resume PATH' in message and 'remove last_checkpoint' in message


@pytest.mark.parametrize('kill', ['midwrite:3', 'pointer:3'])
def test_killed_during_checkpoint_save_resumes_from_intact(tmp_path, kill):
    """SIGKILL inside the save of iter_3.pth, with max_keep_ckpts=1: mmengine
    would have deleted iter_2.pth before writing iter_3.pth; here iter_2.pth
    survives and the next run continues from it."""
    killed = run_script(tmp_path, '--kill', kill, '--max-keep', '1')
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    files = ckpt_files(tmp_path)
    assert 'iter_2.pth' in files
    assert checkpoint_problem(str(tmp_path / 'iter_2.pth')) is None
    assert last_checkpoint(tmp_path).endswith('iter_2.pth')
    if kill.startswith('midwrite'):
        assert 'iter_3.pth' not in files
        assert any(re.fullmatch(r'\.iter_3\.pth\.\d+\.tmp', f) for f in files)
    else:
        assert checkpoint_problem(str(tmp_path / 'iter_3.pth')) is None

    resumed = run_script(tmp_path, '--resume', '--max-keep', '1')
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert 'Auto resumed from the latest checkpoint' in out
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'TOY before_train iter=2' in out
    if kill.startswith('midwrite'):
        assert 'incomplete temporary file' in out
    assert 'TOY done' in out
    assert ckpt_files(tmp_path) == ['iter_5.pth']
    assert last_checkpoint(tmp_path).endswith('iter_5.pth')


FSIZE_SCRIPT = '''
import resource, sys
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
import xcit_mm
from tests.test_engine.test_hooks.toy import build_runner, toy_cfg

@HOOKS.register_module(force=True)
class XCiTMMToyDiskFullHook(Hook):
    """From the checkpoint of iteration 3 on (after the logger, before the
    checkpoint hook), no file of the process may exceed 256 bytes."""
    priority = 'LOW'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == 3:
            resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

cfg = toy_cfg(sys.argv[1], max_iters=4, interval=1, max_keep_ckpts=1,
              custom_hooks=[dict(type='XCiTMMToyDiskFullHook')])
build_runner(cfg).train()
'''


def test_failed_save_names_the_file_and_keeps_the_previous(tmp_path):
    """A save that hits a file-size limit (as on a full disk) stops the run
    with one message naming the file and the intact previous checkpoint;
    nothing half-written, last_checkpoint unchanged, nothing removed."""
    res = subprocess.run([PYTHON, '-c', FSIZE_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env=subprocess_env())
    assert res.returncode != 0
    assert (f'OSError: Saving checkpoint {tmp_path}/iter_3.pth failed (File '
            f'too large); the previous checkpoint, {tmp_path}/iter_2.pth, is '
            'intact and last_checkpoint still names it. Free space or fix the '
            'permissions, then resume (--resume).') in res.stderr
    assert ckpt_files(tmp_path) == ['iter_2.pth']
    assert checkpoint_problem(str(tmp_path / 'iter_2.pth')) is None
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
