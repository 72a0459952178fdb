"""Time (and optionally peak memory) of the XCiT backbone beside its
references, or of whole detectors / segmentors from configs, side by side.

    # the backbone against timm's XCiT trunk holding the same weights
    python tools/analysis/benchmark.py backbone --arch small-12 --patch-size 8 \\
        --sizes 512x640 --threads 2 --mode forward --compare timm

    # the oneDNN products and the fused GELU against ATen's products / an
    # unfused GELU (A/B of the fast paths)
    python tools/analysis/benchmark.py backbone --arch small-12 --patch-size 8 \\
        --sizes 512x640 --threads 2 --compare aten unfused

    # training step, with gradient checkpointing as a third case
    python tools/analysis/benchmark.py backbone --arch small-12 --patch-size 8 \\
        --sizes 512x640 --mode train --compare timm cp --memory

    # the demo detector's training step with mmdet's RoI extractor against
    # SparseRoIExtractor (RoIAlign as a sparse product)
    python tools/analysis/benchmark.py models \\
        configs/demo/mask_rcnn_xcit_n12_p8_shapes.py --sizes 128 \\
        --batch-size 8 --mode train \\
        --roi-extractors SingleRoIExtractor SparseRoIExtractor

    # whole models, ours against upstream configs, fp32 and bf16
    python tools/analysis/benchmark.py models configs/coco/mask_rcnn_xcit_s12_p16.py \\
        mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py --sizes 800x1344 \\
        --mode predict --dtype fp32 bf16

Cases run in interleaved rounds (each round runs every case once, the order
rotating); each figure is ``torch.utils.benchmark.Timer.blocked_autorange``
of one round, and a ratio ``a / b`` is the median over rounds of the
per-round ratios (the first case over each other case: ``ours / timm``),
so that drift of the machine cancels; ``--clock cpu`` times the process's
CPU time instead of the wall clock (less disturbed by other jobs on a
shared machine; with several threads it is their sum). A training step
sets the gradients to None first, as an optimizer's ``zero_grad`` does.
``--memory``
measures, in a fresh process per case, the growth of resident memory during
one step (glibc told to unmap every block of 64 KiB or more when freed, so
the figure follows the live tensors).
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Callable, Dict, List

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import subjects  # noqa: E402


def _autocast(dtype: str, device: str):
    if dtype == 'bf16':
        return torch.autocast(device, dtype=torch.bfloat16)
    if dtype == 'fp16':
        return torch.autocast(device, dtype=torch.float16)
    return contextlib.nullcontext()


def _loss(outputs) -> torch.Tensor:
    if isinstance(outputs, dict):  # a model's loss dict
        from mmengine.model import BaseModel
        loss, _ = BaseModel.parse_losses(None, outputs)
        return loss
    return sum(o.float().mean() for o in outputs)


def backbone_cases(args, h: int, w: int) -> Dict[str, Callable]:
    """name -> step for the backbone and what ``--compare`` names."""
    train = args.mode == 'train'
    model = subjects.backbone(args.arch, args.patch_size).train(train)
    x = torch.randn(args.batch_size, 3, h, w)
    runs = {'ours': model}
    params = {}
    for name in args.compare:
        if name == 'timm':
            runs['timm'] = subjects.timm_trunk(model)
            params['timm'] = list(runs['timm'].module.parameters())
        elif name == 'trunk':
            runs['ours-trunk'] = model.forward_blocks
        elif name == 'aten':
            runs['ours-aten'] = _within(_aten_products, model)
        elif name == 'unfused':
            runs['ours-unfused'] = _within(_unfused_gelu, model)
        elif name == 'cp':
            cp = subjects.backbone(args.arch, args.patch_size, with_cp=True)
            cp.load_state_dict(model.state_dict())
            runs['ours-cp'] = cp.train(train)
            params['ours-cp'] = list(cp.parameters())
        elif name in ('vit', 'vit-fused', 'vit-naive'):
            for kind in (['fused', 'naive'] if name == 'vit' else
                         [name.split('-')[1]]):
                if subjects.tokens(args.patch_size, h, w) <= args.max_tokens:
                    runs[f'vit-{kind}'] = vit = subjects.timm_vit(model, kind)
                    params[f'vit-{kind}'] = list(vit.module.parameters())
    return {name: _step(fn, x, train, args.dtype,
                        params.get(name) or list(model.parameters()))
            for name, fn in runs.items()}


def _aten_products():
    """Every product of our Linear layers through ATen (MKL)."""
    from xcit_mm.models.linear import onednn_linear
    return onednn_linear(False)


@contextlib.contextmanager
def _unfused_gelu():
    """The MLP's GELU as its own op after the product, not fused."""
    from xcit_mm.models import xcit
    fused, xcit.linear_gelu = xcit.linear_gelu, lambda *args: None
    try:
        yield
    finally:
        xcit.linear_gelu = fused


