import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from tests.config_utils import config_paths, to_bn
from xcit_mm.models import resolve_arch

COCO_CONFIGS = config_paths('coco')
EXPECTED = {
    't12': ('tiny-12', 0.0),
    's12': ('small-12', 0.05),
    's24': ('small-24', 0.1),
    'm24': ('medium-24', 0.15),
}


def test_every_published_model_has_a_config():
    names = {osp.basename(p) for p in COCO_CONFIGS}
    assert names == {f'mask_rcnn_xcit_{s}_p{p}.py'
                     for s in EXPECTED for p in (8, 16)}


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=osp.basename)
def test_recipe(path):
    cfg = Config.fromfile(path)
    size, patch = osp.basename(path)[len('mask_rcnn_xcit_'):-3].split('_')
    arch, dpr = EXPECTED[size]
    backbone = cfg.model.backbone
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports.imports == ['xcit_mm']
    assert backbone.type == 'XCiT' and backbone.arch == arch
    assert backbone.patch_size == int(patch[1:])
    assert backbone.drop_path_rate == dpr
    assert backbone.norm_cfg.type == 'SyncBN'
    ckpt = backbone.init_cfg.checkpoint
    assert backbone.init_cfg.type == 'Pretrained'
    assert ckpt.endswith(f'_{patch}_384_dist.pth') and \
        arch.replace('-', '_') in ckpt
    dims = resolve_arch(arch)['embed_dims']
    assert cfg.model.neck.in_channels == [dims] * 4
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper'
    assert optim.optimizer.type == 'AdamW' and optim.optimizer.lr == 1e-4
    assert optim.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 36
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    assert steps[0].milestones == [27, 33]
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.val_evaluator.metric == ['bbox', 'segm']


@pytest.mark.parametrize('path', COCO_CONFIGS, ids=osp.basename)
def test_builds_and_runs(path):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmdet.structures.mask import BitmapMasks
    cfg = to_bn(Config.fromfile(path))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    # building must not download: weights load only in init_weights()
    assert model.backbone.init_cfg['type'] == 'Pretrained'
    h, w = 64, 96
    sample = DetDataSample(metainfo=dict(
        img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
        batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))
    gt = InstanceData()
    gt.bboxes = torch.tensor([[4., 6., 40., 50.]])
    gt.labels = torch.tensor([3])
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, 6:50, 4:40] = 1
    gt.masks = BitmapMasks(masks.numpy(), h, w)
    sample.gt_instances = gt
    inputs = torch.rand(1, 3, h, w)
    model.train()
    losses = model(inputs, [sample], mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_mask'} <= set(losses)
    model.eval()
    with torch.no_grad():
        results = model(inputs, [sample], mode='predict')
    assert len(results) == 1 and 'masks' in results[0].pred_instances
