"""Throughput and peak memory of the XCiT backbone (and of a whole model),
side by side with timm's XCiT and a global-attention ViT.

Examples::

    # our backbone vs timm's XCiT trunk at equal weights, CPU, 2 threads
    python tools/analysis/benchmark.py --arch small-12 --patch-size 8 \\
        --sizes 512x640 --threads 2 --compare timm --repeats 15

    # the linear-vs-quadratic figure: XCiT vs a ViT of equal size
    python tools/analysis/benchmark.py --arch small-12 --patch-size 16 \\
        --sizes 224 384 512 768 1024 --compare timm vit --max-tokens 4096

    # gradient checkpointing: forward + backward memory with / without
    python tools/analysis/benchmark.py --arch small-12 --mode train \\
        --sizes 512 --compare cp

    # a config: its backbone and the whole detector / segmentor
    python tools/analysis/benchmark.py \\
        --config configs/coco/mask_rcnn_xcit_s12_p8.py --sizes 800x1216

Writes ``<out-dir>/<name>.csv`` (one row per model and size: median and
spread of the step time, images/s, peak memory, ours/this ratio) and
``<out-dir>/<name>.png`` (time and memory against tokens). See
``docs/performance.md`` for how memory is measured on the CPU.
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMPARE = ('timm', 'vit', 'cp', 'trunk')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--arch', default=None,
                     help="a preset ('small-12', 's12', ...); default "
                     'small-12 when no --config is given')
    src.add_argument('--config', default=None,
                     help='an mmdet/mmseg config: its backbone and (unless '
                     '--backbone-only) the whole model are timed')
    parser.add_argument('--patch-size', type=int, default=16,
                        choices=[8, 16], help='with --arch (default 16)')
    parser.add_argument('--norm', default='BN', choices=['BN', 'SyncBN'],
                        help='batch norm of a preset, or of a config (whose '
                        'SyncBN becomes BN unless SyncBN is given)')
    parser.add_argument('--sizes', nargs='+', default=['224', '512'],
                        help='input sizes, H or HxW (e.g. 224 512x640)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--mode', default='forward',
                        choices=['forward', 'train'],
                        help='forward: inference without autograd; train: '
                        'forward + backward (train mode)')
    parser.add_argument('--dtype', default='fp32',
                        choices=['fp32', 'bf16', 'fp16'],
                        help='bf16/fp16: autocast')
    parser.add_argument('--device', default=None, choices=['cpu', 'cuda'],
                        help='default: cuda if available')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (CPU)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed steps per model and size')
    parser.add_argument('--repeats', type=int, default=10,
                        help='timed rounds per size (every model once each)')
    parser.add_argument('--compare', nargs='*', default=['timm'],
                        choices=COMPARE,
                        help="timm: timm's XCiT trunk holding our weights; "
                        'vit: a global-attention ViT of equal width, depth, '
                        'heads and patch; cp: our backbone with gradient '
                        'checkpointing (with_cp=True); trunk: our backbone '
                        'without the adapter (forward_blocks). Default: timm')
    parser.add_argument('--vit-attention', nargs='+', default=['fused'],
                        choices=['fused', 'naive'],
                        help="fused: timm's default scaled_dot_product_"
                        'attention; naive: the N x N matrix materialised '
                        '(as in the DeiT of the paper); both: two ViTs')
    parser.add_argument('--max-tokens', type=int, default=None,
                        help='ViT budget: skip it above this many tokens')
    parser.add_argument('--max-seconds', type=float, default=None,
                        help='time budget: a model whose warm-up step takes '
                        'longer is stopped for this and larger sizes')
    parser.add_argument('--backbone-only', action='store_true',
                        help='with --config: do not time the whole model')
    parser.add_argument('--with-cp', action='store_true',
                        help='build our backbone with with_cp=True')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory steps')
    parser.add_argument('--cpu-memory', default='live',
                        choices=['live', 'rss'],
                        help='CPU peak memory: live (default; measured in a '
                        'second process where freed blocks go back to the '
                        'OS at once, so the figure follows the live '
                        "tensors) or rss (in this process, glibc's caching "
                        'included); see xcit_mm/analysis/bench.py')
    parser.add_argument('--memory-child', default=None,
                        help=argparse.SUPPRESS)  # internal: JSON job file
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--out-dir', default='work_dirs/benchmark')
    parser.add_argument('--name', default=None,
                        help='file name stem (default from the settings)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.arch is None and args.config is None:
        args.arch = 'small-12'
    return args


def machine_description(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return f'{cpu}, {os.cpu_count()} logical CPUs'


def build_cases(args, device):
    from xcit_mm.analysis.bench import Case
    from xcit_mm.analysis.references import grid_tokens, timm_vit, \
        timm_xcit_trunk
    torch.manual_seed(args.seed)
    cases = []
    cfg = None
    if args.config:
        from xcit_mm.analysis.full_model import build_from_config, \
            load_model_config
        cfg = load_model_config(args.config, sync_bn=args.norm == 'SyncBN')
        backbone = build_from_config(cfg, 'backbone')
        label = osp.splitext(osp.basename(args.config))[0]
    else:
        from xcit_mm.models import XCiT
        backbone = XCiT(arch=args.arch, patch_size=args.patch_size,
                        norm_cfg=dict(type=args.norm))
        label = f'{backbone.arch}-p{backbone.patch_size}'
    backbone.with_cp = args.with_cp
    backbone = backbone.to(device)
    tokens = grid_tokens(backbone.patch_size)
    cases.append(Case('ours', backbone, backbone, tokens))
    if 'timm' in args.compare:
        ref = timm_xcit_trunk(backbone)
        cases.append(Case('timm-xcit', ref.model, ref, tokens))
    if 'trunk' in args.compare:
        cases.append(Case('ours-trunk', backbone, backbone.forward_blocks,
                          tokens))
    if 'cp' in args.compare:
        cp_model = copy.deepcopy(backbone)
        cp_model.with_cp = not args.with_cp
        cases.append(Case('ours-cp' if cp_model.with_cp else 'ours-no-cp',
                          cp_model, cp_model, tokens))
    if 'vit' in args.compare:
        for attention in dict.fromkeys(args.vit_attention):
            vit = timm_vit(backbone.embed_dims, backbone.depth,
                           backbone.num_heads, backbone.patch_size,
                           backbone.out_indices, attention, device)
            cases.append(
                Case(vit.name, vit.model, vit, tokens,
                     max_tokens=args.max_tokens))
    if cfg is not None and not args.backbone_only:
        cases.append(full_model_case(cfg, device, tokens))
    return cases, label


def full_model_case(cfg, device, tokens):
    from xcit_mm.analysis.bench import Case
    from xcit_mm.analysis.full_model import build_from_config, make_batch
    model = build_from_config(cfg, 'model').to(device)
    scope = cfg.default_scope

    def prepare(batch_size, h, w, dev):
        return make_batch(model, scope, batch_size, h, w, dev,
                          with_targets=model.training)

    def infer(batch):
        return model(batch.inputs, batch.data_samples, mode='predict')

    def loss(batch):
        losses = model(batch.inputs, batch.data_samples, mode='loss')
        return model.parse_losses(losses)[0]

    return Case('model', model, infer, tokens, prepare=prepare, loss=loss)


def memory_child(args, cases, device):
    """The memory process: measures the jobs listed in the JSON file
    ``--memory-child`` and writes the figures into it."""
    from xcit_mm.analysis.bench import measure_memory
    with open(args.memory_child) as f:
        job = json.load(f)
    measured = measure_memory(
        cases, [tuple(e) for e in job['entries']],
        batch_size=args.batch_size, mode=args.mode, dtype=args.dtype,
        device=device, warmup=1)
    job['measured'] = measured
    with open(args.memory_child, 'w') as f:
        json.dump(job, f)
    return []


def measure_in_child(args, argv, rows):
    """Runs the memory steps in a fresh process whose allocator returns
    freed blocks to the OS at once (see xcit_mm/analysis/bench.py), and
    merges its figures into ``rows``."""
    from xcit_mm.analysis.bench import live_memory_env, merge_memory
    entries = [[r['model'], r['height'], r['width']] for r in rows
               if r['status'] == 'ok']
    if not entries:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'memory.json')
        with open(path, 'w') as f:
            json.dump(dict(entries=entries), f)
        cmd = [sys.executable, osp.abspath(__file__)]
        cmd += list(sys.argv[1:] if argv is None else argv)
        cmd += ['--memory-child', path]
        print('measuring peak memory in a separate process ...', flush=True)
        result = subprocess.run(cmd, env=live_memory_env())
        if result.returncode != 0:
            print('the memory process failed; memory is left empty.')
            return
        with open(path) as f:
            merge_memory(rows, json.load(f).get('measured', {}))


def main(argv=None):
    args = parse_args(argv)
    import xcit_mm  # noqa: F401
    from xcit_mm.analysis.bench import (parse_size, plot_scaling,
                                        run_benchmark, write_csv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no GPU available.')
    sizes = [parse_size(s) for s in args.sizes]
    cases, label = build_cases(args, device)
    if args.memory_child:
        return memory_child(args, cases, device)
    name = args.name or (f'{label}_{args.mode}_{args.dtype}_{device.type}'
                         f'_b{args.batch_size}')
    print(f'torch {torch.__version__} | {machine_description(device)} | '
          f'threads {torch.get_num_threads()} | {label} | mode {args.mode} '
          f'| dtype {args.dtype} | batch {args.batch_size} | '
          f'{args.warmup} warm-up + {args.repeats} interleaved rounds')
    print('models: ' + ', '.join(c.name for c in cases))
    live_child = (not args.no_memory and device.type == 'cpu'
                  and args.cpu_memory == 'live')
    rows = run_benchmark(
        cases,
        sizes,
        batch_size=args.batch_size,
        mode=args.mode,
        dtype=args.dtype,
        device=device,
        warmup=args.warmup,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        memory=not args.no_memory and not live_child)
    if live_child:
        cases = None  # free the models before the memory process runs
        measure_in_child(args, argv, rows)
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, name + '.csv')
    write_csv(rows, csv_path)
    print(f'wrote {csv_path}')
    if not args.no_plot:
        png_path = osp.join(args.out_dir, name + '.png')
        plot_scaling(
            rows, png_path,
            f'{label}, {args.mode}, {args.dtype}, batch {args.batch_size}, '
            f'{device.type} ({torch.get_num_threads()} threads)')
        print(f'wrote {png_path}')
    print('\nsummary: ours / other time (median of the per-round ratios, '
          'IQR; ratio of the medians), peak memory')
    ours = {r['size']: r for r in rows if r['model'] == 'ours'}
    for row in rows:
        if row['model'] == 'ours' or row.get('ours_over_this') is None:
            continue
        mem, ref_mem = row.get('peak_mem_mb'), ours[row['size']].get(
            'peak_mem_mb')
        mem_text = '' if mem is None or ref_mem is None else (
            f'; peak memory ours {ref_mem:.0f} MiB, {row["model"]} '
            f'{mem:.0f} MiB')
        print(f"  {row['size']:>10}  ours / {row['model']}: "
              f"{row['ours_over_this']:.3f} "
              f"({row['ours_over_this_q1']:.3f}-"
              f"{row['ours_over_this_q3']:.3f}; "
              f"{row['ours_over_this_medians']:.3f}){mem_text}")
    return rows


if __name__ == '__main__':
    main()
