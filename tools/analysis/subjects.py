"""What the analysis tools measure: our backbone, the references it is
compared with (timm's XCiT trunk holding the same weights, a global-attention
ViT of the same size), and whole detectors / segmentors built from configs
with synthetic batches. Used by ``benchmark.py`` and ``get_flops.py``.

Models are built without loading weights (a ``Pretrained`` ``init_cfg``
downloads nothing) and with BN in place of SyncBN (one process).
"""
import copy
import os.path as osp
import sys
from typing import Callable, List, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def backbone(arch, patch_size: int, **kwargs) -> nn.Module:
    """Our backbone with plain BN."""
    from xcit_mm import XCiT
    kwargs.setdefault('norm_cfg', dict(type='BN'))
    return XCiT(arch=arch, patch_size=patch_size, **kwargs)


def _intermediates(ref: nn.Module, model: nn.Module) -> Callable:
    """``ref``'s maps after ``model.out_indices`` (timm's
    ``forward_intermediates``), in ``model``'s train/eval mode."""
    ref.train(model.training)
    indices = list(model.out_indices)

    def forward(x):
        return ref.forward_intermediates(
            x, indices=indices, intermediates_only=True, stop_early=True)

    forward.module = ref
    return forward


def timm_trunk(model: nn.Module) -> Callable:
    """timm's XCiT of ``model``'s size holding ``model``'s trunk weights;
    returns a callable giving the maps after ``model.out_indices``."""
    from timm.models.xcit import Xcit
    ref = Xcit(
        patch_size=model.patch_size,
        embed_dim=model.embed_dims,
        depth=model.depth,
        num_heads=model.num_heads,
        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.embed_dims,
        num_classes=0,
        cls_attn_layers=0,
        eta=1.0)
    trunk = {k: v for k, v in model.state_dict().items()
             if not k.startswith('adapter.')}
    missing, unexpected = ref.load_state_dict(trunk, strict=False)
    missing = [k for k in missing if k.startswith(('blocks', 'patch_embed',
                                                   'pos_embed'))]
    if missing or unexpected:
        raise RuntimeError(f'timm XCiT does not take our trunk weights: '
                           f'missing {missing[:5]}, unexpected '
                           f'{unexpected[:5]}')
    return _intermediates(ref, model)


def timm_vit(model: nn.Module, attention: str = 'fused') -> Callable:
    """A ViT (timm's, no class token) of ``model``'s width, depth, heads and
    patch size, random weights; ``attention`` 'fused' (timm's default) or
    'naive' (the ``N x N`` matrix materialised, as the paper's DeiT)."""
    from timm.models.vision_transformer import VisionTransformer
    vit = VisionTransformer(
        patch_size=model.patch_size, embed_dim=model.embed_dims,
        depth=model.depth, num_heads=model.num_heads, class_token=False,
        global_pool='', num_classes=0, dynamic_img_size=True,
        dynamic_img_pad=True)
    for blk in vit.blocks:
        blk.attn.fused_attn = attention == 'fused'
    return _intermediates(vit, model)


def _bn_instead_of_syncbn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _bn_instead_of_syncbn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _bn_instead_of_syncbn(value)


def load_model_config(path: str):
    """A config of ours or an upstream one (``mmdet::...``, ``mmseg::...``),
    with BN for SyncBN."""
    if path.startswith(('mmdet::', 'mmseg::')):
        from mmengine.hub import get_config
        cfg = get_config(path)
    else:
        from launch_utils import load_config
        cfg = load_config(path)
    model_cfg = copy.deepcopy(cfg.model)
    _bn_instead_of_syncbn(model_cfg)
    cfg.model = model_cfg
    return cfg


def build_model(cfg) -> nn.Module:
    """``cfg.model`` built in the config's scope, without loading weights."""
    import torchvision  # noqa: F401  (before tracing mmcv's RoIAlign)
    from mmengine.registry import DefaultScope

    import xcit_mm  # noqa: F401
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(copy.deepcopy(cfg.model))


def _num_classes(model: nn.Module, default: int = 80) -> int:
    for m in model.modules():
        n = getattr(m, 'num_classes', None)
        if isinstance(n, int) and n > 0:
            return n
    return default


def make_batch(model: nn.Module, scope: str, batch_size: int, height: int,
               width: int, with_targets: bool, seed: int = 0):
    """Normalised random images and data samples with their meta
    information (and, for training, targets: three boxes with masks per
    image for a detector, a label map for a segmentor)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, height, width, generator=gen)
    meta = dict(img_shape=(height, width), ori_shape=(height, width),
                pad_shape=(height, width), batch_input_shape=(height, width),
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
                xy = torch.rand(3, 2, generator=gen) * torch.tensor(
                    [width * 0.6, height * 0.6])
                wh = (torch.rand(3, 2, generator=gen) * 0.3 + 0.1) * \
                    torch.tensor([width, height])
                boxes = torch.cat([xy, xy + wh], dim=1)
                masks = torch.zeros(3, height, width, dtype=torch.uint8)
                for j, (x1, y1, x2, y2) in enumerate(boxes.round().long()):
                    masks[j, y1:y2, x1:x2] = 1
                sample.gt_instances = InstanceData(
                    bboxes=boxes,
                    labels=torch.randint(0, num_classes, (3, ),
                                         generator=gen),
                    masks=BitmapMasks(masks.numpy(), height, width))
                sample.ignored_instances = InstanceData(
                    bboxes=torch.zeros(0, 4),
                    labels=torch.zeros(0, dtype=torch.long))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=dict(meta))
            if with_targets:
                sample.gt_sem_seg = PixelData(data=torch.randint(
                    0, num_classes, (1, height, width), generator=gen))
        samples.append(sample)
    return inputs, samples


def tokens(patch_size: int, h: int, w: int) -> int:
    return -(-h // patch_size) * -(-w // patch_size)


def parse_size(text: str) -> Sequence[int]:
    """``'512x640'`` -> ``(512, 640)``; ``'512'`` -> ``(512, 512)``."""
    parts = text.lower().split('x')
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f'size must be H or HxW, got {text!r}') from None
    if h <= 0 or w <= 0 or len(parts) != 2:
        raise ValueError(f'size must be H or HxW, got {text!r}')
    return h, w
