"""Generates the demo's dataset of coloured shapes, with no download.

    python tools/shapes_data.py data/shapes [--num-train 1000] [--num-val 100]


Each image holds a few filled shapes (circle, rectangle, triangle) of random
size, colour and position, overlapping one another (each kept at least 60%
in view), on a cluttered background (colour gradient, noise, thin random
lines and small specks).
Colours carry no information about the class; only the form does.

Written in two formats, from the same drawings:

- COCO instance segmentation:
  ``annotations/instances_{train,val}.json`` and ``{train,val}/*.png``
  (RLE masks of the visible part of each shape);
- ADE20k-style semantic segmentation:
  ``images/{training,validation}/*.png`` (links to the same files when the
  filesystem allows) and ``annotations/{training,validation}/*.png`` label
  maps: 0 = unlabelled (ignored, as in ADE20k), 1 = background,
  2.. = the shape classes.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional

import numpy as np

# The class names and colours, as the registered datasets of the demo
# configs (xcit_mm/datasets/shapes.py) declare them.
CLASSES = ('circle', 'rectangle', 'triangle')
SEG_CLASSES = ('background', ) + CLASSES
SPLITS = {'train': 'training', 'val': 'validation'}


def _shape_mask(kind: str, h: int, w: int, rng: np.random.Generator,
                min_size: int, max_size: int) -> np.ndarray:
    size = int(rng.integers(min_size, max_size + 1))
    cy = int(rng.integers(size // 2, max(size // 2 + 1, h - size // 2)))
    cx = int(rng.integers(size // 2, max(size // 2 + 1, w - size // 2)))
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 'circle':
        r = size / 2
        return (yy - cy)**2 + (xx - cx)**2 <= r * r
    if kind == 'rectangle':
        aspect = rng.uniform(0.5, 1.0)
        hh, hw = size / 2, size * aspect / 2
        if rng.random() < 0.5:
            hh, hw = hw, hh
        return (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)
    # triangle: three corners on a circle, spread at least 90 degrees apart
    angle = rng.uniform(0, 2 * np.pi)
    angles = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + \
        rng.uniform(-0.3, 0.3, 3)
    r = size / 2
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    mask = np.ones((h, w), bool)
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        cross = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
        orient = (x1 - x0) * (pts[(i + 2) % 3][1] - y0) - \
            (y1 - y0) * (pts[(i + 2) % 3][0] - x0)
        mask &= cross * np.sign(orient) >= 0
    return mask


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = c0[None] * (1 - t[:, None]) + c1[None] * t[:, None]
    img = np.broadcast_to(
        ramp[None] if len(t) == w else ramp[:, None], (h, w, 3)).copy()
    img += rng.normal(0, 12, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 6))):  # thin lines
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        theta = rng.uniform(0, np.pi)
        dist = np.abs((xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta))
        img[dist < rng.uniform(0.5, 1.5)] = rng.uniform(0, 255, 3)
    for _ in range(int(rng.integers(3, 9))):  # specks
        r = rng.uniform(1, 2.5)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        img[(yy - cy)**2 + (xx - cx)**2 <= r * r] = rng.uniform(0, 255, 3)
    return img


def draw_sample(rng: np.random.Generator,
                size: int = 128,
                max_shapes: int = 4,
                min_visible: float = 0.6,
                tries: int = 10) -> Dict:
    """One image, its visible instance masks and its semantic label map.

    Returns a dict: ``image`` (H, W, 3) uint8, ``masks`` a list of
    ``(class index, visible mask)``, ``in_view`` the visible fraction of each
    of those shapes, ``labels`` the (H, W) label map.

    Shapes overlap, but a new shape is placed (in up to ``tries`` random
    positions) only where every shape under it keeps at least
    ``min_visible`` of its own area in view; where none fits, it is left
    out. Sides range from a fifth to a half of the image.
    """
    h = w = size
    img = _background(h, w, rng)
    labels = np.ones((h, w), np.uint8)  # 1 = background
    owner = np.full((h, w), -1, np.int32)
    instances = []  # (class, full area)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(len(CLASSES)))
        in_sight = np.bincount(owner[owner >= 0], minlength=len(instances))
        for _ in range(tries):
            mask = _shape_mask(CLASSES[cls], h, w, rng, size // 5,
                               size // 2)
            hidden = np.bincount(
                owner[mask & (owner >= 0)], minlength=len(instances))
            if all(in_sight[i] - hidden[i] >= min_visible * area
                   for i, (_, area) in enumerate(instances)):
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        shade = rng.normal(0, 8, (h, w, 3))
        img[mask] = np.clip(colour + shade[mask], 0, 255)
        owner[mask] = len(instances)
        labels[mask] = cls + 2
        instances.append((cls, int(mask.sum())))
    # a one-pixel unlabelled rim around each shape, as ADE20k's boundaries
    edge = np.zeros((h, w), bool)
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    labels[edge] = 0
    masks, in_view = [], []
    for idx, (cls, area) in enumerate(instances):
        visible = owner == idx
        seen = int(visible.sum())
        if seen >= 16:  # tiny images: drop specks of shapes
            masks.append((cls, visible))
            in_view.append(seen / area)
    return dict(
        image=np.clip(img, 0, 255).astype(np.uint8),
        masks=masks,
        in_view=in_view,
        labels=labels)


def _coco_annotation(mask: np.ndarray, ann_id: int, img_id: int,
                     cls: int) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    area = float(mask_utils.area(rle))
    x, y, bw, bh = mask_utils.toBbox(rle).tolist()
    rle['counts'] = rle['counts'].decode('ascii')
    return dict(
        id=ann_id,
        image_id=img_id,
        category_id=cls + 1,
        segmentation=rle,
        area=area,
        bbox=[x, y, bw, bh],
        iscrowd=0)


def generate(root: str,
             num_train: int = 1000,
             num_val: int = 100,
             size: int = 128,
             seed: int = 0,
             progress: bool = True) -> dict:
    """Writes the dataset under ``root`` once; returns its description.

    A ``done.json`` marker records the arguments; with the same arguments
    an existing dataset is kept, with others it is an error (choose another
    ``root``).
    """
    from PIL import Image
    args = dict(num_train=num_train, num_val=num_val, size=size, seed=seed,
                classes=list(CLASSES))
    marker = osp.join(root, 'done.json')
    if osp.isfile(marker):
        with open(marker) as f:
            found = json.load(f)
        if found != args:
            raise ValueError(
                f'{root} already holds a shapes dataset made with {found}, '
                f'not {args}; remove it or choose another directory.')
        return args
    rng = np.random.default_rng(seed)
    counts = dict(train=num_train, val=num_val)
    total = num_train + num_val
    bar = _progress(total) if progress else None
    for split, n in counts.items():
        img_dir = osp.join(root, split)
        seg_img_dir = osp.join(root, 'images', SPLITS[split])
        seg_ann_dir = osp.join(root, 'annotations', SPLITS[split])
        for d in (img_dir, seg_img_dir, seg_ann_dir):
            os.makedirs(d, exist_ok=True)
        images: List[dict] = []
        annotations: List[dict] = []
        for i in range(n):
            sample = draw_sample(rng, size)
            name = f'{split}_{i:05d}.png'
            Image.fromarray(sample['image']).save(osp.join(img_dir, name))
            link = osp.join(seg_img_dir, name)
            if not osp.exists(link):
                try:
                    os.link(osp.join(img_dir, name), link)
                except OSError:
                    Image.fromarray(sample['image']).save(link)
            Image.fromarray(sample['labels']).save(
                osp.join(seg_ann_dir, name))
            img_id = len(images) + 1
            images.append(
                dict(id=img_id, file_name=name, height=size, width=size))
            for cls, mask in sample['masks']:
                annotations.append(
                    _coco_annotation(mask,
                                     len(annotations) + 1, img_id, cls))
            if bar is not None:
                bar.update(1)
        coco = dict(
            images=images,
            annotations=annotations,
            categories=[
                dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)
            ])
        ann_dir = osp.join(root, 'annotations')
        with open(osp.join(ann_dir, f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)
    if bar is not None:
        bar.close()
    with open(marker, 'w') as f:
        json.dump(args, f)
    return args


def _progress(total: int):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc='generating shapes', unit='img')
    except ImportError:  # pragma: no cover
        return None


def main(argv: Optional[List[str]] = None):
    import argparse
    parser = argparse.ArgumentParser(description='Generate the shapes data')
    parser.add_argument('root')
    parser.add_argument('--num-train', type=int, default=1000)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.root, args.num_train, args.num_val, args.size, args.seed)


if __name__ == '__main__':
    main()
