"""How the configs are layered: OpenMMLab's bases, the plugin import and the
scope said once, leaves that say only what differs."""
import ast
import inspect
import os.path as osp

import pytest

from tests.test_configs.utils import (ALL, CONFIGS, PUBLISHED, config_id,
                                      config_paths, load)

# our base -> the mmdet / mmseg base it builds on
UPSTREAM = {
    'models/mask_rcnn_xcit_fpn.py':
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'models/fpn_xcit.py': 'mmseg::_base_/models/fpn_r50.py',
    'models/upernet_xcit.py': 'mmseg::_base_/models/upernet_r50.py',
    'datasets/coco_instance.py': 'mmdet::_base_/datasets/coco_instance.py',
    'datasets/ade20k.py': 'mmseg::_base_/datasets/ade20k.py',
    'det_runtime.py': 'mmdet::_base_/default_runtime.py',
    'seg_runtime.py': 'mmseg::_base_/default_runtime.py',
}
PLUGIN = dict(imports=['xcit_mm'], allow_failed_imports=False)
MAX_LEAF_LINES = 16


def _read(path):
    with open(path) as f:
        return f.read()


def _assignments(path):
    """{top-level name: value node} of a config file."""
    tree = ast.parse(_read(path))
    return {
        t.id: node.value
        for node in tree.body if isinstance(node, ast.Assign)
        for t in node.targets
    }


def _dict_keys(node):
    assert isinstance(node, ast.Call) and node.func.id == 'dict'
    return {k.arg: k.value for k in node.keywords}


@pytest.mark.parametrize('base, upstream', UPSTREAM.items())
def test_bases_build_on_openmmlab_bases(base, upstream):
    node = _assignments(osp.join(CONFIGS, '_base_', base))['_base_']
    assert ast.literal_eval(node) == upstream


@pytest.mark.parametrize('path', ALL, ids=config_id)
def test_scope_and_plugin_import_come_from_the_bases(path):
    cfg = load(path)
    det = cfg.model.type == 'MaskRCNN'
    assert cfg.default_scope == ('mmdet' if det else 'mmseg')
    if '/demo/' in path:  # the demo's datasets are in xcit_mm.datasets,
        # the demo detector's RoI extractor in xcit_mm.models.roi_extractor
        assert cfg.custom_imports['imports'] == [
            'xcit_mm', 'xcit_mm.datasets'
        ] + (['xcit_mm.models.roi_extractor'] if det else [])
        assert 'default_scope' not in set(_assignments(path))
    else:
        assert cfg.custom_imports == PLUGIN
        assert not {'default_scope', 'custom_imports'} & set(
            _assignments(path))


def test_plugin_import_is_said_once_per_library():
    said = {
        config_id(p)
        for p in config_paths('_base_', '_base_/*')
        if 'custom_imports' in _assignments(p)
    }
    assert said == {'_base_/det_runtime.py', '_base_/seg_runtime.py'}


@pytest.mark.parametrize('path', ALL, ids=config_id)
def test_no_resnet_setting_survives(path):
    """mmdet's / mmseg's ResNet keys are deleted, not merged into XCiT."""
    from xcit_mm.models import XCiT
    cfg = load(path)
    backbone = set(cfg.model.backbone)
    assert backbone - {'type'} <= set(inspect.signature(XCiT).parameters)
    if path in PUBLISHED:
        assert backbone == {
            'type', 'arch', 'patch_size', 'drop_path_rate', 'norm_cfg',
            'init_cfg'
        }
    if cfg.model.type == 'EncoderDecoder':
        assert cfg.model.pretrained is None  # mmseg's ResNet checkpoint


@pytest.mark.parametrize('path', PUBLISHED, ids=config_id)
def test_leaf_says_only_what_differs(path):
    """_base_, the pretrained URL and the model's preset, patch size,
    drop-path, weights and input widths; nothing else."""
    assert len(_read(path).splitlines()) <= MAX_LEAF_LINES
    names = _assignments(path)
    assert set(names) == {'_base_', 'pretrained', 'model'}
    model = _dict_keys(names['model'])
    assert set(model) <= {'backbone', 'neck', 'decode_head', 'auxiliary_head'}
    assert set(_dict_keys(model.pop('backbone'))) == {
        'arch', 'patch_size', 'drop_path_rate', 'init_cfg'
    }
    for head in model.values():
        assert set(_dict_keys(head)) == {'in_channels'}
