"""Run a trained detector or segmentor on images and write overlays.

    python tools/infer.py CONFIG CHECKPOINT IMAGE_OR_DIR --out DIR
        [--device cpu] [--score-thr 0.3] [--batch-size 1] [--amp]

Uses mmdet's DetInferencer (for a config with default_scope='mmdet') or
mmseg's MMSegInferencer ('mmseg'), with xcit_mm imported. Overlays go to
DIR/vis/, predictions to DIR/preds/ (detection: one JSON per image, as
DetInferencer writes them) or DIR/pred/ (segmentation: one label PNG per
image, named after it). Each image is checked first (readable, not empty,
at least MIN_SIDE pixels a side, at most MAX_ASPECT:1): a bad one is
reported by name and skipped, the others are processed, and the exit status
is 1 if any was skipped.

A CHECKPOINT ending in ``.onnx`` (written by
tools/deployment/export_onnx.py) runs in ONNX Runtime inside the same
inferencer, after a check that it holds the config's model
(tools/deployment/ort_model.py).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from launch_utils import autocast_test_step, load_config  # noqa: E402

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MIN_SIDE = 8
MAX_ASPECT = 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file of the trained model')
    parser.add_argument('checkpoint', help='checkpoint file, or a model '
                        'exported to .onnx')
    parser.add_argument('inputs', help='an image, or a folder of images')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--device', default=None,
                        help="e.g. 'cpu' or 'cuda:0' (default: cuda if "
                        'available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (on a CPU: bfloat16)')
    return parser.parse_args(argv)


def check_image(path: str):
    """None if ``path`` is an image the model can take, else the reason."""
    import cv2
    import numpy as np
    if osp.getsize(path) == 0:
        return 'the file is empty'
    with open(path, 'rb') as f:
        data = np.frombuffer(f.read(), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        return 'not a readable image (corrupt, or not an image format)'
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f'{w}x{h} pixels: each side needs at least {MIN_SIDE}'
    if max(h, w) > MAX_ASPECT * min(h, w):
        return (f'{w}x{h} pixels: more than {MAX_ASPECT}:1 between the sides '
                '(resizing it for the model would squash one side to '
                'nothing)')
    return None


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


def name_label_maps(images, pred_dir: str):
    """MMSegInferencer numbers its label maps (``00000000_pred.png``, in
    input order); name each after its image, as the overlays are."""
    stems = [osp.splitext(osp.basename(p))[0] for p in images]
    for i, (path, stem) in enumerate(zip(images, stems)):
        src = osp.join(pred_dir, f'{i:08d}_pred.png')
        if osp.isfile(src):
            name = stem if stems.count(stem) == 1 else osp.basename(path)
            os.replace(src, osp.join(pred_dir, name + '.png'))


def use_onnx(inferencer, cfg, args) -> None:
    """Replaces the inferencer's model by the exported ``args.checkpoint``
    in ONNX Runtime (``ort_model.onnx_model``); the classes drawn are the
    file's, the palette the config's dataset's."""
    sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)),
                                'deployment'))
    from ort_model import OnnxError, dataset_metainfo, onnx_model
    try:
        inferencer.model = onnx_model(inferencer.model, args.checkpoint, cfg,
                                      dataset_metainfo(cfg))
    except OnnxError as err:
        sys.exit(f'error: {err}')
    if cfg.default_scope == 'mmdet':
        inferencer.visualizer.dataset_meta = inferencer.model.dataset_meta


def run_inferencer(cfg, args, images, device: str):
    """mmdet's DetInferencer or mmseg's MMSegInferencer on ``images``, its
    model loaded strictly from ``args.checkpoint`` (as tools/test.py does:
    one that does not fit the config's model is refused)."""
    import warnings

    from xcit_mm.weights import CheckpointError, load_trained
    onnx = args.checkpoint.lower().endswith('.onnx')
    weights = None if onnx else args.checkpoint
    with warnings.catch_warnings():
        if onnx:  # built without weights: its network is replaced below
            warnings.simplefilter('ignore')
        if cfg.default_scope == 'mmdet':
            from mmdet.apis import DetInferencer
            inferencer = DetInferencer(
                model=cfg, weights=weights, device=device, scope='mmdet',
                show_progress=False)
            options = dict(pred_score_thr=args.score_thr, no_save_pred=False)
        else:
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(
                model=cfg, weights=weights, device=device, scope='mmseg')
            options = dict(show=False)
    if onnx:
        use_onnx(inferencer, cfg, args)
    else:
        meta = inferencer.model.dataset_meta  # as the inferencer shows it
        try:
            load_trained(inferencer.model, args.checkpoint, strict=True,
                         target=f'the model of {args.config}')
        except CheckpointError as err:
            sys.exit(f'error: {err}')
        inferencer.model.dataset_meta = meta
    if args.amp:
        autocast_test_step(inferencer.model)
    inferencer(images, out_dir=args.out, batch_size=args.batch_size,
               **options)
    if cfg.default_scope != 'mmdet':
        name_label_maps(images, osp.join(args.out, 'pred'))


def main(argv=None):
    args = parse_args(argv)
    import torch

    import xcit_mm  # noqa: F401  (registers XCiT; safe checkpoint loading)

    try:
        cfg = load_config(args.config)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    from xcit_mm.weights import CheckpointError, read_checkpoint
    if args.checkpoint.lower().endswith('.onnx'):
        if args.amp:
            sys.exit(f'error: --amp does not apply to {args.checkpoint} '
                     '(ONNX Runtime runs the exported float32 graph).')
        if not osp.isfile(args.checkpoint):
            sys.exit(f'error: ONNX file not found: {args.checkpoint!r}')
    else:
        try:  # missing, empty, text or corrupt: named, before anything runs
            read_checkpoint(args.checkpoint)
        except CheckpointError as err:
            sys.exit(f'error: {err}')
    images, skipped = [], []
    for path in list_images(args.inputs):
        reason = check_image(path)
        if reason:
            skipped.append(path)
            print(f'skipped {path}: {reason}', file=sys.stderr)
        else:
            images.append(path)
    if not images:
        sys.exit('error: no usable image')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(args.out, exist_ok=True)
    run_inferencer(cfg, args, images, device)
    written = sorted(os.listdir(osp.join(args.out, 'vis')))
    print(f'wrote {len(written)} overlays to {osp.join(args.out, "vis")}')
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
