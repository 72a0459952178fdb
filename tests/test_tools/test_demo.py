"""The README's main job, shortened: tools/demo.py with 4 iterations and
--seg on 8 + 4 generated images, in its default precision, through the
real train, test and infer tools; every artefact it promises (conftest.py
runs it once)."""
import json
import os.path as osp
import re

import pytest
from PIL import Image

from .utils import BF16_LOG, cpu_bf16

# the tests that share the demo run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group('demo')

METRICS = dict(det=('coco/bbox_mAP', 'coco/segm_mAP'), seg=('mIoU', ))
CONFIGS = dict(det='configs/demo/mask_rcnn_xcit_n12_p8_shapes.py',
               seg='configs/demo/fpn_xcit_n12_p8_shapes.py')


def test_demo_prints_the_summary(demo):
    assert 'XCiT demo: held-out results' in demo.out
    assert 'Iter(train) [4/4]' in demo.out  # the real training log
    assert 'eta:' in demo.out
    assert '[det]' in demo.out and '[seg]' in demo.out
    assert 'coco/bbox_mAP:' in demo.out and 'mIoU:' in demo.out
    # each task says which precision timed faster here and runs in it;
    # bfloat16 without native support (emulated) cannot be the faster
    chosen = re.findall(r'^precision: (mixed|fp32) \((.*)\)$', demo.out,
                        re.M)
    assert len(chosen) == 2, demo.out
    for kind, why in chosen:
        assert re.search(r'took [\d.]+ ms in bfloat16, [\d.]+ ms in fp32$',
                         why), why
    if not cpu_bf16():
        assert [kind for kind, _ in chosen] == ['fp32', 'fp32']
    assert (BF16_LOG in demo.out) == any(k == 'mixed' for k, _ in chosen)
    assert [demo.metrics(task)['precision'] for task in ('det', 'seg')] == [
        kind for kind, _ in chosen]
    # the data the demo generated once, in both layouts
    data = osp.join(demo.root, 'data')
    assert osp.isfile(osp.join(data, 'annotations', 'instances_val.json'))
    assert osp.isdir(osp.join(data, 'annotations', 'validation'))


@pytest.mark.parametrize('kind', ['det', 'seg'])
def test_demo_writes_every_artefact(demo, kind):
    metrics = demo.metrics(kind)
    assert metrics['config'] == CONFIGS[kind]
    assert metrics['precision'] in ('mixed', 'fp32')
    assert metrics['iterations'] == 4
    assert osp.isfile(metrics['checkpoint'])
    for key in METRICS[kind]:
        assert key in metrics['metrics']
    if kind == 'det':
        # 4 iterations on 8 images learn next to nothing: the held-out
        # data is not trivially matched
        assert 0.0 <= metrics['metrics']['coco/bbox_mAP'] < 0.05
    else:
        assert 0.0 <= metrics['metrics']['mIoU'] <= 100.0
    assert len(metrics['overlays']) == 3
    for path in metrics['overlays']:
        with Image.open(path) as img:  # the held-out image, enlarged 2x
            assert img.size == (128, 128)
    with Image.open(metrics['montage']) as img:  # 3 overlays in a row
        assert img.size == (3 * 128 + 2 * 4, 128)
    with Image.open(metrics['curves']) as img:
        assert img.size[0] > 0
    assert metrics['validation_history']  # validated during training
    with open(osp.join(demo.work(kind), 'metrics.json')) as f:
        assert json.load(f) == metrics


def test_curves_read_only_the_newest_run(tmp_path):
    """A second demo in the same work dir plots and reports its own run,
    not the runs mmengine logged there before."""
    from tests.helpers import tools_module
    for stamp, loss, mAP in (('20260101_000000', 9.0, 0.1),
                             ('20260101_000100', 1.0, 0.6)):
        vis = tmp_path / stamp / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(
            json.dumps(dict(step=10, loss=loss)) + '\n' +
            json.dumps({'step': 20, 'coco/bbox_mAP': mAP}) + '\n')
    train, val = tools_module('demo').read_scalars(str(tmp_path))
    assert train == [(10, 1.0)]
    assert val == [{'step': 20, 'coco/bbox_mAP': 0.6}]


def test_timed_steps_run_in_both_precisions(demo):
    """The training steps the demo times where bfloat16 products are the
    faster (not on every CPU, so called here directly): fp32, and bf16
    cut short after its warm-up."""
    from tests.helpers import tools_module
    step_seconds = tools_module('demo').step_seconds
    data = osp.join(demo.root, 'data')
    f32 = step_seconds(CONFIGS['det'], data, bf16=False, steps=1)
    b16 = step_seconds(CONFIGS['det'], data, bf16=True, give_up=0.0)
    assert 0.0 < f32 < float('inf') and 0.0 < b16 < float('inf')
