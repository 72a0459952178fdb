"""PreemptionHook: a training stopped by SIGTERM or SIGINT saves the
iteration it was in and exits."""
import os
import os.path as osp
import signal
import threading

import torch
from mmengine.config import Config
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class TrainingInterrupted(SystemExit):
    """A signal stopped the training; the exit status is 128 + its number."""


class ResumeError(ValueError):
    """The checkpoint resumed from has nothing left to train."""


def save_now(runner) -> str:
    """Saves the current iteration (through the checkpoint hook's
    ``save_now`` when it has one) unless that is already the newest
    checkpoint; returns its path."""
    name = f'iter_{runner.iter + 1}.pth'
    last = runner.message_hub.get_info('last_ckpt')
    if last and osp.basename(last) == name:
        return last
    for hook in runner.hooks:
        if callable(getattr(hook, 'save_now', None)):
            return hook.save_now(runner)
    runner.save_checkpoint(runner.work_dir, name, by_epoch=False)
    if is_main_process():
        with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
            f.write(osp.join(runner.work_dir, name))
    return osp.join(runner.work_dir, name)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM (Slurm ``--signal``, Kubernetes) or SIGINT (Ctrl-C)
    during training, every rank finishes its iteration, the run saves it
    and raises :class:`TrainingInterrupted` (exit status 143 or 130); a
    second signal exits at once. Ranks agree on the iteration to stop at
    (one small ``all_reduce`` an iteration when distributed), so a signal
    to any rank stops all. Priority ``LOWEST``: after the scheduler and
    checkpoint hooks. An epoch-based run resumed from such a checkpoint
    restarts that epoch.

    At resume it says when the config's schedule differs from the
    checkpoint's run (the learning-rate schedule is the checkpoint's), and
    refuses (:class:`ResumeError`) when nothing is left to train.
    """
    priority = 'LOWEST'

    def __init__(self, signals=('SIGTERM', 'SIGINT')):
        self.signals = [signal.Signals[name] for name in signals]
        self.received, self.resumed = 0, None

    def _handle(self, signum, frame):
        if self.received:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum
        os.write(2, f'\n{signal.Signals(signum).name}: stopping after this '
                 'iteration, saving it (send it again to stop at once)\n'
                 .encode())

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        meta = checkpoint.get('meta', {})
        if runner.cfg.get('resume') and 'iter' in meta:
            try:  # the config the checkpoint's run was started with
                old = Config.fromstring(meta['cfg'], '.py').train_cfg
            except Exception:  # noqa: BLE001 - none, or not readable
                old = {}
            self.resumed = (meta['iter'], old.get('max_iters'))

    def before_train(self, runner) -> None:
        done, old = self.resumed or (None, None)
        if done is not None and done >= runner.max_iters:
            raise ResumeError(
                f'The checkpoint resumed from is at iteration {done} and the '
                f'training ends at {runner.max_iters}: nothing left to train. '
                'Raise train_cfg.max_iters (--cfg-options), or evaluate the '
                'checkpoint with tools/test.py.')
        if old and old != runner.max_iters:
            runner.logger.warning(
                f'Resuming a run planned for {old} iterations with '
                f'max_iters={runner.max_iters}: training goes on to '
                f'{runner.max_iters}, but the learning-rate schedule is the '
                f"checkpoint's, planned for {old} (not re-planned).")
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                signal.signal(sig, self._handle)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        flag = torch.tensor([float(self.received)])
        if get_world_size() > 1:
            all_reduce(flag, op='max')
        if flag.item():
            name = signal.Signals(int(flag.item())).name
            path = save_now(runner)
            runner.logger.warning(f'{name}: stopped after iteration '
                                  f'{runner.iter + 1}, saved to {path}; '
                                  'continue with --resume.')
            raise TrainingInterrupted(128 + int(flag.item()))
