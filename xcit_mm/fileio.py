"""Complete files or none: :func:`atomic_write`, the one writer of the
package; :class:`AtomicLocalBackend`, mmengine's local file backend through
it (``backend_args=dict(backend='xcit_atomic_local')``); and what finds a
killed writer's leftovers (:func:`checkpoint_problem`,
:func:`remove_dead_temp_files`)."""
import contextlib
import os
import os.path as osp
import re
import zipfile
from typing import Callable, List, Optional, Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = [
    'AtomicWriteError', 'AtomicLocalBackend', 'atomic_write',
    'checkpoint_problem', 'remove_dead_temp_files'
]
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
