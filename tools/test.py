"""Evaluate a checkpoint: COCO box/mask AP (mmdet) or mIoU (mmseg).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show] [--show-dir DIR] [--tta] [--amp] [--allow-partial-load]
        [--cfg-options k=v ...] [--launcher pytorch]

Checkpoints are loaded by ``xcit_mm.weights.load_trained`` (torch's
weights-only loader; xcit_mm allows the few globals that mmengine's own
checkpoints hold) and must fit the model exactly: a missing, unexpected or
differently shaped tensor is an error (``--allow-partial-load`` evaluates
anyway, on purpose). ``--amp`` runs mmengine's TestLoop with ``fp16=True``. For the authors'
mmdet 2.x / mmseg 0.x releases, convert first with
tools/model_converters/xcit2mm.py.

A CHECKPOINT ending in ``.onnx`` (written by
tools/deployment/export_onnx.py) is evaluated in ONNX Runtime with the same
data, evaluator and outputs, after a check that it holds the config's model
(tools/deployment/ort_model.py).
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
    parser.add_argument('checkpoint', help='checkpoint file, or a model '
                        'exported to .onnx')
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
    det = cfg.default_scope == 'mmdet'
    if osp.isdir(out) if det else osp.isfile(out):
        sys.exit(f'error: --out {out} is an existing '
                 f'{"directory" if det else "file"}; mmdet dumps predictions '
                 'to a .pkl file, mmseg saves label maps into a directory: '
                 'give another path.')
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


def load_weights(runner, checkpoint: str, strict: bool) -> None:
    """Loads ``checkpoint`` into the runner's model with
    :func:`xcit_mm.weights.load_trained`: strictly unless asked otherwise,
    so a checkpoint of another model is an error naming what does not fit,
    not an evaluation of random weights."""
    from xcit_mm.weights import CheckpointError, load_trained
    target = f'the model of {runner.cfg.filename}'
    try:
        problems = load_trained(runner.model, checkpoint, strict, target=target)
    except CheckpointError as err:
        hint = ', or pass --allow-partial-load to evaluate anyway' \
            if 'does not fit' in str(err) else ''
        sys.exit(f'error: {err}'.rstrip('.') + hint + '.')
    if problems and os.environ.get('RANK', '0') == '0':
        print(f'warning: {checkpoint} does not fit {target} '
              '(--allow-partial-load: evaluating anyway; what does not fit '
              'stays as initialised):' + ''.join(f'\n- {p}' for p in problems),
              file=sys.stderr)


def use_onnx(runner, path: str) -> None:
    """Replaces the runner's model by the exported ``path`` in ONNX Runtime
    (``ort_model.onnx_model``), refused if the file does not fit the
    config."""
    sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)),
                                'deployment'))
    from ort_model import OnnxError, onnx_model
    metainfo = runner.test_loop.dataloader.dataset.metainfo
    try:
        runner.model = onnx_model(runner.model, path, runner.cfg, metainfo)
    except OnnxError as err:
        sys.exit(f'error: {err}')


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
    onnx = args.checkpoint.lower().endswith('.onnx')
    for flag, why in (('amp', 'ONNX Runtime runs the exported float32 '
                       'graph'), ('allow_partial_load', 'the file holds '
                                  'the whole model')):
        if onnx and getattr(args, flag):
            sys.exit(f'error: --{flag.replace("_", "-")} does not apply to '
                     f'{args.checkpoint} ({why}).')
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
    if onnx:
        use_onnx(runner, args.checkpoint)
    else:
        load_weights(runner, args.checkpoint,
                     strict=not args.allow_partial_load)
    if args.amp:  # TestLoop(fp16=True) would hand bf16 boxes to the metrics
        print_log(f'mixed precision: {autocast_test_step(runner.model)}',
                  logger='current')
    runner.test()
    return cpu_distributed


if __name__ == '__main__':
    if main():
        # gloo ranks can abort in interpreter teardown after a clean run
        exit_cpu_distributed()
