"""The README's main job, shortened: the whole command path and artefacts."""
import json

import pytest
from PIL import Image

from tests.e2e_utils import run_tool


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    _, out, seconds = run_tool([
        'tools/run_demo.sh', '--work-dir', str(root / 'work'), '--data-root',
        str(root / 'data'), '--num-train', '8', '--num-val', '4', '--size',
        '64', '--iters', '4', '--num-overlays', '3', '--seg'
    ])
    print(f'shortened demo: {seconds:.1f} s')
    return root, out


def test_demo_writes_every_artefact(demo):
    root, out = demo
    work = root / 'work' / 'det'
    assert 'XCiT demo: held-out results' in out
    assert 'Iter(train) [4/4]' in out  # the real training log, with ETA
    assert 'eta:' in out
    metrics = json.loads((work / 'metrics.json').read_text())
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics['metrics'])
    assert metrics['iterations'] == 4
    # 4 iterations on 8 images learn next to nothing: the held-out data
    # is not trivially matched
    assert 0.0 <= metrics['metrics']['coco/bbox_mAP'] < 0.05
    assert len(metrics['overlays']) == 3
    for path in metrics['overlays'] + [metrics['curves']]:
        with Image.open(path) as img:
            assert img.size[0] > 0
    with Image.open(metrics['montage']) as img:  # 3 overlays in a row, 2x size
        assert img.size == (3 * 128 + 2 * 4, 128)
    assert (root / 'data' / 'annotations' / 'instances_val.json').is_file()


def test_demo_seg_flag_trains_a_semantic_fpn(demo):
    root, out = demo
    metrics = json.loads(
        (root / 'work' / 'seg' / 'metrics.json').read_text())
    assert metrics['config'].endswith('fpn_xcit_n12_p8_shapes.py')
    assert metrics['iterations'] == 4
    assert 0.0 <= metrics['metrics']['mIoU'] <= 100.0
    assert len(metrics['overlays']) == 3
    assert '[seg]' in out and 'mIoU:' in out
    with Image.open(metrics['overlays'][0]) as img:
        assert img.size == (128, 128)  # the held-out image, enlarged 2x


def test_infer_tool_writes_an_overlay(demo, tmp_path):
    root, _ = demo
    metrics = json.loads((root / 'work' / 'det' / 'metrics.json').read_text())
    image = root / 'data' / 'val' / 'val_00000.png'
    _, out, _ = run_tool([
        'tools/infer.py', metrics['config'], metrics['checkpoint'],
        str(image), '--out', str(tmp_path), '--score-thr', '0.0'
    ])
    overlay = tmp_path / 'vis' / 'val_00000.png'
    assert overlay.is_file()
    with Image.open(overlay) as img, Image.open(image) as src:
        assert img.size == src.size
    assert (tmp_path / 'preds' / 'val_00000.json').is_file()


def test_infer_tool_names_a_missing_input(demo, tmp_path):
    root, _ = demo
    metrics = json.loads((root / 'work' / 'det' / 'metrics.json').read_text())
    code, out, _ = run_tool([
        'tools/infer.py', metrics['config'], metrics['checkpoint'],
        str(tmp_path / 'nope.png'), '--out', str(tmp_path)
    ], check=False)
    assert code != 0 and 'no such image or folder' in out
