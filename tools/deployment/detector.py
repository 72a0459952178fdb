"""Mask R-CNN as one traceable module for ONNX export, and its post-processing.

``DetectorExport`` re-states mmdet 3's Mask R-CNN inference (RPN, RoI heads,
mask head) with batched tensor operations whose shapes follow the input, so that
``torch.onnx.export`` (TorchScript exporter) records one graph that serves any
batch size and image size with standard ONNX operators only (``NonMaxSuppression``,
``RoiAlign``, ``TopK``, ``NonZero``, ``ScatterND``): no mmcv or mmdeploy op.

Input: ``input``, N x 3 x H x W float32, the image after the config's data
preprocessor (normalised, channel order and padding as the config says).
Outputs, the layout of mmdeploy's ONNX Runtime end2end detectors:

- ``dets`` N x K x 5 float32: x1, y1, x2, y2 in the input's pixel frame, score;
- ``labels`` N x K int64;
- ``masks`` N x K x M x M float32: mask probabilities in each box's frame
  (M the mask head's output size, 28 in our configs);

K = ``test_cfg.rcnn.max_per_img``; images with fewer detections are padded with
score 0 (box, label and mask 0). Detections are sorted by score per image.
``det_outputs_to_samples`` turns these outputs into ``DetDataSample``s as
mmdet's ``predict(rescale=True)`` does.

One difference to mmdet: mmdet clips boxes to each image's unpadded resized size
(``img_shape``), the export to the input's size (as mmdeploy does); the two agree
when the input is not padded.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor
from torchvision.ops import nms, roi_align

INPUT_NAME = 'input'
OUTPUT_NAMES = ('dets', 'labels', 'masks')
# score of padded entries while ranking; real scores are probabilities >= 0
_PAD_SCORE = -1.0


def _unsupported(part: str, why: str) -> ValueError:
    return ValueError(f'cannot export the detector: {part} {why}; the export '
                      'supports Mask R-CNN (RPNHead, StandardRoIHead, '
                      'Shared2FCBBoxHead/ConvFCBBoxHead, FCNMaskHead)')


def _arange_like(x: Tensor, dim: int) -> Tensor:
    """Float 0..size-1 along ``dim`` of ``x``, following ``x``'s traced size."""
    index = [0] * x.dim()
    index[dim] = slice(None)
    return torch.ones_like(x[tuple(index)], dtype=torch.float32).cumsum(0) - 1


