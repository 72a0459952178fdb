"""The README's main job, shortened: tools/demo.py with 4 iterations and
--seg on 8 + 4 generated images, in its default precision, through the
real train, test and infer tools; every artefact it promises (conftest.py
runs it once)."""
import json
import os.path as osp

import pytest
from PIL import Image

from .utils import cpu_bf16

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
    # each task says its precision: mixed where the CPU has bf16
    if cpu_bf16():
        assert demo.out.count(
            'precision: mixed (--amp: bfloat16 on the CPU)') == 2
        assert 'mixed precision: no GPU: bfloat16 autocast' in demo.out
    else:
        assert demo.out.count(
            'precision: fp32 (this CPU has no native bfloat16)') == 2
    # the data the demo generated once, in both layouts
    data = osp.join(demo.root, 'data')
    assert osp.isfile(osp.join(data, 'annotations', 'instances_val.json'))
    assert osp.isdir(osp.join(data, 'annotations', 'validation'))


@pytest.mark.parametrize('kind', ['det', 'seg'])
def test_demo_writes_every_artefact(demo, kind):
    metrics = demo.metrics(kind)
    assert metrics['config'] == CONFIGS[kind]
    assert metrics['precision'] == ('mixed' if cpu_bf16() else 'fp32')
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
