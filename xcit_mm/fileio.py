"""Complete files or none: :func:`atomic_write`, used by every writer of the
package (checkpoints, ``last_checkpoint``, converted weights), and
:class:`AtomicLocalBackend`, mmengine's local file backend writing through
it (registered as ``'xcit_atomic_local'`` for ``backend_args``)."""
import contextlib
import os
import os.path as osp
from typing import Callable, List, Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['AtomicWriteError', 'AtomicLocalBackend', 'atomic_write']


class AtomicWriteError(OSError):
    """A write that failed and left the file as it was."""


def atomic_write(path: str, data: Union[bytes, str, Callable]) -> None:
    """Writes ``data`` (bytes, text, or ``fn(binary_file)``) to ``path`` so
    that ``path`` is never incomplete.

    The data goes to ``.<name>.<pid>.tmp`` beside ``path``, is ``fsync``-ed
    and renamed onto ``path`` (``os.replace``, atomic on POSIX and Windows);
    the directory is then ``fsync``-ed where the file system allows. A killed
    process leaves ``path`` as it was, plus at most the temporary file.

    Raises:
        AtomicWriteError: the write failed (disk full, file too large, no
            permission); the message names ``path`` and says it is intact.
    """
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
    whose removals wait for :meth:`flush_removals`, so that a caller removes
    old files only once the new ones are complete. A path written after its
    removal was requested is kept."""

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

    def flush_removals(self) -> List[str]:
        """Removes the files (and directories) whose removal waited; returns
        their paths."""
        done, self.pending_removals = self.pending_removals, []
        for path in done:
            if osp.isdir(path):
                super().rmtree(path)
            elif osp.exists(path):
                super().remove(path)
        return done
