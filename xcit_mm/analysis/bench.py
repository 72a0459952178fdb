"""Interleaved timing and peak memory of several models over input sizes.

Every model of a size is timed in the same rounds: round ``r`` runs each
model once (the order rotates from round to round), so slow phases of a
shared or throttling machine hit all of them alike, and the ratio of two
models is also taken per round (``ours_r / other_r``): its median is a
ratio measured side by side.

Peak memory is measured after all the timed steps, in one more step per
model and size:

- CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the memory
  allocated before it (activations, workspace, gradients and outputs; not
  the weights or the input);
- CPU (Linux): the growth of the process's resident memory during the step.
  Freed heap memory is first handed back to the OS (glibc ``malloc_trim``),
  the kernel's high-water mark is reset (``/proc/self/clear_refs``), and
  ``VmHWM`` after the step minus ``VmRSS`` before it is reported (4 KiB
  pages). With glibc's default caching, freed blocks stay resident and are
  reused, so the figure depends on the allocation history; the benchmark
  tool therefore measures in a separate process started with
  ``MALLOC_MMAP_THRESHOLD_=65536`` (:func:`live_memory_env`): every block of
  64 KiB or more is then mapped on its own and unmapped when freed, and the
  figure follows the live tensors (plus oneDNN/MKL scratch), as the CUDA
  figure does. Elsewhere memory is reported as ``n/a``.
"""
import contextlib
import csv
import ctypes
import gc
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}

CSV_FIELDS = [
    'model', 'size', 'height', 'width', 'tokens', 'batch_size', 'mode',
    'dtype', 'device', 'threads', 'status', 'repeats', 'median_ms', 'q1_ms',
    'q3_ms', 'min_ms', 'max_ms', 'images_per_s', 'peak_mem_mb',
    'ours_over_this', 'ours_over_this_q1', 'ours_over_this_q3',
    'ours_over_this_medians', 'note'
]

# glibc: allocations of this size or more get their own mapping, unmapped
# when freed, so the resident memory follows the live tensors. It must be
# set when the process starts (blocks freed earlier stay in glibc's bins
# and are reused), hence the separate memory process.
LIVE_MMAP_THRESHOLD = 64 * 1024


def parse_size(text: str) -> Tuple[int, int]:
    """``'512'`` -> ``(512, 512)``; ``'512x640'`` -> ``(512, 640)`` (H x W).
    """
    parts = str(text).lower().replace('*', 'x').split('x')
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f'Bad size {text!r}: use H or HxW, e.g. 224 or '
                         '512x640.')
    return values[0], values[1]


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch.cuda, 'OutOfMemoryError', ())):
        return True
    text = str(exc).lower()
    return 'out of memory' in text or "can't allocate memory" in text


def synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------
def live_memory_env(base: Optional[dict] = None) -> dict:
    """The environment of a process whose CPU peak memory follows the live
    tensors (glibc only; other C libraries ignore the variable)."""
    env = dict(os.environ if base is None else base)
    env['MALLOC_MMAP_THRESHOLD_'] = str(LIVE_MMAP_THRESHOLD)
    return env


def _proc_status() -> Dict[str, int]:
    values = {}
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(('VmRSS:', 'VmHWM:')):
                key, value = line.split(':', 1)
                values[key] = int(value.split()[0]) * 1024
    return values


_LIBC = None


