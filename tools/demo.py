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
evaluation and inference run in mixed precision (``--amp``) on a GPU, and on
a CPU where a few timed training steps run faster in bfloat16 than in fp32;
in fp32 otherwise or with ``--fp32``.
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
                        help='no mixed precision (default: fp16 AMP on a '
                        'GPU; on a CPU bf16 if timed steps say it is faster)')
    return parser.parse_args(argv)


def step_seconds(config: str, data_root: str, bf16: bool,
                 steps: int = 2, give_up: float = float('inf')) -> float:
    """Best wall time of ``steps`` training steps (forward, losses,
    backward) of ``config``'s model on 2 training images of ``data_root``,
    after one warm-up step, in fp32 or under bfloat16 autocast (mmcv's NMS
    and RoIAlign in float32, as in training). Stops after the warm-up when
    that alone took longer than ``give_up`` seconds, and returns its time."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner

    from xcit_mm.engine import fp32_mmcv_ops_on_cpu
    cfg = Config.fromfile(osp.join(ROOT, config))
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    loader = dict(cfg.train_dataloader, batch_size=2, num_workers=0,
                  persistent_workers=False)
    loader['dataset'] = dict(loader['dataset'],
                             data_root=osp.abspath(data_root) + '/')
    batch = next(iter(Runner.build_dataloader(loader, seed=0)))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    if bf16:
        fp32_mmcv_ops_on_cpu()
    best = float('inf')
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            data = model.data_preprocessor(batch, True)
            loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        model.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        if step == 0 and seconds > give_up:
            return seconds
        if step:
            best = min(best, seconds)
    return best


def product_seconds(bf16: bool, repeats: int = 3) -> float:
    """Best wall time of a linear layer's forward and backward at the demo
    backbone's size (2048 tokens, 128 -> 512) in fp32 or under bfloat16
    autocast."""
    import torch
    layer = torch.nn.Linear(128, 512)
    x = torch.randn(2048, 128, requires_grad=True)
    best = float('inf')
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().sum().backward()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def precision_flags(fp32: bool, config: str, data_root: str):
    """``['--amp']`` when mixed precision is the faster for this job here:
    fp16 AMP on a GPU; on a CPU bfloat16 autocast if timed training steps
    run faster in it than in fp32 (skipped when the backbone's linear
    product alone is already slower in bfloat16). ``[]`` (fp32) otherwise
    or with ``--fp32``."""
    import torch
    if fp32:
        print('precision: fp32 (--fp32)')
        return []
    if torch.cuda.is_available():
        print('precision: mixed (--amp: fp16 on the GPU)')
        return ['--amp']
    f32, b16 = product_seconds(False), product_seconds(True)
    timing = (f'a 2048x128 -> 512 linear layer, forward and backward, took '
              f'{1000 * b16:.2f} ms in bfloat16, {1000 * f32:.2f} ms in fp32')
    if b16 < f32:
        f32 = step_seconds(config, data_root, bf16=False)
        try:
            b16 = step_seconds(config, data_root, bf16=True,
                               give_up=3 * f32)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else repr(err)
            print('precision: fp32 (a training step failed under bfloat16 '
                  f'autocast: {first})')
            return []
        timing = (f'a training step of 2 images took {1000 * b16:.0f} ms '
                  f'in bfloat16, {1000 * f32:.0f} ms in fp32')
    if b16 < f32:
        print(f'precision: mixed (--amp: bfloat16 on the CPU; {timing})')
        return ['--amp']
    print(f'precision: fp32 (faster on this CPU: {timing})')
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
    amp = precision_flags(args.fp32, config, args.data_root)
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
