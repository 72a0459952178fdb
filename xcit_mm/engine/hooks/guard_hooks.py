"""The hooks that guard a training run: the work-dir lock, the stop at a
non-finite loss, the saved stop on a signal; ranks agree by ``all_reduce``."""
import math
import os
import os.path as osp
import signal
import threading

import torch
from mmengine.config import Config
from mmengine.dist import all_reduce, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...fileio import lock_work_dir, unlock_work_dir
from .checkpoint_hook import ResumeError

class TrainingInterrupted(SystemExit):
    """A signal stopped training; the exit status is 128 + its number."""


def _on_any_rank(value: float) -> float:
    """The largest ``value`` over all ranks (itself in one process)."""
    flag = torch.tensor([float(value)])
    all_reduce(flag, op='max')
    return flag.item()


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """:func:`lock_work_dir` on the main process from the start of training
    (``tools/train.py`` takes it before the runner writes anything) to the
    end of the run. Warns without ``flock``."""
    priority = 'HIGHEST'

    def __init__(self, filename: str = '.train.lock') -> None:
        self.filename = filename

    def before_train(self, runner) -> None:
        if is_main_process() and \
                not lock_work_dir(runner.work_dir, self.filename):
            runner.logger.warning('WorkDirLockHook: no flock here; the work '
                                  'dir is not locked against a second run.')

    def after_run(self, runner) -> None:
        unlock_work_dir(runner.work_dir, self.filename)


def _floats(value) -> list:
    """A loss (a number, tensor or list of them) as a flat list of floats."""
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _floats(item)]
    return torch.as_tensor(value).detach().float().flatten().tolist()


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raises ``FloatingPointError`` after the first iteration whose loss,
    a loss term or the ``grad_norm`` logged under ``clip_grad`` is NaN or
    infinite on any rank (all stop), before the checkpoint hook saves it,
    naming the newest checkpoint whose weights then gave a finite loss at
    most ``diverge_factor`` times the run's lowest. Unlike mmdet's
    ``CheckInvalidLossHook``: every iteration, every term, any scope."""
    priority = 'ABOVE_NORMAL'

    def __init__(self, diverge_factor: float = 100.0):
        self.diverge_factor = diverge_factor
        self._lowest, self._seen, self._good = math.inf, None, None

    def before_train(self, runner) -> None:
        self._seen = self._good = runner.message_hub.get_info('last_ckpt')

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        last = runner.message_hub.get_info('last_ckpt')  # not yet this one's
        new, self._seen = (last if last != self._seen else None), last
        grad = runner.message_hub.log_scalars.get('train/grad_norm')
        values = dict(outputs or {}, grad_norm=grad.current() if grad else [])
        bad = {k: [v for v in _floats(x) if not math.isfinite(v)]
               for k, x in values.items() if 'loss' in k or k == 'grad_norm'}
        bad = {k: v for k, v in bad.items() if v}
        if not _on_any_rank(bool(bad)):
            loss = sum(_floats(values.get('loss', [])))
            if self._lowest <= 0 or loss <= self.diverge_factor * self._lowest:
                self._good = new or self._good  # its weights gave this loss
            self._lowest = min(self._lowest, loss)
            return
        terms = ', '.join(f'{k}={v[0] if len(v) == 1 else v}'
                          for k, v in bad.items()) or 'on another rank'
        saved = (f' The newest checkpoint from before the divergence is '
                 f'{self._good}; resume with --resume FILE once the cause is '
                 'fixed.') if self._good else ''
        raise FloatingPointError(
            f'Non-finite loss at iteration {runner.iter + 1}: {terms}. '
            f'Training is stopped before this iteration is saved.{saved} To '
            'try: a lower optim_wrapper.optimizer.lr or a longer warm-up; '
            'optim_wrapper.clip_grad=dict(max_norm=10.0); the data (empty '
            'boxes, labels outside 0..num_classes-1, NaN pixels); no --amp.')


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM or SIGINT every rank ends its iteration, the run saves it
    (the checkpoint hook's ``save_now``, else ``runner.save_checkpoint``)
    and raises :class:`TrainingInterrupted` (exit 143 / 130); a second
    signal exits at once (an epoch-based run resumes at that epoch's
    start). At resume: a warning when ``max_iters`` changed (the lr
    schedule stays the checkpoint's), :class:`ResumeError` when nothing is
    left to train."""
    priority = 'LOWEST'

    def __init__(self):
        self.received, self.resumed, self.previous = 0, (None, None), {}

    def _handle(self, signum, frame):
        if self.received:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum
        os.write(2, f'\n{signal.Signals(signum).name}: stopping after this '
                 'iteration (send it again to stop at once)\n'.encode())

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        meta = checkpoint.get('meta', {})
        if runner.cfg.get('resume') and 'iter' in meta:
            old = Config.fromstring(meta['cfg'], '.py').get(
                'train_cfg', {}) if 'cfg' in meta else {}  # of its run
            self.resumed = (meta['iter'], old.get('max_iters'))

    def before_train(self, runner) -> None:
        (done, old), total = self.resumed, runner.max_iters
        if done is not None and done >= total:
            raise ResumeError(
                f'The checkpoint resumed from is at iteration {done} and the '
                f'training ends at {total}: nothing left to train. Raise '
                'train_cfg.max_iters, or test the checkpoint (tools/test.py).')
        if old and old != total:
            runner.logger.warning(
                f'Resuming a run planned for {old} iterations with max_iters='
                f"{total}: it goes on to {total}, but the learning-rate "
                f"schedule is the checkpoint's, planned for {old}.")
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle)
                             for sig in (signal.SIGTERM, signal.SIGINT)}

    def after_run(self, runner) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        signum = int(_on_any_rank(self.received))
        if not signum:
            return
        path = osp.join(runner.work_dir, f'iter_{runner.iter + 1}.pth')
        if runner.message_hub.get_info('last_ckpt') != path:  # not saved yet
            save = [h.save_now for h in runner.hooks if hasattr(h, 'save_now')]
            path = save[0](runner) if save else runner.save_checkpoint(
                runner.work_dir, osp.basename(path), by_epoch=False) or path
        runner.logger.warning(
            f'{signal.Signals(signum).name}: stopped after iteration '
            f'{runner.iter + 1}, saved to {path}; continue with --resume.')
        raise TrainingInterrupted(128 + signum)
