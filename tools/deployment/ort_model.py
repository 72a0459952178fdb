"""Exported models in ONNX Runtime as mmengine models, for evaluation and
drawing with the config's own pieces.

``tools/test.py CONFIG FILE.onnx`` and ``tools/infer.py CONFIG FILE.onnx``
build the config's model as for a checkpoint and hand it to
:func:`onnx_model`, which checks the file against the config and returns a
model that runs the file in ONNX Runtime where the eager model ran its
network:

- :class:`OrtDetector`: the config's data preprocessor, then the exported
  Mask R-CNN (``dets``, ``labels``, ``masks``), then
  ``detector.det_outputs_to_samples`` (boxes rescaled to the original image,
  masks pasted by mmdet's own mask head), as mmdet's ``predict``;
- :class:`OrtSegmentor`: the config's ``EncoderDecoder`` itself, whose
  ``encode_decode`` (the exported ``logits``) runs in ONNX Runtime; mmseg's
  whole or sliding-window inference, the cropping of padding and the resizing
  to the original size stay mmseg's.

Both return the data samples of the eager model, so the config's evaluator,
visualizer, ``--out`` and test-time augmentation work on them unchanged.
"""
import copy
import json
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel, BaseTTAModel, is_model_wrapper
from torch import Tensor, nn

import detector
from export_onnx import META, model_fingerprint, read_metadata
from segmentor import SEGMENTOR_OUTPUTS

INPUT_NAME = detector.INPUT_NAME
TASKS = dict(mmdet='detector', mmseg='segmentor')
OUTPUT_NAMES = dict(
    detector=detector.OUTPUT_NAMES, segmentor=SEGMENTOR_OUTPUTS)
# what the exported graph expects of its input (padding may change freely)
NORMALISATION = ('mean', 'std', 'bgr_to_rgb', 'rgb_to_bgr')


class OnnxError(ValueError):
    """An ONNX file that is missing, unreadable or does not fit the config."""


class OnnxSession:
    """An exported model's ONNX Runtime session and its metadata.

    Args:
        path: the .onnx file written by ``export_onnx.py``.
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """

    def __init__(self, path: str, threads: Optional[int] = None):
        import onnxruntime as ort
        if not osp.isfile(path):
            raise OnnxError(f'ONNX file not found: {path!r}')
        try:
            self.meta = read_metadata(path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                path, options, providers=['CPUExecutionProvider'])
        except Exception as err:  # onnx / onnxruntime raise many kinds
            reason = str(err).strip().splitlines()
            reason = reason[0] if reason else type(err).__name__
            raise OnnxError(f'{path} is not a readable ONNX model '
                            f'({reason[:200]}): export it again with '
                            'tools/deployment/export_onnx.py') from None
        self.path = path
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # ints where the export fixed them (--batch, --shape), else names
        shape = inputs[0].shape if inputs else []
        self.static = [d if isinstance(d, int) else None for d in shape]

    @property
    def task(self) -> Optional[str]:
        return self.meta.get(META + 'task')

    @property
    def classes(self) -> Optional[List[str]]:
        text = self.meta.get(META + 'classes')
        return list(json.loads(text)) if text else None

    def run(self, inputs: Tensor) -> List[Tensor]:
        """The outputs for a batch ``inputs`` (N x 3 x H x W, preprocessed).

        A file exported at a fixed size takes smaller inputs padded at the
        bottom and right with 0, as the data preprocessors pad; one
        exported for a fixed batch runs the batch in parts of that size.
        """
        x = inputs.detach().float().cpu()
        n, _, h, w = x.shape
        batch, _, fixed_h, fixed_w = (self.static + [None] * 4)[:4]
        if fixed_h is not None and fixed_w is not None:
            if h > fixed_h or w > fixed_w:
                raise OnnxError(
                    f'{self.path} was exported for inputs of {fixed_h}x'
                    f'{fixed_w} (--shape) but the data preprocessor gives '
                    f'{h}x{w}: export without --shape (dynamic sizes) or '
                    'with a --shape that holds every test image')
            x = F.pad(x, (0, fixed_w - w, 0, fixed_h - h))
        parts = [x]
        if batch is not None and batch != n:
            parts = list(x.split(batch))
            short = batch - parts[-1].shape[0]
            if short:
                parts[-1] = torch.cat(
                    [parts[-1], parts[-1].new_zeros(short, *x.shape[1:])])
        outs = [self.session.run(None, {INPUT_NAME: p.numpy()}) for p in parts]
        return [
            torch.from_numpy(np.concatenate(o)[:n]).to(inputs.device)
            for o in zip(*outs)
        ]


