"""Reading checkpoints safely, in every format that XCiT weights come in.

- PyTorch (``.pth``, ``.pt``, ``.bin``, a zip or legacy pickle): torch's
  weights-only loader with the allow-list of :func:`safe_globals`;
- ``.safetensors``;
- PaddlePaddle ``.pdparams`` (a pickle of numpy arrays): an unpickler that
  builds numpy arrays, plain containers and nothing else;
- MindSpore ``.ckpt`` (a protobuf of named tensors): parsed with the
  ``protobuf`` library from the message layout, no MindSpore needed.

Remote files (http(s) and every scheme of mmengine's file backends) are
fetched through :func:`mmengine.fileio.get_local_path` and then read like a
local file, with the same checks. Any failure raises :class:`CheckpointError`
naming the file and the problem.
"""
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

PDPARAMS_SUFFIXES = ('.pdparams', '.pdopt', '.pdmodel.params')
MINDSPORE_SUFFIXES = ('.ckpt', )


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# --------------------------------------------------------------------------
# The allow-list of torch's weights-only loader
# --------------------------------------------------------------------------
def _numpy_globals() -> list:
    items = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    items += [_reconstruct, scalar]
    # Concrete dtype classes (numpy.dtypes.Float64DType, ...) that appear
    # when numpy arrays or scalars are pickled.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        items += [
            getattr(dtypes, name) for name in dir(dtypes)
            if name.endswith('DType')
        ]
    return items


_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    """Stands in for ``getattr`` while unpickling: a ``HistoryBuffer``
    pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
    this allows exactly those look-ups and nothing else."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr (on {obj!r}, '
        f'{name!r})')


def safe_globals() -> list:
    """The globals that weights-only unpickling may build, beyond torch's.

    - ``argparse.Namespace``: the authors' ImageNet checkpoints store their
      training arguments;
    - mmengine's ``HistoryBuffer`` (with the look-up of its four statistics
      methods, and no other ``getattr``) and numpy arrays, scalars and
      dtypes: in the ``message_hub`` of checkpoints that mmengine's runner
      saves.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    return [
        argparse.Namespace,
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        (_history_buffer_getattr, '__builtin__.getattr'),
    ] + _numpy_globals()


def register_safe_globals():
    """Add :func:`safe_globals` to torch's weights-only allow-list.

    mmengine 0.10 calls ``torch.load`` without ``weights_only``, which torch
    >= 2.6 treats as ``weights_only=True``; so that the runner can resume
    from (and ``tools/test.py`` can load) the checkpoints it saved, the few
    globals those hold are allowed, and nothing else. The check itself stays
    on.
    """
    torch.serialization.add_safe_globals(safe_globals())


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------
def _read_torch(path: str, name: str, map_location) -> dict:
    # not torch.serialization.safe_globals(): leaving it removes the globals
    # from the process-wide allow-list that the runner's resume relies on
    register_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r'GLOBAL ([\w.]+)', str(err)) or \
            re.search(r'Unsupported global: ([\w.]+)', str(err))
        if found:
            raise CheckpointError(
                f'Refusing to load {name!r}: it pickles the global '
                f'{found.group(1)!r}, which is not on the allow-list of '
                'XCiT checkpoints (argparse.Namespace, mmengine history '
                'buffers, numpy arrays). If you trust the file, re-save its '
                "tensors alone: torch.save({'state_dict': sd}, path).") \
                from None
        raise CheckpointError(
            f'Cannot read {name!r}: not a PyTorch checkpoint, or corrupt '
            f'({err}).') from None
    except Exception as err:  # a truncated zip, a text file, ...
        raise CheckpointError(
            f'Cannot read {name!r}: not a PyTorch checkpoint, or truncated '
            f'({type(err).__name__}: {err}).') from None


def _read_safetensors(path: str, name: str, map_location) -> dict:
    from safetensors.torch import load_file
    device = map_location if isinstance(map_location, str) else 'cpu'
    try:
        return load_file(path, device=device)
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(
            f'Cannot read {name!r} as a .safetensors file: corrupt header '
            f'or truncated data ({type(err).__name__}: {err}).') from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; refuses any other global,
    so a crafted ``.pdparams`` cannot run code."""

    _ALLOWED = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'),
        ('numpy._core.multiarray', 'scalar'),
        ('collections', 'OrderedDict'),
        ('builtins', 'tuple'), ('builtins', 'list'), ('builtins', 'dict'),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            if module.startswith('numpy') and module.endswith('multiarray'):
                try:
                    from numpy._core import multiarray
                except ImportError:  # pragma: no cover - numpy 1.x
                    from numpy.core import multiarray
                return getattr(multiarray, name)
            return super().find_class(module, name)
        if module == 'numpy.dtypes' and name.endswith('DType'):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'Unsupported global: {module}.{name}')


def _paddle_to_torch(obj):
    """numpy arrays -> tensors, and the ``(name, array)`` pairs that Paddle
    pickles for its tensors -> tensors, through nested containers."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return OrderedDict((k, _paddle_to_torch(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and len(obj) == 2 and \
            isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return _paddle_to_torch(obj[1])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_paddle_to_torch(v) for v in obj)
    return obj


