"""tools/shapes_data.py, the demo's data generator: valid COCO and
ADE20k-style files, shapes that overlap but stay mostly in view, seeded
determinism, and a marker that keeps one dataset per directory."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tools_module

shapes_data = tools_module('shapes_data')


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    shapes_data.generate(str(root), num_train=6, num_val=3, size=64, seed=2,
                         progress=False)
    return root


def test_coco_json_is_valid(shapes):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    for split, n in (('train', 6), ('val', 3)):
        coco = COCO(str(shapes / 'annotations' / f'instances_{split}.json'))
        assert len(coco.getImgIds()) == n
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            list(shapes_data.CLASSES)
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns
        for ann in anns:
            m = coco.annToMask(ann)
            assert m.sum() == ann['area'] > 0
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min()) == (x, y)
            assert (xs.max() + 1 - x, ys.max() + 1 - y) == (w, h)
            assert mask_utils.decode(ann['segmentation']).shape == (64, 64)
        for img in coco.loadImgs(coco.getImgIds()):
            assert Image.open(shapes / split / img['file_name']).size == \
                (64, 64)


def test_label_maps(shapes):
    num_labels = len(shapes_data.SEG_CLASSES) + 1  # 0 is unlabelled
    for split, n in (('training', 6), ('validation', 3)):
        labels = sorted((shapes / 'annotations' / split).glob('*.png'))
        images = sorted((shapes / 'images' / split).glob('*.png'))
        assert [p.name for p in labels] == [p.name for p in images]
        assert len(labels) == n
        for path in labels:
            lab = np.array(Image.open(path))
            assert lab.dtype == np.uint8 and lab.shape == (64, 64)
            assert set(np.unique(lab)) <= set(range(num_labels))
            assert (lab == 1).any()  # background
            assert (lab >= 2).any()  # at least one shape


def test_semantic_labels_agree_with_instances():
    sample = shapes_data.draw_sample(np.random.default_rng(0), size=96)
    assert sample['masks']
    for cls, mask in sample['masks']:
        inside = sample['labels'][mask]
        # visible pixels carry the class (or the unlabelled rim)
        assert ((inside == cls + 2) | (inside == 0)).all()
        assert (inside == cls + 2).mean() > 0.5


def test_shapes_overlap_but_stay_mostly_in_view():
    rng = np.random.default_rng(3)
    fractions = []
    for _ in range(40):
        sample = shapes_data.draw_sample(rng)
        assert len(sample['in_view']) == len(sample['masks'])
        fractions += sample['in_view']
    fractions = np.array(fractions)
    assert (fractions >= 0.6).all() and (fractions <= 1.0).all()
    assert (fractions < 0.95).sum() >= 5  # overlaps do happen


def test_seeded():
    a = shapes_data.draw_sample(np.random.default_rng(7))
    b = shapes_data.draw_sample(np.random.default_rng(7))
    c = shapes_data.draw_sample(np.random.default_rng(8))
    assert np.array_equal(a['image'], b['image'])
    assert np.array_equal(a['labels'], b['labels'])
    assert not np.array_equal(a['image'], c['image'])


def test_generate_is_seeded(tmp_path):
    for name in 'ab':
        shapes_data.generate(str(tmp_path / name), 2, 1, 32, seed=4,
                             progress=False)
    for rel in ('annotations/instances_train.json', 'train/train_00001.png',
                'annotations/validation/val_00000.png'):
        assert (tmp_path / 'a' / rel).read_bytes() == \
            (tmp_path / 'b' / rel).read_bytes(), rel


def test_marker_keeps_one_dataset_per_directory(tmp_path):
    shapes_data.generate(str(tmp_path), 2, 1, 32, seed=0, progress=False)
    first = (tmp_path / 'train' / 'train_00000.png').read_bytes()
    # the same arguments: kept as it is
    shapes_data.generate(str(tmp_path), 2, 1, 32, seed=0, progress=False)
    assert (tmp_path / 'train' / 'train_00000.png').read_bytes() == first
    for kwargs in (dict(num_train=3), dict(seed=1), dict(size=64)):
        args = dict(dict(num_train=2, num_val=1, size=32, seed=0), **kwargs)
        with pytest.raises(ValueError, match='already holds'):
            shapes_data.generate(str(tmp_path), progress=False, **args)
    assert json.loads((tmp_path / 'done.json').read_text())['num_train'] == 2
    assert not (tmp_path / 'train' / 'train_00002.png').exists()
