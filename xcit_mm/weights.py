"""Reading XCiT checkpoints safely and converting their key layouts.

Layouts understood (told apart by their keys):

- ``authors``: the authors' ImageNet checkpoints (``pos_embeder.*``,
  ``cls_attn_blocks.*`` with a fused qkv), wrapped in ``{'model': ...}``.
- ``timm``: timm's XCiT (``pos_embed.*``, ``cls_attn_blocks.*.attn.q``),
  ``.pth`` or ``.safetensors``.
- ``mmpretrain``: mmpretrain's XCiT (``backbone.xca_layers.*``,
  ``backbone.ca_layers.*``, ``ffn.layers.*``, ``ConvModule`` names).
- ``authors-dense``: the authors' COCO / ADE20k models (mmdet 2.x /
  mmseg 0.x): ``backbone.*`` in the ImageNet layout plus
  ``backbone.fpn1..fpn4`` and the neck and heads.
- ``xcit_mm``: this package's own (``adapter.levels.*``), bare or under
  ``backbone.`` in a detector or segmentor checkpoint.

:func:`convert_backbone_state_dict` and :func:`convert_model_state_dict` are
pure functions; ``XCiT.init_weights`` and ``tools/model_converters`` both
call them.
"""
import argparse
import logging
import os
import os.path as osp
import pickle
import re
from collections import Counter, OrderedDict
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple
from urllib.parse import urlparse

import torch

LAYOUTS = ('authors', 'timm', 'mmpretrain', 'authors-dense', 'xcit_mm')

# Parts of a classification model that a dense backbone does not have.
_CLASSIFIER_ONLY = re.compile(
    r'^(cls_token|cls_attn_blocks\.|ca_layers\.|norm\.|head\.|fc_norm\.)')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# --------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------
def _numpy_globals() -> list:
    import numpy as np
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
    items = [argparse.Namespace]
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        items += [
            HistoryBuffer,
            (_history_buffer_getattr, 'builtins.getattr'),
            (_history_buffer_getattr, '__builtin__.getattr'),
        ]
    except ImportError:  # pragma: no cover - mmengine is a dependency
        pass
    return items + _numpy_globals()