def _decode(priors: Tensor, deltas: Tensor, coder, max_xy: Tensor) -> Tensor:
    """DeltaXYWHBBoxCoder.decode of mmdet (``delta2bbox``), clipped to max_xy.

    ``priors`` and ``deltas`` are ... x 4; ``max_xy`` is (W, H) as a tensor.
    """
    means = deltas.new_tensor(coder.means)
    stds = deltas.new_tensor(coder.stds)
    deltas = deltas * stds + means
    pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
    pwh = priors[..., 2:] - priors[..., :2]
    max_ratio = float(np.abs(np.log(16 / 1000)))  # decode()'s wh_ratio_clip
    dwh = deltas[..., 2:].clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + pwh * deltas[..., :2]
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if coder.clip_border:
        boxes = torch.minimum(boxes.clamp(min=0), max_xy.repeat(2))
    return boxes


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor,
                 iou_threshold: float) -> Tensor:
    """mmcv's ``batched_nms`` (coordinate-offset trick); returns kept indices."""
    # 0 joins the max so that no candidate at all is no error
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes) * (top + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _rank_kept(scores: Tensor, valid: Tensor, keep: Tensor, k: int) -> Tensor:
    """Top ``k`` scores per row among those kept by NMS; -1 past the last.

    ``scores`` and ``valid`` are N x T; ``keep`` indexes the flattened valid
    entries. Returns (values, indices), both N x k; indices may point past T.
    """
    flat_valid = valid.reshape(-1).nonzero().squeeze(1)
    kept = torch.zeros_like(valid.reshape(-1))
    kept = kept.index_put((flat_valid[keep], ),
                          torch.ones_like(keep, dtype=torch.bool))
    ranked = torch.where(
        kept.reshape(valid.shape), scores, torch.full_like(scores, _PAD_SCORE))
    pad = torch.full_like(ranked[:, :1], _PAD_SCORE).expand(-1, k)
    return torch.cat([ranked, pad], dim=1).topk(k, dim=1)


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x N x T x C gathered along T by index N x k, padding past T with 0."""
    pad = torch.zeros_like(x[:, :1]).expand(-1, index.shape[1], -1)
    x = torch.cat([x, pad], dim=1)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class DetectorExport(nn.Module):
    """Mask R-CNN inference as one exportable module (see the module docstring).

    Args:
        model: an mmdet ``TwoStageDetector`` with an RPN and a StandardRoIHead
            with bbox and mask heads (our Mask R-CNN configs), in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._check(model)
        self.rpn_cfg = model.test_cfg.rpn
        self.rcnn_cfg = model.test_cfg.rcnn

    @staticmethod
    def _check(model: nn.Module) -> None:
        for part in ('backbone', 'neck', 'rpn_head', 'roi_head'):
            if getattr(model, part, None) is None:
                raise _unsupported('the model', f'has no {part}')
        rpn, roi = model.rpn_head, model.roi_head
        names = dict(rpn_head=type(rpn).__name__, roi_head=type(roi).__name__)
        if names['rpn_head'] != 'RPNHead' or not rpn.use_sigmoid_cls:
            raise _unsupported(
                'rpn_head', f'is {names["rpn_head"]} '
                'without a sigmoid classifier')
        if names['roi_head'] != 'StandardRoIHead' or not (roi.with_bbox
                                                          and roi.with_mask):
            raise _unsupported(
                'roi_head', f'is {names["roi_head"]} without '
                'both a bbox and a mask head')
        if roi.bbox_head.custom_cls_channels or not roi.bbox_head.with_reg:
            raise _unsupported('roi_head.bbox_head',
                               'has a custom classifier or no regression')
        if type(roi.mask_head).__name__ != 'FCNMaskHead':
            raise _unsupported('roi_head.mask_head',
                               f'is {type(roi.mask_head).__name__}')
        for name, coder in (('rpn_head', rpn.bbox_coder),
                            ('roi_head.bbox_head', roi.bbox_head.bbox_coder)):
            if type(coder).__name__ != 'DeltaXYWHBBoxCoder' or \
                    coder.add_ctr_clamp:
                raise _unsupported(f'{name}.bbox_coder',
                                   f'is {type(coder).__name__}')
        for name, ext in (('bbox_roi_extractor', roi.bbox_roi_extractor),
                          ('mask_roi_extractor', roi.mask_roi_extractor)):
            # SparseRoIExtractor (xcit_mm): the same RoIAlign, computed as
            # a sparse product
            if type(ext).__name__ not in ('SingleRoIExtractor',
                                          'SparseRoIExtractor'):
                raise _unsupported(f'roi_head.{name}',
                                   f'is {type(ext).__name__}')
            for layer in ext.roi_layers:
                if type(layer).__name__ not in ('RoIAlign',
                                                'SparseRoIAlign') or \
                        getattr(layer, 'pool_mode', 'avg') != 'avg':
                    raise _unsupported(f'roi_head.{name}',
                                       'does not use average RoIAlign')
        test_cfg = model.test_cfg
        for name in ('rpn', 'rcnn'):
            nms_cfg = test_cfg[name].nms
            if nms_cfg.get('type', 'nms') != 'nms':
                raise _unsupported(f'test_cfg.{name}.nms',
                                   f'is {nms_cfg["type"]}, not nms')

    # -- stages --------------------------------------------------------------

    def _proposals(self, feats: Sequence[Tensor],
                   max_xy: Tensor) -> Tuple[Tensor, Tensor]:
        """RPN: N x P x 4 proposals and their N x P validity, P = max_per_img."""
        rpn, cfg = self.model.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = rpn(feats)
        nms_pre = cfg.get('nms_pre', -1)
        scores, deltas, priors, levels = [], [], [], []
        gen = rpn.prior_generator
        for lvl, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            stride_w, stride_h = gen.strides[lvl]
            xs = _arange_like(cls[0, 0], 1) * stride_w
            ys = _arange_like(cls[0, 0], 0) * stride_h
            xx = xs[None, :] + ys[:, None] * 0
            yy = ys[:, None] + xs[None, :] * 0
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            base = gen.base_anchors[lvl].to(shifts)
            anchors = (shifts + base[None]).reshape(1, -1, 4)
            score = cls.permute(0, 2, 3, 1).reshape(cls.shape[0], -1).sigmoid()
            delta = reg.permute(0, 2, 3, 1).reshape(reg.shape[0], -1, 4)
            anchors = anchors.expand(delta.shape[0], -1, -1)
            if nms_pre > 0:
                # topk over nms_pre padded entries: fixed k at any size
                score, idx = torch.cat([
                    score,
                    torch.full_like(score[:, :1], _PAD_SCORE).expand(
                        -1, nms_pre)
                ],
                                       dim=1).topk(
                                           nms_pre, dim=1)
                delta = _gather_rows(delta, idx)
                anchors = _gather_rows(anchors, idx)
            scores.append(score)
            deltas.append(delta)
            priors.append(anchors)
            levels.append(torch.full_like(score, lvl))
        scores = torch.cat(scores, dim=1)
        boxes = _decode(
            torch.cat(priors, 1), torch.cat(deltas, 1), rpn.bbox_coder, max_xy)
        levels = torch.cat(levels, dim=1)
        valid = scores > _PAD_SCORE / 2
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            wh = boxes[..., 2:] - boxes[..., :2]
            valid = valid & (wh[..., 0] > min_size) & (wh[..., 1] > min_size)
        images = _arange_like(scores, 0)[:, None] + levels * 0
        groups = images * len(cls_scores) + levels
        keep = _batched_nms(boxes[valid], scores[valid], groups[valid],
                            cfg.nms.iou_threshold)
        top, idx = _rank_kept(scores, valid, keep, cfg.max_per_img)
        return _gather_rows(boxes, idx), top > _PAD_SCORE / 2

    def _roi_feats(self, extractor: nn.Module, feats: Sequence[Tensor],
                   rois: Tensor) -> Tensor:
        """SingleRoIExtractor.forward with torchvision's RoIAlign."""
        feats = feats[:extractor.num_inputs]
        layers = extractor.roi_layers

        def align(i, r):
            layer = layers[i]
            return roi_align(feats[i], r, layer.output_size,
                             layer.spatial_scale, layer.sampling_ratio,
                             layer.aligned)

        if len(feats) == 1:
            return align(0, rois)
        levels = extractor.map_roi_levels(rois, len(feats))
        parts, order = [], []
        for i in range(len(feats)):
            inds = (levels == i).nonzero().squeeze(1)
            parts.append(align(i, rois[inds]))
            order.append(inds)
        return torch.cat(parts)[torch.cat(order).argsort()]

    def forward(self, img: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        model, roi, cfg = self.model, self.model.roi_head, self.rcnn_cfg
        max_xy = shape_as_tensor(img)[2:].flip(0).to(img)
        feats = model.extract_feat(img)

        proposals, prop_valid = self._proposals(feats, max_xy)
        num_props = proposals.shape[1]
        images = _arange_like(proposals, 0)[:, None, None] + \
            proposals[..., :1] * 0
        rois = torch.cat([images, proposals], dim=-1).reshape(-1, 5)
        bbox_head = roi.bbox_head
        cls_score, bbox_pred = bbox_head(
            self._roi_feats(roi.bbox_roi_extractor, feats, rois))
        num_classes = bbox_head.num_classes
        scores = F.softmax(cls_score, dim=-1)[:, :num_classes]
        deltas = bbox_pred.reshape(bbox_pred.shape[0], -1, 4)
        boxes = _decode(rois[:, None, 1:], deltas, bbox_head.bbox_coder,
                        max_xy)
        boxes = boxes.expand(-1, num_classes, -1)
        # N x (P * C) candidates, class-major within each proposal as in mmdet
        batch = proposals.shape[0]
        scores = scores.reshape(batch, -1)
        boxes = boxes.reshape(batch, -1, 4)
        labels = _arange_like(cls_score[:, :num_classes], 1)[None, :] + \
            prop_valid[..., None].to(scores) * 0
        labels = labels.reshape(batch, -1)
        valid = (scores > cfg.score_thr) & prop_valid[..., None].expand(
            -1, -1, num_classes).reshape(batch, -1)
        groups = _arange_like(scores, 0)[:, None] * num_classes + labels
        keep = _batched_nms(boxes[valid], scores[valid], groups[valid],
                            cfg.nms.iou_threshold)
        top, idx = _rank_kept(scores, valid, keep, cfg.max_per_img)
        found = top > _PAD_SCORE / 2
        det_boxes = _gather_rows(boxes, idx) * found[..., None]
        det_labels = (_gather_rows(labels[..., None], idx)[..., 0] *
                      found).long()
        dets = torch.cat([det_boxes, (top * found)[..., None]], dim=-1)

        images = _arange_like(det_boxes, 0)[:, None, None] + \
            det_boxes[..., :1] * 0
        mask_rois = torch.cat([images, det_boxes], dim=-1).reshape(-1, 5)
        mask_preds = roi.mask_head(
            self._roi_feats(roi.mask_roi_extractor, feats, mask_rois))
        if not roi.mask_head.class_agnostic:
            sel = det_labels.reshape(-1, 1, 1,
                                     1).expand(-1, 1, *mask_preds.shape[2:])
            mask_preds = mask_preds.gather(1, sel)
        masks = mask_preds.sigmoid().reshape(batch, -1, *mask_preds.shape[2:])
        masks = masks * found[..., None, None]
        return dets, det_labels, masks


def export_detector(model: nn.Module,
                    out_path: str,
                    shape: Tuple[int, int] = (800, 1344),
                    batch: int = 1,
                    opset: int = 17,
                    dynamic: bool = True) -> None:
    """Export ``DetectorExport(model)`` to ``out_path`` with torch.onnx.

    Traced on zeros of ``batch`` x 3 x ``shape``; batch, height and width are
    dynamic axes unless ``dynamic`` is False. The caller writes atomically
    (pass a temporary path and rename it).
    """
    if opset < 16:
        raise ValueError(
            f'opset {opset} is too old for the detector: '
            'RoiAlign with half-pixel alignment needs opset >= 16')
    wrapper = DetectorExport(model).eval()
    dummy = torch.zeros(batch, 3, *shape)
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({name: {0: 'batch'} for name in OUTPUT_NAMES})
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (dummy, ),
            out_path,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False)


def compare_outputs(ref: Sequence, got: Sequence) -> float:
    """Largest relative difference between two (dets, labels, masks) triples.

    Per image, the detections with a score above 0 are matched in order of
    score (ties are broken by the box): their number and labels must agree
    (else ``inf``). The difference is the largest of |dets| differences
    divided by the largest |dets| value of ``ref`` and of the mask
    probability differences (probabilities lie in [0, 1]).
    """
    ref = [np.asarray(x) for x in ref]
    got = [np.asarray(x) for x in got]
    if any(r.shape != g.shape for r, g in zip(ref, got)):
        return float('inf')
    worst = 0.0
    for i in range(ref[0].shape[0]):
        rows = []
        for dets, labels, masks in (ref, got):
            d = dets[i]
            keep = d[:, 4] > 0
            order = np.lexsort((d[keep, 0], d[keep, 1], -d[keep, 4]))
            rows.append((d[keep][order], labels[i][keep][order],
                         masks[i][keep][order]))
        (rd, rl, rm), (gd, gl, gm) = rows
        if len(rd) != len(gd) or (rl != gl).any():
            return float('inf')
        if not len(rd):
            continue
        scale = max(float(np.abs(rd).max()), 1e-12)
        worst = max(worst,
                    float(np.abs(rd - gd).max()) / scale,
                    float(np.abs(rm - gm).max()))
    return worst


def build_mask_head(model_cfg) -> nn.Module:
    """The config's mask head, class-agnostic, to paste exported masks."""
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    cfg = dict(model_cfg['roi_head']['mask_head'])
    cfg.update(class_agnostic=True, num_convs=0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg).eval()


def det_outputs_to_samples(dets, labels, masks, batch_data_samples: List,
                           rcnn_test_cfg, mask_head: nn.Module) -> List:
    """Exported outputs to ``DetDataSample``s as mmdet's predict(rescale=True).

    Boxes are divided by each sample's ``scale_factor`` and masks are pasted
    into ``ori_shape`` and thresholded at ``mask_thr_binary`` by mmdet's own
    ``FCNMaskHead.predict_by_feat``; the score-0 padding is dropped.

    Args:
        dets, labels, masks: the exported model's outputs (numpy or torch).
        batch_data_samples: the batch's data samples (with ``metainfo``).
        rcnn_test_cfg: the config's ``model.test_cfg.rcnn``.
        mask_head: from :func:`build_mask_head`.
    """
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData
    dets, labels, masks = (
        torch.as_tensor(np.asarray(x)) for x in (dets, labels, masks))
    if not isinstance(rcnn_test_cfg, ConfigDict):
        rcnn_test_cfg = ConfigDict(rcnn_test_cfg)
    if dets.shape[0] != len(batch_data_samples):
        raise ValueError(f'{dets.shape[0]} detection results for '
                         f'{len(batch_data_samples)} images')
    results, mask_preds, metas = [], [], []
    for i, sample in enumerate(batch_data_samples):
        keep = dets[i, :, 4] > 0
        res = InstanceData()
        res.bboxes = dets[i, keep, :4].float().clone()
        res.scores = dets[i, keep, 4].float()
        res.labels = labels[i, keep].long()
        results.append(res)
        mask_preds.append(masks[i, keep][:, None].float())
        metas.append(sample.metainfo)
    with torch.no_grad():
        results = mask_head.predict_by_feat(
            tuple(mask_preds),
            results,
            metas,
            rcnn_test_cfg,
            rescale=True,
            activate_map=True)
    for sample, res in zip(batch_data_samples, results):
        sample.pred_instances = res
    return batch_data_samples
