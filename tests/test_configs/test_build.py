"""Every config builds its model (BN for SyncBN, no pretrained download) and
the model runs: the pyramid of every config on a 64x64 image, and a loss
step (with backward) plus a prediction through the data preprocessor for a
few representative configs."""
import math
import os.path as osp

import pytest
import torch

from tests.test_configs.utils import (ALL, CONFIGS, build_model, config_id,
                                      load)
from xcit_mm.models import ARCH_SETTINGS

# One of each model (T12/16: the cheapest published preset) and the demos
# (patch 8, BN, their own widths and classes).
FULL = [
    osp.join(CONFIGS, p) for p in (
        'coco/mask_rcnn_xcit_t12_p16.py',
        'ade20k/fpn_xcit_t12_p16_80k.py',
        'ade20k/upernet_xcit_t12_p16_160k.py',
        'demo/mask_rcnn_xcit_n12_p8_shapes.py',
        'demo/fpn_xcit_n12_p8_shapes.py',
    )
]
SIZE = 64


def _pyramid_widths(cfg):
    """The channels of ``extract_feat``'s maps and how many there are."""
    model = cfg.model
    if 'neck' in model:
        return model.neck.out_channels, model.neck.num_outs
    embed_dims = ARCH_SETTINGS[model.backbone.arch]['embed_dims']
    return embed_dims, 4


@pytest.mark.parametrize('path', ALL, ids=config_id)
def test_builds_and_extracts_the_pyramid(path):
    cfg = load(path)
    model = build_model(cfg)
    backbone = cfg.model.backbone
    assert not any(
        isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert type(model.backbone).__name__ == 'XCiT'
    assert model.backbone.patch_size == backbone.patch_size
    # the patch embedding really downsamples by the patch size
    strides = [
        m.stride[0] for m in model.backbone.patch_embed.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert math.prod(strides) == backbone.patch_size
    arch = backbone.arch  # a preset's name, or its settings (the demo's)
    assert model.backbone.embed_dims == (
        arch if isinstance(arch, dict) else ARCH_SETTINGS[arch])['embed_dims']
    if isinstance(arch, dict):
        assert len(model.backbone.blocks) == arch['depth']
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, SIZE, SIZE))
    width, levels = _pyramid_widths(cfg)
    assert [tuple(f.shape) for f in feats] == [
        (1, width, SIZE // 4 >> i, SIZE // 4 >> i) for i in range(levels)
    ]


def _det_batch(num_classes, n=1):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i in range(n):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(SIZE, SIZE),
                ori_shape=(SIZE, SIZE),
                scale_factor=(1.0, 1.0)))
        gt = InstanceData()
        gt.bboxes = torch.tensor([[4., 6., 40., 50.], [30., 20., 60., 62.]])
        gt.labels = torch.tensor([0, num_classes - 1])
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        masks[0, 6:50, 4:40] = 1
        masks[1, 20:62, 30:60] = 1
        gt.masks = BitmapMasks(masks.numpy(), SIZE, SIZE)
        sample.gt_instances = gt
        samples.append(sample)
        inputs.append(
            torch.randint(
                0, 256, (3, SIZE, SIZE), generator=gen, dtype=torch.uint8))
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(num_classes, n):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        sample = SegDataSample(
            metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, SIZE, SIZE), generator=gen))
        samples.append(sample)
        inputs.append(
            torch.randint(
                0, 256, (3, SIZE, SIZE), generator=gen, dtype=torch.uint8))
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('path', FULL, ids=config_id)
def test_loss_step_and_prediction(path):
    cfg = load(path)
    det = cfg.default_scope == 'mmdet'
    if det:
        num_classes = cfg.model.roi_head.bbox_head.num_classes
        batch = _det_batch(num_classes)
    else:
        num_classes = cfg.model.decode_head.num_classes
        # the training crop size pads every image: keep it small here
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
        # batch 2: UperNet's 1x1 pooled branch needs 2 values per channel
        batch = _seg_batch(num_classes, 2)
    model = build_model(cfg)
    model.init_weights()

    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    if det:
        assert {
            'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
            'loss_mask'
        } <= set(losses)
    else:
        expected = {'decode.loss_ce', 'decode.acc_seg'}
        if 'auxiliary_head' in cfg.model:
            expected |= {'aux.loss_ce', 'aux.acc_seg'}
        assert set(losses) == expected
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        one = {k: v[:1] for k, v in batch.items()}
        results = model(**model.data_preprocessor(one, False), mode='predict')
    assert len(results) == 1
    if det:
        pred = results[0].pred_instances
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(pred.keys())
        assert len(pred) <= cfg.model.test_cfg.rcnn.max_per_img
    else:
        assert results[0].seg_logits.data.shape == (num_classes, SIZE, SIZE)
        assert results[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)
