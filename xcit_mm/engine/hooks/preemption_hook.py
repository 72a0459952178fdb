"""PreemptionHook: SIGTERM or SIGINT saves the iteration, then exits."""
import os
import os.path as osp
import signal
import threading

import torch
from mmengine.config import Config
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class TrainingInterrupted(SystemExit):
    """A signal stopped training; the exit status is 128 + its number."""


class ResumeError(ValueError):
    """The checkpoint resumed from has nothing left to train."""


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM or SIGINT every rank ends its iteration (ranks agree by
    an ``all_reduce``), the run saves it (``save_now`` of the checkpoint
    hook, else ``runner.save_checkpoint``) and raises
    :class:`TrainingInterrupted` (exit 143 / 130); a second signal exits at
    once. At resume it says when ``max_iters`` changed (the lr schedule
    stays the checkpoint's) and refuses (:class:`ResumeError`) when nothing
    is left to train. An epoch-based run resumes at that epoch's start."""
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
        flag = torch.tensor([float(self.received)])
        if get_world_size() > 1:
            all_reduce(flag, op='max')
        if not flag.item():
            return
        path = osp.join(runner.work_dir, f'iter_{runner.iter + 1}.pth')
        if runner.message_hub.get_info('last_ckpt') != path:  # not saved yet
            save = [h.save_now for h in runner.hooks if hasattr(h, 'save_now')]
            path = save[0](runner) if save else runner.save_checkpoint(
                runner.work_dir, osp.basename(path), by_epoch=False) or path
        signum = signal.Signals(int(flag.item()))
        runner.logger.warning(f'{signum.name}: stopped after iteration '
                              f'{runner.iter + 1}, saved to {path}; '
                              'continue with --resume.')
        raise TrainingInterrupted(128 + signum)
