"""Reading checkpoints safely, in every format XCiT weights come in: PyTorch
(torch's weights-only loader with the allow-list of :func:`safe_globals`),
``.safetensors``, PaddlePaddle ``.pdparams`` (an unpickler of numpy arrays
and plain containers only) and MindSpore ``.ckpt`` (:mod:`.mindspore_ckpt`,
no MindSpore needed); local, http(s) or any scheme of mmengine's file
backends. Any failure raises :class:`CheckpointError` naming the file."""
import argparse
import os.path as osp
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch

from ..fileio import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _numpy_globals() -> list:
    """numpy arrays, scalars and their dtype classes, as pickled."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = getattr(np, 'dtypes', None)
    return [np.ndarray, np.dtype, _reconstruct, scalar] + [
        getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]


def _history_buffer_getattr(obj, name):
    """``getattr`` while unpickling, for the four statistics methods that a
    ``HistoryBuffer`` pickles (``getattr(HistoryBuffer, 'mean')``) only."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr (on {obj!r}, {name!r})')


def safe_globals() -> list:
    """The globals that weights-only unpickling may build beyond torch's:
    ``argparse.Namespace`` (the authors' ImageNet checkpoints), and the
    ``HistoryBuffer`` and numpy values of a runner's ``message_hub``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return [argparse.Namespace, HistoryBuffer,
            (_history_buffer_getattr, 'builtins.getattr'),
            (_history_buffer_getattr, '__builtin__.getattr')
            ] + _numpy_globals()


def register_safe_globals():
    """Adds :func:`safe_globals` to torch's weights-only allow-list, so that
    mmengine (whose ``torch.load`` is weights-only under torch >= 2.6) can
    resume from and test the checkpoints it saved; the check stays on."""
    torch.serialization.add_safe_globals(safe_globals())


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; refuses any other global,
    so a crafted ``.pdparams`` cannot run code."""

    def find_class(self, module, name):
        allowed = {g.__name__: g for g in _numpy_globals()} \
            if module.split('.')[0] == 'numpy' else dict(
                OrderedDict=OrderedDict, tuple=tuple, list=list, dict=dict) \
            if module in ('collections', 'builtins') else {}
        if name not in allowed:
            raise pickle.UnpicklingError(
                f'Unsupported global: {module}.{name}')
        return allowed[name]


