"""AtomicCheckpointHook: mmengine's ``CheckpointHook`` with complete files,
old checkpoints removed last, and a resume past a broken ``last_checkpoint``."""
import contextlib
import glob
import os
import os.path as osp
import re
import zipfile
from typing import Optional

from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ...fileio import AtomicLocalBackend, atomic_write
from ...weights.io import decode_legacy_checkpoint

__all__ = ['AtomicCheckpointHook', 'CheckpointResumeError', 'checkpoint_problem']

_TMP = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$')  # of atomic_write


class CheckpointResumeError(RuntimeError):
    """An automatic resume found no intact checkpoint to continue from."""


def checkpoint_problem(path: str) -> Optional[str]:
    """``None`` if the checkpoint ``path`` is intact, else why not
    (``'missing'``, ``'empty (0 bytes)'``, ``'truncated (...)'``, ...).

    A ``torch.save`` zip cut short has no central directory and a damaged
    one fails a CRC (``ZipFile.testzip``); nothing is unpickled. A directory
    (a DeepSpeed checkpoint) and a legacy non-zip file pass as they are.
    """
    if osp.isdir(path) or not osp.exists(path):
        return None if osp.isdir(path) else 'missing'
    size = osp.getsize(path)
    if size == 0:
        return 'empty (0 bytes)'
    try:
        if not zipfile.is_zipfile(path):
            with open(path, 'rb') as f:
                if f.read(4) == b'PK\x03\x04':
                    return (f'truncated ({size} bytes; the zip archive has no '
                            'central directory: cut short while written)')
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


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) made crash-safe for a
    local checkpoint directory:

    - **Complete files.** Checkpoints go through :class:`AtomicLocalBackend`
      (``backend_args=dict(backend='xcit_atomic_local')``, set here) and
      ``last_checkpoint`` through :func:`~xcit_mm.fileio.atomic_write`.
    - **Removal last.** The checkpoint that ``max_keep_ckpts`` retires and
      the previous best go only once the new file and ``last_checkpoint``
      are complete (mmengine removes them first).
    - **Resume past a broken pointer.** With ``resume=True`` and no
      ``load_from``, a ``last_checkpoint`` that is empty or names a missing,
      truncated or corrupt file (:func:`checkpoint_problem`), or is missing
      beside intact checkpoints, is moved in ``before_run`` (which runs
      before the runner resumes) to the newest intact checkpoint, with a
      warning naming both; with none intact, :class:`CheckpointResumeError`.
      Temporary files of dead processes are removed.
    - **A failed save** (disk full, file too large) raises an ``OSError``
      naming the file and saying that the previous checkpoint is intact.

    Checkpoints hold mmengine's message hub; ``import xcit_mm`` lets
    ``torch.load(weights_only=True)`` read them
    (:func:`xcit_mm.weights.register_safe_globals`). :meth:`save_now` saves
    on demand (e.g. on preemption) with the same guarantees. With another
    backend or a remote ``out_dir`` the files are that backend's.

    Examples:
        >>> default_hooks = dict(checkpoint=dict(
        ...     type='AtomicCheckpointHook', by_epoch=False, interval=2000,
        ...     max_keep_ckpts=3, save_best='coco/bbox_mAP'))
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.pop('weights_only_compatible', None)  # of older versions
        super().__init__(*args, **kwargs)
        backend = (self.backend_args or {}).get('backend', 'local')
        self.local = (self.file_client_args is None and '://' not in str(
            self.out_dir) and backend in ('local', 'xcit_atomic_local'))
        if self.local:
            self.backend_args = dict(self.backend_args or {},
                                     backend='xcit_atomic_local')

    def _flush(self) -> None:
        if isinstance(getattr(self, 'file_backend', None), AtomicLocalBackend):
            self.file_backend.flush_removals()

    def before_run(self, runner) -> None:
        """Removes temporary files of dead processes and, for an automatic
        resume, points ``last_checkpoint`` at an intact checkpoint."""
        super().before_run(runner)
        if not self.local:
            return
        error = None
        ckpt_dir = runner.work_dir if self.out_dir in (
            None, runner.work_dir) else osp.join(
                str(self.out_dir), osp.basename(runner.work_dir.rstrip(osp.sep)))
        if is_main_process():
            self._remove_stale_temp_files(runner, {ckpt_dir, runner.work_dir})
            if runner.cfg.get('resume') and not runner.cfg.get('load_from'):
                try:
                    self._repair_last_checkpoint(runner, ckpt_dir)
                except CheckpointResumeError as err:
                    error = str(err)
        outcome = [error]
        broadcast_object_list(outcome, src=0)  # a no-op in one process
        if outcome[0] is not None:
            raise CheckpointResumeError(outcome[0])

    def _remove_stale_temp_files(self, runner, directories) -> None:
        for directory in filter(osp.isdir, directories):
            for name in os.listdir(directory):
                match = _TMP.match(name)
                if not match or not (match['name'] == 'last_checkpoint' or
                                     match['name'].endswith(('.pth', '.pt'))):
                    continue
                with contextlib.suppress(OSError):
                    try:
                        os.kill(int(match['pid']), 0)
                        continue  # still running
                    except ProcessLookupError:
                        pass
                    os.remove(osp.join(directory, name))
                    runner.logger.warning(
                        f'Removed {osp.join(directory, name)}: the incomplete '
                        f'temporary file of a checkpoint write by process '
                        f'{match["pid"]}, which is no longer running.')

    def _repair_last_checkpoint(self, runner, ckpt_dir: str) -> None:
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        target = problem = None  # no pointer: mmengine starts from scratch
        if osp.exists(pointer):
            with open(pointer) as f:
                target = f.read().strip()
            problem = checkpoint_problem(target) if target else 'empty'
            if problem is None:
                return
            problem = (f'names {target}, which is {problem}'
                       if target else 'is empty')
        head, _, tail = self.filename_tmpl.partition('{}')
        numbered = re.compile(re.escape(head) + r'(\d+)' + re.escape(tail))
        found = sorted(((int(m[1]), osp.getmtime(p), p) for p in glob.glob(
            osp.join(glob.escape(ckpt_dir), '*'))
            if (m := numbered.fullmatch(osp.basename(p)))), reverse=True)
        skipped, fallback = [], None
        for number, _, path in found:
            reason = checkpoint_problem(path)
            if reason is None:
                fallback = (number, path)
                break
            if osp.abspath(path) != osp.abspath(target or ''):
                skipped.append(f'{osp.basename(path)} ({reason})')
        if fallback is None:
            if problem is None:
                return  # nothing to resume from: a fresh start, as mmengine
            also = '; also broken: ' + ', '.join(skipped) if skipped else ''
            raise CheckpointResumeError(
                f'Cannot resume the training in {runner.work_dir}: {pointer} '
                f'{problem}, and {ckpt_dir} holds no other intact checkpoint '
                f'({self.filename_tmpl.format("N")}){also}. To start from '
                'scratch, remove last_checkpoint (and the broken files) or '
                'run without --resume; to continue from a particular file, '
                'pass it: --resume PATH (load_from=PATH, resume=True).')
        number, path = fallback
        atomic_write(pointer, path)
        unit = 'epoch' if self.by_epoch else 'iteration'
        newest = f'{path} ({unit} {number})'
        message = (f'{pointer} is missing, but {ckpt_dir} holds intact '
                   f'checkpoints: resuming from the newest, {newest}.'
                   if problem is None else f'{pointer} {problem}; resuming '
                   f'from the newest intact checkpoint instead: {newest}.')
        if skipped:
            message += ' Skipped broken: ' + ', '.join(skipped) + '.'
        runner.logger.warning(message)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._flush()

    def save_now(self, runner, step: Optional[int] = None) -> str:
        """Saves the training state now: the checkpoint file, then
        ``last_checkpoint``, then the removal of what ``max_keep_ckpts``
        retires. ``step`` defaults to the one a periodic save in
        ``after_train_iter`` (``after_train_epoch`` with ``by_epoch``) would
        use. Call it on every rank; returns the checkpoint's path.

        Raises:
            OSError: the file could not be written; the message names it and
                the previous checkpoint, which is intact.
        """
        if step is None:
            step = (runner.epoch if self.by_epoch else runner.iter) + 1
        meta = (dict(epoch=step, iter=runner.iter) if self.by_epoch else
                dict(epoch=runner.epoch, iter=step))
        retired = None
        keep = getattr(self, 'keep_ckpt_ids', None)
        if self.max_keep_ckpts > 0 and keep is not None and (
                not keep or keep[-1] != step):
            if len(keep) == self.max_keep_ckpts:
                retired = keep.popleft()
            keep.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(keep))
        previous, filename = self.last_ckpt, self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args,
                **self.args)
            if is_main_process():
                atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                             self.last_ckpt)
        except OSError as err:
            failed, self.last_ckpt = self.last_ckpt, previous
            intact = (f'the previous checkpoint, {previous}, is intact and '
                      'last_checkpoint still names it' if previous else
                      'no earlier checkpoint of this run exists')
            raise OSError(f'Saving checkpoint {failed} failed '
                          f'({err.strerror or err}); {intact}.') from err
        if retired is not None and is_main_process():
            old = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(retired))
            if old not in (getattr(self, 'best_ckpt_path', None),
                           *getattr(self, 'best_ckpt_path_dict', {}).values()):
                if self.file_backend.isfile(old) or self.file_backend.isdir(old):
                    self.file_backend.remove(old)
        self._flush()
        return self.last_ckpt

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch and (
                self.every_n_train_iters(runner, self.interval,
                                         self.save_begin)
                or self.save_last and self.is_last_train_iter(runner)):
            runner.logger.info(f'Saving checkpoint at {runner.iter + 1} '
                               'iterations')
            self.save_now(runner)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (
                self.every_n_epochs(runner, self.interval, self.save_begin)
                or self.save_last and self.is_last_train_epoch(runner)):
            runner.logger.info(f'Saving checkpoint at {runner.epoch + 1} '
                               'epochs')
            self.save_now(runner)

    def after_val_epoch(self, runner, metrics) -> None:
        """mmengine's best-checkpoint logic; the re-save of the last
        checkpoint that follows a new best is :meth:`save_now`'s."""
        last, self.last_ckpt = self.last_ckpt, None  # mmengine skips it then
        best = runner.message_hub.runtime_info.copy()
        try:
            super().after_val_epoch(runner, metrics)
        finally:
            self.last_ckpt = last
        updated = any(runner.message_hub.runtime_info.get(k) != best.get(k)
                      for k in runner.message_hub.runtime_info
                      if k.startswith('best_ckpt'))
        if updated and last is not None:
            self.save_now(runner, runner.epoch if self.by_epoch else runner.iter)
        self._flush()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        decode_legacy_checkpoint(checkpoint)
