"""Run a trained detector or segmentor on images and write overlays.

    python tools/infer.py CONFIG CHECKPOINT IMAGE_OR_DIR --out DIR
        [--device cpu] [--score-thr 0.3] [--batch-size 1]

Uses mmdet's DetInferencer (for a config with default_scope='mmdet') or
mmseg's MMSegInferencer ('mmseg'), with xcit_mm imported. Overlays go to
DIR/vis/, predictions (JSON for detection, label PNGs for segmentation) to
DIR/pred/.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file of the trained model')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', help='an image, or a folder of images')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--device', default=None,
                        help="e.g. 'cpu' or 'cuda:0' (default: cuda if "
                        'available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn')
    parser.add_argument('--batch-size', type=int, default=1)
    return parser.parse_args(argv)


def list_images(path: str):
    if osp.isdir(path):
        images = sorted(
            osp.join(path, n) for n in os.listdir(path)
            if n.lower().endswith(IMAGE_EXTS))
        if not images:
            sys.exit(f'error: no images ({", ".join(IMAGE_EXTS)}) in '
                     f'{path!r}')
        return images
    if not osp.isfile(path):
        sys.exit(f'error: no such image or folder: {path!r}')
    return [path]


def main(argv=None):
    args = parse_args(argv)
    import torch

    import xcit_mm  # noqa: F401  (registers XCiT; safe checkpoint loading)
    from xcit_mm.engine.config import load_config

    try:
        cfg = load_config(args.config)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint not found: {args.checkpoint!r}')
    images = list_images(args.inputs)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(args.out, exist_ok=True)

    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(
            model=cfg, weights=args.checkpoint, device=device,
            scope='mmdet', show_progress=False)
        inferencer(images, out_dir=args.out, batch_size=args.batch_size,
                   pred_score_thr=args.score_thr, no_save_pred=False)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(
            model=cfg, weights=args.checkpoint, device=device,
            scope='mmseg')
        inferencer(images, out_dir=args.out, batch_size=args.batch_size,
                   show=False)
    written = sorted(os.listdir(osp.join(args.out, 'vis')))
    print(f'wrote {len(written)} overlays to {osp.join(args.out, "vis")}')


if __name__ == '__main__':
    main()
