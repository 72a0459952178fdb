"""What the hook tests train with real mmengine Runners: a toy model, data,
metric and probe hook, a config for them, and helpers.

It is also the toy training script of the tests about processes (killed
with SIGKILL at chosen points, or running side by side):
``python tests/test_engine/test_hooks/toy.py WORK_DIR [options]``.
"""
import argparse
import copy
import os
import os.path as osp
import signal
import subprocess
import sys
import time
import uuid

import torch
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

REPO_ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
PYTHON = sys.executable
CLASSES = ('circle', 'rectangle', 'triangle')


@DATASETS.register_module(force=True)
class XCiTMMToyDataset(Dataset):
    """16 samples ``y = 2x0 - x1``, with detection-style metainfo."""

    def __init__(self, classes=CLASSES, length=16):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(length, 2, generator=gen)
        self.y = (2 * self.x[:, :1] - self.x[:, 1:])
        # kept as given: a config may wrongly give one class as a string
        self.metainfo = dict(
            classes=classes if isinstance(classes, str) else tuple(classes))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], targets=self.y[idx])


class _Head(nn.Module):

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes


@MODELS.register_module(force=True)
class XCiTMMToyModel(BaseModel):
    """A linear regressor; its loss turns NaN at iteration ``nan_at``
    (1-based, as in the logs and ``iter_N.pth``) and is multiplied by
    ``factor`` from iteration ``i`` on with ``scale_from=(i, factor)``. With ``num_classes`` it
    carries an mmseg-style ``decode_head`` with that ``num_classes``."""

    def __init__(self,
                 nan_at=None,
                 scale_from=None,
                 num_classes=None,
                 data_preprocessor=None,
                 init_cfg=None):
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.linear = nn.Linear(2, 1)
        self.nan_at = nan_at
        self.scale_from = scale_from  # (iteration, factor): a blow-up
        if num_classes is not None:
            self.decode_head = _Head(num_classes)

    def forward(self, inputs, targets=None, data_samples=None, mode='tensor'):
        pred = self.linear(inputs)
        if mode == 'loss':
            loss_main = ((pred - targets)**2).mean()
            iteration = MessageHub.get_current_instance().get_info('iter') + 1
            if iteration == self.nan_at:
                loss_main = loss_main * float('nan')
            if self.scale_from and iteration >= self.scale_from[0]:
                loss_main = loss_main * self.scale_from[1]
            return dict(loss_main=loss_main, loss_aux=0.1 * pred.abs().mean())
        if mode == 'predict':
            return [dict(err=(pred - targets).abs().mean())]
        return pred


@METRICS.register_module(force=True)
class XCiTMMToyMetric(BaseMetric):
    """``acc`` grows at every evaluation, so each one is a new best."""
    calls = 0

    def process(self, data_batch, data_samples):
        self.results.append(1)

    def compute_metrics(self, results):
        XCiTMMToyMetric.calls += 1
        return dict(acc=float(XCiTMMToyMetric.calls))


@HOOKS.register_module(force=True)
class XCiTMMToyProbeHook(Hook):
    """Prints the iteration training starts from (after any resume),
    optionally touches a file then, and sleeps after each iteration."""

    def __init__(self, started_file=None, sleep=0.0):
        self.started_file = started_file
        self.sleep = sleep
        self.start_iter = None

    def before_train(self, runner):
        self.start_iter = runner.iter
        print(f'TOY before_train iter={runner.iter}', flush=True)
        if self.started_file:
            with open(self.started_file, 'w') as f:
                f.write(str(os.getpid()))

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        if self.sleep:
            print(f'TOY sleeping after iter={runner.iter + 1}', flush=True)
            time.sleep(self.sleep)


