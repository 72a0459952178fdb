"""Mask R-CNN export (tools/deployment/detector.py): the exportable module
against mmdet's own predict, ONNX Runtime against the module at other sizes
and batch sizes, and the post-processing into DetDataSamples."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.helpers import SMALL_ARCH, randomize_, tools_module

D = tools_module('detector', 'deployment')

EXPORT_SHAPE = (96, 128)
# RPN keeps few proposals and R-CNN keeps few boxes, so that some images
# are padded and others are full
MAX_DETS = 12


@pytest.fixture(scope='module')
def detector():
    """The demo Mask R-CNN with a 4-block backbone and random weights whose
    classifier biases are raised so that boxes pass the score threshold."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import xcit_mm  # noqa: F401
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(
        f'{REPO_ROOT}/configs/demo/mask_rcnn_xcit_n12_p8_shapes.py')
    cfg.model.backbone.update(
        arch=SMALL_ARCH, patch_size=16, out_indices=(0, 1, 2, 3))
    cfg.model.neck.in_channels = [SMALL_ARCH['embed_dims']] * 4
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=50)
    cfg.model.test_cfg.rcnn.update(max_per_img=MAX_DETS, score_thr=0.375)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize_(model)
    with torch.no_grad():
        model.rpn_head.rpn_cls.bias.add_(2.0)
        model.roi_head.bbox_head.fc_cls.bias[-1] -= 2.0
    return cfg, model.eval()


