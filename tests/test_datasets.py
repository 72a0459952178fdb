import json

import numpy as np
import pytest
from PIL import Image

from xcit_mm.datasets.shapes import CLASSES, draw_sample, generate


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    generate(str(root), num_train=6, num_val=3, size=64, seed=2,
             progress=False)
    return root


def test_coco_json_is_valid(shapes):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils
    for split, n in (('train', 6), ('val', 3)):
        coco = COCO(str(shapes / 'annotations' / f'instances_{split}.json'))
        assert len(coco.getImgIds()) == n
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            list(CLASSES)
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


def test_label_pngs(shapes):
    for split, n in (('training', 6), ('validation', 3)):
        labels = sorted((shapes / 'annotations' / split).glob('*.png'))
        images = sorted((shapes / 'images' / split).glob('*.png'))
        assert len(labels) == len(images) == n
        for path in labels:
            lab = np.array(Image.open(path))
            assert lab.dtype == np.uint8 and lab.shape == (64, 64)
            assert set(np.unique(lab)) <= {0, 1, 2, 3, 4}
            assert (lab == 1).any()  # background
            assert (lab >= 2).any()  # at least one shape


def test_semantic_labels_agree_with_instances():
    rng = np.random.default_rng(0)
    sample = draw_sample(rng, size=96)
    for cls, mask in sample['masks']:
        inside = sample['labels'][mask]
        # visible pixels carry the class (or the unlabelled rim)
        assert ((inside == cls + 2) | (inside == 0)).all()
        assert (inside == cls + 2).mean() > 0.5


def test_shapes_overlap_but_stay_mostly_in_view():
    rng = np.random.default_rng(3)
    fractions = []
    for _ in range(40):
        sample = draw_sample(rng)
        assert len(sample['in_view']) == len(sample['masks'])
        fractions += sample['in_view']
    fractions = np.array(fractions)
    assert (fractions >= 0.6).all() and (fractions <= 1.0).all()
    assert (fractions < 0.95).sum() >= 5  # overlaps do happen


def test_seeded_and_guarded(tmp_path):
    a = draw_sample(np.random.default_rng(7))
    b = draw_sample(np.random.default_rng(7))
    assert np.array_equal(a['image'], b['image'])
    generate(str(tmp_path), 2, 1, 32, seed=0, progress=False)
    generate(str(tmp_path), 2, 1, 32, seed=0, progress=False)  # kept
    with pytest.raises(ValueError, match='already holds'):
        generate(str(tmp_path), 3, 1, 32, seed=0, progress=False)
    assert json.loads((tmp_path / 'done.json').read_text())['num_train'] == 2
