"""The built-in demo: train, evaluate and show an XCiT Mask R-CNN on a CPU.

    python tools/demo.py [--work-dir work_dirs/demo] [--seg]

1. generates the shapes dataset (tools/shapes_data.py) once, seeded;
2. trains configs/demo/mask_rcnn_xcit_n12_p8_shapes.py with tools/train.py;
3. evaluates the last checkpoint on the held-out split with tools/test.py
   (the COCO evaluator);
4. writes, in the work dir: overlays/ (predictions on held-out images, via
   tools/infer.py), curves.png (loss and mAP against iteration) and
   metrics.json.

``--seg`` does the same for a Semantic FPN on the semantic labels (mIoU).
Every step runs the project's real tools, as a user would. Training,
evaluation and inference run in mixed precision (``--amp``: bfloat16 on a
CPU that has it natively) unless ``--fp32`` is given or the CPU lacks bf16.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

TASKS = {
    'det': dict(
        config='configs/demo/mask_rcnn_xcit_n12_p8_shapes.py',
        metrics=('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
                 'coco/segm_mAP', 'coco/segm_mAP_50', 'coco/segm_mAP_75'),
        headline='coco/bbox_mAP',
        val_dir='val'),
    'seg': dict(
        config='configs/demo/fpn_xcit_n12_p8_shapes.py',
        metrics=('mIoU', 'aAcc', 'mAcc'),
        headline='mIoU',
        val_dir='images/validation'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/shapes',
                        help='where the generated dataset lives')
    parser.add_argument('--seg', action='store_true',
                        help='also train and evaluate a Semantic FPN')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the config\'s)')
    parser.add_argument('--val-interval', type=int, default=None,
                        help='iterations between evaluations')
    parser.add_argument('--num-train', type=int, default=1000)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--size', type=int, default=128,
                        help='image side of the generated data')
    parser.add_argument('--num-overlays', type=int, default=6)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--fp32', action='store_true',
                        help='no mixed precision (default: bf16 where the '
                        'CPU supports it, fp16 AMP on a GPU)')
    return parser.parse_args(argv)


def precision_flags(fp32: bool):
    """``['--amp']`` unless fp32 is asked for or the CPU has no bf16."""
    import torch

    from xcit_mm.engine import cpu_supports_bf16
    if fp32:
        print('precision: fp32 (--fp32)')
        return []
    if torch.cuda.is_available() or cpu_supports_bf16():
        print('precision: mixed (--amp: ' + (
            'fp16 on the GPU)' if torch.cuda.is_available() else
            'bfloat16 on the CPU)'))
        return ['--amp']
    print('precision: fp32 (this CPU has no native bfloat16)')
    return []


def run(cmd):
    """Runs a project tool, its output streaming to ours."""
    print('+ ' + ' '.join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + (
        ':' + os.environ['PYTHONPATH'] if os.environ.get('PYTHONPATH')
        else ''))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def data_options(task: str, data_root: str, iters, val_interval):
    root = osp.abspath(data_root) + '/'
    opts = [f'{split}_dataloader.dataset.data_root={root}'
            for split in ('train', 'val', 'test')]
    if task == 'det':
        opts += [f'{s}_evaluator.ann_file={root}annotations/instances_val.json'
                 for s in ('val', 'test')]
    if iters is not None:
        warmup = max(1, min(100, iters // 4))
        opts += [f'default_hooks.logger.interval={min(20, iters)}',
                 f'train_cfg.max_iters={iters}',
                 f'param_scheduler.0.end={warmup}',
                 f'param_scheduler.1.begin={warmup}',
                 f'param_scheduler.1.end={iters}']
        if val_interval is None:
            val_interval = iters
    if val_interval is not None:
        opts += [f'train_cfg.val_interval={val_interval}',
                 f'default_hooks.checkpoint.interval={val_interval}']
    return opts


def read_scalars(work_dir: str):
    """Training losses and validation metrics that mmengine logged in the
    newest run of ``work_dir`` (each run logs under its own timestamp; the
    demo trains from scratch, so earlier runs are not part of this one)."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    train, val = [], []
    for path in files[-1:]:
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec:
                    train.append((rec['step'], rec['loss']))
                elif any(k.startswith(('coco/', 'mIoU')) or k == 'mIoU'
                         for k in rec):
                    val.append(rec)
    return train, val


def plot_curves(train, val, headline: str, out: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color='tab:blue', label='training loss')
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss', color='tab:blue')
    ax2 = ax.twinx()
    points = [(r['step'], r[headline]) for r in val if headline in r]
    if points:
        steps, values = zip(*points)
        ax2.plot(steps, values, 'o-', color='tab:red',
                 label=f'held-out {headline}')
    ax2.set_ylabel(headline, color='tab:red')
    ax2.set_ylim(0, max([1.0] + [v for _, v in points]))
    fig.suptitle('XCiT demo on the shapes dataset')
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def copy_enlarged(src: str, dst: str, factor: int = 2):
    """Copies a held-out image at ``factor`` times its size (each pixel
    repeated), so that the drawn labels stay legible. The test pipeline
    resizes it back to the trained scale: the model sees the original."""
    from PIL import Image
    with Image.open(src) as img:
        img.resize((img.width * factor, img.height * factor),
                   Image.NEAREST).save(dst)


