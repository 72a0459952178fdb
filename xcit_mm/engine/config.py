"""Config handling shared by tools/train.py, tools/test.py and tools/infer.py."""
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction  # noqa: F401 (re-exported)

SCOPES = ('mmdet', 'mmseg')


def _suggest(path: str) -> str:
    """' Did you mean ...?' with the closest configs beside ``path``."""
    import difflib
    folder = osp.dirname(path) or '.'
    if not osp.isdir(folder):
        return f' (no folder {folder!r} either)'
    names = [n for n in os.listdir(folder) if n.endswith('.py')]
    close = difflib.get_close_matches(osp.basename(path), names, n=3,
                                      cutoff=0.6)
    if close:
        return ' Did you mean: ' + ', '.join(
            osp.join(folder, n) for n in close) + '?'
    return ''


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Reads a config, merges ``--cfg-options`` and checks its scope.

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: the config's ``default_scope`` is not mmdet or mmseg.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Config file not found: {path!r}.{_suggest(path)}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(
            f'{path}: default_scope must be one of {SCOPES} (mmdet for '
            f'detection, mmseg for segmentation), got {scope!r}.')
    return cfg


def set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]):
    """``--work-dir`` > ``cfg.work_dir`` > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def _check_path(path: str, what: str, config_key: str):
    if path and not osp.exists(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r}. Put the data there, or point '
            f'the config elsewhere with --cfg-options {config_key}=...')


def check_dataset_paths(cfg: Config, split: str):
    """Fails early, naming the path, when a split's data is missing."""
    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        return
    dataset = loader['dataset']
    while 'dataset' in dataset:  # wrappers such as RepeatDataset
        dataset = dataset['dataset']
    root = dataset.get('data_root', '') or ''
    key = f'{split}_dataloader.dataset.data_root'
    _check_path(root, 'data_root', key)
    ann = dataset.get('ann_file')
    if ann:
        _check_path(osp.join(root, ann), 'Annotation file',
                    f'{split}_dataloader.dataset.ann_file')
    prefix = dataset.get('data_prefix') or {}
    for name in ('img', 'img_path', 'seg_map_path'):
        if prefix.get(name):
            _check_path(osp.join(root, prefix[name]), f'{name} folder',
                        f'{split}_dataloader.dataset.data_prefix.{name}')


def use_fp32_on_cpu(cfg: Config, logger=None) -> bool:
    """AMP in mmengine needs a GPU; on a CPU train in fp32 and say so."""
    import torch
    wrapper = cfg.get('optim_wrapper') or {}
    if torch.cuda.is_available() or wrapper.get('type') != 'AmpOptimWrapper':
        return False
    for key in ('loss_scale', 'dtype', 'use_fsdp'):
        wrapper.pop(key, None)
    wrapper['type'] = 'OptimWrapper'
    from mmengine.logging import print_log
    print_log('No GPU: mixed precision (AmpOptimWrapper) is not available; '
              'training in fp32.', logger='current', level=30)
    return True
