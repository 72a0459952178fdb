"""Train a detector (mmdet) or segmentor (mmseg) from a config.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

The config's ``default_scope`` (mmdet or mmseg) picks the library; flags
mean what they mean in mmdet's and mmseg's own tools/train.py. The work dir
is locked against a second training before anything is written in it; on
SIGTERM or SIGINT the run saves the iteration it is in and exits 143 / 130
(PreemptionHook, added when the config lacks it; --resume goes on from it);
dataloader workers die with their process.
"""
import argparse
import os
import os.path as osp
import sys
import zipfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from launch_utils import (check_dataset_paths, exit_cpu_distributed,  # noqa: E402,E501
                          guard_dataloader_workers, init_cpu_distributed,
                          load_config, set_work_dir, setup_amp,
                          timeout_message)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision training '
                        '(on a CPU: bfloat16 where the CPU supports it)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr with the total batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT; without a value, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _rank() -> int:
    """This process's rank before any process group exists."""
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', 0)))


def main(argv=None):
    args = parse_args(argv)
    from mmengine.logging import print_log
    from mmengine.runner import Runner

    from xcit_mm.engine.hooks import (ResumeError, TrainingInterrupted,
                                      WorkDirLockedError, lock_work_dir)
    from xcit_mm.fileio import checkpoint_problem
    from xcit_mm.weights import CheckpointError, read_checkpoint

    try:
        cfg = load_config(args.config, args.cfg_options)
        set_work_dir(cfg, args.config, args.work_dir)
        check_dataset_paths(cfg, 'train')
        check_dataset_paths(cfg, 'val')
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    cfg.launcher = args.launcher

    precision = setup_amp(cfg, args.amp)

    if args.auto_scale_lr:
        if not cfg.get('auto_scale_lr'):
            sys.exit(f'error: {args.config} has no auto_scale_lr '
                     '(base_batch_size); --auto-scale-lr needs it.')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        problem = checkpoint_problem(args.resume)
        if problem is None and not zipfile.is_zipfile(args.resume):
            try:  # a legacy file, or no checkpoint at all
                read_checkpoint(args.resume)
            except CheckpointError as err:
                problem = str(err)
        if problem:
            sys.exit(f'error: --resume {args.resume}: {problem.rstrip(".")}. Name an '
                     'intact checkpoint, or give --resume without a file to '
                     'take the newest intact one of the work dir.')
        cfg.resume = True
        cfg.load_from = args.resume

    if args.launcher == 'none' or _rank() == 0:
        try:  # before the runner writes its log and config dump
            lock_work_dir(cfg.work_dir)
        except WorkDirLockedError as err:
            sys.exit(f'error: {err}')
    hooks = cfg.get('custom_hooks') or []
    if not any(h.get('type') == 'PreemptionHook' for h in hooks):
        cfg.custom_hooks = hooks + [dict(type='PreemptionHook')]
    guard_dataloader_workers()

    cpu_distributed = init_cpu_distributed(args.launcher, cfg)
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    if precision:
        print_log(f'mixed precision: {precision}', logger='current')
    try:
        runner.train()
    except ResumeError as err:
        sys.exit(f'error: {err}')
    except TrainingInterrupted as stop:
        if cpu_distributed:
            exit_cpu_distributed(stop.code)
        raise
    except RuntimeError as err:
        if cpu_distributed and 'timed out' in str(err).lower():
            sys.exit(f'error: {timeout_message(cfg)}')
        raise
    return cpu_distributed


if __name__ == '__main__':
    if main():
        # gloo ranks can abort in interpreter teardown after a clean run
        exit_cpu_distributed()