def _read_pdparams(path: str, name: str) -> dict:
    try:
        with open(path, 'rb') as f:
            obj = _NumpyOnlyUnpickler(f).load()
    except pickle.UnpicklingError as err:
        found = re.search(r'Unsupported global: ([\w.]+)', str(err))
        if found:
            raise CheckpointError(
                f'Refusing to load {name!r}: it pickles the global '
                f'{found.group(1)!r}; a PaddlePaddle .pdparams holds numpy '
                'arrays only. Re-save the state dict with paddle.save if '
                'you trust the file.') from None
        raise CheckpointError(
            f'Cannot read {name!r} as a PaddlePaddle .pdparams (a pickle): '
            f'{err}.') from None
    except Exception as err:
        raise CheckpointError(
            f'Cannot read {name!r} as a PaddlePaddle .pdparams: corrupt or '
            f'truncated ({type(err).__name__}: {err}).') from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f'{name!r} is not a PaddlePaddle state dict: it holds a '
            f'{type(obj).__name__}, not a dict of arrays.')
    obj = {k: v for k, v in obj.items() if k != 'StructuredToParameterName@@'}
    return _paddle_to_torch(obj)


def _read_mindspore(path: str, name: str) -> dict:
    from .mindspore_ckpt import read_mindspore_checkpoint
    try:
        with open(path, 'rb') as f:
            data = f.read()
        return read_mindspore_checkpoint(data)
    except CheckpointError as err:
        raise CheckpointError(f'Cannot read {name!r}: {err}') from None
    except Exception as err:
        raise CheckpointError(
            f'Cannot read {name!r} as a MindSpore .ckpt: corrupt or '
            f'truncated ({type(err).__name__}: {err}).') from None


def _sniff(path: str, name: str) -> str:
    """The format of a local file, from its content where it tells, else
    from the suffix of its name."""
    lower = name.lower()
    if lower.endswith('.safetensors'):
        return 'safetensors'
    if zipfile.is_zipfile(path):
        return 'torch'  # torch >= 1.6 saves zip archives (also as .ckpt)
    if lower.endswith(PDPARAMS_SUFFIXES):
        return 'pdparams'
    if lower.endswith(MINDSPORE_SUFFIXES):
        with open(path, 'rb') as f:
            head = f.read(2)
        # A legacy torch pickle starts with the PROTO opcode (0x80).
        return 'torch' if head[:1] == b'\x80' else 'mindspore'
    return 'torch'


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
    fmt = _sniff(path, name)
    if fmt == 'safetensors':
        return _read_safetensors(path, name, map_location)
    if fmt == 'pdparams':
        return _read_pdparams(path, name)
    if fmt == 'mindspore':
        return _read_mindspore(path, name)
    return _read_torch(path, name, map_location)


def _is_remote(source: str) -> bool:
    scheme = re.match(r'^([a-zA-Z][a-zA-Z0-9+.-]*)://', source)
    return scheme is not None


def _cached_download(url: str) -> str:
    """An http(s) file in torch's hub cache, fetched once through mmengine's
    file backend; the cache never holds a partial file."""
    from mmengine.fileio import get_local_path
    cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    filename = osp.basename(url.split('?')[0]) or 'checkpoint'
    cached = osp.join(cache_dir, filename)
    if not osp.isfile(cached):
        from ..fileio import atomic_write
        with get_local_path(url) as tmp, open(tmp, 'rb') as src:
            atomic_write(cached, lambda dst: shutil.copyfileobj(src, dst))
    return cached


def read_checkpoint(source, map_location='cpu',
                    backend_args: Optional[dict] = None) -> dict:
    """Reads a checkpoint from a path, an http(s) URL or any scheme of
    mmengine's file backends (``s3://``, ...), in any supported format.

    Raises:
        CheckpointError: the file is missing, empty, corrupt, not a
            checkpoint, or pickles a global outside the allow-list (the
            message names the file and the problem).
    """
    source = str(source)
    if not _is_remote(source):
        return read_local_checkpoint(source, map_location)
    if source.startswith(('http://', 'https://')) and not backend_args:
        try:
            path = _cached_download(source)
        except Exception as err:
            raise CheckpointError(
                f'Cannot download {source!r}: {type(err).__name__}: {err}. '
                'Download it yourself and pass the local path.') from None
        return read_local_checkpoint(path, map_location, name=source)
    from mmengine.fileio import get_local_path
    try:
        with get_local_path(source, backend_args=backend_args) as path:
            # the suffix decides the format of a temporary copy
            return read_local_checkpoint(str(path), map_location,
                                         name=source)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f'Cannot fetch {source!r} with mmengine\'s file backends: '
            f'{type(err).__name__}: {err}.') from None


_LEGACY_MARK = '__xcit_mm_encoded__'


def decode_legacy_checkpoint(obj):
    """Restores, in place, the history buffers and numpy arrays that earlier
    versions of this package stored as marked dicts of tensors (a no-op for
    other checkpoints); returns ``obj``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for key, value in list(items):
        kind = value.get(_LEGACY_MARK) if isinstance(value, dict) else None
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