def _paddle_to_torch(obj):
    """numpy arrays, and the ``(name, array)`` pairs that Paddle pickles for
    its tensors, -> tensors, through nested containers."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) \
            and isinstance(obj[1], np.ndarray):
        obj = obj[1]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return OrderedDict((k, _paddle_to_torch(v)) for k, v in obj.items()
                           if k != 'StructuredToParameterName@@')
    if isinstance(obj, (list, tuple)):
        return type(obj)(_paddle_to_torch(v) for v in obj)
    return obj


def _read(path: str, fmt: str, map_location):
    if fmt == 'safetensors':
        from safetensors.torch import load_file
        return load_file(path, device=map_location
                         if isinstance(map_location, str) else 'cpu')
    if fmt == 'MindSpore .ckpt':
        from .mindspore_ckpt import read_mindspore_checkpoint
        with open(path, 'rb') as f:
            return read_mindspore_checkpoint(f.read())
    if fmt == 'PaddlePaddle .pdparams':
        with open(path, 'rb') as f:
            obj = _NumpyOnlyUnpickler(f).load()
        if not isinstance(obj, dict):
            raise CheckpointError(f'it holds a {type(obj).__name__}, not a '
                                  'dict of arrays')
        return _paddle_to_torch(obj)
    # not torch.serialization.safe_globals(): leaving it removes the globals
    # from the process-wide allow-list that the runner's resume relies on
    register_safe_globals()
    return torch.load(path, map_location=map_location, weights_only=True)


def _format(path: str, name: str) -> str:
    """The format of a local file, from its content where it tells, else
    from the suffix of its name."""
    lower = name.lower()
    if lower.endswith('.safetensors'):
        return 'safetensors'
    if zipfile.is_zipfile(path):
        return 'PyTorch'  # torch >= 1.6 saves zip archives (also as .ckpt)
    if lower.endswith(('.pdparams', '.pdopt', '.pdmodel.params')):
        return 'PaddlePaddle .pdparams'
    with open(path, 'rb') as f:  # a legacy torch pickle starts with 0x80
        legacy = f.read(1) == b'\x80'
    return 'MindSpore .ckpt' if lower.endswith('.ckpt') and not legacy \
        else 'PyTorch'


def read_local_checkpoint(path: str, map_location='cpu',
                          name: Optional[str] = None) -> dict:
    """Reads a local checkpoint file of any supported format."""
    name = name or path
    if not osp.isfile(path):
        raise CheckpointError(
            f'Checkpoint file not found: {name!r}. Check the path, or pass '
            'a URL.')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'Cannot read {name!r}: the file is empty.')
    fmt = _format(path, name)
    try:
        return _read(path, fmt, map_location)
    except Exception as err:  # noqa: BLE001 - every failure, named
        found = re.search(r'(?:GLOBAL|global:)(?: GLOBAL)? ([\w.]+)',
                          str(err))
        if isinstance(err, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f'Refusing to load {name!r}: it pickles the global '
                f'{found[1]!r}, which is not on the allow-list of XCiT '
                'checkpoints (numpy arrays, plain containers; in PyTorch '
                'files also argparse.Namespace and mmengine history buffers).'
                ' If you trust the file, re-save its tensors alone.') from None
        raise CheckpointError(
            f'Cannot read {name!r}: not a {fmt} checkpoint, or corrupt or '
            f'truncated ({type(err).__name__}: {err}).') from None


def read_checkpoint(source, map_location='cpu',
                    backend_args: Optional[dict] = None) -> dict:
    """Reads a checkpoint from a path, an http(s) URL (cached in torch's
    hub directory) or any scheme of mmengine's file backends (``s3://``,
    ...), in any supported format.

    Raises:
        CheckpointError: the file is missing, empty, corrupt, not a
            checkpoint, or pickles a global outside the allow-list.
    """
    source = str(source)
    if not re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', source):
        return read_local_checkpoint(source, map_location)
    from mmengine.fileio import get_local_path
    try:
        if source.startswith(('http://', 'https://')) and not backend_args:
            cached = osp.join(torch.hub.get_dir(), 'checkpoints',
                              osp.basename(source.split('?')[0]))
            if not osp.isfile(cached):  # never a partial file in the cache
                with get_local_path(source) as tmp, open(tmp, 'rb') as src:
                    atomic_write(cached, lambda f: shutil.copyfileobj(src, f))
            return read_local_checkpoint(cached, map_location, name=source)
        with get_local_path(source, backend_args=backend_args) as path:
            # the suffix decides the format of a temporary copy
            return read_local_checkpoint(str(path), map_location, source)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a download or backend failure
        raise CheckpointError(
            f'Cannot fetch {source!r}: {type(err).__name__}: {err}. Download '
            'it yourself and pass the local path.') from None


def decode_legacy_checkpoint(obj):
    """Restores, in place, the history buffers and numpy arrays that earlier
    versions of this package stored as marked dicts of tensors; returns
    ``obj`` (unchanged where nothing is marked)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for key, value in list(items):
        kind = value.get('__xcit_mm_encoded__') if isinstance(value,
                                                             dict) else None
        if kind == 'HistoryBuffer':
            from mmengine.logging import HistoryBuffer
            obj[key] = HistoryBuffer(value['log_history'].numpy(),
                                     value['count_history'].numpy(),
                                     value['max_length'])
        elif kind == 'ndarray':
            obj[key] = value['data'].numpy()
        else:
            decode_legacy_checkpoint(value)
    return obj
