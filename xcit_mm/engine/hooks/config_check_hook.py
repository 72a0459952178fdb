"""XCiTConfigCheckHook and :func:`check_model_config`: a built model against
its data (``num_classes``) and against itself (channels from an XCiT
backbone through the neck into the heads), by the parts' attributes."""
import re
from typing import List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

def _ints(value) -> Optional[List[int]]:
    """An int or ints as a list, else ``None``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return values if ok else None


def _consumers(key: str, module, top: bool = True):
    """``(key, part)`` of the parts that read the neck's (or backbone's)
    maps: ``module``, or where it has no ``in_channels`` of its own (an RoI
    head) its children; a ``ModuleList`` (cascade) stage by stage."""
    if isinstance(module, nn.ModuleList):
        for i, sub in enumerate(module):
            yield from _consumers(f'{key}[{i}]', sub, top)
    elif top and not hasattr(module, 'in_channels'):
        for name, sub in module.named_children():
            if isinstance(sub, nn.ModuleList) or not type(
                    sub).__module__.startswith('torch.nn'):
                yield from _consumers(f'{key}.{name}', sub, False)
    else:
        yield key, module


def _channel_problem(key: str, part, feats: List[int], text: str):
    """``part``'s ``in_channels`` (at its ``in_index``, after its
    ``input_transform``) or, without them, its ``out_channels`` (an RoI
    extractor keeps the width) against maps of ``feats`` channels."""
    given = getattr(part, 'in_channels', None)
    attr, expected, index = 'in_channels', feats, ''
    if given is None:
        attr, given, expected = 'out_channels', getattr(
            part, 'out_channels', None), feats[0]
    elif hasattr(part, 'in_index'):
        indices = _ints(part.in_index)
        index = f' (in_index={part.in_index})'
        if indices is None:
            return None
        if any(not -len(feats) <= i < len(feats) for i in indices):
            return (f'{key}.in_index={part.in_index} but {text} only '
                    f'{len(feats)} maps: fix {key}.in_index.')
        expected = [feats[i] for i in indices]
        transform = getattr(part, 'input_transform', None)
        if transform == 'resize_concat':
            expected = sum(expected)
        elif transform != 'multiple_select':
            expected = expected[0]
    elif not isinstance(given, (list, tuple)):
        expected = feats[0]
    if _ints(given) is None or given == expected or (
            isinstance(given, (list, tuple)) and list(given) == expected):
        return None
    return (f'{key}.{attr}={list(given) if isinstance(given, tuple) else given}'
            f'{index} but {text} {feats}: set {key}.{attr}={expected}.')


def check_model_config(model, classes: Optional[Sequence[str]] = None,
                       source: str = 'the dataset') -> None:
    """Checks a built mmdet / mmseg model (DDP-wrapped or not) by its parts'
    attributes: every ``num_classes`` against ``len(classes)`` (one class is
    class-agnostic, e.g. mmdet's RPN), and behind an XCiT backbone the
    channels of the neck and of each part that reads its maps. Raises a
    ``ValueError`` listing every mismatch, both sides and the key to set."""
    from ...models import XCiT
    model = model.module if is_model_wrapper(model) else model
    problems = []
    if isinstance(classes, str):
        problems.append(
            f"metainfo['classes'] of {source} is the string {classes!r}, not "
            f'a tuple of class names: write ({classes!r},) for one class.')
    elif classes is not None:
        shown = ', '.join(map(repr, list(classes)[:5])) + (
            ', ...' if len(classes) > 5 else '')
        for name, part in model.named_modules():
            num, key = getattr(part, 'num_classes', None), 'model.' + re.sub(
                r'\.(\d+)(?=\.|$)', r'[\1]', name)
            if name and _ints(num) == [num] and num not in (1, len(classes)):
                problems.append(
                    f'{key}.num_classes={num} but {source} has {len(classes)} '
                    f'classes ({shown}): set {key}.num_classes={len(classes)} '
                    "in the config, or give the dataset the right "
                    "metainfo['classes'].")
    backbone, neck = getattr(model, 'backbone', None), getattr(model, 'neck', None)
    if isinstance(backbone, XCiT):
        feats = [backbone.embed_dims] * len(backbone.out_indices)
        text = f'model.backbone (XCiT, embed_dims={backbone.embed_dims}) emits'
        if isinstance(neck, nn.Sequential):
            neck = neck[0] if len(neck) else None
        width, num = getattr(neck, 'out_channels', 0), getattr(neck, 'num_outs', 0)
        parts = [p for name, child in model.named_children() if name not in (
            'backbone', 'neck', 'data_preprocessor')
            for p in _consumers(f'model.{name}', child)]
        if neck is not None:
            problems.append(_channel_problem('model.neck', neck, feats, text))
            feats, text = [width] * num, \
                f'model.neck ({num} maps of {width} channels) emits'
            parts = parts if _ints([width, num]) and num else []
        problems += [_channel_problem(k, p, feats, text) for k, p in parts]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError('The model does not fit the data or itself:\n- ' +
                         '\n- '.join(problems))


@HOOKS.register_module()
class XCiTConfigCheckHook(Hook):
    """:func:`check_model_config` against the data of each loop as it starts
    (training: also the validation data); only the running loops' data are
    read, so a test run builds no training data."""
    priority = 'VERY_HIGH'

    def _check(self, runner, mode: str) -> None:
        loader = getattr(getattr(runner, f'{mode}_loop'), 'dataloader', None)
        meta = getattr(getattr(loader, 'dataset', None), 'metainfo', None)
        if loader is not None:
            check_model_config(
                runner.model, meta.get('classes') if isinstance(meta, dict)
                else None, f'{mode}_dataloader.dataset '
                f'({type(loader.dataset).__name__})')

    def before_train(self, runner) -> None:
        self._check(runner, 'train')
        self._check(runner, 'val')  # None without validation

    def before_val(self, runner) -> None:
        self._check(runner, 'val')

    def before_test(self, runner) -> None:
        self._check(runner, 'test')
