"""Helpers for the config tests."""
import copy
import glob
import os.path as osp

from mmengine.config import Config

from tests.conftest import REPO_ROOT


def config_paths(folder: str):
    return sorted(glob.glob(osp.join(REPO_ROOT, 'configs', folder, '*.py')))


def to_bn(cfg):
    """A copy of ``cfg`` with every SyncBN replaced by BN (tests only: no
    process group on the test machine)."""
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg, Config):
        cfg = Config(cfg.to_dict())
        target = cfg._cfg_dict
    else:
        target = cfg

    def visit(node):
        if isinstance(node, dict):
            if node.get('type') == 'SyncBN':
                node['type'] = 'BN'
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(target)
    return cfg


def load(path: str) -> Config:
    return Config.fromfile(path)