def _within(context: Callable, fn: Callable) -> Callable:
    def run(x):
        with context():
            return fn(x)
    return run


def _step(fn: Callable, x, train: bool, dtype: str,
          params: List[torch.Tensor]) -> Callable:
    def step():
        if train:
            for p in params:
                p.grad = None
            with _autocast(dtype, 'cpu'):
                loss = _loss(fn(x))
            loss.backward()
        else:
            with torch.no_grad(), _autocast(dtype, 'cpu'):
                fn(x)
    return step


def model_cases(args, h: int, w: int) -> Dict[str, Callable]:
    """name -> step for each config (and dtype) given."""
    cases = {}
    if 'bf16' in args.dtype_list:
        from xcit_mm.engine import fp32_mmcv_ops_on_cpu
        fp32_mmcv_ops_on_cpu()  # mmcv's CPU NMS / RoIAlign take fp32 only
    if 'SparseRoIExtractor' in args.roi_extractors:
        import xcit_mm.models.roi_extractor  # noqa: F401  (registers it)
    configs = [(path, extractor) for path in args.configs
               for extractor in args.roi_extractors or [None]]
    for path, extractor in configs:
        cfg = subjects.load_model_config(path)
        name = osp.splitext(osp.basename(path.split('::')[-1]))[0]
        if extractor:
            for key in ('bbox_roi_extractor', 'mask_roi_extractor'):
                if key in cfg.model.get('roi_head', {}):
                    cfg.model.roi_head[key].type = extractor
            name += f' {extractor}'
        torch.manual_seed(0)  # the same weights for each extractor
        model = subjects.build_model(cfg)
        train = args.mode == 'train'
        model.train(train)
        inputs, samples = subjects.make_batch(
            model, cfg.default_scope, args.batch_size, h, w,
            with_targets=train)
        data = model.data_preprocessor(
            dict(inputs=list(inputs), data_samples=samples), training=train)
        for dtype in args.dtype_list:
            def step(model=model, data=data, dtype=dtype, train=train):
                if train:
                    model.zero_grad(set_to_none=True)
                    with _autocast(dtype, 'cpu'):
                        losses = model(**data, mode='loss')
                    _loss(losses).backward()
                else:
                    with torch.no_grad(), _autocast(dtype, 'cpu'):
                        model(**data, mode='predict')
            cases[f'{name} [{dtype}]'] = step
    return cases


def run_rounds(cases: Dict[str, Callable], rounds: int,
               min_run_time: float, clock: str = 'wall'
               ) -> Dict[str, List[float]]:
    for step in cases.values():  # warm-up
        step()
    times = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            # Timer runs one thread unless told otherwise
            timer = Timer('step()', globals={'step': cases[name]},
                          num_threads=torch.get_num_threads(),
                          timer=time.process_time if clock == 'cpu' else
                          timeit.default_timer)
            times[name].append(
                timer.blocked_autorange(min_run_time=min_run_time).median)
    return times