def _num_classes(model: nn.Module, task: str) -> Optional[int]:
    head = model.roi_head.bbox_head if task == 'detector' \
        else model.decode_head
    return getattr(head, 'num_classes', None)


def _plain(value):
    """Config values as their JSON form (tuples as lists)."""
    return json.loads(json.dumps(value))


def _differences(theirs: dict, ours: dict, key: str) -> List[str]:
    """``key.x: A in the file, B in the config`` for each differing leaf."""
    if not (isinstance(theirs, dict) and isinstance(ours, dict)):
        return [] if theirs == ours else [
            f'{key}: {theirs} in the file, {ours} in the config'
        ]
    return [
        p for k in sorted(set(theirs) | set(ours))
        for p in _differences(theirs.get(k), ours.get(k), f'{key}.{k}')
    ]


def check_onnx(onnx: OnnxSession,
               model: nn.Module,
               cfg,
               classes: Optional[Sequence[str]] = None,
               model_cfg=None) -> None:
    """Raises :class:`OnnxError` where ``onnx`` does not fit ``cfg`` (the
    config, ``cfg.filename`` named) and its built ``model``: the task, the
    model's fingerprint, the input normalisation and channel order, the
    number of classes, the class names (against ``classes``, the test
    data's), the input and output names. ``model_cfg`` is the model's
    config if not ``cfg.model`` (the module of a test-time augmentation)."""
    model_cfg = model_cfg or cfg.model
    if not any(k.startswith(META) for k in onnx.meta):
        raise OnnxError(
            f'{onnx.path} has no {META}* metadata: it was not written by '
            'tools/deployment/export_onnx.py, which records the model it '
            'holds; export the checkpoint with it')
    task = TASKS[cfg.default_scope]
    problems = []
    if onnx.task != task:
        how = ' (exported with --backbone-only)' \
            if onnx.task == 'backbone' else ''
        problems.append(f'it holds a {onnx.task}{how}, the config a {task}')
    else:
        problems += _differences(
            json.loads(onnx.meta.get(META + 'model', '{}')),
            json.loads(model_fingerprint(model_cfg)), 'model')
        if META + 'preprocess' in onnx.meta:
            pre = model_cfg.get('data_preprocessor') or {}
            theirs = json.loads(onnx.meta[META + 'preprocess'])
            problems += _differences(
                {k: theirs[k]
                 for k in NORMALISATION if k in theirs},
                {k: _plain(pre[k])
                 for k in NORMALISATION if k in pre},
                'model.data_preprocessor')
        num = _num_classes(model, task)
        exported = onnx.meta.get(META + 'num_classes')
        if exported is not None and str(num) != exported:
            if not any(p.startswith('model.num_classes') for p in problems):
                problems.append(f'{exported} classes in the file, {num} in '
                                'the config')
        elif classes is not None and onnx.classes is not None and \
                list(onnx.classes) != list(classes):
            problems.append(f'classes {onnx.classes} in the file, '
                            f'{list(classes)} in the test data')
        if onnx.input_names != [INPUT_NAME]:
            problems.append(f'inputs {onnx.input_names}, expected '
                            f'[{INPUT_NAME!r}]')
        expected = list(OUTPUT_NAMES[task])
        if onnx.output_names[:len(expected)] != expected:
            problems.append(f'outputs {onnx.output_names}, expected '
                            f'{expected}')
    if problems:
        raise OnnxError(f'{onnx.path} does not match {cfg.filename}: ' +
                        '; '.join(problems))


