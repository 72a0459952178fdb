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
    """Takes a ``flock`` on ``work_dir/filename`` for this process (which
    the system drops when the process dies, however it dies), or raises
    :class:`WorkDirLockedError` and writes nothing. False without flock."""
    path = osp.realpath(osp.join(work_dir, filename))
    if path in _HELD or fcntl is None:
        return fcntl is not None
    os.makedirs(work_dir, exist_ok=True)
    lock_file = open(path, 'a+')
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        lock_file.seek(0)
        holder, _ = lock_file.read().strip(), lock_file.close()
        if not isinstance(err, BlockingIOError):
            return False
        raise WorkDirLockedError(
            f'Another training is running in the work dir {work_dir} (process'
            f' {holder or "?"}; it holds {path}): wait for it or stop it, or '
            'train in another work dir (--work-dir DIR).') from None
    lock_file.truncate(0)
    lock_file.write(f'{os.getpid()} on {socket.gethostname()}, started '
                    f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    lock_file.flush()
    _HELD[path] = lock_file
    return True


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """The work-dir lock (:func:`lock_work_dir`) on the main process from
    the start of training (``tools/train.py`` takes it before the runner
    writes anything) to the end of the run. Warns without ``flock``."""
    priority = 'HIGHEST'

    def __init__(self, filename: str = '.train.lock') -> None:
        self.filename = filename

    def before_train(self, runner) -> None:
        if is_main_process() and \
                not lock_work_dir(runner.work_dir, self.filename):
            runner.logger.warning('WorkDirLockHook: no flock here; the work '
                                  'dir is not locked against a second run.')

    def after_run(self, runner) -> None:
        path = osp.realpath(osp.join(runner.work_dir, self.filename))
        lock_file = _HELD.pop(path, None)
        if lock_file is not None:  # unlocked: dataloader workers share it
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()
