"""Building a whole detector / segmentor from a config, with synthetic
batches of any size, for the benchmark and the FLOP counter.

No weights are loaded (``init_weights`` is not called, so a ``Pretrained``
``init_cfg`` downloads nothing) and, unless asked otherwise, ``SyncBN`` is
replaced by ``BN`` (one process, no process group).
"""
import copy
from typing import List, Tuple

import torch
import torch.nn as nn


def _replace_sync_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def load_model_config(path: str, sync_bn: bool = False):
    """The config at ``path`` (mmdet or mmseg scope), its model section with
    BN for SyncBN unless ``sync_bn``."""
    from ..engine.config import load_config
    cfg = load_config(path)
    if not sync_bn:
        model_cfg = copy.deepcopy(cfg.model)
        _replace_sync_bn(model_cfg)
        cfg.model = model_cfg
    return cfg


def _registry(scope: str):
    import xcit_mm  # noqa: F401  (registers XCiT)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS


def build_from_config(cfg, part: str = 'model') -> nn.Module:
    """Builds ``cfg.model`` (``part='model'``) or its backbone
    (``part='backbone'``) in the config's scope, without loading weights."""
    from mmengine.registry import DefaultScope
    scope = cfg.default_scope
    registry = _registry(scope)
    node = cfg.model if part == 'model' else cfg.model.backbone
    node = copy.deepcopy(node)
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(node)


class FullModelBatch:
    """A synthetic batch for a whole model: normalised random images and data
    samples with the meta information (and, for training, random targets:
    three boxes with masks per image for a detector, a label map for a
    segmentor)."""

    def __init__(self, inputs: torch.Tensor, data_samples: list):
        self.inputs = inputs
        self.data_samples = data_samples

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.inputs.shape)


def _num_classes(model: nn.Module, default: int = 80) -> int:
    for m in model.modules():
        n = getattr(m, 'num_classes', None)
        if isinstance(n, int) and n > 0:
            return n
    return default


def make_batch(model: nn.Module, scope: str, batch_size: int, height: int,
               width: int, device, with_targets: bool,
               seed: int = 0) -> FullModelBatch:
    """A batch of ``batch_size`` images of ``height x width``."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, height, width, generator=gen)
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        batch_input_shape=(height, width),
        scale_factor=(1., 1.))
    num_classes = _num_classes(model)
    samples: List = []
    for i in range(batch_size):
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            sample = DetDataSample(metainfo=dict(meta, img_id=i))
            if with_targets:
                k = 3
                xy = torch.rand(k, 2, generator=gen) * torch.tensor(
                    [width * 0.6, height * 0.6])
                wh = (torch.rand(k, 2, generator=gen) * 0.3 + 0.1) * \
                    torch.tensor([width, height])
                boxes = torch.cat([xy, xy + wh], dim=1)
                masks = torch.zeros(k, height, width, dtype=torch.uint8)
                for j, (x1, y1, x2, y2) in enumerate(boxes.round().long()):
                    masks[j, y1:y2, x1:x2] = 1
                inst = InstanceData()
                inst.bboxes = boxes
                inst.labels = torch.randint(
                    0, num_classes, (k, ), generator=gen)
                inst.masks = BitmapMasks(masks.numpy(), height, width)
                sample.gt_instances = inst
                sample.ignored_instances = InstanceData(
                    bboxes=torch.zeros(0, 4), labels=torch.zeros(
                        0, dtype=torch.long))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=dict(meta))
            if with_targets:
                sample.gt_sem_seg = PixelData(
                    data=torch.randint(
                        0, num_classes, (1, height, width), generator=gen))
        samples.append(sample.to(device) if hasattr(sample, 'to') else sample)
    return FullModelBatch(inputs.to(device), samples)