class OrtDetector(BaseModel):
    """Mask R-CNN in ONNX Runtime, predicting as mmdet's ``predict``.

    Args:
        onnx: the exported detector.
        model: the config's built detector (its data preprocessor and
            ``test_cfg.rcnn`` are used; its weights are not).
        model_cfg: the config's ``model``.
    """

    def __init__(self, onnx: OnnxSession, model: nn.Module, model_cfg):
        super().__init__(data_preprocessor=model.data_preprocessor)
        self.onnx = onnx
        self.rcnn_cfg = model.test_cfg.rcnn
        self.mask_head = detector.build_mask_head(model_cfg)

    def forward(self, inputs: Tensor, data_samples=None, mode='predict'):
        if mode != 'predict':
            raise RuntimeError(f'an ONNX model only predicts (mode={mode!r})')
        dets, labels, masks = self.onnx.run(inputs)[:3]
        # the export clips boxes to the input; mmdet to each image
        for i, sample in enumerate(data_samples):
            h, w = sample.metainfo['img_shape'][:2]
            dets[i, :, 0:4:2] = dets[i, :, 0:4:2].clamp(0, w)
            dets[i, :, 1:4:2] = dets[i, :, 1:4:2].clamp(0, h)
        return detector.det_outputs_to_samples(dets, labels, masks,
                                               data_samples, self.rcnn_cfg,
                                               self.mask_head)


class OrtSegmentor(BaseModel):
    """An ``EncoderDecoder`` whose ``encode_decode`` runs in ONNX Runtime.

    Args:
        onnx: the exported segmentor (``logits`` = ``encode_decode``).
        model: the config's built ``EncoderDecoder``; its backbone, neck
            and auxiliary head are dropped, the rest predicts as in mmseg.
    """

    def __init__(self, onnx: OnnxSession, model: nn.Module):
        from mmseg.models.segmentors import EncoderDecoder
        if not isinstance(model, EncoderDecoder):
            raise OnnxError(f'{onnx.path}: tools/test.py evaluates exported '
                            'EncoderDecoder segmentors; the config builds '
                            f'{type(model).__name__}')
        super().__init__(data_preprocessor=model.data_preprocessor)
        self.onnx = onnx
        model.backbone = None
        if model.with_neck:
            model.neck = None
        if model.with_auxiliary_head:
            model.auxiliary_head = None
        model.encode_decode = self.encode_decode  # mmseg calls it per crop
        self.segmentor = model

    @property
    def out_channels(self) -> int:  # read by mmseg's SegTTAModel
        return self.segmentor.out_channels

    @property
    def decode_head(self) -> nn.Module:  # its threshold, likewise
        return self.segmentor.decode_head

    def encode_decode(self, inputs: Tensor, batch_img_metas=None) -> Tensor:
        logits = self.onnx.run(inputs)[0]
        return logits[..., :inputs.shape[2], :inputs.shape[3]]

    def forward(self, inputs: Tensor, data_samples=None, mode='predict'):
        if mode != 'predict':
            raise RuntimeError(f'an ONNX model only predicts (mode={mode!r})')
        return self.segmentor.predict(inputs, data_samples)


def onnx_model(model: nn.Module,
               path: str,
               cfg,
               metainfo: Optional[dict] = None,
               model_cfg=None) -> nn.Module:
    """The config's built ``model`` (wrapped or not, or the ``module`` of a
    test-time augmentation model) with its network replaced by the exported
    ``path``, after :func:`check_onnx`. ``metainfo`` (the test data's)
    gives the class names to check and the palette; the class names drawn
    are the file's, else the data's.

    Raises:
        OnnxError: the file is missing, unreadable, or does not fit.
    """
    if is_model_wrapper(model):
        model = model.module
    if isinstance(model, BaseTTAModel):
        model.module = onnx_model(model.module, path, cfg, metainfo,
                                  (model_cfg or cfg.model)['module'])
        return model
    onnx = OnnxSession(path)
    classes = (metainfo or {}).get('classes')
    model_cfg = model_cfg or cfg.model
    check_onnx(onnx, model, cfg, classes, model_cfg)
    if onnx.task == 'detector':
        wrapped = OrtDetector(onnx, model, model_cfg)
    else:
        wrapped = OrtSegmentor(onnx, model)
    # as the inferencers keep a checkpoint's: the classes and their colours
    palette = (metainfo or {}).get('palette')
    wrapped.dataset_meta = dict(
        classes=onnx.classes or classes, palette=copy.deepcopy(palette))
    return wrapped.to('cpu').eval()


def dataset_metainfo(cfg) -> dict:
    """The metainfo (classes, palette) of the config's test dataset, read
    without loading its annotations (as mmdet's DetInferencer does)."""
    from mmengine.registry import DATASETS, DefaultScope
    dataset = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset['lazy_init'] = True
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return dict(DATASETS.build(dataset).metainfo)
