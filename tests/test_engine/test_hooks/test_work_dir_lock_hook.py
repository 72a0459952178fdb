"""WorkDirLockHook: a second live training in a work dir is refused, and
the lock is released after a kill and after a run."""
import os
import os.path as osp
import signal
import subprocess
import time

import xcit_mm  # noqa: F401  (registers the hooks, as configs import it)
from tests.test_engine.test_hooks.toy import (PYTHON, REPO_ROOT, probe,
                                              run_script, start_script,
                                              subprocess_env, toy_cfg, train)


def test_second_training_in_a_live_work_dir_is_refused(tmp_path):
    work = tmp_path / 'work'
    started = tmp_path / 'started'
    first = start_script(work, '--lock', '--max-iters', '100000', '--interval',
                         '1000000', '--sleep', '0.2', '--started-file',
                         str(started))
    try:
        deadline = time.time() + 90
        while not started.exists():
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, 'the first training never started'
            time.sleep(0.1)

        t0 = time.time()
        second = run_script(work, '--lock', '--max-iters', '2')
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert 'WorkDirLockedError: Another training is running in the work '\
            f'dir {work} (process {first.pid}' in out, out[-3000:]
        assert 'TOY before_train' not in out  # refused before training
        assert time.time() - t0 < 60
        assert first.poll() is None  # the first one runs on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        first.stdout.close()
    assert first.returncode == -signal.SIGKILL

    third = run_script(work, '--lock', '--max-iters', '2')
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    assert 'TOY done' in third.stdout


def test_lock_is_released_and_reusable_in_process(tmp_path):
    train(tmp_path, max_iters=2, custom_hooks=[dict(type='WorkDirLockHook')])
    # after_run released it: the next run (same process) takes it again
    runner = train(
        tmp_path,
        max_iters=4,
        resume=True,
        custom_hooks=[dict(type='WorkDirLockHook')])
    assert probe(runner).start_iter == 2


def _snapshot(folder):
    """The entries of ``folder``: its files with size and mtime, its
    folders (the running job's log dir, which it keeps writing in) by name.
    """
    found = {}
    for entry in os.scandir(folder):
        st = entry.stat()
        found[entry.name] = None if entry.is_dir() else (st.st_size,
                                                         st.st_mtime_ns)
    return found


def _tool_config(tmp_path, work, name, **probe):
    """A toy config that tools/train.py runs, with the probe's options."""
    cfg = toy_cfg(str(work), max_iters=100000, interval=1000000,
                  default_scope='mmdet')
    cfg.pop('experiment_name')
    cfg['custom_hooks'][0].update(probe)
    cfg['custom_imports'] = dict(
        imports=['xcit_mm', 'tests.test_engine.test_hooks.toy'],
        allow_failed_imports=False)
    path = tmp_path / name
    path.write_text('\n'.join(f'{k} = {v!r}' for k, v in cfg.items()))
    return str(path)


def _train_tool(config, *args):
    return [PYTHON, osp.join(REPO_ROOT, 'tools', 'train.py'), config, *args]


def _wait_started(proc, started):
    deadline = time.time() + 120
    while not started.exists():
        assert proc.poll() is None, 'the first training stopped'
        assert time.time() < deadline, 'the first training never started'
        time.sleep(0.1)


def _refused_without_a_write(second_cmd, work, first_pid):
    before = _snapshot(work)
    time.sleep(0.05)  # a rewrite would show in the mtimes
    proc = subprocess.run(second_cmd, capture_output=True, text=True,
                          timeout=180, env=subprocess_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f'Another training is running in the work dir {work} (process '\
        f'{first_pid} ' in out, out[-3000:]
    assert 'TOY before_train' not in out
    # no log dir, no config dump, no lock rewritten
    assert _snapshot(work) == before


def test_refused_run_writes_nothing_when_the_hook_holds_the_lock(tmp_path):
    """The running job took the lock in its hook (a config run by any
    tool); tools/train.py refuses before its runner writes anything."""
    work, started = tmp_path / 'work', tmp_path / 'started'
    first = start_script(work, '--lock', '--max-iters', '100000',
                         '--interval', '1000000', '--sleep', '0.2',
                         '--started-file', str(started))
    try:
        _wait_started(first, started)
        config = _tool_config(tmp_path, work, 'second.py')
        _refused_without_a_write(_train_tool(config, '--resume'), work,
                                 first.pid)
    finally:
        first.kill()
        first.wait(30)
        first.stdout.close()


def test_refused_run_writes_nothing_when_tools_train_holds_the_lock(
        tmp_path):
    """The running job is tools/train.py (lock taken before its runner);
    a second tools/train.py and a runner with the hook are both refused."""
    work, started = tmp_path / 'work', tmp_path / 'started'
    config = _tool_config(tmp_path, work, 'first.py', sleep=0.2,
                          started_file=str(started))
    first = subprocess.Popen(_train_tool(config), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        _wait_started(first, started)
        _refused_without_a_write(_train_tool(config), work, first.pid)
        hook_run = run_script(work, '--lock', '--max-iters', '2')
        assert hook_run.returncode != 0
        assert f'(process {first.pid} ' in hook_run.stderr
        assert 'TOY before_train' not in hook_run.stdout
    finally:
        first.kill()
        first.wait(30)
