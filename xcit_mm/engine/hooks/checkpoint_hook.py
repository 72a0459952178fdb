"""AtomicCheckpointHook: mmengine's ``CheckpointHook`` made crash-safe, with
a resume that survives a broken ``last_checkpoint`` and files that plain
``torch.load`` reads."""
import contextlib
import glob
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import (broadcast_object_list, get_world_size,
                           is_main_process)
from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.io import _parse_uri_prefix
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CheckpointResumeError',
    'atomic_write', 'checkpoint_problem', 'decode_checkpoint',
    'encode_checkpoint'
]

# What atomic_write leaves of a killed write: ``.<final name>.<pid>.tmp``.
_TMP_PATTERN = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$')


# -- Atomic files ----------------------------------------------------------
def atomic_write(data: bytes, path: str) -> None:
    """Writes ``data`` to ``path`` (creating its directory) so that ``path``
    is never incomplete.

    The bytes go to ``.<name>.<pid>.tmp`` beside ``path``, are ``fsync``-ed
    and renamed onto ``path`` with ``os.replace`` (atomic on POSIX and
    Windows); the directory is then ``fsync``-ed, where the file system lets
    it be opened, so that the rename survives a power cut. A process killed
    on the way leaves ``path`` as it was, plus at most the temporary file,
    which :class:`AtomicCheckpointHook` removes on the next run.
    """
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@register_backend('xcit_atomic_local', force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing through :func:`atomic_write`:
    what :class:`AtomicCheckpointHook` saves checkpoints with. It is bound to
    no path prefix, so nothing else in mmengine uses it."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


def checkpoint_problem(path: str) -> Optional[str]:
    """What is wrong with the checkpoint file ``path``: ``None`` if it is
    intact, else a short reason (``'missing'``, ``'empty (0 bytes)'``,
    ``'truncated (...)'``, ...).

    ``torch.save`` writes a zip archive; a file cut short loses the central
    directory (written last), a damaged one fails a member's CRC. Both are
    found without unpickling anything, in one sequential read
    (``ZipFile.testzip``). A legacy (non-zip) file is loaded with
    ``weights_only=True``, which honours the globals xcit_mm allows at
    import. Directories (DeepSpeed checkpoints) are accepted as they are.
    """
    if osp.isdir(path):
        return None
    if not osp.exists(path):
        return 'missing'
    try:
        size = osp.getsize(path)
        if size == 0:
            return 'empty (0 bytes)'
        with open(path, 'rb') as f:
            magic = f.read(4)
        if magic != b'PK\x03\x04':  # legacy format, or not a checkpoint
            torch.load(path, map_location='cpu', weights_only=True)
            return None
        if not zipfile.is_zipfile(path):
            return (f'truncated ({size} bytes; the zip archive has no '
                    'central directory, so it was cut short while being '
                    'written)')
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                return f'corrupt (CRC error in member {bad!r})'
            if not any(name == 'data.pkl' or name.endswith('/data.pkl')
                       for name in archive.namelist()):
                return 'not a torch checkpoint (no data.pkl inside)'
        return None
    except Exception as err:  # noqa: BLE001 - any failure means unreadable
        return f'unreadable ({type(err).__name__}: {err})'


# -- Checkpoint contents that plain ``torch.load`` accepts -----------------
_MARK = '__xcit_mm_encoded__'
# numpy dtypes that map one-to-one onto torch dtypes
_TENSOR_DTYPES = {
    np.dtype(name)
    for name in ('bool', 'uint8', 'int8', 'int16', 'int32', 'int64', 'float16',
                 'float32', 'float64', 'complex64', 'complex128')
}


def _tensor(array) -> Optional[torch.Tensor]:
    """``array`` as a tensor of the same dtype; ``None`` if torch has none."""
    array = np.asarray(array)
    if array.dtype not in _TENSOR_DTYPES:
        return None
    return torch.from_numpy(np.ascontiguousarray(array)).clone()


def _map_items(obj, fn):
    """``obj`` with ``fn`` applied to the items of a dict, list or tuple
    (keeping its type, namedtuples included). ``obj`` itself when no item
    changes, so containers and their attributes (a state dict's
    ``_metadata``) are kept unless they must change."""
    if isinstance(obj, dict):
        items = {key: fn(value) for key, value in obj.items()}
        if all(items[key] is value for key, value in obj.items()):
            return obj
        try:
            out = type(obj)()
        except TypeError:  # a dict subclass that needs arguments
            out = {}
        out.update(items)
        return out
    if isinstance(obj, (list, tuple)):
        items = [fn(value) for value in obj]
        if all(new is old for new, old in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, '_fields') else tuple(items)
    return obj


def _encode(obj):
    if isinstance(obj, HistoryBuffer):
        logs, counts = _tensor(obj._log_history), _tensor(obj._count_history)
        if logs is None or counts is None:
            return obj
        return {
            _MARK: 'HistoryBuffer',
            'log_history': logs,
            'count_history': counts,
            'max_length': int(obj.max_length),
        }
    if isinstance(obj, np.ndarray):
        tensor = _tensor(obj)
        return obj if tensor is None else {_MARK: 'ndarray', 'data': tensor}
    if isinstance(obj, (np.bool_, np.number, np.str_)):
        return obj.item()
    return _map_items(obj, _encode)


def _decode(obj):
    kind = obj.get(_MARK) if isinstance(obj, dict) else None
    if kind == 'HistoryBuffer':
        return HistoryBuffer(obj['log_history'].numpy(),
                             obj['count_history'].numpy(), obj['max_length'])
    if kind == 'ndarray':
        return obj['data'].numpy()
    return _map_items(obj, _decode)


def encode_checkpoint(checkpoint: dict) -> None:
    """Makes a checkpoint dict loadable by ``torch.load(weights_only=True)``
    without extra allowed globals, in place.

    mmengine's runner stores the message hub's ``HistoryBuffer`` objects
    and sometimes numpy arrays and scalars (metrics, dataset meta) in every
    checkpoint, which the weights-only loader (``torch.load``'s default
    since torch 2.6) refuses. Buffers and arrays become marked dicts of
    tensors of the same dtype, numpy scalars the equal Python scalars;
    arrays of dtypes torch lacks (strings, objects) stay as they are.
    """
    for key, value in checkpoint.items():
        checkpoint[key] = _encode(value)


def decode_checkpoint(checkpoint: dict) -> None:
    """Undoes :func:`encode_checkpoint` in place, exactly (a no-op for
    checkpoints written without it)."""
    for key, value in checkpoint.items():
        checkpoint[key] = _decode(value)


# -- AtomicCheckpointHook --------------------------------------------------
class CheckpointResumeError(RuntimeError):
    """An automatic resume found no intact checkpoint to continue from."""


class _DeferredRemovals:
    """Stands in for a file backend while a parent-class method runs and
    collects its ``remove``/``rmtree`` calls instead of doing them."""

    def __init__(self, backend):
        self._backend = backend
        self.paths: List[str] = []

    def remove(self, path) -> None:
        self.paths.append(path)

    rmtree = remove

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, someone else's
    except (OSError, OverflowError):
        return False
    return True


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with crash-safe files and resume.

    It takes ``CheckpointHook``'s arguments (a config changes only ``type``)
    plus ``weights_only_compatible``. For a local checkpoint directory (the
    work dir or a local ``out_dir``):

    - **Complete files.** Checkpoints (periodic and best) and
      ``last_checkpoint`` are written by :func:`atomic_write` (through
      :class:`AtomicLocalBackend`). mmengine's ``LocalBackend.put`` writes
      in place: a kill mid-write leaves a truncated file that
      ``last_checkpoint`` may already, or still, name.
    - **Removal last.** mmengine deletes the checkpoint that
      ``max_keep_ckpts`` retires *before* writing the new one, so a crash
      then can leave ``last_checkpoint`` naming a deleted file. Here it (and,
      with ``save_best``, the previous best) goes only after the new
      checkpoint and ``last_checkpoint`` are complete.
    - **Resume past a broken pointer.** For ``resume=True`` without
      ``load_from`` (``tools/train.py --resume``), mmengine resumes from
      whatever ``last_checkpoint`` names. If that is empty, missing,
      truncated or corrupt (:func:`checkpoint_problem`), or
      ``last_checkpoint`` itself is missing beside intact checkpoints (a
      kill between the first checkpoint and its pointer), the pointer is
      moved to the newest intact checkpoint (highest number in
      ``filename_tmpl``, then newest file) with a warning naming both. With
      no intact one: :class:`CheckpointResumeError`, or, without a pointer
      either, a fresh start as in mmengine. Temporary files of dead
      processes are removed.
    - **Plain torch.load.** With ``weights_only_compatible`` the message
      hub and numpy values are encoded (:func:`encode_checkpoint`) in
      ``before_save_checkpoint``, so any script (mmdet's
      ``publish_model.py``) reads the files with ``torch.load(path,
      weights_only=True)`` and no extra allowed globals.
      ``Runner.load_checkpoint`` calls ``after_load_checkpoint``, which
      decodes them, before ``Runner.resume`` uses
      ``checkpoint['message_hub']`` and ``meta['dataset_meta']``. Under
      plain ``CheckpointHook`` they still resume, minus the logger's
      smoothing history (skipped with a warning; numpy arrays in the
      runtime info stay encoded).

    The resume repair is in ``before_run`` because ``Runner.train`` (and
    ``val``/``test``) call ``call_hook('before_run')`` and only then
    ``load_or_resume()``, which reads ``last_checkpoint`` through
    ``find_latest_checkpoint`` (mmengine 0.10 ``runner/runner.py``); hooks
    are built in ``Runner.__init__`` without the work dir, and
    ``before_train`` runs after the resume. The main process repairs, the
    other ranks wait for its outcome (a broadcast). :class:`WorkDirLockHook`
    (``HIGHEST``) locks the work dir before this hook (``VERY_LOW``) runs,
    so a second run never rewrites the pointer of a live one.

    With a non-local ``out_dir``, another backend in ``backend_args`` or the
    deprecated ``file_client_args``, only the ``torch.load`` encoding is
    left: the rest is plain ``CheckpointHook`` (that backend's atomicity is
    its own; nothing is checked on resume).

    Args:
        weights_only_compatible (bool): Encode the checkpoints for plain
            ``torch.load(path, weights_only=True)``. Defaults to True.
        *args, **kwargs: Those of mmengine's ``CheckpointHook``.

    Examples:
        >>> default_hooks = dict(checkpoint=dict(
        ...     type='AtomicCheckpointHook', by_epoch=False, interval=2000,
        ...     max_keep_ckpts=3, save_best='coco/bbox_mAP'))
    """

    def __init__(self,
                 *args,
                 weights_only_compatible: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weights_only_compatible = weights_only_compatible
        backend = (self.backend_args or {}).get('backend', 'local')
        local_out_dir = self.out_dir is None or _parse_uri_prefix(
            str(self.out_dir)) == ''
        self._atomic = (
            self.file_client_args is None
            and backend in ('local', 'xcit_atomic_local') and local_out_dir)
        if self._atomic:
            self.backend_args = dict(
                self.backend_args or {}, backend='xcit_atomic_local')

    # -- before_run: clean up and repair the resume pointer -------------
    def before_run(self, runner) -> None:
        """Removes temporary files of dead processes and, for an automatic
        resume, makes ``last_checkpoint`` name an intact checkpoint.

        Raises:
            CheckpointResumeError: ``last_checkpoint`` is broken and no
                intact checkpoint is left to resume from.
        """
        super().before_run(runner)
        if not self._atomic:
            return
        error = None
        if is_main_process():
            # the directory before_train will choose (it runs after this)
            ckpt_dir = runner.work_dir
            if self.out_dir is not None and str(
                    self.out_dir) != runner.work_dir:
                ckpt_dir = osp.join(
                    str(self.out_dir),
                    osp.basename(runner.work_dir.rstrip(osp.sep)))
            self._remove_stale_temp_files(runner, ckpt_dir)
            if runner._resume and runner._load_from is None:
                try:
                    self._repair_last_checkpoint(runner, ckpt_dir)
                except CheckpointResumeError as err:
                    error = str(err)
        if get_world_size() > 1:
            outcome = [error]
            broadcast_object_list(outcome, src=0)
            error = outcome[0]
        if error is not None:
            raise CheckpointResumeError(error)

    def _remove_stale_temp_files(self, runner, ckpt_dir: str) -> None:
        """Removes what :func:`atomic_write` left of the checkpoints and
        ``last_checkpoint`` of processes that are no longer running."""
        suffix = osp.splitext(self.filename_tmpl)[1] or '.pth'
        for directory in {ckpt_dir, runner.work_dir}:
            if not osp.isdir(directory):
                continue
            for name in os.listdir(directory):
                match = _TMP_PATTERN.match(name)
                if not match or not (match['name'] == 'last_checkpoint'
                                     or match['name'].endswith(suffix)):
                    continue
                pid = int(match['pid'])
                if _pid_alive(pid):
                    continue
                path = osp.join(directory, name)
                with contextlib.suppress(OSError):
                    os.remove(path)
                    runner.logger.warning(
                        f'Removed {path}: the incomplete temporary file of '
                        f'a checkpoint write by process {pid}, which is no '
                        'longer running.')

    def _numbered_checkpoints(self, ckpt_dir: str) -> List[Tuple[int, str]]:
        """``(number, path)`` of the files named by ``filename_tmpl``,
        newest first (highest number, then latest modification)."""
        head, _, tail = self.filename_tmpl.partition('{}')
        pattern = re.compile(re.escape(head) + r'(\d+)' + re.escape(tail))
        found = []
        for path in glob.glob(
                osp.join(
                    glob.escape(ckpt_dir),
                    glob.escape(head) + '*' + glob.escape(tail))):
            match = pattern.fullmatch(osp.relpath(path, ckpt_dir))
            if match:
                with contextlib.suppress(OSError):
                    found.append((int(match[1]), osp.getmtime(path), path))
        found.sort(reverse=True)
        return [(number, path) for number, _, path in found]

    def _repair_last_checkpoint(self, runner, ckpt_dir: str) -> None:
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        target = problem = None  # no pointer: mmengine starts from scratch
        if osp.exists(pointer):
            with open(pointer) as f:
                target = f.read().strip()
            if not target:
                problem = 'is empty'
            else:
                reason = checkpoint_problem(target)
                if reason is None:
                    return
                problem = f'names {target}, which is {reason}'

        skipped = []
        fallback = None
        for number, path in self._numbered_checkpoints(ckpt_dir):
            if target and osp.abspath(path) == osp.abspath(target):
                continue
            reason = checkpoint_problem(path)
            if reason is None:
                fallback = (number, path)
                break
            skipped.append(f'{osp.basename(path)} ({reason})')

        if fallback is None:
            if problem is None:
                return  # nothing to resume from: a fresh start, as mmengine
            tried = '; also broken: ' + ', '.join(skipped) if skipped else ''
            raise CheckpointResumeError(
                f'Cannot resume the training in {runner.work_dir}: '
                f'{pointer} {problem}, and {ckpt_dir} holds no other intact '
                f'checkpoint ({self.filename_tmpl.format("N")}){tried}. To '
                'start from scratch, remove last_checkpoint (and the broken '
                'files) or run without --resume; to continue from a '
                'particular file, pass it: --resume PATH (load_from=PATH, '
                'resume=True).')
        number, path = fallback
        atomic_write(path.encode(), pointer)
        newest = f'{path} ({"epoch" if self.by_epoch else "iteration"} ' \
            f'{number})'
        if problem is None:
            message = (f'{pointer} is missing, but {ckpt_dir} holds intact '
                       f'checkpoints: resuming from the newest, {newest}.')
        else:
            message = (f'{pointer} {problem}; resuming from the newest intact '
                       f'checkpoint instead: {newest}.')
        if skipped:
            message += ' Skipped broken: ' + ', '.join(skipped) + '.'
        runner.logger.warning(message)

    # -- saving ---------------------------------------------------------
    def _remove_checkpoint(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # a DeepSpeed checkpoint
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine's version, but the checkpoint that ``max_keep_ckpts``
        retires is removed after ``step`` and ``last_checkpoint`` are
        saved, not before."""
        if not self._atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        retired = None
        # _save_checkpoint and _save_best_checkpoint may both save a step;
        # it is counted once.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                retired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write(
            str(self.last_ckpt).encode(),
            osp.join(runner.work_dir, 'last_checkpoint'))
        if retired is not None:
            self._remove_checkpoint(
                self.file_backend.join_path(
                    self.out_dir, self.filename_tmpl.format(retired)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's version, but the previous best (and any retired
        periodic) checkpoint is removed after the new one is saved."""
        if not self._atomic:
            return super()._save_best_checkpoint(runner, metrics)
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemovals(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        # mmengine keeps best_ckpt_path for one save_best key, else the dict
        best = [
            getattr(self, 'best_ckpt_path', None),
            *getattr(self, 'best_ckpt_path_dict', {}).values()
        ]
        keep = {str(path) for path in [self.last_ckpt, *best] if path}
        for path in deferred.paths:
            if str(path) not in keep:
                self._remove_checkpoint(path)

    # -- the message hub in plain torch.load form -----------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.weights_only_compatible:
            encode_checkpoint(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        decode_checkpoint(checkpoint)
