"""FiniteLossHook: stops training at the first NaN or infinite loss."""
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['FiniteLossHook']


def _non_finite(value) -> List[float]:
    """The NaN and infinite numbers in a loss (a tensor, a number or a list
    of them)."""
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _non_finite(item)]
    if isinstance(value, torch.Tensor):
        values = value.detach().float().flatten().cpu().tolist()
    elif isinstance(value, (int, float, np.number)):
        values = [float(value)]
    else:
        return []
    return [v for v in values if not np.isfinite(v)]


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stops training at the first non-finite (NaN or infinite) loss.

    After every training iteration it checks each ``train_step`` output
    whose key contains ``'loss'`` (the total ``loss`` and every term such as
    ``loss_cls``, ``loss_bbox``) and raises ``FloatingPointError`` naming
    the iteration, the bad terms, the newest checkpoint and what to try.
    mmengine's ``call_hook`` re-raises it unchanged (it rewraps only
    ``TypeError``), so ``tools/train.py`` exits non-zero with a traceback.

    Priority ``ABOVE_NORMAL`` puts it before the EMA, timer, logger,
    parameter-scheduler and checkpoint (``VERY_LOW``) hooks in
    ``after_train_iter``, so no checkpoint of that iteration's NaN weights
    is written. ``RuntimeInfoHook`` (``VERY_HIGH``) has already moved the
    losses to the host (``MessageHub.update_scalar``), so the check adds no
    device synchronisation. In distributed training one small
    ``all_reduce`` per iteration lets all ranks raise together rather than
    leave the healthy ones waiting for a stopped one.

    mmdet's ``CheckInvalidLossHook`` checks only every ``interval`` (50)
    iterations, so NaN checkpoints can be saved in between, and only the
    total ``loss``; it fails with an ``assert`` (gone under ``python -O``,
    its message the ``None`` of ``logger.info``); and it is in mmdet's
    registry only, out of reach of mmseg configs without mmdet. This hook
    is in mmengine's root registry and works under both.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        """Raises ``FloatingPointError`` if the loss or a loss term of this
        iteration is NaN or infinite (on any rank)."""
        bad: Dict[str, List[float]] = {}
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                wrong = _non_finite(value) if 'loss' in str(key) else []
                if wrong:
                    bad[str(key)] = wrong
        world_size = get_world_size()
        if world_size > 1:
            flags = torch.zeros(world_size)
            flags[get_rank()] = float(bool(bad))
            all_reduce(flags)
            bad_ranks = flags.nonzero().flatten().tolist()
        else:
            bad_ranks = [0] if bad else []
        if not bad_ranks:
            return

        if bad:
            terms = ', '.join(
                f'{key}={values[0] if len(values) == 1 else values}'
                for key, values in bad.items())
        else:
            terms = 'on another rank'
        where = f' (rank {", ".join(map(str, bad_ranks))})' \
            if world_size > 1 else ''
        last = runner.message_hub.get_info('last_ckpt')
        saved = (f' The newest checkpoint is {last}; resume from it with '
                 '--resume once the cause is fixed.') if last else ''
        raise FloatingPointError(
            f'Non-finite loss at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}){where}: {terms}. Training is stopped before '
            f'this iteration is checkpointed.{saved} Things to try: a lower '
            'learning rate (optim_wrapper.optimizer.lr) or a longer warm-up '
            '(param_scheduler); gradient clipping '
            '(optim_wrapper.clip_grad=dict(max_norm=10.0)); checking the '
            'data (boxes of zero width or height, labels outside '
            '0..num_classes-1, NaN or huge pixel values); without --amp if '
            'it was on.')
