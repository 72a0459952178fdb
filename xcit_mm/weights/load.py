"""Loading weights loudly: XCiT weights of any layout into a backbone
(:func:`load_pretrained`), trained checkpoints into a whole model
(:func:`load_trained`), with one key summary (:func:`summarize_keys`)."""
import logging
import os
from collections import Counter
from typing import Iterable, List, Optional

import torch

from .convert import Conversion, convert_backbone_state_dict, \
    unwrap_state_dict
from .io import CheckpointError, decode_legacy_checkpoint, read_checkpoint

# The parts of the trunk that must load from any backbone checkpoint; the
# adapter may be missing (ImageNet weights have none).
_TRUNK = ('patch_embed', 'pos_embed', 'blocks')


def summarize_keys(keys: Iterable[str], depth: int = 1, limit: int = 8) -> str:
    """``'blocks.* (12), cls_token'``: keys grouped by their first ``depth``
    parts, the largest groups first."""
    groups, singles = Counter(), {}
    for k in keys:
        head = '.'.join(k.split('.')[:depth])
        groups[head], singles[head] = groups[head] + 1, k
    parts = [singles[h] if n == 1 else f'{h}.* ({n})'
             for h, n in groups.most_common()]
    if len(parts) > limit:
        parts = parts[:limit] + [f'... {len(parts) - limit} more groups']
    return ', '.join(parts) or 'none'


