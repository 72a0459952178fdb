"""XCiTConfigCheckHook and check_model_config, on real mmdet and mmseg
models with a tiny XCiT backbone and in Runners."""
import copy
import importlib
import os
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from tests.test_engine.test_hooks.toy import (CLASSES, XCiTMMToyModel,
                                              build_runner, toy_cfg, train)
from xcit_mm.engine.hooks import check_model_config

TINY_XCIT = dict(
    type='XCiT',
    arch=dict(embed_dims=32, depth=4, num_heads=2),
    patch_size=16,
    norm_cfg=dict(type='BN'))


def _base_model(package, name):
    root = osp.dirname(importlib.import_module(package).__file__)
    return Config.fromfile(
        osp.join(root, '.mim', 'configs', '_base_', 'models', name)).model


def _build(package, model_cfg):
    init_default_scope(package)
    return importlib.import_module(f'{package}.registry').MODELS.build(
        model_cfg)


@pytest.fixture(scope='module')
def mask_rcnn():
    cfg = _base_model('mmdet', 'mask-rcnn_r50_fpn.py')
    cfg.backbone = TINY_XCIT
    cfg.neck.update(in_channels=[32] * 4, out_channels=16)
    cfg.rpn_head.update(in_channels=16, feat_channels=16)
    roi = cfg.roi_head
    roi.bbox_roi_extractor.out_channels = 16
    roi.mask_roi_extractor.out_channels = 16
    roi.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=3)
    roi.mask_head.update(in_channels=16, conv_out_channels=16, num_classes=3)
    return cfg


def test_mask_rcnn_checks(mask_rcnn):
    check_model_config(_build('mmdet', mask_rcnn), CLASSES)  # fits

    bad = mask_rcnn.copy()
    bad.roi_head = bad.roi_head.copy()
    bad.roi_head.bbox_head = dict(bad.roi_head.bbox_head, num_classes=5)
    bad.neck = dict(bad.neck, in_channels=[64] * 4)
    with pytest.raises(ValueError) as err:
        check_model_config(_build('mmdet', bad), CLASSES, 'train_dataloader')
    message = str(err.value)
    assert ('model.roi_head.bbox_head.num_classes=5 but train_dataloader has '
            "3 classes ('circle', 'rectangle', 'triangle'): set "
            'model.roi_head.bbox_head.num_classes=3') in message
    assert 'mask_head' not in message  # that one fits
    assert ('model.neck.in_channels=[64, 64, 64, 64] but model.backbone '
            '(XCiT, embed_dims=32) emits [32, 32, 32, 32]: set '
            'model.neck.in_channels=[32, 32, 32, 32]') in message


def test_retinanet_and_neck_to_head_checks():
    cfg = _base_model('mmdet', 'retinanet_r50_fpn.py')
    cfg.backbone = TINY_XCIT
    cfg.neck.update(in_channels=[32] * 4, out_channels=16, start_level=0)
    cfg.bbox_head.update(in_channels=24, feat_channels=16, num_classes=80)
    with pytest.raises(ValueError) as err:
        check_model_config(_build('mmdet', cfg), CLASSES)
    message = str(err.value)
    assert 'model.bbox_head.num_classes=80 but the dataset has 3' in message
    assert ('model.bbox_head.in_channels=24 but model.neck (5 maps of 16 '
            'channels) emits [16, 16, 16, 16, 16]: set '
            'model.bbox_head.in_channels=16') in message


def test_mmseg_upernet_checks():
    cfg = _base_model('mmseg', 'upernet_r50.py')
    cfg.pop('pretrained', None)
    cfg.backbone = TINY_XCIT
    cfg.decode_head.update(
        in_channels=[32] * 4,
        channels=16,
        num_classes=3,
        norm_cfg=dict(type='BN'))
    cfg.auxiliary_head.update(
        in_channels=32, channels=8, num_classes=3, norm_cfg=dict(type='BN'))
    check_model_config(_build('mmseg', cfg), CLASSES)  # fits

    cfg.decode_head.update(in_channels=[32, 32, 64, 32])
    cfg.auxiliary_head.update(in_channels=64, num_classes=150)
    with pytest.raises(ValueError) as err:
        check_model_config(_build('mmseg', cfg), CLASSES)
    message = str(err.value)
    assert ('model.decode_head.in_channels=[32, 32, 64, 32] (in_index=[0, 1, '
            '2, 3]) but model.backbone (XCiT, embed_dims=32) emits [32, 32, '
            '32, 32]: set model.decode_head.in_channels=[32, 32, 32, 32]'
            ) in message
    assert ('model.auxiliary_head.in_channels=64 (in_index=2) but '
            'model.backbone (XCiT, embed_dims=32) emits [32, 32, 32, 32]: '
            'set model.auxiliary_head.in_channels=32') in message
    assert 'model.auxiliary_head.num_classes=150 but the dataset has 3' \
        in message
    assert 'model.decode_head.num_classes' not in message


