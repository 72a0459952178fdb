"""Export a trained detector, segmentor or backbone to ONNX, and check it.

    python tools/deployment/export_onnx.py CONFIG --checkpoint CKPT \\
        --out FILE.onnx [--backbone-only] [--shape H W] [--batch N] \\
        [--opset K] [--cfg-options k=v ...]

CKPT is what ``tools/train.py`` saves, or a checkpoint converted by
``tools/model_converters/xcit2mm.py --whole-model``; it is loaded as
strictly as ``tools/test.py`` loads it. What is exported:

- a Mask R-CNN config (mmdet): ``dets`` N x K x 5, ``labels`` N x K,
  ``masks`` N x K x M x M (``detector.py``);
- a Semantic FPN / UperNet config (mmseg): ``logits`` N x C x H x W, what
  ``EncoderDecoder.encode_decode`` returns (``segmentor.py``);
- ``--backbone-only``: the backbone's four pyramid maps ``feat0..feat3``.

The input ``input`` is N x 3 x H x W float32, the image after the config's
data preprocessor. Batch, height and width are dynamic unless ``--batch`` /
``--shape`` fix them (the trace then uses them; else it uses the config's
``data_preprocessor.size``, or 800 x 1344 for a detector, 512 x 512
otherwise). The tool then runs ONNX Runtime and eager PyTorch on the same
random input at the traced size and, when the size is dynamic, at about half
of it (not a multiple of 32, one more image when the batch is dynamic), prints
the largest relative difference per output, and writes the file (atomically)
only when every difference is within 1e-4.
"""
import argparse
import io
import json
import os
import os.path as osp
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import detector as det  # noqa: E402
import segmentor as seg  # noqa: E402
from launch_utils import load_config  # noqa: E402

TOLERANCE = 1e-4
DEFAULT_OPSET = 17
MIN_OPSET = 12  # the oldest the export was checked with
META = 'xcit_mm.'


class ExportError(Exception):
    """An export that cannot be done or that does not match eager PyTorch;
    the message says why."""


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('--checkpoint', required=True,
                        help='trained checkpoint (mmengine layout)')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--backbone-only', action='store_true',
                        help="export the backbone's four pyramid maps")
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='fix the input height and width')
    parser.add_argument('--batch', type=int,
                        help='fix the batch size (dynamic by default)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset (default {DEFAULT_OPSET}; the '
                        'detector needs >= 16)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value')
    args = parser.parse_args(argv)
    if args.shape and min(args.shape) < 1:
        parser.error(f'--shape must be two positive integers, got '
                     f'{args.shape[0]} {args.shape[1]}')
    if args.batch is not None and args.batch < 1:
        parser.error(f'--batch must be a positive integer, got {args.batch}')
    return args


def _plain(value):
    """Config values as JSON-able plain values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_fingerprint(model_cfg) -> str:
    """A small JSON summary of a model config (type, backbone size, heads,
    classes) that an exported file and a config must share."""
    backbone = dict(model_cfg.get('backbone') or {})
    bb = {k: _plain(backbone[k])
          for k in ('type', 'patch_size', 'embed_dims', 'depth', 'num_heads')
          if k in backbone}
    if backbone.get('type') == 'XCiT' and 'arch' in backbone:
        from xcit_mm.models.presets import resolve_arch
        try:
            arch = resolve_arch(_plain(backbone['arch']))
            bb.update({k: int(arch[k])
                       for k in ('embed_dims', 'depth', 'num_heads')})
        except ValueError:
            bb['arch'] = _plain(backbone['arch'])
    elif 'arch' in backbone:
        bb['arch'] = _plain(backbone['arch'])
    heads = {}
    for name in ('decode_head', 'rpn_head'):
        if model_cfg.get(name):
            heads[name] = model_cfg[name].get('type')
    roi = model_cfg.get('roi_head') or {}
    for name in ('bbox_head', 'mask_head'):
        if roi.get(name):
            heads[f'roi_head.{name}'] = roi[name].get('type')
    out = dict(type=model_cfg.get('type'), backbone=bb, heads=heads)
    num_classes = _num_classes_cfg(model_cfg)
    if num_classes is not None:
        out['num_classes'] = num_classes
    return json.dumps(out, sort_keys=True)


def _num_classes_cfg(model_cfg) -> Optional[int]:
    head = model_cfg.get('decode_head') or \
        (model_cfg.get('roi_head') or {}).get('bbox_head')
    if isinstance(head, dict) and 'num_classes' in head:
        return int(head['num_classes'])
    return None


def read_metadata(path: str) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file (key -> value)."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def task_of(cfg, backbone_only: bool) -> str:
    if backbone_only:
        return 'backbone'
    return 'detector' if cfg.default_scope == 'mmdet' else 'segmentor'


def build_model(cfg) -> torch.nn.Module:
    """``cfg.model`` built in its scope, SyncBN as BN, CPU, eval mode."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope

    import xcit_mm  # noqa: F401
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    return revert_sync_batchnorm(model).eval()


