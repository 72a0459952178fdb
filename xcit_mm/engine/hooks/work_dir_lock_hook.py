"""WorkDirLockHook: refuses a second live training in the same work dir."""
import os
import os.path as osp
import socket
import time

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_HELD = {}  # real path of a lock file -> its open file, in this process


class WorkDirLockedError(RuntimeError):
    """Another live training holds the work dir."""


def lock_work_dir(work_dir: str, filename: str = '.train.lock') -> bool:
    """Takes a non-blocking exclusive ``flock`` on ``work_dir/filename`` for
    this process (which it records: pid, host, start); the system drops it
    when the process dies, however it dies. A refused call writes nothing.
    Returns False where ``flock`` is not available.

    Raises:
        WorkDirLockedError: another live process holds it.
    """
    path = osp.realpath(osp.join(work_dir, filename))
    if path in _HELD or fcntl is None:
        return fcntl is not None
    os.makedirs(work_dir, exist_ok=True)
    lock_file = open(path, 'a+')
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = dict(ln.partition('=')[::2] for ln in lock_file.read().split())
        lock_file.close()
        raise WorkDirLockedError(
            f'Another training is running in the work dir {work_dir} '
            f'(process {holder.get("pid", "?")} on {holder.get("host", "?")}'
            f', started {holder.get("started", "?")}; it holds {path}). Two '
            "trainings in one work dir overwrite each other's checkpoints: "
            'wait for it to finish or stop it, or train in another work dir '
            '(--work-dir DIR).') from None
    except OSError:
        lock_file.close()
        return False
    lock_file.truncate(0)
    lock_file.write(f'pid={os.getpid()} host={socket.gethostname()} '
                    f'started={time.strftime("%Y-%m-%dT%H:%M:%S")}\n')
    lock_file.flush()
    _HELD[path] = lock_file
    return True


def unlock_work_dir(work_dir: str, filename: str = '.train.lock') -> None:
    """Releases this process's lock (explicitly: forked dataloader workers
    share the open file)."""
    lock_file = _HELD.pop(osp.realpath(osp.join(work_dir, filename)), None)
    if lock_file is not None:
        lock_file.truncate(0)
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Takes the work-dir lock (:func:`lock_work_dir`) on the main process
    when a training starts, and releases it after the run. ``before_run``
    comes after ``Runner.__init__`` has made its log dir and dumped the
    config: ``tools/train.py`` takes the lock before building the runner,
    so that a refused run writes nothing. Priority ``HIGHEST``. Warns and
    does nothing where ``flock`` is not available (Windows, some network
    file systems). Evaluation runs do not lock."""
    priority = 'HIGHEST'

    def __init__(self, filename: str = '.train.lock') -> None:
        self.filename = filename

    def before_train(self, runner) -> None:
        if is_main_process() and \
                not lock_work_dir(runner.work_dir, self.filename):
            runner.logger.warning('WorkDirLockHook: cannot lock the work dir'
                                  ' (no flock here) against a second run.')

    def after_run(self, runner) -> None:
        unlock_work_dir(runner.work_dir, self.filename)
