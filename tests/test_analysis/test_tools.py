"""tools/analysis/benchmark.py and get_flops.py run end to end (smoke
tests on tiny inputs; no timing is asserted)."""
import csv
import json
import os.path as osp
import subprocess
import sys

import pytest

from xcit_mm.analysis.bench import cpu_peak_supported

pytest.importorskip('timm')
pytest.importorskip('matplotlib')


def run_tool(repo_root, name, *args, timeout=240):
    cmd = [sys.executable, osp.join(repo_root, 'tools', 'analysis', name),
           *map(str, args)]
    out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_benchmark_preset_with_references(repo_root, tmp_path):
    stdout = run_tool(
        repo_root, 'benchmark.py', '--arch', 'nano-12', '--patch-size', 16,
        '--sizes', '64x80', 48, '--compare', 'timm', 'vit', 'trunk',
        '--repeats', 2, '--warmup', 1, '--threads', 2, '--max-tokens', 16,
        '--device', 'cpu', '--out-dir', tmp_path, '--name', 'bench')
    rows = read_csv(tmp_path / 'bench.csv')
    assert (tmp_path / 'bench.png').stat().st_size > 1000
    by = {(r['model'], r['size']): r for r in rows}
    assert set(by) == {(m, s) for m in ('ours', 'timm-xcit', 'ours-trunk',
                                        'vit-fused')
                       for s in ('48x48', '64x80')}
    assert by[('ours', '64x80')]['tokens'] == '20'
    for model in ('ours', 'timm-xcit', 'ours-trunk'):
        for size in ('48x48', '64x80'):
            row = by[(model, size)]
            assert row['status'] == 'ok' and row['repeats'] == '2'
            assert float(row['median_ms']) > 0
            assert float(row['images_per_s']) > 0
            if cpu_peak_supported():  # measured in a second process
                assert float(row['peak_mem_mb']) >= 0
    assert float(by[('timm-xcit', '64x80')]['ours_over_this']) > 0
    # the ViT ran at 9 tokens and stopped at its 16-token budget
    assert by[('vit-fused', '48x48')]['status'] == 'ok'
    assert by[('vit-fused', '64x80')]['status'] == 'over-token-budget'
    assert 'ours / timm-xcit' in stdout


def test_benchmark_train_mode_with_checkpointing(repo_root, tmp_path):
    run_tool(repo_root, 'benchmark.py', '--arch', 'n12', '--patch-size', 8,
             '--sizes', 64, '--mode', 'train', '--compare', 'cp',
             '--dtype', 'bf16', '--repeats', 1, '--warmup', 1,
             '--cpu-memory', 'rss', '--device', 'cpu', '--no-plot',
             '--out-dir', tmp_path,
             '--name', 'train')
    rows = {r['model']: r for r in read_csv(tmp_path / 'train.csv')}
    assert set(rows) == {'ours', 'ours-cp'}
    for row in rows.values():
        assert row['status'] == 'ok' and row['mode'] == 'train'
        assert row['dtype'] == 'bf16'
    assert not (tmp_path / 'train.png').exists()


def test_benchmark_config_whole_model(repo_root, tmp_path):
    config = osp.join(repo_root, 'configs', 'demo',
                      'mask_rcnn_xcit_n12_p8_shapes.py')
    run_tool(repo_root, 'benchmark.py', '--config', config, '--sizes', 64,
             '--compare', '--repeats', 1, '--warmup', 1, '--device', 'cpu',
             '--no-memory', '--out-dir', tmp_path, '--name', 'cfg')
    rows = {r['model']: r for r in read_csv(tmp_path / 'cfg.csv')}
    assert set(rows) == {'ours', 'model'}
    assert all(r['status'] == 'ok' for r in rows.values())
    assert rows['ours']['peak_mem_mb'] == ''


def test_get_flops_preset_imagenet_and_table(repo_root, tmp_path):
    stdout = run_tool(repo_root, 'get_flops.py', 'small-12', '--imagenet',
                      '--json', tmp_path / 'im.json')
    im = json.loads((tmp_path / 'im.json').read_text())
    assert im['imagenet_params'] / 1e6 == pytest.approx(26.25, rel=0.01)
    assert im['imagenet_macs'] / 1e9 == pytest.approx(4.81, rel=0.01)
    assert 'published' in stdout

    run_tool(repo_root, 'get_flops.py', 's12', '--patch-size', 8,
             '--shape', 512, 640, '--json', tmp_path / 'bb.json')
    bb = json.loads((tmp_path / 'bb.json').read_text())
    assert bb['tokens'] == 64 * 80 and bb['macs'] > bb['trunk_macs'] > 0

    stdout = run_tool(repo_root, 'get_flops.py', '--all-presets',
                      '--presets', 'nano-12', 'tiny-24', '--json',
                      tmp_path / 'table.json')
    rows = json.loads((tmp_path / 'table.json').read_text())['rows']
    assert len(rows) == 4
    for row in rows:
        assert abs(row['gmacs_diff_pct']) < 3
    assert '| nano-12 | 16 |' in stdout


def test_get_flops_config(repo_root, tmp_path):
    config = osp.join(repo_root, 'configs', 'demo',
                      'fpn_xcit_n12_p8_shapes.py')
    run_tool(repo_root, 'get_flops.py', config, '--shape', 64, 96,
             '--json', tmp_path / 'cfg.json')
    out = json.loads((tmp_path / 'cfg.json').read_text())
    assert out['model_macs'] > out['backbone_macs'] > 0
    assert out['model_params'] > out['backbone_params'] > 0