def _malloc_trim():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL('libc.so.6')
            _LIBC.malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def cpu_peak_supported() -> bool:
    return os.path.exists('/proc/self/clear_refs') and os.access(
        '/proc/self/clear_refs', os.W_OK)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory_mb` measures on ``device``, in words."""
    if device.type == 'cuda':
        return ('torch.cuda.max_memory_allocated over the step minus the '
                'memory allocated before it')
    if device.type != 'cpu' or not cpu_peak_supported():
        return 'n/a on this platform'
    live = os.environ.get('MALLOC_MMAP_THRESHOLD_') == str(
        LIVE_MMAP_THRESHOLD)
    return ('growth of resident memory over the step (VmHWM - VmRSS), ' +
            ('blocks of 64 KiB or more mapped and unmapped one by one: '
             'about the peak of live tensors' if live else
             "glibc's default caching included"))


def peak_memory_mb(step: Callable[[], None],
                   device: torch.device) -> Optional[float]:
    """Peak extra memory of one ``step()`` in MiB (see the module doc);
    ``None`` where it cannot be measured."""
    gc.collect()
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type != 'cpu' or not cpu_peak_supported():
        return None
    try:
        _malloc_trim()
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _proc_status()['VmRSS']
        step()
        return max(0, _proc_status()['VmHWM'] - base) / 2**20
    except OSError:
        return None


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
class Case:
    """A model to time: how to build its input for a size, run inference
    and compute a training loss.

    Args:
        name: label in the CSV and the plot.
        model: the module (its ``train()``/``eval()`` is set per mode).
        infer: ``input -> outputs``.
        tokens: ``(H, W) -> tokens`` of the trunk.
        prepare: ``(batch, H, W, device) -> input``; default a random
            image batch.
        loss: ``input -> scalar``; default the sum of the means of the
            outputs of ``infer``.
        max_tokens: skip sizes with more tokens (a budget).
    """

    def __init__(self,
                 name: str,
                 model: torch.nn.Module,
                 infer: Callable,
                 tokens: Callable[[int, int], int],
                 prepare: Optional[Callable] = None,
                 loss: Optional[Callable] = None,
                 max_tokens: Optional[int] = None):
        self.name = name
        self.model = model
        self.infer = infer
        self.tokens = tokens
        self.prepare = prepare or (lambda b, h, w, device: torch.randn(
            b, 3, h, w, device=device))
        self.loss = loss or self._default_loss
        self.max_tokens = max_tokens
        self.stopped: Optional[str] = None  # why larger sizes are skipped
        self.stopped_at: Optional[int] = None

    def _default_loss(self, inputs):
        outs = self.infer(inputs)
        if isinstance(outs, torch.Tensor):
            outs = [outs]
        return sum(o.float().mean() for o in outs)


def make_step(case: Case, inputs, mode: str, dtype: Optional[torch.dtype],
              device: torch.device) -> Callable[[], None]:
    """One timed unit: inference (``mode='forward'``, no autograd) or a
    forward and backward pass (``'train'``)."""

    def amp():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    if mode == 'forward':

        def step():
            with torch.inference_mode(), amp():
                case.infer(inputs)
    else:

        def step():
            with amp():
                loss = case.loss(inputs)
            loss.backward()

    return step


def _clear_grads(case: Case, mode: str):
    if mode == 'train':
        case.model.zero_grad(set_to_none=True)


def _quantiles(values: Sequence[float]) -> Tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method='inclusive')
    return q[0], statistics.median(values), q[2]


def _timed(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def _failure(exc: BaseException) -> Tuple[str, str]:
    """(status, note) of a step that raised: ``oom``, or ``error`` (e.g. an
    operator without a bf16 kernel) with the message; the model is then
    skipped for this and larger sizes, and the others go on."""
    if is_oom(exc):
        return 'oom', 'out of memory'
    message = str(exc).strip().splitlines()
    message = message[0] if message else ''
    return 'error', f'{type(exc).__name__}: {message[:160]}'


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
def run_benchmark(cases: List[Case],
                  sizes: Sequence[Tuple[int, int]],
                  batch_size: int = 1,
                  mode: str = 'forward',
                  dtype: str = 'fp32',
                  device='cpu',
                  warmup: int = 2,
                  repeats: int = 10,
                  max_seconds: Optional[float] = None,
                  memory: bool = True,
                  log: Callable[[str], None] = print) -> List[dict]:
    """Times every case at every size (smallest first), interleaved, then
    (``memory``) measures the peak memory of one more step of each in this
    process; returns one row per case and size (see :data:`CSV_FIELDS`).
    The first case is the one the others are compared with
    (``ours_over_this``: the median over rounds of the first case's time
    over this case's)."""
    if mode not in ('forward', 'train'):
        raise ValueError(f"mode must be 'forward' or 'train', got {mode!r}.")
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {list(DTYPES)}, got '
                         f'{dtype!r}.')
    device = torch.device(device)
    amp_dtype = DTYPES[dtype]
    for case in cases:
        case.model.train(mode == 'train')
    rows = []
    order = sorted(range(len(sizes)),
                   key=lambda i: cases[0].tokens(*sizes[i]))
    for size_index in order:
        h, w = sizes[size_index]
        rows.extend(
            _time_size(cases, h, w, batch_size, mode, amp_dtype, dtype,
                       device, warmup, repeats, max_seconds, log))
    if memory:
        entries = [(r['model'], r['height'], r['width']) for r in rows
                   if r['status'] == 'ok']
        merge_memory(
            rows,
            measure_memory(cases, entries, batch_size, mode, dtype, device,
                           warmup=0, log=log))
    return rows


def _time_size(cases, h, w, batch_size, mode, amp_dtype, dtype, device,
               warmup, repeats, max_seconds, log) -> List[dict]:
    active, results = [], {}
    for case in cases:
        tokens = case.tokens(h, w)
        row = dict(
            model=case.name,
            size=f'{h}x{w}',
            height=h,
            width=w,
            tokens=tokens,
            batch_size=batch_size,
            mode=mode,
            dtype=dtype,
            device=str(device),
            threads=torch.get_num_threads(),
            status='ok',
            repeats=0,
            note='')
        results[case.name] = row
        if case.stopped is not None and tokens >= case.stopped_at:
            row['status'] = case.stopped
            row['note'] = f'stopped at {case.stopped_at} tokens'
        elif case.max_tokens is not None and tokens > case.max_tokens:
            row['status'] = 'over-token-budget'
            row['note'] = f'--max-tokens {case.max_tokens}'
            case.stopped, case.stopped_at = 'over-token-budget', tokens
        else:
            active.append(case)
    steps, times = {}, {c.name: [] for c in active}

    def fail(case, status, note):
        results[case.name]['status'] = status
        results[case.name]['note'] = note
        case.stopped = status
        case.stopped_at = case.tokens(h, w)
        active.remove(case)
        steps.pop(case.name, None)
        times.pop(case.name, None)
        _clear_grads(case, mode)
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()

    for case in list(active):
        try:
            inputs = case.prepare(batch_size, h, w, device)
            steps[case.name] = make_step(case, inputs, mode, amp_dtype,
                                         device)
        except Exception as exc:  # noqa: BLE001
            fail(case, *_failure(exc))
    # Warm-up, interleaved; the time budget is checked on these steps.
    for _ in range(max(warmup, 1)):
        for case in list(active):
            try:
                _clear_grads(case, mode)
                elapsed = _timed(steps[case.name], device)
            except Exception as exc:  # noqa: BLE001
                fail(case, *_failure(exc))
                continue
            if max_seconds is not None and elapsed > max_seconds:
                fail(case, 'over-time-budget',
                     f'one step took {elapsed:.1f} s > --max-seconds '
                     f'{max_seconds:g}')
    for r in range(repeats):
        shift = r % max(len(active), 1)
        for case in active[shift:] + active[:shift]:
            try:
                _clear_grads(case, mode)
                times[case.name].append(_timed(steps[case.name], device))
            except Exception as exc:  # noqa: BLE001
                fail(case, *_failure(exc))
    steps.clear()
    for case in cases:
        _clear_grads(case, mode)
    gc.collect()
    ref = cases[0].name
    rows = []
    for case in cases:
        row = results[case.name]
        ts = times.get(case.name)
        if row['status'] == 'ok' and ts:
            q1, med, q3 = _quantiles(ts)
            row.update(
                repeats=len(ts),
                median_ms=1e3 * med,
                q1_ms=1e3 * q1,
                q3_ms=1e3 * q3,
                min_ms=1e3 * min(ts),
                max_ms=1e3 * max(ts),
                images_per_s=batch_size / med)
            ref_ts = times.get(ref)
            if case.name != ref and ref_ts and len(ref_ts) == len(ts):
                ratios = [a / b for a, b in zip(ref_ts, ts)]
                rq1, rmed, rq3 = _quantiles(ratios)
                row.update(
                    ours_over_this=rmed,
                    ours_over_this_q1=rq1,
                    ours_over_this_q3=rq3,
                    ours_over_this_medians=statistics.median(ref_ts) / med)
        elif row['status'] == 'ok':
            row['status'] = 'no-data'
        rows.append(row)
        log(format_row(row))
    return rows


def measure_memory(cases: List[Case],
                   entries: Sequence[Tuple[str, int, int]],
                   batch_size: int = 1,
                   mode: str = 'forward',
                   dtype: str = 'fp32',
                   device='cpu',
                   warmup: int = 1,
                   log: Callable[[str], None] = print) -> Dict[str, object]:
    """Peak memory of one step (after ``warmup`` unmeasured ones) of each
    ``(model name, H, W)`` of ``entries``: ``{'model@HxW': MiB, None (not
    measurable here) or an error message}``."""
    device = torch.device(device)
    amp_dtype = DTYPES[dtype]
    by_name = {c.name: c for c in cases}
    for case in cases:
        case.model.train(mode == 'train')
    log(f'peak memory ({memory_method(device)}):')
    out: Dict[str, object] = {}
    for name, h, w in entries:
        case = by_name[name]
        key = f'{name}@{h}x{w}'
        inputs = step = None
        try:
            inputs = case.prepare(batch_size, h, w, device)
            step = make_step(case, inputs, mode, amp_dtype, device)
            for _ in range(warmup):
                _clear_grads(case, mode)
                step()
            _clear_grads(case, mode)
            out[key] = peak_memory_mb(step, device)
        except Exception as exc:  # noqa: BLE001
            out[key] = 'memory step: ' + _failure(exc)[1]
        finally:
            inputs = step = None
            _clear_grads(case, mode)
            gc.collect()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        value = out[key]
        log(f'{name:>14} {h}x{w:<6} peak ' +
            (f'{value:.0f} MiB' if isinstance(value, float) else str(value)))
    return out


def merge_memory(rows: List[dict], measured: Dict[str, object]):
    """Puts :func:`measure_memory`'s figures into the rows."""
    for row in rows:
        value = measured.get(f"{row['model']}@{row['height']}x{row['width']}")
        if isinstance(value, (int, float)):
            row['peak_mem_mb'] = float(value)
        elif isinstance(value, str):
            row['note'] = (row['note'] + '; ' if row['note'] else '') + value


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _fmt(value, spec='.1f', missing='-') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def format_row(row: dict) -> str:
    """One line per row, for the log."""
    if row['status'] != 'ok':
        return (f"{row['model']:>14} {row['size']:>10} {row['tokens']:>7} "
                f"tokens  {row['status']} ({row['note']})")
    text = (f"{row['model']:>14} {row['size']:>10} {row['tokens']:>7} tokens"
            f"  median {_fmt(row['median_ms'])} ms"
            f" (IQR {_fmt(row['q1_ms'])}-{_fmt(row['q3_ms'])},"
            f" min {_fmt(row['min_ms'])}, max {_fmt(row['max_ms'])},"
            f" n={row['repeats']})  {_fmt(row['images_per_s'], '.2f')} img/s")
    mem = row.get('peak_mem_mb')
    if mem is not None:
        text += f'  peak mem {mem:.0f} MiB'
    if row.get('ours_over_this') is not None:
        text += (f"  ours/this {row['ours_over_this']:.3f}"
                 f" (IQR {row['ours_over_this_q1']:.3f}-"
                 f"{row['ours_over_this_q3']:.3f};"
                 f" of medians {row['ours_over_this_medians']:.3f})")
    return text


def write_csv(rows: List[dict], path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS,
                                extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({
                k: (f'{v:.6g}' if isinstance(v, float) else v)
                for k, v in row.items()
            })


def plot_scaling(rows: List[dict], path: str, title: str = ''):
    """Time per image and peak memory against tokens (log-log), one line per
    model; a model that stopped (out of memory, over a budget, an error)
    gets a cross on its last measured point and says so in the legend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    models = []
    for row in rows:
        if row['model'] not in models:
            models.append(row['model'])
    has_mem = any(r.get('peak_mem_mb') for r in rows)
    fig, axes = plt.subplots(
        1, 2 if has_mem else 1, figsize=(10 if has_mem else 5.5, 4.2),
        squeeze=False)
    axes = axes[0]
    panels = [('median_ms', 'time per image (ms)')]
    if has_mem:
        panels.append(('peak_mem_mb', 'peak memory of a step (MiB)'))
    for ax, (key, label) in zip(axes, panels):
        for i, name in enumerate(models):
            own = sorted((r for r in rows if r['model'] == name),
                         key=lambda r: r['tokens'])
            ok = [r for r in own if r['status'] == 'ok'
                  and r.get(key) is not None and r[key] > 0]
            if not ok:
                continue
            stopped = [r for r in own if r['status'] != 'ok']
            label_text = name
            if stopped:
                label_text += (f" ({stopped[0]['status']} from "
                               f"{stopped[0]['tokens']} tokens)")
            xs = [r['tokens'] for r in ok]
            scale = 1.0 / ok[0]['batch_size'] if key == 'median_ms' else 1.0
            ys = [r[key] * scale for r in ok]
            color = f'C{i}'
            if key == 'median_ms':
                lo = [(r['median_ms'] - r['q1_ms']) * scale for r in ok]
                hi = [(r['q3_ms'] - r['median_ms']) * scale for r in ok]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker='o', ms=4,
                            capsize=2, color=color, label=label_text)
            else:
                ax.plot(xs, ys, marker='o', ms=4, color=color,
                        label=label_text)
            if stopped:
                # where it stopped: a cross on its last measured point
                ax.plot(xs[-1], ys[-1], marker='X', ms=12, color=color,
                        linestyle='none')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('tokens (log)')
        ax.set_ylabel(label + ' (log)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