def load_checkpoint(model, checkpoint: str, config: str) -> None:
    """Strict loading as tools/test.py does; ExportError on a problem."""
    from xcit_mm.weights import CheckpointError, load_trained
    if not osp.isfile(checkpoint):
        raise ExportError(f'checkpoint not found: {checkpoint!r}')
    model.dataset_meta = None  # filled from the checkpoint's meta if any
    try:
        load_trained(model, checkpoint, strict=True,
                     target=f'the model of {config}')
    except CheckpointError as err:
        raise ExportError(str(err).rstrip('.')) from None


def default_shape(cfg, task: str) -> Tuple[int, int]:
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if size and task != 'detector':
        return int(size[0]), int(size[1])
    return (800, 1344) if task == 'detector' else (512, 512)


def check_shapes(shape: Tuple[int, int], dynamic: bool,
                 batch: int, dynamic_batch: bool) -> List[Tuple[int, ...]]:
    """The (N, H, W) inputs of the self-check: the traced one, then (when
    something is dynamic) about half the size, not a multiple of 32, and
    one image more when the batch is dynamic."""
    sizes = [(batch, *shape)]
    if dynamic or dynamic_batch:
        h, w = shape
        if dynamic:
            h, w = (h // 2 + 3, w // 2 + 5) if min(h, w) >= 64 else \
                (2 * h + 3, 2 * w + 5)
        sizes.append((batch + 1 if dynamic_batch else batch, h, w))
    return sizes


def _wrapper(model, task: str):
    """The traceable module (on an exportable copy) and its output names."""
    if task == 'detector':
        copy, _ = seg.exportable_copy(model)
        return det.DetectorExport(copy).eval(), list(det.OUTPUT_NAMES)
    if task == 'segmentor':
        seg.check_segmentor(model)
        copy, _ = seg.exportable_copy(model)
        return seg.SegmentorExport(copy).eval(), list(seg.SEGMENTOR_OUTPUTS)
    if getattr(model, 'backbone', None) is None:
        raise ValueError('cannot export the backbone: the model has none')
    copy, _ = seg.exportable_copy(model.backbone)
    return seg.BackboneExport(copy).eval(), list(seg.BACKBONE_OUTPUTS)


def eager_outputs(model, task: str, img: torch.Tensor) -> List[np.ndarray]:
    """The original model's outputs, the reference of the self-check."""
    model.eval()
    with torch.no_grad():
        if task == 'detector':
            out = det.DetectorExport(model).eval()(img)
        elif task == 'segmentor':
            out = [seg.eager_logits(model, img)]
        else:
            out = model.backbone(img)
    return [x.numpy() for x in out]


def export_bytes(model, task: str, shape: Tuple[int, int], batch: int,
                 opset: int, dynamic: bool, dynamic_batch: bool) -> bytes:
    """torch.onnx.export (TorchScript exporter) of ``model`` as ``task``."""
    if opset < MIN_OPSET:
        raise ExportError(f'--opset {opset} is too old: the export is '
                          f'checked with opset >= {MIN_OPSET}')
    if task == 'detector' and opset < 16:
        raise ExportError(f'--opset {opset} is too old for the detector: '
                          'RoiAlign with half-pixel alignment needs opset '
                          '>= 16')
    try:
        wrapper, names = _wrapper(model, task)
    except ValueError as err:
        raise ExportError(str(err)) from None
    axes = {}
    in_axes = {}
    if dynamic_batch:
        in_axes[0] = 'batch'
    if dynamic:
        in_axes.update({2: 'height', 3: 'width'})
    if in_axes:
        axes[det.INPUT_NAME] = in_axes
        for name in names:
            out_axes = {0: 'batch'} if dynamic_batch else {}
            if task != 'detector' and dynamic:
                out_axes.update({2: f'{name}_height', 3: f'{name}_width'})
            if out_axes:
                axes[name] = out_axes
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's notes on itself, not on the model
            warnings.filterwarnings('ignore', '.*legacy TorchScript-based')
            warnings.filterwarnings('ignore', 'Constant folding - Only steps')
            torch.onnx.export(
                wrapper, (torch.zeros(batch, 3, *shape), ),
                buf,
                input_names=[det.INPUT_NAME],
                output_names=names,
                dynamic_axes=axes or None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False)
    except Exception as err:  # noqa: BLE001 (the exporter's own errors)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ExportError(f'torch.onnx.export failed ({type(err).__name__}: '
                          f'{first})') from err
    return buf.getvalue()