def register_safe_globals():
    """Add :func:`safe_globals` to torch's weights-only allow-list.

    mmengine 0.10 calls ``torch.load`` without ``weights_only``, which torch
    >= 2.6 treats as ``weights_only=True``; so that the runner can resume
    from (and ``tools/test.py`` can load) the checkpoints it saved, the few
    globals those hold are allowed, and nothing else. The check itself stays
    on.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(safe_globals())


def _local_path(checkpoint: str) -> str:
    """Resolves a URL to a cached download; checks that a path exists."""
    scheme = urlparse(checkpoint).scheme
    if scheme in ('http', 'https'):
        cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(cache_dir, exist_ok=True)
        filename = osp.basename(urlparse(checkpoint).path)
        path = osp.join(cache_dir, filename)
        if not osp.isfile(path):
            # Writes to a temporary file and moves it in place when complete.
            torch.hub.download_url_to_file(checkpoint, path, progress=True)
        return path
    if scheme and len(scheme) > 1:  # 'C:' on Windows is not a scheme
        raise CheckpointError(
            f'Cannot read checkpoint {checkpoint!r}: only local paths and '
            'http(s) URLs are supported. Download the file and pass its '
            'path.')
    if not osp.isfile(checkpoint):
        raise CheckpointError(
            f'Checkpoint file not found: {checkpoint!r}. Check the path, or '
            'pass an http(s) URL.')
    return checkpoint


def load_checkpoint_file(checkpoint: str, map_location='cpu') -> dict:
    """Reads a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` checkpoint.

    Pickled files are read with ``weights_only=True`` and the allow-list of
    :func:`safe_globals`; a file that pickles any other global is refused.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or pickles a
            global outside the allow-list (the message names it).
    """
    path = _local_path(str(checkpoint))
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        return load_file(path, device=device)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r'GLOBAL ([\w.]+)', str(err)) or \
            re.search(r'Unsupported global: ([\w.]+)', str(err))
        if found:
            raise CheckpointError(
                f'Refusing to load {checkpoint!r}: it pickles the global '
                f'{found.group(1)!r}, which is not on the allow-list of '
                'XCiT checkpoints (argparse.Namespace, mmengine history '
                'buffers, numpy arrays). If you trust the file, re-save its '
                "tensors alone: torch.save({'state_dict': sd}, path).") \
                from None
        raise CheckpointError(
            f'Cannot read {checkpoint!r} as a checkpoint: {err}') from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(
            f'Cannot read {checkpoint!r} as a torch checkpoint '
            f'(truncated or not a checkpoint?): {err}') from None


def save_checkpoint_atomic(obj: dict, path: str):
    """``torch.save`` to a temporary file, then an atomic rename."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------
def unwrap_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (``state_dict``, ``model``,
    ``module`` wrappers and a ``module.`` prefix removed)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'Expected a dict of tensors, got {type(checkpoint).__name__}.')
    for key in ('state_dict', 'model', 'module'):
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and inner and not torch.is_tensor(inner):
            checkpoint = inner
            break
    tensors = OrderedDict(
        (k, v) for k, v in checkpoint.items() if torch.is_tensor(v))
    if not tensors:
        raise CheckpointError(
            'The checkpoint holds no tensors (keys: '
            f'{sorted(checkpoint)[:10]}).')
    if all(k.startswith('module.') for k in tensors):
        tensors = OrderedDict((k[len('module.'):], v)
                              for k, v in tensors.items())
    return tensors


def detect_layout(state_dict: Dict[str, torch.Tensor]) -> str:
    """Names the layout of a (bare or ``backbone.``-prefixed) state dict."""
    keys = list(state_dict)

    def has(pattern):
        return any(re.search(pattern, k) for k in keys)

    if has(r'(^|\.)xca_layers\.'):
        return 'mmpretrain'
    if has(r'(^|\.)adapter\.levels\.'):
        return 'xcit_mm'
    if has(r'^backbone\.(fpn[1-4]|blocks|pos_embeder)\.'):
        return 'authors-dense'
    if has(r'(^|\.)pos_embeder\.') or has(r'cls_attn_blocks\.\d+\.attn\.qkv'):
        return 'authors'
    if has(r'(^|\.)blocks\.\d+\.local_mp\.'):
        return 'timm'
    raise CheckpointError(
        'Not an XCiT checkpoint: none of its keys look like the authors\', '
        "timm's, mmpretrain's or xcit_mm's XCiT (e.g. "
        f'"blocks.0.attn.qkv.weight"); first keys: {keys[:5]}.')


_MMPRETRAIN_RULES: List[Tuple[re.Pattern, str]] = [
    (re.compile(r'^xca_layers\.'), 'blocks.'),
    (re.compile(r'^pos_embed\.token_projection\.conv\.'),
     'pos_embed.token_projection.'),
    (re.compile(r'\.local_mp\.conv1\.conv\.'), '.local_mp.conv1.'),
    (re.compile(r'\.local_mp\.conv1\.(bn|gn|norm|ln)\.'), '.local_mp.bn.'),
    (re.compile(r'\.local_mp\.conv2\.conv\.'), '.local_mp.conv2.'),
    (re.compile(r'\.ffn\.layers\.0\.0\.'), '.mlp.fc1.'),
    (re.compile(r'\.ffn\.layers\.1\.'), '.mlp.fc2.'),
]
_MMPRETRAIN_PATCH = re.compile(
    r'^patch_embed\.proj\.(\d+)\.(conv|bn|gn|norm)\.(.+)$')


def _rename_backbone_key(key: str, layout: str) -> str:
    if layout == 'mmpretrain':
        m = _MMPRETRAIN_PATCH.match(key)
        if m:
            index, part, rest = m.groups()
            return (f'patch_embed.proj.{2 * int(index)}.'
                    f'{0 if part == "conv" else 1}.{rest}')
        for pattern, repl in _MMPRETRAIN_RULES:
            key = pattern.sub(repl, key)
        return key
    key = re.sub(r'^pos_embeder\.', 'pos_embed.', key)
    m = re.match(r'^fpn([1-4])\.(.+)$', key)
    if m:
        level, rest = int(m.group(1)) - 1, m.group(2)
        if re.match(r'^(weight|bias)$', rest):  # a bare deconv
            rest = '0.' + rest
        key = f'adapter.levels.{level}.{rest}'
    return key


class Conversion(NamedTuple):
    """What a conversion produced."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    layout: str
    dropped: List[str]


def convert_backbone_state_dict(checkpoint,
                                prefix: Optional[str] = None) -> Conversion:
    """Converts any supported XCiT checkpoint to this package's backbone keys.

    Args:
        checkpoint (dict): A loaded checkpoint or state dict, in any layout of
            :data:`LAYOUTS`.
        prefix (str, optional): Take only the keys under this prefix (e.g.
            ``'backbone.'``). By default, a checkpoint of a whole detector,
            segmentor or classifier contributes its ``backbone.`` keys.

    Returns:
        Conversion: the ``XCiT`` state dict, the layout found and the keys
        that were dropped (class attention, cls token, final norm, head,
        and for whole models everything outside the backbone).
    """
    state_dict = unwrap_state_dict(checkpoint)
    layout = detect_layout(state_dict)
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    dropped: List[str] = []
    if prefix:
        selected = OrderedDict()
        for k, v in state_dict.items():
            if k.startswith(prefix):
                selected[k[len(prefix):]] = v
            else:
                dropped.append(k)
        if not selected:
            raise CheckpointError(
                f'No key of the checkpoint starts with prefix {prefix!r}.')
        state_dict = selected
    out = OrderedDict()
    for k, v in state_dict.items():
        if _CLASSIFIER_ONLY.match(k):
            dropped.append((prefix or '') + k)
            continue
        out[_rename_backbone_key(k, layout)] = v
    return Conversion(out, layout, dropped)


def convert_model_state_dict(checkpoint) -> Conversion:
    """Converts a whole detector / segmentor checkpoint (the authors' mmdet
    2.x / mmseg 0.x releases, or this package's) to this package's keys.

    The backbone (``backbone.*``) is renamed as in
    :func:`convert_backbone_state_dict`; neck and head keys, whose names
    mmdet 3 and mmseg 1 kept, pass unchanged.
    """
    state_dict = unwrap_state_dict(checkpoint)
    if not any(k.startswith('backbone.') for k in state_dict):
        raise CheckpointError(
            'Not a whole-model checkpoint: no "backbone." keys. For an '
            'ImageNet checkpoint, load it with init_cfg=dict('
            "type='Pretrained', checkpoint=...) in the backbone instead.")
    backbone = convert_backbone_state_dict(state_dict, prefix='backbone.')
    out = OrderedDict(
        ('backbone.' + k, v) for k, v in backbone.state_dict.items())
    for k, v in state_dict.items():
        if not k.startswith('backbone.'):
            out[k] = v
    dropped = [k for k in backbone.dropped if k.startswith('backbone.')]
    return Conversion(out, backbone.layout, dropped)


# --------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------
def summarize_keys(keys: Iterable[str], limit: int = 8) -> str:
    """``'blocks.* (12), cls_token'``: keys grouped by their first part."""
    groups = Counter()
    singles = {}
    for k in keys:
        head = k.split('.')[0] if '.' in k else k
        groups[head] += 1
        singles[head] = k
    parts = [
        singles[h] if n == 1 else f'{h}.* ({n})'
        for h, n in groups.most_common()
    ]
    if len(parts) > limit:
        parts = parts[:limit] + [f'... {len(parts) - limit} more groups']
    return ', '.join(parts) if parts else 'none'


def load_pretrained(model: torch.nn.Module,
                    checkpoint,
                    prefix: Optional[str] = None,
                    logger: Optional[logging.Logger] = None,
                    min_fraction: float = 0.5) -> Conversion:
    """Loads XCiT weights into ``model`` (an ``XCiT`` backbone).

    Args:
        model: The backbone.
        checkpoint (str | dict): A path, an http(s) URL, or a loaded
            checkpoint.
        prefix (str, optional): See :func:`convert_backbone_state_dict`.
        logger: Where to report. Defaults to the module logger.
        min_fraction (float): The fraction of the backbone's trunk tensors
            (all but the adapter) that must load; below it the checkpoint is
            refused instead of leaving random weights.

    Raises:
        CheckpointError: unreadable, not XCiT, or matching too little.
    """
    logger = logger or logging.getLogger(__name__)
    name = checkpoint if isinstance(checkpoint, str) else '<dict>'
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint_file(str(checkpoint))
    conv = convert_backbone_state_dict(checkpoint, prefix=prefix)
    own = model.state_dict()
    loadable, mismatched, unexpected = OrderedDict(), [], []
    for k, v in conv.state_dict.items():
        if k not in own:
            unexpected.append(k)
        elif own[k].shape != v.shape:
            mismatched.append(
                f'{k}: checkpoint {tuple(v.shape)}, model '
                f'{tuple(own[k].shape)}')
        else:
            loadable[k] = v
    trunk = [k for k in own if not k.startswith('adapter.')]
    loaded_trunk = sum(k in loadable for k in trunk)
    if loaded_trunk < min_fraction * len(trunk):
        detail = '; '.join(mismatched[:3]) or \
            f'unexpected keys: {summarize_keys(unexpected)}'
        raise CheckpointError(
            f'Checkpoint {name} ({conv.layout} layout) matches only '
            f'{loaded_trunk} of the {len(trunk)} backbone tensors; is it the '
            f'same arch and patch size as the model ({model.arch!r}, patch '
            f'{model.patch_size})? {detail}')
    model.load_state_dict(loadable, strict=False)
    missing = [k for k in own if k not in loadable]
    logger.info(
        f'XCiT: loaded {len(loadable)} of {len(own)} tensors from {name} '
        f'({conv.layout} layout); dropped from the checkpoint: '
        f'{summarize_keys(conv.dropped)}; missing (kept as initialised): '
        f'{summarize_keys(missing)}')
    if mismatched or unexpected:
        logger.warning(
            'XCiT: skipped checkpoint tensors that do not fit the model: '
            f'{"; ".join(mismatched[:5])} '
            f'unexpected: {summarize_keys(unexpected)}')
    return conv