def memory_mb(argv: List[str], case: str) -> float:
    """Peak memory of one step of ``case``, measured in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536',
               MALLOC_TRIM_THRESHOLD_='0')
    out = subprocess.run(
        [sys.executable, osp.abspath(__file__)] + argv +
        ['--memory-of', case], env=env, check=True, text=True,
        stdout=subprocess.PIPE).stdout
    return json.loads(out.strip().splitlines()[-1])['peak_mb']


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _measure_own_memory(step: Callable) -> float:
    step()  # warm-up: weights, workspace
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the high-water mark to the current RSS
    before = _status_kb('VmRSS')
    step()
    return (_status_kb('VmHWM') - before) / 1024


def _cpu_info() -> Dict[str, str]:
    """The first processor's ``model name``, ``cpu family``, ``model`` and
    ``flags`` from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    info = dict(model_name=platform.processor() or platform.machine())
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = (p.strip() for p in line.partition(':'))
                if not key:
                    break
                info[key.replace(' ', '_')] = value
    except OSError:
        pass
    return info


def _onednn_isa() -> str:
    """The ISA oneDNN dispatches to, from its verbose lines on one tiny
    product (printed on file descriptor 1, so read back from there)."""
    with tempfile.TemporaryFile('w+') as tmp:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(
                    torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                torch.ops.mkldnn._linear_pointwise(
                    torch.randn(4, 8), torch.randn(8, 8), None, 'none', [],
                    '')
        except (AttributeError, RuntimeError):  # no oneDNN in this build
            pass
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        found = re.search(r'isa:([^,\n]+)', tmp.read())
    return found.group(1).strip() if found else 'unknown'


def machine_header(dtype: str) -> Dict[str, str]:
    """What every figure was measured on (printed above the tables)."""
    from xcit_mm.models.linear import onednn_chosen
    cpu = _cpu_info()
    products = 'F.linear (ATen)'
    if onednn_chosen():
        products = ('oneDNN (XCIT_MM_ONEDNN_LINEAR=1)'
                    if os.environ.get('XCIT_MM_ONEDNN_LINEAR') == '1' else
                    'oneDNN where timed faster, per shape (listed below)')
    config = torch.__config__.show()
    versions = dict(re.findall(
        r'(Math Kernel Library|MKL-DNN)\S*\s+(?:Version\s+)?v?([\d.]+)',
        config))
    return {
        'cpu': cpu.get('model_name', 'unknown'),
        'cpu family / model': f"{cpu.get('cpu_family', '?')} / "
                              f"{cpu.get('model', '?')}",
        'cores': str(os.cpu_count()),
        'AVX-512 / AVX512-BF16 / AMX flags': ' / '.join(
            'yes' if f in cpu.get('flags', '').split() else 'no'
            for f in ('avx512f', 'avx512_bf16', 'amx_bf16')),
        'ATen ISA': torch.backends.cpu.get_cpu_capability() + (
            f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
            if os.environ.get('ATEN_CPU_CAPABILITY') else ''),
        'oneDNN ISA': _onednn_isa() + (
            f" (ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']})"
            if os.environ.get('ONEDNN_MAX_CPU_ISA') else ''),
        'threads': str(torch.get_num_threads()),
        'dtype': dtype,
        'torch': f"{torch.__version__} (MKL "
                 f"{versions.get('Math Kernel Library', '?')}, oneDNN "
                 f"{versions.get('MKL-DNN', '?')})",
        'xcit_mm float32 linear products': products,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='what', required=True)
    bb = sub.add_parser('backbone', help='the backbone and its references')
    bb.add_argument('--arch', default='small-12')
    bb.add_argument('--patch-size', type=int, default=16, choices=[8, 16])
    bb.add_argument('--compare', nargs='*', default=['timm'],
                    choices=['timm', 'trunk', 'aten', 'unfused', 'cp',
                             'vit', 'vit-fused', 'vit-naive'])
    bb.add_argument('--mode', default='forward', choices=['forward',
                                                          'train'])
    bb.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'])
    bb.add_argument('--max-tokens', type=int, default=6400,
                    help='skip the ViTs above this many tokens')
    md = sub.add_parser('models', help='whole models from configs')
    md.add_argument('configs', nargs='+',
                    help='configs of ours or mmdet::/mmseg:: ones')
    md.add_argument('--mode', default='predict', choices=['predict',
                                                          'train'])
    md.add_argument('--dtype', dest='dtype_list', nargs='+',
                    default=['fp32'], choices=['fp32', 'bf16'])
    md.add_argument('--roi-extractors', nargs='+', default=[],
                    choices=['SingleRoIExtractor', 'SparseRoIExtractor'],
                    help="each config once with each as its RoI heads' "
                    'extractors (default: as configured)')
    for p in (bb, md):
        p.add_argument('--sizes', nargs='+', default=['512x640'],
                       help='input sizes, H or HxW')
        p.add_argument('--batch-size', type=int, default=1)
        p.add_argument('--threads', type=int, default=None)
        p.add_argument('--rounds', type=int, default=5)
        p.add_argument('--min-run-time', type=float, default=0.5,
                       help='seconds per blocked_autorange')
        p.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                       help="'cpu': the process's CPU time (all threads)")
        p.add_argument('--memory', action='store_true',
                       help='also peak memory (Linux), a process per case')
        p.add_argument('--json', help='write the figures to this file')
        p.add_argument('--memory-of', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [subjects.parse_size(s) for s in args.sizes]
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    build = backbone_cases if args.what == 'backbone' else model_cases
    if args.memory_of:  # the child of memory_mb
        h, w = args.sizes[0]
        step = build(args, h, w)[args.memory_of]
        print(json.dumps(dict(peak_mb=_measure_own_memory(step))))
        return
    header = machine_header(getattr(args, 'dtype', None)
                            or ' '.join(args.dtype_list))
    print('measured on: ' + '; '.join(f'{k}: {v}' for k, v in header.items()))
    results = []
    for h, w in args.sizes:
        cases = build(args, h, w)
        times = run_rounds(cases, args.rounds, args.min_run_time,
                           args.clock)
        first = next(iter(times))
        print(f'\ninput {h}x{w}, batch {args.batch_size}, '
              f'{torch.get_num_threads()} threads, mode {args.mode}, '
              f'{args.rounds} rounds, {args.clock} clock')
        print(f'| case | median (ms) | min-max (ms) | {first} / case |'
              + (' peak memory (MiB) |' if args.memory else ''))
        print('| --- | --- | --- | --- |' + (' --- |' if args.memory else ''))
        for name, ts in times.items():
            ratio = statistics.median(b / a for a, b in zip(ts, times[first]))
            row = dict(size=f'{h}x{w}', case=name,
                       median_ms=1e3 * statistics.median(ts),
                       min_ms=1e3 * min(ts), max_ms=1e3 * max(ts),
                       ratio=ratio)
            if args.memory:
                size_argv = [a for a in argv if a != '--memory']
                if '--sizes' in size_argv:
                    i = size_argv.index('--sizes')
                    n = len(args.sizes)
                    size_argv[i + 1:i + 1 + n] = [f'{h}x{w}']
                row['peak_mb'] = memory_mb(size_argv, name)
            results.append(row)
            print(f"| {name} | {row['median_ms']:.0f} | {row['min_ms']:.0f}"
                  f"-{row['max_ms']:.0f} | {ratio:.3f} |" +
                  (f" {row['peak_mb']:.0f} |" if args.memory else ''))
    from xcit_mm.models.linear import linear_choices
    choices = linear_choices()
    if choices:
        print('\nxcit_mm float32 linear products by shape: ' + '; '.join(
            f'{shape}: {how}' for shape, how in choices.items()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=header, clock=args.clock, results=results,
                           linear_products=choices), f, indent=1)
    return results


if __name__ == '__main__':
    main()
