"""WorkDirLockHook: a second live training in a work dir is refused, and
the lock is released after a kill and after a run."""
import signal
import time

import xcit_mm  # noqa: F401  (registers the hooks, as configs import it)
from tests.test_engine.test_hooks.toy import (probe, run_script, start_script,
                                              train)


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