def _read(checkpoint, map_location):
    """``(name for messages, loaded checkpoint)`` of a path or a dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return str(checkpoint), read_checkpoint(str(checkpoint), map_location)
    return '<dict>', checkpoint


def _fit(model: torch.nn.Module, state_dict: dict):
    """The model's tensors missing from ``state_dict`` (but BN counters),
    its unexpected keys, and ``(key, theirs, ours)`` of other shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict
               and not k.endswith('num_batches_tracked')]
    shapes = [(k, tuple(v.shape), tuple(own[k].shape))
              for k, v in state_dict.items() if k in own and
              hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    return missing, [k for k in state_dict if k not in own], shapes


def check_maths(model: torch.nn.Module, conv: Conversion, name: str):
    """Raises when the checkpoint's framework computes XCiT differently
    from how ``model`` was built (``Conversion.requires``); activations
    compare by type and GELU form."""
    def same(have, want):
        if isinstance(want, dict):
            have, want = [(d.get('type'), d.get('approximate', 'none'))
                          for d in (dict(have or {}), want)]
        return have == want

    wrong = [f'{k}={v!r} (the model has {getattr(model, k, None)!r})'
             for k, v in conv.requires.items()
             if not same(getattr(model, k, None), v)]
    if wrong:
        raise CheckpointError(
            f'{name} holds {conv.layout} weights, which reproduce their '
            'features only with the backbone built with '
            f'{", ".join(wrong)}. Add those arguments to the backbone '
            'config (see the weight sources in the README).')


def load_pretrained(model: torch.nn.Module, checkpoint,
                    prefix: Optional[str] = None,
                    logger: Optional[logging.Logger] = None,
                    map_location='cpu') -> Conversion:
    """Loads XCiT weights of any layout (a path, URL or loaded dict) into
    an ``XCiT`` backbone and logs what loaded, was dropped and is missing.
    Every tensor of the patch embedding, positional encoding and blocks must
    load; only the adapter may stay as initialised (ImageNet weights have
    none). ``prefix``: see :func:`convert_backbone_state_dict`.

    Raises:
        CheckpointError: unreadable, not XCiT, another arch or patch size,
            or from a framework whose maths needs switches the model lacks.
    """
    logger = logger or logging.getLogger(__name__)
    name, checkpoint = _read(checkpoint, map_location)
    conv = convert_backbone_state_dict(checkpoint, prefix=prefix)
    check_maths(model, conv, name)
    missing, unexpected, shapes = _fit(model, conv.state_dict)
    own = model.state_dict()
    trunk = [k for k in own if k.split('.')[0] in _TRUNK
             and not k.endswith('num_batches_tracked')]
    not_loaded = [k for k in trunk if k in missing] + [
        k for k, _, _ in shapes if k in trunk]
    extra = [k for k in unexpected if k.split('.')[0] in _TRUNK]
    if not_loaded or shapes or extra:
        parts = sorted({'.'.join(k.split('.')[:1 + k.startswith('blocks.')])
                        for k in not_loaded},  # blocks.3, patch_embed
                       key=lambda p: (p != 'patch_embed', p != 'pos_embed',
                                      len(p), p))
        detail = '; '.join(f'{k}: checkpoint {c}, model {m}'
                           for k, c, m in shapes[:3])
        raise CheckpointError(
            f'Checkpoint {name} ({conv.layout} layout) does not fit the '
            f'backbone ({model.arch!r}, patch {model.patch_size}, '
            f'{model.depth} blocks): {len(not_loaded)} of its {len(trunk)} '
            f'trunk tensors would stay random (in '
            f'{", ".join(parts[:6]) or "none"}'
            f'{" ..." if len(parts) > 6 else ""})'
            f'{"; shape mismatches: " + detail if detail else ""}'
            f'{"; keys the model lacks: " + summarize_keys(extra) if extra else ""}'
            '. Use a checkpoint of the same arch and patch size.')
    loadable = {k: v for k, v in conv.state_dict.items()
                if k not in unexpected}
    model.load_state_dict(loadable, strict=False)
    logger.info(
        f'XCiT: loaded {len(loadable)} of {len(own)} tensors from {name} '
        f'({conv.layout} layout); dropped from the checkpoint: '
        f'{summarize_keys(conv.dropped)}; missing (kept as initialised): '
        f'{summarize_keys(k for k in own if k not in loadable)}')
    if unexpected:
        logger.warning(
            'XCiT: checkpoint tensors with no place in the model, skipped: '
            f'{summarize_keys(unexpected)}')
    return conv


def fit_problems(model: torch.nn.Module, state_dict: dict) -> List[str]:
    """How ``state_dict`` does not fit ``model``, one line per kind: its
    missing, unexpected and differently shaped tensors."""
    missing, unexpected, shapes = _fit(model, state_dict)
    problems = [f'{len(keys)} tensors of the {a} are not in the {b}: '
                f'{summarize_keys(keys, 2, 6)} (e.g. {keys[0]})'
                for keys, a, b in ((missing, 'model', 'checkpoint'),
                                   (unexpected, 'checkpoint', 'model'))
                if keys]
    if shapes:
        shown = '; '.join(f'{k}: {c} in the checkpoint, {m} in the model'
                          for k, c, m in shapes[:3])
        problems.append(
            f'{len(shapes)} tensors have another shape '
            f'({summarize_keys([k for k, _, _ in shapes], 2, 6)}): {shown}'
            f'{f"; ... {len(shapes) - 3} more" if len(shapes) > 3 else ""}')
    return problems


def load_trained(model: torch.nn.Module, checkpoint, strict: bool = True,
                 map_location='cpu', target: str = 'the model') -> List[str]:
    """Loads a trained detector / segmentor checkpoint (a path, URL or
    loaded dict, e.g. of mmengine's runner or ``xcit2mm.py --whole-model``)
    into ``model`` (DDP and TTA wrappers are looked through), and its
    ``meta['dataset_meta']`` into ``model.dataset_meta`` where both exist.
    Returns what does not fit (:func:`fit_problems`), loading the rest with
    ``strict=False``; raises :class:`CheckpointError` naming the file (and
    ``target``, e.g. ``'the model of CONFIG'``) when it is unreadable or,
    with ``strict``, does not fit."""
    name, checkpoint = _read(checkpoint, map_location)
    while hasattr(model, 'module'):
        model = model.module
    try:
        state_dict = unwrap_state_dict(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f'{name} is not a model checkpoint: {err}') \
            from None
    problems = fit_problems(model, state_dict)
    if problems and strict:
        raise CheckpointError(
            f'{name} does not fit {target}:' + ''.join(
                f'\n- {p}' for p in problems) + '\nUse a checkpoint trained '
            'with this config (convert the authors\' models with '
            'tools/model_converters/xcit2mm.py --whole-model).')
    shapes = {k for k, _, _ in _fit(model, state_dict)[2]}
    model.load_state_dict({k: v for k, v in state_dict.items()
                           if k not in shapes}, strict=False)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
    if dataset_meta and hasattr(model, 'dataset_meta'):
        model.dataset_meta = decode_legacy_checkpoint(dict(dataset_meta))
    return problems