def toy_cfg(work_dir,
            max_iters=6,
            interval=2,
            max_keep_ckpts=-1,
            checkpoint=None,
            custom_hooks=(),
            model=None,
            classes=CLASSES,
            val=False,
            resume=False,
            default_scope='mmengine'):
    """A complete runner config for the toy model."""
    checkpoint_hook = dict(
        type='AtomicCheckpointHook',
        by_epoch=False,
        interval=interval,
        max_keep_ckpts=max_keep_ckpts)
    checkpoint_hook.update(checkpoint or {})
    loader = dict(
        dataset=dict(type='XCiTMMToyDataset', classes=classes),
        # infinite: mmengine pauses 2 s whenever a finite loader restarts
        sampler=dict(type='InfiniteSampler', shuffle=False),
        batch_size=4,
        num_workers=0,
        collate_fn=dict(type='default_collate'))
    cfg = dict(
        model=dict(type='XCiTMMToyModel', **(model or {})),
        work_dir=work_dir,
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=[
            dict(type='MultiStepLR', milestones=[3], by_epoch=False)
        ],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=checkpoint_hook),
        custom_hooks=[dict(type='XCiTMMToyProbeHook')] + list(custom_hooks),
        default_scope=default_scope,
        randomness=dict(seed=0),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        resume=resume,
        load_from=None,
    )
    if val:
        cfg.update(
            val_dataloader=dict(
                copy.deepcopy(loader),
                batch_size=8,
                sampler=dict(type='DefaultSampler', shuffle=False)),
            val_cfg=dict(type='ValLoop'),
            val_evaluator=dict(type='XCiTMMToyMetric'))
        cfg['train_cfg']['val_interval'] = val
    return cfg


def build_runner(cfg):
    return Runner.from_cfg(Config(cfg))


def train(work_dir, **kwargs):
    runner = build_runner(toy_cfg(str(work_dir), **kwargs))
    runner.train()
    return runner


def probe(runner):
    return next(h for h in runner.hooks if isinstance(h, XCiTMMToyProbeHook))


def ckpt_files(work_dir):
    return sorted(
        name for name in os.listdir(work_dir)
        if name.endswith('.pth') or name.endswith('.tmp'))


# --------------------------------------------------------------------------
# The toy training script
# --------------------------------------------------------------------------
def _kill_at(mode: str):
    """Makes this process SIGKILL itself inside the checkpoint write:

    - ``midwrite:N``: while the temporary file of ``iter_N.pth`` is being
      made durable (``fsync``), after cutting it to half its size, i.e. a
      partly written checkpoint;
    - ``pointer:N``: right after ``iter_N.pth`` is renamed into place,
      before ``last_checkpoint`` is updated and the old one removed.
    """
    kind, _, step = mode.partition(':')
    name = f'iter_{step}.pth'
    if kind == 'midwrite':
        real_fsync = os.fsync

        def fsync(fd):
            path = os.readlink(f'/proc/self/fd/{fd}')
            if osp.basename(path).startswith(f'.{name}.'):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        os.fsync = fsync
    elif kind == 'pointer':
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if osp.basename(dst) == name:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
    else:
        raise ValueError(f'unknown kill mode {mode!r}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('work_dir')
    parser.add_argument('--max-iters', type=int, default=5)
    parser.add_argument('--interval', type=int, default=1)
    parser.add_argument('--max-keep', type=int, default=1)
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--kill', help='midwrite:N or pointer:N')
    parser.add_argument('--sleep', type=float, default=0.0)
    parser.add_argument('--started-file')
    parser.add_argument(
        '--lock', action='store_true', help='add WorkDirLockHook')
    parser.add_argument(
        '--preempt', action='store_true', help='add PreemptionHook')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import xcit_mm  # noqa: F401  (as configs do: custom_imports)
    if args.kill:
        _kill_at(args.kill)
    hooks = [dict(type='WorkDirLockHook')] if args.lock else []
    hooks += [dict(type='PreemptionHook')] if args.preempt else []
    cfg = toy_cfg(
        args.work_dir,
        max_iters=args.max_iters,
        interval=args.interval,
        max_keep_ckpts=args.max_keep,
        custom_hooks=hooks,
        resume=args.resume)
    cfg['custom_hooks'][0].update(
        started_file=args.started_file, sleep=args.sleep)
    build_runner(cfg).train()
    print('TOY done', flush=True)


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)


def _script(work_dir, *args):
    return [PYTHON, osp.abspath(__file__), str(work_dir), *args]


def run_script(work_dir, *args, timeout=120):
    return subprocess.run(
        _script(work_dir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env())


def start_script(work_dir, *args):
    return subprocess.Popen(
        _script(work_dir, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env())


if __name__ == '__main__':
    main()
