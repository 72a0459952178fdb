"""Preemption, as clusters and users do it: real signals to real (tiny)
trainings with a dataloader worker, single-process and 2-process CPU. The
run saves the iteration it was in and exits 128+signal, --resume goes on
from there, and no process of the run (rank, launcher or dataloader
worker) outlives it. Every process a test starts carries a tag in its
environment, which is how the leftovers are found (``/proc``)."""
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

import xcit_mm  # noqa: F401  (registers the hooks)
from tests.test_engine.test_hooks.toy import ckpt_files, start_script

from .utils import REPO_ROOT, read_checkpoint, run_tool

TAG = 'XCIT_MM_TEST_TAG'
ITERS = 100  # never reached: each run is stopped long before
OPTIONS = [
    '--cfg-options', f'train_cfg.max_iters={ITERS}',
    f'train_cfg.val_interval={ITERS}', 'train_dataloader.num_workers=1',
    'train_dataloader.persistent_workers=True',
    f'default_hooks.checkpoint.interval={ITERS}'
]
STOPPED = re.compile(r'(SIGTERM|SIGINT): stopped after iteration (\d+), '
                     r'saved to (\S+); continue with --resume')


class Run:
    """A tool started in the background, its output going to a file."""

    def __init__(self, args, tmp_path):
        self.tag = uuid.uuid4().hex
        self.log = tmp_path / f'{self.tag}.log'
        env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1',
                   PYTHONUNBUFFERED='1', PYTHONWARNINGS='ignore')
        env[TAG] = self.tag
        cmd = (['bash'] if args[0].endswith('.sh') else [sys.executable]
               ) + [str(a) for a in args]
        with open(self.log, 'w') as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    @property
    def out(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 300):
        deadline = time.time() + timeout
        while not re.search(pattern, self.out):
            assert self.proc.poll() is None, self.out[-3000:]
            assert time.time() < deadline, f'no {pattern!r}'
            time.sleep(0.2)

    def processes(self) -> dict:
        """The live processes of the run: pid -> command line."""
        found = {}
        marker = f'{TAG}={self.tag}'.encode()
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open(f'/proc/{pid}/environ', 'rb') as f:
                    if marker not in f.read().split(b'\0'):
                        continue
                with open(f'/proc/{pid}/cmdline', 'rb') as f:
                    found[int(pid)] = f.read().replace(b'\0', b' ').decode()
            except OSError:  # gone, or a zombie
                continue
        return found

    def rank_pid(self, rank: int) -> int:
        """The pid of ``rank``: a child of the launcher (dist_train.sh
        execs torchrun), not one of its dataloader workers."""
        for pid in self.processes():
            try:
                with open(f'/proc/{pid}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
                with open(f'/proc/{pid}/environ', 'rb') as f:
                    env = f.read().split(b'\0')
            except OSError:
                continue
            if ppid == self.proc.pid and f'RANK={rank}'.encode() in env:
                return pid
        raise AssertionError(f'no rank {rank} among {self.processes()}')

    def assert_nothing_left(self, within: float = 10):
        deadline = time.time() + within
        while self.processes() and time.time() < deadline:
            time.sleep(0.2)
        left = self.processes()
        for pid in left:  # do not leave them to the next tests
            os.kill(pid, signal.SIGKILL)
        assert not left, f'still alive: {left}'

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def cleanup():
    runs = []
    yield runs.append
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
        for pid in run.processes():
            os.kill(pid, signal.SIGKILL)


def _stopped(out: str, work) -> int:
    """The iteration that the log says was saved, checked in the files."""
    found = STOPPED.search(out)
    assert found, out[-3000:]
    n = int(found.group(2))
    path = osp.join(str(work), f'iter_{n}.pth')
    assert found.group(3) == path
    with open(osp.join(str(work), 'last_checkpoint')) as f:
        assert f.read().strip() == path
    assert read_checkpoint(path)['meta']['iter'] == n
    return n


@pytest.mark.xdist_group('ade_trained')  # one training at a time
def test_sigterm_saves_the_iteration_and_resume_goes_on(
        ade_config, tmp_path, cleanup):
    work = tmp_path / 'work'
    run = Run(['tools/train.py', ade_config, '--work-dir', work] + OPTIONS,
              tmp_path)
    cleanup(run)
    run.wait_for(r'Iter\(train\) \[\s*3/')
    assert len(run.processes()) == 2  # the run and its dataloader worker
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM
    out = run.out
    assert 'SIGTERM: stopping after this iteration' in out
    n = _stopped(out, work)
    assert n >= 3
    assert 'Traceback' not in out
    run.assert_nothing_left(within=0)

    res = run_tool(['tools/train.py', ade_config, '--work-dir', work,
                    '--resume', '--cfg-options', f'train_cfg.max_iters={n + 2}'])
    assert f'resumed epoch: 0, iter: {n}' in res.out
    for i in (n + 1, n + 2):
        assert re.search(rf'Iter\(train\)\s*\[\s*{i}/{n + 2}\]', res.out)
    assert not re.search(rf'Iter\(train\)\s*\[\s*{n}/', res.out)
    # the longer schedule is said, with what it means for the lr
    assert (f'Resuming a run planned for {ITERS} iterations with '
            f'max_iters={n + 2}') in res.out
    assert "the learning-rate schedule is the checkpoint's" in res.out

    # a schedule that ends before the checkpoint: refused, nothing trained
    res = run_tool(['tools/train.py', ade_config, '--work-dir', work,
                    '--resume', '--cfg-options', f'train_cfg.max_iters={n}'],
                   check=False)
    assert res.code != 0
    assert (f'error: The checkpoint resumed from is at iteration {n + 2} '
            f'and the training ends at {n}: nothing left to train') in res.out
    assert 'Traceback' not in res.out


def test_a_second_signal_stops_at_once(tmp_path, cleanup):
    """Ctrl-C twice: the second does not wait for the iteration or save."""
    work = tmp_path / 'work'
    proc = start_script(work, '--preempt', '--max-iters', '1000',
                        '--interval', '1000', '--sleep', '3')
    try:
        for line in proc.stdout:
            if 'TOY sleeping after iter=2' in line:
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == -signal.SIGINT
        assert not [f for f in ckpt_files(work) if f.startswith('iter_')]
    finally:
        proc.kill()
        proc.stdout.close()


@pytest.mark.xdist_group('ade_trained')  # one training at a time
def test_signal_to_one_rank_stops_both_at_one_iteration(
        ade_config, tmp_path, cleanup):
    """Only rank 1 gets SIGTERM; rank 0 stops at the same iteration and
    saves it (only rank 0 logs)."""
    work = tmp_path / 'work'
    run = Run(['tools/dist_train.sh', ade_config, '2', '--work-dir', work] +
              OPTIONS, tmp_path)
    cleanup(run)
    run.wait_for(r'Iter\(train\) \[\s*3/')
    assert len(run.processes()) == 5  # launcher, 2 ranks, 2 workers
    os.kill(run.rank_pid(1), signal.SIGTERM)
    assert run.finish() != 0
    out = run.out
    n = _stopped(out, work)
    assert re.search(rf'exitcode\s*:\s*{128 + signal.SIGTERM}', out), \
        out[-3000:]
    assert not re.search(rf'Iter\(train\)\s*\[\s*{n + 1}/', out)
    run.assert_nothing_left(within=0)


@pytest.mark.xdist_group('ade_trained')  # one training at a time
def test_rank_killed_leaves_no_worker(ade_config, tmp_path, cleanup):
    """kill -9 of a rank: the launcher stops the other; no dataloader
    worker of either outlives its rank."""
    run = Run(['tools/dist_train.sh', ade_config, '2', '--work-dir',
               tmp_path / 'work'] + OPTIONS, tmp_path)
    cleanup(run)
    run.wait_for(r'Iter\(train\) \[\s*3/')
    assert len(run.processes()) == 5
    os.kill(run.rank_pid(1), signal.SIGKILL)
    assert run.finish() != 0
    run.assert_nothing_left(within=10)


@pytest.mark.xdist_group('ade_trained')  # one training at a time
def test_frozen_rank_is_named_after_the_timeout(ade_config, tmp_path,
                                                cleanup):
    """SIGSTOP of rank 1: rank 0 fails after env_cfg.dist_cfg.timeout,
    naming the setting and the rank it waited for."""
    run = Run(['tools/dist_train.sh', ade_config, '2', '--work-dir',
               tmp_path / 'work'] + OPTIONS + ['env_cfg.dist_cfg.timeout=10'],
              tmp_path)
    cleanup(run)
    run.wait_for(r'Iter\(train\) \[\s*3/')
    frozen = run.rank_pid(1)
    os.kill(frozen, signal.SIGSTOP)
    try:
        t0 = time.time()
        run.wait_for(r'error: rank 0: no answer', timeout=60)
        assert time.time() - t0 < 40
    finally:
        os.kill(frozen, signal.SIGKILL)
    assert run.finish() != 0
    assert ('error: rank 0: no answer from rank 1 within 10 s '
            '(env_cfg.dist_cfg.timeout)') in run.out
    assert 'env_cfg.dist_cfg.timeout=SECONDS' in run.out
    run.assert_nothing_left(within=10)
