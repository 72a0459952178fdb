"""AtomicCheckpointHook: mmengine's ``CheckpointHook`` with complete files,
old checkpoints removed last, and a resume past a broken ``last_checkpoint``."""
import glob
import os.path as osp
import re

from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ...fileio import (AtomicLocalBackend, atomic_write, checkpoint_problem,
                       remove_dead_temp_files)
from ...weights.io import decode_legacy_checkpoint


class ResumeError(RuntimeError):
    """A resume that cannot go on: no intact checkpoint, or nothing left to
    train."""


CheckpointResumeError = ResumeError  # the name of earlier versions


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments), crash-safe in a local
    directory: checkpoint and ``last_checkpoint`` written whole
    (:mod:`xcit_mm.fileio`), old files removed after both, a failed save
    named. With ``resume=True`` and no ``load_from``, an empty, missing or
    broken ``last_checkpoint`` is pointed at the newest intact checkpoint,
    or :class:`CheckpointResumeError` says there is none."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.pop('weights_only_compatible', None)  # of older versions
        super().__init__(*args, **kwargs)
        backend = (self.backend_args or {}).get('backend', 'local')
        self.local = self.file_client_args is None and '://' not in str(
            self.out_dir) and backend in ('local', 'xcit_atomic_local')
        if self.local:
            self.backend_args = dict(self.backend_args or {},
                                     backend='xcit_atomic_local')

    def _flush(self) -> None:
        if isinstance(getattr(self, 'file_backend', None), AtomicLocalBackend):
            self.file_backend.flush_removals()

    def before_run(self, runner) -> None:
        super().before_run(runner)
        ckpt_dir = runner.work_dir if self.out_dir in (
            None, runner.work_dir) else osp.join(
                str(self.out_dir), osp.basename(runner.work_dir.rstrip('/')))
        outcome = [None]
        if self.local and is_main_process():
            for directory in {ckpt_dir, runner.work_dir}:
                for path in remove_dead_temp_files(directory):
                    runner.logger.warning(f'Removed {path}: the incomplete '
                                          'temporary file of a dead process.')
            if runner.cfg.get('resume') and not runner.cfg.get('load_from'):
                try:
                    self._repair_last_checkpoint(runner, ckpt_dir)
                except CheckpointResumeError as err:
                    outcome = [str(err)]
        broadcast_object_list(outcome, src=0)  # a no-op in one process
        if outcome[0] is not None:
            raise CheckpointResumeError(outcome[0])

    def _repair_last_checkpoint(self, runner, ckpt_dir: str) -> None:
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        target, problem = '', 'is missing'
        if osp.exists(pointer):
            with open(pointer) as f:
                target = f.read().strip()
            problem = 'is empty' if not target else checkpoint_problem(target)
            if problem is None:
                return
            problem = f'names {target}, which is {problem}' if target \
                else problem
        head, _, tail = self.filename_tmpl.partition('{}')
        numbered = re.compile(re.escape(head) + r'(\d+)' + re.escape(tail))
        found = sorted(((int(m[1]), p)
                        for p in glob.glob(osp.join(glob.escape(ckpt_dir), '*'))
                        if (m := numbered.fullmatch(osp.basename(p)))),
                       reverse=True)
        skipped = []
        for number, path in found:
            reason = checkpoint_problem(path)
            if reason is None:
                runner.logger.warning(
                    f'{pointer} {problem}; resuming from the newest intact '
                    f'checkpoint instead: {path} ('
                    f'{"epoch" if self.by_epoch else "iteration"} {number}).'
                    + ''.join(f' Skipped broken: {", ".join(skipped)}.'
                              for _ in skipped[:1]))
                return atomic_write(pointer, path)
            if osp.abspath(path) != osp.abspath(target):
                skipped.append(f'{osp.basename(path)} ({reason})')
        if osp.exists(pointer):  # no pointer and nothing intact: from scratch
            also = '; also broken: ' + ', '.join(skipped) if skipped else ''
            raise CheckpointResumeError(
                f'Cannot resume the training in {runner.work_dir}: {pointer} '
                f'{problem}, and {ckpt_dir} holds no other intact checkpoint '
                f'({self.filename_tmpl.format("N")}){also}. To start from '
                'scratch, remove last_checkpoint (and the broken files) or '
                'run without --resume; to continue from a particular file, '
                'pass it: --resume PATH (load_from=PATH, resume=True).')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._flush()

    def save_now(self, runner) -> str:
        """Saves this iteration (epoch) now, on every rank: checkpoint,
        ``last_checkpoint``, then removals. Returns the path; raises
        ``OSError`` naming it and the intact previous one."""
        step = (runner.epoch if self.by_epoch else runner.iter) + 1
        meta = dict(epoch=step, iter=runner.iter) if self.by_epoch else \
            dict(epoch=runner.epoch, iter=step)
        keep, retired = getattr(self, 'keep_ckpt_ids', None), None
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
            intact = f'the previous checkpoint, {previous}, is intact and ' \
                'last_checkpoint still names it' if previous else \
                'no earlier checkpoint of this run exists'
            cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
            raise OSError(
                f'Saving checkpoint {failed} failed ({cause.strerror or err});'
                f' {intact}. Free space or fix the permissions, then resume '
                '(--resume).') from err
        if retired is not None and is_main_process():
            old = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(retired))
            if self.file_backend.exists(old):
                self.file_backend.remove(old)
        self._flush()
        return self.last_ckpt

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch and (
                self.every_n_train_iters(runner, self.interval,
                                         self.save_begin)
                or self.save_last and self.is_last_train_iter(runner)):
            runner.logger.info(
                f'Saving checkpoint at {runner.iter + 1} iterations')
            self.save_now(runner)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (
                self.every_n_epochs(runner, self.interval, self.save_begin)
                or self.save_last and self.is_last_train_epoch(runner)):
            runner.logger.info(f'Saving checkpoint at {runner.epoch + 1} epochs')
            self.save_now(runner)

    def after_val_epoch(self, runner, metrics) -> None:
        # a new best: mmengine saves it and re-saves the last checkpoint
        # (same path, whole files); the replaced best goes after both
        super().after_val_epoch(runner, metrics)
        self._flush()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        decode_legacy_checkpoint(checkpoint)
