"""Helpers for the config tests: the config files, their merged configs and
the models they build (BN for SyncBN, no pretrained download)."""
import copy
import functools
import glob
import os.path as osp
import re

from mmengine.config import Config

from tests.helpers import syncbn_to_bn

CONFIGS = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')
SIZES = ('t12', 's12', 's24', 'm24')
ARCHS = dict(t12='tiny-12', s12='small-12', s24='small-24', m24='medium-24')
NAME = re.compile(r'^(?P<model>mask_rcnn|fpn|upernet)_xcit_(?P<size>[a-z]\d+)'
                  r'_p(?P<patch>8|16)(_(?P<iters>\d+)k)?(_shapes)?\.py$')


def config_paths(*folders):
    return [
        p for f in folders
        for p in sorted(glob.glob(osp.join(CONFIGS, f, '*.py')))
    ]


COCO = config_paths('coco')
ADE = config_paths('ade20k')
DEMO = config_paths('demo')
PUBLISHED = COCO + ADE
ALL = PUBLISHED + DEMO


def config_id(path):
    return osp.relpath(path, CONFIGS)


def parse_name(path):
    """(model, size, patch, iterations or None) from the file name."""
    m = NAME.match(osp.basename(path))
    assert m, f'unexpected config name {path}'
    iters = int(m['iters']) * 1000 if m['iters'] else None
    return m['model'], m['size'], int(m['patch']), iters


@functools.lru_cache(maxsize=None)
def _load(path):
    return Config.fromfile(path)


def load(path) -> Config:
    """The merged config (read once per session; a copy each call)."""
    return copy.deepcopy(_load(path))


def to_bn(cfg):
    """A copy of ``cfg`` (a dict or ConfigDict) with every SyncBN replaced by
    BN."""
    cfg = copy.deepcopy(cfg)
    syncbn_to_bn(cfg)
    return cfg


def offline_model_cfg(cfg):
    """``cfg.model`` ready to build on this machine: BN for SyncBN and no
    Pretrained init_cfg (no download, even from init_weights())."""
    model = to_bn(cfg.model)
    model.backbone.init_cfg = None
    assert 'SyncBN' not in repr(model) and 'Pretrained' not in repr(model)
    return model


def registry(scope):
    import xcit_mm  # noqa: F401 (registers XCiT)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS


def build_model(cfg, model_cfg=None):
    """Builds ``model_cfg`` (default: ``offline_model_cfg(cfg)``) under the
    config's default scope, as the runner does."""
    from mmengine.registry import DefaultScope
    models = registry(cfg.default_scope)
    if model_cfg is None:
        model_cfg = offline_model_cfg(cfg)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return models.build(model_cfg)