def test_mmseg_fpn_checks():
    cfg = _base_model('mmseg', 'fpn_r50.py')
    cfg.pop('pretrained', None)
    cfg.backbone = TINY_XCIT
    cfg.neck.update(in_channels=[48] * 4, out_channels=16)
    cfg.decode_head.update(
        in_channels=[16] * 3 + [8],
        channels=8,
        num_classes=3,
        norm_cfg=dict(type='BN'))
    with pytest.raises(ValueError) as err:
        check_model_config(_build('mmseg', cfg), CLASSES)
    message = str(err.value)
    assert 'model.neck.in_channels=[48, 48, 48, 48] but model.backbone' \
        in message
    assert ('model.decode_head.in_channels=[16, 16, 16, 8] (in_index=[0, 1, '
            '2, 3]) but model.neck (4 maps of 16 channels) emits') in message


def test_check_model_config_sees_through_ddp():
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    if dist.is_initialized():
        pytest.skip('a process group is already running')
    dist.init_process_group(
        'gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)
    try:
        wrapped = MMDistributedDataParallel(
            module=XCiTMMToyModel(num_classes=4))
        with pytest.raises(
                ValueError,
                match='model.decode_head.num_classes=4'
                ' but the dataset has 3 classes'):
            check_model_config(wrapped, CLASSES)
    finally:
        dist.destroy_process_group()


def test_config_check_hook_in_a_runner(tmp_path):
    with pytest.raises(ValueError) as err:
        train(
            tmp_path,
            max_iters=2,
            model=dict(num_classes=5),
            custom_hooks=[dict(type='XCiTConfigCheckHook')])
    message = str(err.value)
    assert ('model.decode_head.num_classes=5 but train_dataloader.dataset '
            '(XCiTMMToyDataset) has 3 classes') in message
    assert not any(name.endswith('.pth') for name in os.listdir(tmp_path))
    # and a model that fits trains
    runner = train(
        tmp_path / 'ok',
        max_iters=2,
        model=dict(num_classes=3),
        custom_hooks=[dict(type='XCiTConfigCheckHook')])
    assert runner.iter == 2


def test_config_check_hook_checks_val_data_at_train_start(tmp_path):
    cfg = toy_cfg(
        str(tmp_path),
        max_iters=4,
        val=2,
        model=dict(num_classes=3),
        custom_hooks=[dict(type='XCiTConfigCheckHook')])
    cfg['val_dataloader']['dataset']['classes'] = CLASSES + ('star', )
    with pytest.raises(
            ValueError,
            match='model.decode_head.num_classes=3 '
            r'but val_dataloader.dataset \(XCiTMMToyDataset\) has '
            '4 classes'):
        build_runner(cfg).train()
    assert not any(name.endswith('.pth') for name in os.listdir(tmp_path))


def test_config_check_hook_in_a_test_run_builds_no_train_data(tmp_path):
    cfg = toy_cfg(
        str(tmp_path),
        model=dict(num_classes=5),
        custom_hooks=[dict(type='XCiTConfigCheckHook')])
    cfg.update(
        test_dataloader=dict(
            copy.deepcopy(cfg['train_dataloader']),
            sampler=dict(type='DefaultSampler', shuffle=False)),
        test_cfg=dict(type='TestLoop'),
        test_evaluator=dict(type='XCiTMMToyMetric'))
    runner = build_runner(cfg)
    with pytest.raises(
            ValueError,
            match='model.decode_head.num_classes=5 '
            r'but test_dataloader.dataset \(XCiTMMToyDataset\)'):
        runner.test()
    assert isinstance(runner._train_dataloader, dict)  # never built


def test_config_check_hook_single_class_string(tmp_path):
    with pytest.raises(ValueError, match=r"write \('circle',\)"):
        train(
            tmp_path,
            max_iters=2,
            model=dict(num_classes=1),
            classes='circle',
            custom_hooks=[dict(type='XCiTConfigCheckHook')])


def test_cascade_stages_and_roi_extractors_by_attribute(mask_rcnn):
    """The walk goes by attributes, not head names: each stage of a cascade
    (a ModuleList) and each RoI extractor is checked and named."""
    cfg = mask_rcnn.copy()
    cfg.type = 'CascadeRCNN'
    roi = cfg.roi_head.copy()
    roi.type = 'CascadeRoIHead'
    roi.num_stages = 2
    roi.stage_loss_weights = [1, 0.5]
    stage = dict(roi.bbox_head)
    roi.bbox_head = [stage, dict(stage, num_classes=4)]
    roi.mask_roi_extractor = dict(roi.mask_roi_extractor, out_channels=8)
    roi.mask_head = dict(roi.mask_head, in_channels=8)
    cfg.roi_head = roi
    cfg.train_cfg = None
    with pytest.raises(ValueError) as err:
        check_model_config(_build('mmdet', cfg), CLASSES)
    message = str(err.value)
    assert 'model.roi_head.bbox_head[1].num_classes=4 but the dataset has 3' \
        in message
    assert 'bbox_head[0]' not in message
    for i in (0, 1):  # a cascade builds one extractor and head per stage
        assert (f'model.roi_head.mask_roi_extractor[{i}].out_channels=8 but '
                'model.neck (5 maps of 16 channels) emits [16, 16, 16, 16, '
                f'16]: set model.roi_head.mask_roi_extractor[{i}].out_channels'
                '=16') in message
        assert f'model.roi_head.mask_head[{i}].in_channels=8 but model.neck' \
            in message
