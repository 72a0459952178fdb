"""FiniteLossHook: stops training at a NaN or infinite loss or grad norm."""
import math

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _floats(value) -> list:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _floats(item)]
    if isinstance(value, torch.Tensor):
        return value.detach().float().flatten().cpu().tolist()
    return [float(value)] if isinstance(value, (int, float)) else []


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
        self._lowest, self._seen, self._new, self._good = math.inf, *[None] * 3

    def before_train(self, runner) -> None:
        self._seen = self._good = runner.message_hub.get_info('last_ckpt')

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        last = runner.message_hub.get_info('last_ckpt')
        if last != self._seen:  # saved at the end of the previous iteration
            self._seen = self._new = last

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        bad = {str(k): [v for v in _floats(x) if not math.isfinite(v)]
               for k, x in (outputs or {}).items() if 'loss' in str(k)}
        grad = runner.message_hub.log_scalars.get('train/grad_norm')
        bad['grad_norm'] = [g for g in _floats(grad.current() if grad else [])
                            if not math.isfinite(g)]
        bad = {k: v for k, v in bad.items() if v}
        flag = torch.tensor([float(bool(bad))])
        if get_world_size() > 1:
            all_reduce(flag, op='max')
        if not flag.item():
            loss = sum(_floats((outputs or {}).get('loss', [])))
            if self._lowest <= 0 or loss <= self.diverge_factor * self._lowest:
                self._good = self._new or self._good  # its weights gave this
            self._new, self._lowest = None, min(self._lowest, loss)
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
