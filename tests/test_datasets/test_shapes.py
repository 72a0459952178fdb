"""The demo's registered datasets: their class names and colours, and a
tiny generated dataset loaded through mmdet's and mmseg's registries with a
pipeline, as the demo configs load it."""
import json

import numpy as np
import pytest
from mmengine.registry import DefaultScope

from tests.helpers import tools_module

shapes_data = tools_module('shapes_data')
NUM_TRAIN, NUM_VAL, SIZE = 4, 2, 64


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    shapes_data.generate(str(root), num_train=NUM_TRAIN, num_val=NUM_VAL,
                         size=SIZE, seed=1, progress=False)
    return root


def build(scope, cfg):
    import xcit_mm.datasets  # noqa: F401  (registers the datasets)
    if scope == 'mmdet':
        from mmdet.registry import DATASETS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import DATASETS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        dataset = DATASETS.build(cfg)
        return dataset, [dataset[i] for i in range(len(dataset))]


def test_registered_in_their_scopes():
    from mmdet.registry import DATASETS as DET
    from mmseg.registry import DATASETS as SEG

    from xcit_mm.datasets import ShapesDataset, ShapesSegDataset
    assert DET.get('ShapesDataset') is ShapesDataset
    assert SEG.get('ShapesSegDataset') is ShapesSegDataset


def test_metainfo_names_the_generated_classes():
    from xcit_mm.datasets import ShapesDataset, ShapesSegDataset
    det, seg = ShapesDataset.METAINFO, ShapesSegDataset.METAINFO
    assert tuple(det['classes']) == tuple(shapes_data.CLASSES)
    assert tuple(seg['classes']) == tuple(shapes_data.SEG_CLASSES)
    for meta in (det, seg):
        palette = [tuple(c) for c in meta['palette']]
        assert len(palette) == len(meta['classes'])
        assert len(set(palette)) == len(palette)  # one colour per class
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c)
                   for c in palette)
    # a shape has the same colour in both tasks
    assert [tuple(c) for c in seg['palette'][1:]] == \
        [tuple(c) for c in det['palette']]


@pytest.mark.parametrize('split, n', [('train', NUM_TRAIN),
                                      ('val', NUM_VAL)])
def test_detection_dataset_loads(root, split, n):
    dataset, items = build('mmdet', dict(
        type='ShapesDataset',
        data_root=str(root),
        ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img=f'{split}/'),
        test_mode=split == 'val',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')
        ]))
    assert len(dataset) == n
    assert dataset.metainfo['classes'] == tuple(shapes_data.CLASSES)
    with open(root / 'annotations' / f'instances_{split}.json') as f:
        num_annotations = len(json.load(f)['annotations'])
    loaded = 0
    for item in items:
        assert tuple(item['inputs'].shape) == (3, SIZE, SIZE)
        gt = item['data_samples'].gt_instances
        labels = gt.labels.tolist()
        assert labels and all(0 <= c < len(shapes_data.CLASSES)
                              for c in labels)
        assert len(gt.masks) == len(labels) == len(gt.bboxes)
        loaded += len(labels)
    assert loaded == num_annotations  # every annotation found its class


@pytest.mark.parametrize('split, n', [('training', NUM_TRAIN),
                                      ('validation', NUM_VAL)])
def test_segmentation_dataset_loads(root, split, n):
    dataset, items = build('mmseg', dict(
        type='ShapesSegDataset',
        data_root=str(root),
        data_prefix=dict(img_path=f'images/{split}',
                         seg_map_path=f'annotations/{split}'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')
        ]))
    assert len(dataset) == n
    assert dataset.metainfo['classes'] == tuple(shapes_data.SEG_CLASSES)
    num_classes = len(shapes_data.SEG_CLASSES)
    for item in items:
        assert tuple(item['inputs'].shape) == (3, SIZE, SIZE)
        labels = np.unique(item['data_samples'].gt_sem_seg.data.numpy())
        # 0 (unlabelled rim) is ignored: 255 after reduce_zero_label
        assert set(labels.tolist()) <= set(range(num_classes)) | {255}
        assert 0 in labels  # background
        assert (labels[(labels > 0) & (labels < 255)]).size  # a shape
