"""WorkDirLockHook: refuses a second live training in the same work dir."""
import contextlib
import os
import os.path as osp
import socket
import time
from typing import Dict

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ['WorkDirLockHook', 'WorkDirLockedError']


class WorkDirLockedError(RuntimeError):
    """Another live training holds the work dir."""


# Locks held by this process: real path of the lock file -> open file.
_HELD_LOCKS: Dict[str, object] = {}


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Refuses to start a training in a work dir where one is running.

    Two trainings in one work dir overwrite each other's checkpoints and
    ``last_checkpoint``. In ``before_run`` of a training run the main
    process takes a non-blocking exclusive ``fcntl.flock`` on
    ``<work_dir>/.train.lock`` (which records its pid, host and start time)
    until ``after_run``; if another process holds it, the run fails at once
    with :class:`WorkDirLockedError` naming the work dir and that pid. The
    operating system drops a ``flock`` when its process dies, however it
    dies, so a run killed with ``kill -9`` blocks nothing and leaves nothing
    to clean up.

    A hook of its own because the lock is useful with any checkpoint hook
    and must come before anything else touches the work dir in
    ``before_run``: priority ``HIGHEST``, while checkpoint hooks are
    ``VERY_LOW`` (so the resume repair happens under the lock).
    ``before_run`` is the earliest a hook can act (hooks are built in
    ``Runner.__init__`` without the runner), and by then ``Runner.__init__``
    has made the run's log dir and dumped the config into the work dir: a
    refused run leaves an empty log dir and a rewritten config dump, and
    touches nothing else.

    Only training takes the lock (``tools/test.py`` may evaluate a
    checkpoint of a running training). A run that raises keeps the lock
    until the process exits or a later run in it takes the lock over.
    Without ``fcntl`` (Windows), or on file systems refusing ``flock``, the
    hook warns and does nothing.

    Args:
        filename (str): The lock file, relative to the work dir.
            Defaults to ``'.train.lock'``.
    """

    priority = 'HIGHEST'

    def __init__(self, filename: str = '.train.lock') -> None:
        self.filename = filename
        self._file = None
        self._path = None

    @staticmethod
    def _is_training(runner) -> bool:
        # Runner.train builds the train loop before before_run; val/test do
        # not (and runner.train_loop would build it, hence _train_loop).
        loop = runner._train_loop
        return isinstance(loop, BaseLoop) and loop.iter < loop.max_iters

    def before_run(self, runner) -> None:
        """Takes the work-dir lock for a training run (rank 0 only).

        Raises:
            WorkDirLockedError: another live process holds the lock.
        """
        if not is_main_process() or not self._is_training(runner):
            return
        if fcntl is None:
            runner.logger.warning(
                'WorkDirLockHook: fcntl is not available here; the work dir '
                'is not locked against a second training.')
            return
        path = osp.join(runner.work_dir, self.filename)
        key = osp.realpath(path)
        previous = _HELD_LOCKS.pop(key, None)
        if previous is not None:  # a run of this process that raised
            previous.close()
        lock_file = open(path, 'a+')
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            # key=value lines
            holder = dict(
                line.partition('=')[::2]
                for line in lock_file.read().splitlines())
            lock_file.close()
            who = f'process {holder["pid"]}' if holder.get('pid') else \
                'another process'
            if holder.get('host'):
                who += f' on {holder["host"]}'
            if holder.get('started'):
                who += f', started {holder["started"]}'
            raise WorkDirLockedError(
                f'Another training is running in the work dir '
                f'{runner.work_dir} ({who}; it holds {path}). Two trainings '
                'in one work dir overwrite each other\'s checkpoints: wait '
                'for it to finish or stop it, or train in another work dir '
                '(--work-dir DIR).') from None
        except OSError as err:
            lock_file.close()
            runner.logger.warning(
                f'WorkDirLockHook: cannot lock {path} ({err}); the work dir '
                'is not locked against a second training.')
            return
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f'pid={os.getpid()}\nhost={socket.gethostname()}\n'
                        f'started={time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        lock_file.flush()
        self._file, self._path = lock_file, key
        _HELD_LOCKS[key] = lock_file

    def after_run(self, runner) -> None:
        """Releases the lock."""
        if self._file is None:
            return
        lock_file, self._file = self._file, None
        if _HELD_LOCKS.get(self._path) is lock_file:
            del _HELD_LOCKS[self._path]
        # An explicit unlock: forked dataloader workers share the open file,
        # so closing it here alone would not release the lock.
        with contextlib.suppress(OSError, ValueError):
            lock_file.seek(0)
            lock_file.truncate()
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        lock_file.close()
