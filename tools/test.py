"""Evaluate a checkpoint: COCO box/mask AP (mmdet) or mIoU (mmseg).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show] [--show-dir DIR] [--tta] [--amp] [--allow-partial-load]
        [--cfg-options k=v ...] [--launcher pytorch]

Checkpoints are read with torch's weights-only loader (xcit_mm allows the
few globals that mmengine's own checkpoints hold) and must fit the model
exactly: a missing, unexpected or differently shaped tensor is an error
(``--allow-partial-load`` evaluates anyway, on purpose). For the authors'
mmdet 2.x / mmseg 0.x releases, convert first with
tools/model_converters/xcit2mm.py.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from launch_utils import (autocast_test_step, check_dataset_paths,  # noqa: E402,E501
                          exit_cpu_distributed, init_cpu_distributed,
                          load_config, set_work_dir)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument(
        '--out', help='mmdet: dump predictions to this pickle file; '
        'mmseg: save predicted label maps to this directory')
    parser.add_argument('--show', action='store_true',
                        help='show prediction results in a window')
    parser.add_argument('--show-dir',
                        help='save drawn predictions under this directory '
                        '(inside the work dir, as mmdet/mmseg do)')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds each shown image stays')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s '
                        'tta_model and tta_pipeline)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (on a CPU: bfloat16)')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='evaluate even if the checkpoint does not fit '
                        'the model (missing or mismatched tensors stay as '
                        'initialised)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg, args):
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        sys.exit('error: --show/--show-dir need a "visualization" entry in '
                 'default_hooks (DetVisualizationHook / '
                 'SegVisualizationHook).')
    vis = hooks['visualization']
    vis['draw'] = True
    if args.show:
        vis['show'] = True
        vis['wait_time'] = args.wait_time
    if args.show_dir:
        if cfg.default_scope == 'mmdet':
            vis['test_out_dir'] = args.show_dir
        else:
            vis['interval'] = 1
            # SegVisualizationHook has no test_out_dir: the visualizer saves
            # under its save_dir, which would be relative to the current
            # directory; put it in the work dir as for mmdet.
            cfg.visualizer['save_dir'] = osp.join(cfg.work_dir,
                                                  args.show_dir)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if args.launcher != 'none' and world > 1 and \
            os.environ.get('RANK', '0') == '0':
        # mmdet's and mmseg's visualizers draw on the main process only
        # (master_only): the other processes' images are not drawn.
        print(f'warning: --show/--show-dir with {world} processes draws the '
              f'images of the first process only (about 1/{world} of the '
              'test set), as mmdet/mmseg visualizers do; run tools/test.py '
              'without a launcher to draw them all.', file=sys.stderr)


def enable_tta(cfg, config_path):
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        hint = ''
        if cfg.default_scope == 'mmdet' and \
                cfg.model.get('roi_head', {}).get('mask_head'):
            hint = (' (mmdet 3 cannot merge instance masks across '
                    'augmentations, so the Mask R-CNN configs have none)')
        sys.exit(f'error: {config_path} defines no tta_model/tta_pipeline; '
                 f'--tta needs both{hint}.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def set_output(cfg, out):
    if cfg.default_scope == 'mmdet':
        if not out.endswith(('.pkl', '.pickle')):
            sys.exit('error: --out must be a .pkl/.pickle file for mmdet.')
        dump = dict(type='DumpDetResults', out_file_path=out)
        evaluator = cfg.test_evaluator
        cfg.test_evaluator = (list(evaluator) if isinstance(
            evaluator, (list, tuple)) else [evaluator]) + [dump]
    else:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True


def _groups(keys, limit: int = 6) -> str:
    """``'backbone.layer1.* (30), neck.fpn_convs.* (8), ...'``: keys grouped
    by their first two parts, the largest groups first."""
    from collections import Counter
    groups = Counter('.'.join(k.split('.')[:2]) for k in keys)
    parts = [f'{g}.* ({n})' if n > 1 else g
             for g, n in groups.most_common(limit)]
    if len(groups) > limit:
        parts.append(f'... {len(groups) - limit} more groups')
    return ', '.join(parts)


def fit_problems(model, state_dict) -> list:
    """How ``state_dict`` does not fit ``model``: its missing, unexpected and
    differently shaped tensors, each kind summarised on one line (the same
    on every rank, unlike mmengine's message, which rank 0 alone raises)."""
    own = model.state_dict()
    missing = [k for k in own
               if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [(k, tuple(v.shape), tuple(own[k].shape))
              for k, v in state_dict.items()
              if k in own and hasattr(v, 'shape') and
              tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(
            f'{len(missing)} tensors of the model are not in the checkpoint: '
            f'{_groups(missing)} (e.g. {missing[0]})')
    if unexpected:
        problems.append(
            f'{len(unexpected)} tensors of the checkpoint are not in the '
            f'model: {_groups(unexpected)} (e.g. {unexpected[0]})')
    if shapes:
        shown = '; '.join(f'{k}: {c} in the checkpoint, {m} in the model'
                          for k, c, m in shapes[:3])
        more = f'; ... {len(shapes) - 3} more' if len(shapes) > 3 else ''
        problems.append(
            f'{len(shapes)} tensors have another shape '
            f'({_groups(k for k, _, _ in shapes)}): {shown}{more}')
    return problems


def load_weights(runner, checkpoint: str, strict: bool):
    """Loads ``checkpoint`` into the runner's model; strictly, unless asked
    otherwise: a checkpoint of another model is an error naming what does
    not fit, not an evaluation of random weights."""
    from mmengine.runner.checkpoint import load_state_dict

    from xcit_mm.weights import CheckpointError, read_checkpoint
    model = runner.model
    while hasattr(model, 'module'):  # DDP and TTA wrappers
        model = model.module
    try:
        ckpt = read_checkpoint(checkpoint)
    except CheckpointError as err:
        sys.exit(f'error: {err}')
    state_dict = ckpt.get('state_dict', ckpt)
    state_dict = {(k[len('module.'):] if k.startswith('module.') else k): v
                  for k, v in state_dict.items()}
    problems = fit_problems(model, state_dict)
    if problems:
        where = f'{checkpoint} does not fit the model of {runner.cfg.filename}'
        listed = ''.join(f'\n- {p}' for p in problems)
        if strict:
            sys.exit(
                f'error: {where}:{listed}\nUse a checkpoint trained with this '
                'config (convert the authors\' models with '
                'tools/model_converters/xcit2mm.py), or pass '
                '--allow-partial-load to evaluate anyway.')
        if os.environ.get('RANK', '0') == '0':
            print(f'warning: {where} (--allow-partial-load: evaluating '
                  f'anyway; what does not fit stays as initialised):{listed}',
                  file=sys.stderr)
    load_state_dict(model, state_dict, strict=False, logger='current')
    meta = ckpt.get('meta') or {}
    if meta.get('dataset_meta') and hasattr(model, 'dataset_meta'):
        model.dataset_meta = meta['dataset_meta']


def main(argv=None):
    args = parse_args(argv)
    from mmengine.logging import print_log
    from mmengine.runner import Runner

    try:
        cfg = load_config(args.config, args.cfg_options)
        set_work_dir(cfg, args.config, args.work_dir)
        check_dataset_paths(cfg, 'test')
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint not found: {args.checkpoint!r}')
    cfg.launcher = args.launcher
    cfg.load_from = None  # loaded below, strictly unless asked otherwise
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        enable_tta(cfg, args.config)
    if args.out:
        set_output(cfg, args.out)

    cpu_distributed = init_cpu_distributed(args.launcher, cfg)
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    load_weights(runner, args.checkpoint, strict=not args.allow_partial_load)
    if args.amp:
        print_log(f'mixed precision: {autocast_test_step(runner.model)}',
                  logger='current')
    runner.test()
    return cpu_distributed


if __name__ == '__main__':
    if main():
        # gloo ranks can abort in interpreter teardown after a clean run
        exit_cpu_distributed()