def make_montage(paths, out: str, columns: int = 3):
    """Puts the overlay images side by side in one PNG."""
    from PIL import Image
    if not paths:
        raise RuntimeError('tools/infer.py wrote no overlays')
    tiles = [Image.open(p).convert('RGB') for p in paths]
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    cols = min(columns, len(tiles))
    pad = 4
    sheet = Image.new('RGB', (cols * (w + pad) - pad, rows * (h + pad) - pad),
                      (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * (w + pad), (i // cols) * (h + pad)))
        tile.close()
    sheet.save(out)


def read_test_metrics(test_dir: str):
    files = sorted(glob.glob(osp.join(test_dir, '*', '*.json')))
    if not files:
        raise RuntimeError(f'tools/test.py wrote no metrics under {test_dir}')
    with open(files[-1]) as f:
        return json.load(f)


def run_task(task: str, args) -> dict:
    spec = TASKS[task]
    work = osp.abspath(osp.join(args.work_dir, task))
    config = spec['config']
    opts = data_options(task, args.data_root, args.iters, args.val_interval)
    amp = precision_flags(args.fp32)
    start = time.time()
    run([sys.executable, 'tools/train.py', config, '--work-dir', work] +
        amp + ['--cfg-options'] + opts)
    train_seconds = time.time() - start
    with open(osp.join(work, 'last_checkpoint')) as f:
        ckpt = f.read().strip()

    test_dir = osp.join(work, 'test')
    run([sys.executable, 'tools/test.py', config, ckpt, '--work-dir',
         test_dir] + amp + ['--cfg-options'] + opts[:3] + [
             o for o in opts if o.startswith('test_evaluator')])
    metrics = read_test_metrics(test_dir)

    samples = osp.join(work, 'samples')
    shutil.rmtree(samples, ignore_errors=True)
    os.makedirs(samples)
    val_dir = osp.join(args.data_root, spec['val_dir'])
    for name in sorted(os.listdir(val_dir))[:args.num_overlays]:
        copy_enlarged(osp.join(val_dir, name), osp.join(samples, name))
    overlays = osp.join(work, 'overlays')
    run([sys.executable, 'tools/infer.py', config, ckpt, samples, '--out',
         overlays] + amp)
    montage = osp.join(work, 'overlays.png')
    make_montage(
        sorted(glob.glob(osp.join(overlays, 'vis', '*.png'))), montage)

    train, val = read_scalars(work)
    plot_curves(train, val, spec['headline'], osp.join(work, 'curves.png'))
    summary = dict(
        task=task,
        config=config,
        precision='mixed' if amp else 'fp32',
        checkpoint=ckpt,
        train_seconds=round(train_seconds, 1),
        iterations=int(re.search(r'iter_(\d+)\.pth', ckpt).group(1)),
        final_loss=train[-1][1] if train else None,
        metrics={k: metrics.get(k)
                 for k in spec['metrics'] if k in metrics},
        all_metrics=metrics,
        validation_history=val,
        overlays=sorted(
            osp.join(overlays, 'vis', n)
            for n in os.listdir(osp.join(overlays, 'vis'))),
        montage=montage,
        curves=osp.join(work, 'curves.png'))
    with open(osp.join(work, 'metrics.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None):
    args = parse_args(argv)
    from shapes_data import generate
    start = time.time()
    generate(args.data_root, args.num_train, args.num_val, args.size,
             args.seed)
    results = [run_task('det', args)]
    if args.seg:
        results.append(run_task('seg', args))
    print('\n==== XCiT demo: held-out results ====')
    for res in results:
        work = osp.dirname(res['curves'])
        print(f"[{res['task']}] {res['config']}: {res['iterations']} "
              f"iterations in {res['train_seconds']:.0f} s")
        for k, v in res['metrics'].items():
            print(f'  {k}: {v:.3f}' if isinstance(v, float) else
                  f'  {k}: {v}')
        print(f'  metrics: {osp.join(work, "metrics.json")}')
        print(f'  curves:  {res["curves"]}')
        print(f'  overlays side by side: {res["montage"]}')
        print(f'  overlays: {osp.dirname(res["overlays"][0])} '
              f'({len(res["overlays"])} images)' if res['overlays'] else '')
    print(f'total wall time: {time.time() - start:.0f} s')


if __name__ == '__main__':
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(f'error: step failed ({err.returncode}): '
                 f'{" ".join(err.cmd[1:3])}; see its output above.')
