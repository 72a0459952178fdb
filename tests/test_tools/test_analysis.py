"""tools/analysis/benchmark.py and get_flops.py as a user runs them (tiny
sizes, one round; no timing is asserted), and the FLOP counts they give:
XCA's products counted, the blocks' analytic count, the published ImageNet
figures."""
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import tools_module

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_DEMO = osp.join('configs', 'demo', 'mask_rcnn_xcit_n12_p8_shapes.py')
SEG_DEMO = osp.join('configs', 'demo', 'fpn_xcit_n12_p8_shapes.py')
QUICK = ['--rounds', '1', '--min-run-time', '0.01', '--threads', '2']


def run_tool(name, *args, timeout=300):
    cmd = [sys.executable, osp.join(REPO, 'tools', 'analysis', name),
           *map(str, args)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def table_rows(stdout):
    """The ``| case | ... |`` rows of benchmark.py's tables, by case."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and cells[0] not in ('case', '---'):
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def gmacs(stdout, part):
    """``part: X GMACs`` in get_flops.py's report, in GMACs."""
    m = re.search(rf'^\s*{re.escape(part)}: ([\d.]+) GMACs', stdout, re.M)
    assert m, f'no {part!r} line in:\n{stdout}'
    return float(m.group(1))


# ---------------------------------------------------------------- benchmark


def check_machine(machine, stdout, dtype, threads='2', env=None):
    """The header names the CPU, both ISAs, threads, dtype and torch, as
    this process sees them (under ``env``'s ISA limits)."""
    assert stdout.startswith('measured on: ') or '\nmeasured on: ' in stdout
    with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
    name = re.search(r'^model name\s*:\s*(.+)$', cpuinfo, re.M).group(1)
    family = re.search(r'^cpu family\s*:\s*(\d+)', cpuinfo, re.M).group(1)
    assert machine['cpu'] == name.strip()
    assert machine['cpu family / model'].startswith(family + ' / ')
    aten = subprocess.run(
        [sys.executable, '-c', 'import torch; '
         'print(torch.backends.cpu.get_cpu_capability())'],
        capture_output=True, text=True, env=env).stdout.strip()
    assert machine['ATen ISA'].split(' (')[0] == aten
    assert machine['oneDNN ISA'] != 'unknown'
    assert machine['threads'] == threads and machine['dtype'] == dtype
    assert machine['torch'].startswith(torch.__version__ + ' (MKL ')
    for key, value in machine.items():
        assert f'{key}: {value}' in stdout


def check_results(data, stdout, cases, sizes):
    rows = data['results']
    assert {(r['size'], r['case']) for r in rows} == {
        (s, c) for s in sizes for c in cases}
    table = table_rows(stdout)
    assert set(table) == set(cases)
    assert all(len(v) == len(sizes) for v in table.values())
    for r in rows:
        assert 0 < r['min_ms'] <= r['median_ms'] <= r['max_ms'], r
        assert r['ratio'] > 0, r
        if r['case'] == cases[0]:
            assert r['ratio'] == 1.0


@pytest.mark.parametrize('mode, sizes, clock', [
    ('forward', ['64x64', '48x80'], 'wall'), ('train', ['64x64'], 'cpu')])
def test_benchmark_backbone(mode, sizes, clock, tmp_path):
    out = tmp_path / 'bench.json'
    stdout = run_tool('benchmark.py', 'backbone', '--arch', 'nano-12',
                      '--patch-size', 16, '--sizes', *sizes, '--compare',
                      'timm', 'trunk', 'aten', 'unfused', 'cp', '--mode',
                      mode, '--clock', clock, *QUICK, '--json', out)
    assert f'mode {mode}' in stdout and f'{clock} clock' in stdout
    assert json.loads(out.read_text())['clock'] == clock
    check_machine(json.loads(out.read_text())['machine'], stdout, 'fp32')
    check_results(json.loads(out.read_text()), stdout,
                  ['ours', 'timm', 'ours-trunk', 'ours-aten', 'ours-unfused',
                   'ours-cp'], sizes)


def test_ab_cases_turn_their_path_off(monkeypatch):
    """``--compare aten`` / ``unfused`` time the same model without the
    oneDNN products / without the fused GELU (the path forced on, not left
    to the per-shape timing)."""
    import torch
    monkeypatch.setenv('XCIT_MM_ONEDNN_LINEAR', '1')

    from xcit_mm.models import linear, xcit
    monkeypatch.setattr(linear, '_chosen', None)  # the variable read afresh
    bench = tools_module('benchmark', 'analysis')
    x, w, b = torch.randn(3, 8), torch.randn(16, 8), torch.randn(16)
    with torch.no_grad():
        with bench._aten_products():
            assert not linear._use_onednn(x, w)
        with bench._unfused_gelu():
            assert xcit.linear_gelu(x, w, b) is None
        if linear.onednn_chosen():
            assert linear._use_onednn(x, w)
            assert xcit.linear_gelu(x, w, b) is not None


@pytest.mark.parametrize('configs, dtypes', [
    ([DET_DEMO], ['fp32', 'bf16']),
    ([DET_DEMO, SEG_DEMO], ['fp32']),
    ([SEG_DEMO], ['fp32', 'bf16']),
], ids=['det-fp32-bf16', 'det-seg-fp32', 'seg-fp32-bf16'])
def test_benchmark_models(configs, dtypes, tmp_path):
    out = tmp_path / 'models.json'
    stdout = run_tool('benchmark.py', 'models', *configs, '--sizes', '64x64',
                      '--mode', 'predict', '--dtype', *dtypes, *QUICK,
                      '--json', out)
    cases = [f'{osp.splitext(osp.basename(c))[0]} [{d}]'
             for c in configs for d in dtypes]
    check_machine(json.loads(out.read_text())['machine'], stdout,
                  ' '.join(dtypes))
    check_results(json.loads(out.read_text()), stdout, cases, ['64x64'])


@pytest.mark.skipif(not osp.exists('/proc/cpuinfo'), reason='Linux only')
def test_benchmark_header_follows_isa_limits(tmp_path):
    """Under ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA the header names the
    ISAs the libraries then used, and the variables."""
    import os
    out = tmp_path / 'bench.json'
    env = dict(os.environ, ATEN_CPU_CAPABILITY='default',
               ONEDNN_MAX_CPU_ISA='SSE41')
    cmd = [sys.executable, osp.join(REPO, 'tools', 'analysis',
                                    'benchmark.py'), 'backbone', '--arch',
           'nano-12', '--patch-size', '16', '--sizes', '32', '--compare',
           *QUICK, '--threads', '1', '--json', str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    machine = json.loads(out.read_text())['machine']
    check_machine(machine, run.stdout, 'fp32', threads='1', env=env)
    assert machine['ATen ISA'] == 'DEFAULT (ATEN_CPU_CAPABILITY=default)'
    if torch.backends.mkldnn.is_available():
        assert machine['oneDNN ISA'].endswith('(ONEDNN_MAX_CPU_ISA=SSE41)')
        assert 'AVX' not in machine['oneDNN ISA']


# ---------------------------------------------------------------- get_flops


@pytest.fixture(scope='module')
def get_flops():
    return tools_module('get_flops', 'analysis')


@pytest.mark.parametrize('tokens, dim, heads', [(196, 128, 4), (37, 384, 8),
                                                (1, 64, 2)])
def test_xca_products_are_counted(get_flops, tokens, dim, heads):
    """XCA is qkv (3 N C^2) + q^T k and attn v (N C d each) + proj
    (N C^2) multiply-adds: the two einsums are counted, not skipped."""
    from xcit_mm.models.xcit import XCA
    n, c, d = tokens, dim, dim // heads
    total, parts, params = get_flops.count(XCA(c, heads),
                                           (torch.zeros(1, n, c), ))
    assert parts['qkv'] == 3 * n * c * c and parts['proj'] == n * c * c
    # mmengine counts einsums from numpy's 4-digit rounded figure
    assert total - parts['qkv'] - parts['proj'] == pytest.approx(
        2 * n * c * d, rel=1e-3)
    assert params == 4 * c * c + 4 * c + heads


@pytest.mark.parametrize('patch_size', [8, 16])
def test_get_flops_preset(patch_size):
    """The blocks' count, per block: XCA (4 N C^2 + 2 N C d), the MLP
    (8 N C^2), LPI's two depthwise 3x3 convs (18 N C) and the norms as
    mmengine counts them (3 LayerNorms 5 N C each, BN in eval 2 N C)."""
    arch, dim, depth, heads, shape = 'nano-12', 128, 12, 4, (96, 160)
    stdout = run_tool('get_flops.py', arch, '--patch-size', patch_size,
                      '--shape', *shape)
    n = -(-shape[0] // patch_size) * -(-shape[1] // patch_size)
    per_block = n * dim * (12 * dim + 2 * dim // heads + 18 + 17)
    assert gmacs(stdout, 'blocks') == pytest.approx(
        depth * per_block / 1e9, rel=0.01)
    total = float(re.search(r'([\d.]+) GMACs$', stdout.splitlines()[0])[1])
    parts = ['patch_embed', 'pos_embed', 'blocks', 'adapter']
    assert all(gmacs(stdout, p) > 0 for p in parts if p != 'pos_embed')
    assert total == pytest.approx(sum(gmacs(stdout, p) for p in parts),
                                  abs=3e-3)


@pytest.mark.parametrize('arch, patch_size', [('nano-12', 16),
                                              ('small-12', 8)])
def test_imagenet_counts_match_published(get_flops, arch, patch_size):
    """What --all-presets sets beside the paper's table, for two rows."""
    total, params = get_flops.imagenet_count(arch, patch_size)
    published_params, published_gmacs = \
        get_flops.PUBLISHED_IMAGENET[(arch, patch_size)]
    assert total / 1e9 == pytest.approx(published_gmacs, rel=0.01)
    if published_params is not None:
        assert params / 1e6 == pytest.approx(published_params, rel=0.01)


def test_published_table_covers_every_preset(get_flops):
    from xcit_mm.models import ARCH_SETTINGS
    assert set(get_flops.PUBLISHED_IMAGENET) == {
        (a, p) for a in ARCH_SETTINGS for p in (8, 16)}


def test_get_flops_config():
    stdout = run_tool('get_flops.py', DET_DEMO, '--shape', 128, 128)
    first = stdout.splitlines()[0]
    assert first.startswith(DET_DEMO) and '128x128' in first
    total = float(re.search(r'([\d.]+) GMACs$', first)[1])
    backbone = gmacs(stdout, 'backbone')
    assert 0 < backbone < total
    assert gmacs(stdout, 'roi_head') > 0


def test_get_flops_needs_a_target():
    out = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis', 'get_flops.py')],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert 'give a preset or a config, or --all-presets' in out.stderr