def add_metadata(data: bytes, meta: Dict[str, str]) -> bytes:
    import onnx
    model = onnx.load_from_string(data)
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = META + key, value
    return model.SerializeToString()


def relative_differences(task: str, names: Sequence[str], ref, got
                         ) -> Dict[str, float]:
    """Largest |got - ref| / max|ref| per output (one figure for all
    detector outputs: ``detector.compare_outputs``)."""
    if task == 'detector':
            return {'+'.join(names): det.compare_outputs(ref, got)}
    out = {}
    for name, r, g in zip(names, ref, got):
        if r.shape != g.shape:
            out[name] = float('inf')
            continue
        scale = max(float(np.abs(r).max()), 1e-12)
        out[name] = float(np.abs(r - g).max()) / scale
    return out


def self_check(model, task: str, data: bytes,
               inputs: Sequence[Tuple[int, ...]], log=print,
               detections: Optional[List[int]] = None
               ) -> Dict[Tuple[int, ...], Dict[str, float]]:
    """ONNX Runtime against eager PyTorch on random inputs of the given
    (N, H, W); returns the differences; ExportError above TOLERANCE. For a
    detector, the number of eager detections per input goes to
    ``detections``."""
    import onnxruntime as ort
    sess = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    found, bad = {}, []
    for i, (n, h, w) in enumerate(inputs):
        img = torch.randn(n, 3, h, w,
                          generator=torch.Generator().manual_seed(i))
        got = sess.run(None, {input_name: img.numpy()})
        ref = eager_outputs(model, task, img)
        diffs = relative_differences(task, names, ref, got)
        found[(n, h, w)] = diffs
        found_dets = ''
        if task == 'detector':
            count = int((ref[0][..., 4] > 0).sum())
            found_dets = f' ({count} detections)'
            if detections is not None:
                detections.append(count)
        log(f'check {n}x3x{h}x{w}: ' + ', '.join(
            f'{k} {v:.1e}' for k, v in diffs.items()) + found_dets)
        bad += [f'{k} {v:.1e} at {n}x3x{h}x{w}' for k, v in diffs.items()
                if not v <= TOLERANCE]
    if bad:
        raise ExportError('ONNX Runtime does not match eager PyTorch '
                          f'(relative difference above {TOLERANCE:g}: '
                          f'{"; ".join(bad)})')
    return found


def check_without_score_threshold(model, sizes, opset: int, dynamic: bool,
                                  dynamic_batch: bool, log=print) -> None:
    """Random inputs rarely give a trained detector a box above its score
    threshold, and a check of no boxes checks nothing: the same check on a
    copy exported with ``test_cfg.rcnn.score_thr`` 0 (every box kept)."""
    rcnn = model.test_cfg.rcnn
    log(f'no detections above score_thr={rcnn.score_thr} on the check\'s '
        'inputs: checking an export with score_thr=0 as well')
    saved, rcnn.score_thr = rcnn.score_thr, 0.0
    try:
        probe = export_bytes(model, 'detector', sizes[0][1:], sizes[0][0],
                             opset, dynamic, dynamic_batch)
        model.eval()
        counts = []
        self_check(model, 'detector', probe, sizes, log, counts)
    finally:
        rcnn.score_thr = saved
    if not any(counts):
        raise ExportError('the self-check found no detection to compare, '
                          'even with score_thr=0')


