# The authors' ADE20k recipe (see the 80k schedule) over 160k iterations:
# poly decay to 0 at 160k; validation and a checkpoint every 16k iterations.
_base_ = './ade20k_80k_adamw.py'

max_iters = 160000
param_scheduler = [
    _base_.param_scheduler[0],  # the same warm-up
    dict(_base_.param_scheduler[1], end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