@pytest.fixture(scope='module')
def session(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp('onnx') / 'mask_rcnn.onnx'
    D.export_detector(detector[1], str(path), shape=EXPORT_SHAPE)
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def images(n, h, w, seed=0):
    return torch.randn(
        n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def eager(model, img):
    with torch.no_grad():
        return [x.numpy() for x in D.DetectorExport(model).eval()(img)]


def samples(n, h, w, scale):
    from mmdet.structures import DetDataSample
    ori = (round(h / scale), round(w / scale))
    return [
        DetDataSample(
            metainfo=dict(
                img_shape=(h, w),
                pad_shape=(h, w),
                batch_input_shape=(h, w),
                ori_shape=ori,
                scale_factor=(w / ori[1], h / ori[0]))) for _ in range(n)
    ]


@pytest.mark.parametrize('h,w,scale', [(96, 128, 1.0), (128, 160, 0.5)])
def test_matches_mmdet_predict(detector, h, w, scale):
    """Boxes, scores, labels and pasted masks equal mmdet's predict(rescale)."""
    cfg, model = detector
    img = images(2, h, w)
    dets, labels, masks = eager(model, img)
    assert dets.shape == (2, MAX_DETS, 5) and labels.dtype == np.int64
    assert masks.shape == (2, MAX_DETS, 28, 28)
    found = (dets[..., 4] > 0).sum(1)
    assert found.min() > 0, 'the test model should detect something'
    with torch.no_grad():
        ref = model.predict(img, samples(2, h, w, scale), rescale=True)
    got = D.det_outputs_to_samples(dets, labels, masks,
                                   samples(2, h, w,
                                           scale), cfg.model.test_cfg.rcnn,
                                   D.build_mask_head(cfg.model))
    for r, g in zip(ref, got):
        r, g = r.pred_instances, g.pred_instances
        assert len(g) == len(r)
        torch.testing.assert_close(g.bboxes, r.bboxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(g.scores, r.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(g.labels, r.labels)
        assert g.masks.shape == r.masks.shape == (len(r), *samples(
            1, h, w, scale)[0].ori_shape)
        assert (g.masks != r.masks).float().mean() < 1e-4


def test_padding_and_full_images(detector):
    """Fewer detections than max_per_img are padded with score 0."""
    dets, labels, masks = eager(detector[1], images(4, 96, 128, seed=1))
    found = (dets[..., 4] > 0).sum(1)
    assert found.max() == MAX_DETS and found.min() < MAX_DETS, found
    pad = dets[..., 4] == 0
    assert (dets[pad] == 0).all() and (labels[pad] == 0).all()
    assert (masks[pad] == 0).all()
    scores = dets[..., 4]
    assert (np.diff(scores, axis=1) <= 0).all(), 'sorted by score'


def test_graph_has_standard_ops_only(session):
    """No custom-domain operator: plain ONNX Runtime runs the file."""
    model = onnx.load(session._model_path)
    domains = {node.domain for node in model.graph.node}
    assert domains <= {'', 'ai.onnx'}, domains
    ops = {node.op_type for node in model.graph.node}
    assert {'NonMaxSuppression', 'RoiAlign'} <= ops
    names = [o.name for o in session.get_outputs()]
    assert names == list(D.OUTPUT_NAMES)


@pytest.mark.parametrize('n,h,w', [(1, 96, 128), (2, 128, 160), (2, 100, 132)])
def test_onnx_runtime_matches_eager(detector, session, n, h, w):
    """At the traced size, at other sizes (not multiples of 32) and batch 2."""
    img = images(n, h, w, seed=2)
    ref = eager(detector[1], img)
    got = session.run(None, {D.INPUT_NAME: img.numpy()})
    assert (ref[0][..., 4] > 0).sum() > 0
    assert D.compare_outputs(ref, got) < 1e-4


def test_batch_matches_single_images(detector, session):
    """Batch 2 gives each image's single-image result, in eager and in ORT."""
    img = images(2, 128, 160, seed=3)
    ort_batch = session.run(None, {D.INPUT_NAME: img.numpy()})
    eager_batch = eager(detector[1], img)
    for i in range(2):
        one = img[i:i + 1]
        ort_one = session.run(None, {D.INPUT_NAME: one.numpy()})
        assert (ort_one[0][..., 4] > 0).sum() > 0
        for batch in (ort_batch, eager_batch):
            assert D.compare_outputs([x[i:i + 1] for x in batch],
                                     ort_one) < 1e-4


def test_compare_outputs_flags_disagreement():
    dets = np.zeros((1, 3, 5), np.float32)
    dets[0, :2] = [[1, 2, 10, 12, 0.9], [3, 3, 8, 9, 0.5]]
    labels = np.array([[1, 2, 0]])
    masks = np.full((1, 3, 4, 4), 0.5, np.float32)
    assert D.compare_outputs((dets, labels, masks), (dets, labels, masks)) == 0
    other = labels.copy()
    other[0, 1] = 0
    assert D.compare_outputs((dets, labels, masks),
                             (dets, other, masks)) == float('inf')
    fewer = dets.copy()
    fewer[0, 1] = 0
    assert D.compare_outputs((dets, labels, masks),
                             (fewer, labels, masks)) == float('inf')
    moved = dets.copy()
    moved[0, 0, 2] += 0.12
    assert D.compare_outputs((dets, labels, masks),
                             (moved, labels, masks)) == pytest.approx(0.01)


def test_unsupported_parts_are_named(detector):
    model = copy.deepcopy(detector[1])
    model.test_cfg.rcnn.nms = dict(type='soft_nms', iou_threshold=0.5)
    with pytest.raises(ValueError, match=r'test_cfg\.rcnn\.nms.*soft_nms'):
        D.DetectorExport(model)
    model.roi_head = None
    with pytest.raises(ValueError, match='has no roi_head'):
        D.DetectorExport(model)


def test_old_opset_is_refused(detector, tmp_path):
    with pytest.raises(ValueError, match='opset >= 16'):
        D.export_detector(detector[1], str(tmp_path / 'x.onnx'), opset=13)
    assert not (tmp_path / 'x.onnx').exists()


def test_check_with_no_detections_checks_every_box(detector, tmp_path):
    """A check on inputs that give no box above the score threshold would
    compare nothing: the exporter checks a copy without the threshold too,
    and the file it writes keeps the config's threshold."""
    E = tools_module('export_onnx', 'deployment')
    cfg, model = detector
    model = copy.deepcopy(model)
    model.test_cfg.rcnn.score_thr = 1.01  # no probability passes
    lines, out = [], tmp_path / 'det.onnx'
    E.export(cfg, model, 'demo.py', str(out), 'detector',
             shape=EXPORT_SHAPE, log=lines.append)
    assert 'score_thr=0 as well' in '\n'.join(lines), lines
    counts = [int(line.rsplit('(', 1)[1].split()[0]) for line in lines
              if line.startswith('check ')]
    assert counts[:2] == [0, 0] and min(counts[2:]) > 0, lines
    assert model.test_cfg.rcnn.score_thr == 1.01
    sess = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    dets = sess.run(None, {'input': images(1, *EXPORT_SHAPE).numpy()})[0]
    assert (dets[..., 4] == 0).all()