def metadata(cfg, model, task: str, config: str, shape, batch, dynamic,
             dynamic_batch) -> Dict[str, str]:
    meta = {'task': task, 'config': osp.basename(config),
            'model': model_fingerprint(cfg.model),
            'dynamic': '1' if dynamic else '0'}
    if task != 'backbone':
        num = _num_classes_cfg(cfg.model)
        if num is not None:
            meta['num_classes'] = str(num)
        classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
        if classes:
            meta['classes'] = json.dumps(list(classes))
    if not dynamic:
        meta['shape'] = f'{shape[0]},{shape[1]}'
    if not dynamic_batch:
        meta['batch'] = str(batch)
    pre = cfg.model.get('data_preprocessor') or {}
    meta['preprocess'] = json.dumps(
        {k: _plain(pre[k]) for k in ('type', 'mean', 'std', 'bgr_to_rgb',
                                     'rgb_to_bgr', 'pad_size_divisor',
                                     'size', 'size_divisor', 'pad_val')
         if k in pre}, sort_keys=True)
    return meta


def export(cfg, model, config: str, out: str, task: str,
           shape: Optional[Tuple[int, int]] = None,
           batch: Optional[int] = None, opset: int = DEFAULT_OPSET,
           log=print) -> Dict:
    """Exports ``model`` (built from ``cfg``, weights loaded), checks it in
    ONNX Runtime and writes ``out`` atomically; returns the differences.

    Raises:
        ExportError: unsupported part, exporter failure or a mismatch (the
            file is then not written).
        xcit_mm.fileio.AtomicWriteError: ``out`` cannot be written.
    """
    from xcit_mm.fileio import atomic_write
    dynamic, dynamic_batch = shape is None, batch is None
    shape = tuple(shape) if shape else default_shape(cfg, task)
    batch = batch or 1
    data = export_bytes(model, task, shape, batch, opset, dynamic,
                        dynamic_batch)
    model.eval()  # the exporter may leave modules in training mode
    sizes = check_shapes(shape, dynamic, batch, dynamic_batch)
    counts = []
    diffs = self_check(model, task, data, sizes, log, counts)
    if task == 'detector' and not any(counts):
        check_without_score_threshold(model, sizes, opset, dynamic,
                                      dynamic_batch, log)
    data = add_metadata(
        data, metadata(cfg, model, task, config, shape, batch, dynamic,
                       dynamic_batch))
    atomic_write(out, data)
    return diffs


def check_out_path(out: str) -> None:
    """Fails early (before the export) on an output path that cannot be
    written."""
    if osp.isdir(out):
        raise ExportError(f'--out {out} is a directory; give a file path '
                          '(e.g. model.onnx)')
    parent = osp.dirname(osp.abspath(out))
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f'--out {out} cannot be written ({parent} is not '
                          'a writable directory); choose another path')


def main(argv=None):
    args = parse_args(argv)
    from xcit_mm.fileio import AtomicWriteError
    try:
        check_out_path(args.out)
        cfg = load_config(args.config, args.cfg_options)
        task = task_of(cfg, args.backbone_only)
        model = build_model(cfg)
        load_checkpoint(model, args.checkpoint, args.config)
        diffs = export(cfg, model, args.config, args.out, task, args.shape,
                       args.batch, args.opset)
    except (FileNotFoundError, ValueError, ExportError,
            AtomicWriteError) as err:
        sys.exit(f'error: {err}')
    worst = max(v for d in diffs.values() for v in d.values())
    print(f'wrote {args.out} ({task}; largest relative difference to eager '
          f'PyTorch {worst:.1e})')


if __name__ == '__main__':
    main()
