"""Complete files or none: :func:`atomic_write`, the one writer of the
package; :class:`AtomicLocalBackend`, mmengine's local file backend through
it (``backend_args=dict(backend='xcit_atomic_local')``); and what finds a
killed writer's leftovers (:func:`checkpoint_problem`,
:func:`remove_dead_temp_files`); the work-dir lock (:func:`lock_work_dir`)."""
import contextlib
import os
import os.path as osp
import re
import socket
import time
import zipfile
from typing import Callable, List, Optional, Union

from mmengine.fileio import LocalBackend, register_backend

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
__all__ = [
    'AtomicWriteError', 'AtomicLocalBackend', 'atomic_write',
    'checkpoint_problem', 'remove_dead_temp_files', 'lock_work_dir',
    'unlock_work_dir', 'WorkDirLockedError'
]
_HELD = {}  # real path of a lock file -> its open file, in this process
_TMP = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$')  # atomic_write's


class AtomicWriteError(OSError):
    """A write that failed and left the file as it was."""


def atomic_write(path: str, data: Union[bytes, str, Callable]) -> None:
    """Writes ``data`` (bytes, text, or ``fn(binary_file)``) to
    ``.<name>.<pid>.tmp`` beside ``path``, ``fsync``-s it and renames it onto
    ``path`` (``os.replace``, atomic), then ``fsync``-s the directory where
    possible: a killed process leaves ``path`` as it was, plus at most the
    temporary file. A failed write (disk full, no permission) raises
    :class:`AtomicWriteError` naming ``path`` and saying it is intact."""
    path = str(path)
    directory = osp.dirname(osp.abspath(path))
    tmp = osp.join(directory, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, 'wb') as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError):
            state = 'is unchanged' if osp.exists(path) else 'was not created'
            raise AtomicWriteError(
                err.errno, f'Could not write {path} ({err.strerror or err}); '
                f'it {state} and nothing was half-written. Free space or fix '
                'the permissions of its directory, then try again.') from err
        raise
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@register_backend('xcit_atomic_local', force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose writes are :func:`atomic_write` and
    whose removals wait for :meth:`flush_removals` (once the new files are
    complete); a path written after its removal was requested is kept."""

    def __init__(self) -> None:
        self.pending_removals: List[str] = []

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, obj)
        if str(filepath) in self.pending_removals:
            self.pending_removals.remove(str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)

    def remove(self, filepath) -> None:
        self.pending_removals.append(str(filepath))

    rmtree = remove

    def flush_removals(self) -> None:
        """Removes the files (and directories) whose removal waited."""
        done, self.pending_removals = self.pending_removals, []
        for path in done:
            if osp.isdir(path):
                super().rmtree(path)
            elif osp.exists(path):
                super().remove(path)


def remove_dead_temp_files(directory: str) -> List[str]:
    """Removes the temporary files that :func:`atomic_write` calls of
    processes no longer running left in ``directory``; returns them."""
    removed = []
    for name in os.listdir(directory) if osp.isdir(directory) else ():
        match = _TMP.match(name)
        with contextlib.suppress(OSError):
            if match:
                try:
                    os.kill(int(match['pid']), 0)  # still running
                except ProcessLookupError:
                    os.remove(osp.join(directory, name))
                    removed.append(osp.join(directory, name))
    return removed


def checkpoint_problem(path: str) -> Optional[str]:
    """``None`` if the checkpoint ``path`` is intact, else why not
    (``'missing'``, ``'empty (0 bytes)'``, ``'truncated (...)'``, ...), from
    its zip structure and CRCs, unpickling nothing. A directory (DeepSpeed)
    and a legacy non-zip file pass as they are."""
    if osp.isdir(path) or not osp.exists(path):
        return None if osp.isdir(path) else 'missing'
    if osp.getsize(path) == 0:
        return 'empty (0 bytes)'
    try:
        if not zipfile.is_zipfile(path):
            with open(path, 'rb') as f:
                if f.read(4) == b'PK\x03\x04':
                    return (f'truncated ({osp.getsize(path)} bytes; the zip '
                            'archive has no central directory)')
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                return f'corrupt (CRC error in member {bad!r})'
            if not any(n.endswith('data.pkl') for n in archive.namelist()):
                return 'not a torch checkpoint (no data.pkl inside)'
    except Exception as err:  # noqa: BLE001 - any failure means unreadable
        return f'unreadable ({type(err).__name__}: {err})'
    return None


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
            return False  # a file system without locks
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


def unlock_work_dir(work_dir: str, filename: str = '.train.lock') -> None:
    """Releases :func:`lock_work_dir`'s lock (dataloader workers share the
    open file, so it is unlocked, not only closed)."""
    lock_file = _HELD.pop(osp.realpath(osp.join(work_dir, filename)), None)
    if lock_file is not None:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()
