"""XCiTConfigCheckHook and :func:`check_model_config`: the built model
against its data (``num_classes``) and against itself (the XCiT backbone's
channels along the neck and heads)."""
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

__all__ = [
    'XCiTConfigCheckHook', 'check_model_config', 'model_config_problems'
]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value) -> Optional[List[int]]:
    """An int or a list/tuple of ints as a list; ``None`` for anything
    else."""
    if _is_int(value):
        return [value]
    if isinstance(value, (list, tuple)) and all(map(_is_int, value)):
        return list(value)
    return None


def _parts(owner, key: str) -> Iterable[Tuple[str, object]]:
    """``(config key, module)`` for the part of ``owner`` named by the last
    component of ``key`` (``'model.roi_head.bbox_head'``): none if it is
    absent, one per stage if it is a list."""
    module = getattr(owner, key.rpartition('.')[2], None)
    if isinstance(module, (torch.nn.ModuleList, list, tuple)):
        for i, sub in enumerate(module):
            yield f'{key}[{i}]', sub
    elif module is not None:
        yield key, module


def _seg_heads(model) -> Iterable[Tuple[str, object]]:
    yield from _parts(model, 'model.decode_head')
    yield from _parts(model, 'model.auxiliary_head')


def _class_heads(model) -> Iterable[Tuple[str, object]]:
    """The heads whose ``num_classes`` must equal the number of classes."""
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is not None:  # mmdet two-stage (the RPN is class-agnostic)
        yield from _parts(roi_head, 'model.roi_head.bbox_head')
        yield from _parts(roi_head, 'model.roi_head.mask_head')
    else:  # mmdet single-stage (RetinaNet, FCOS, ...) or DETR-like
        yield from _parts(model, 'model.bbox_head')
    yield from _seg_heads(model)


def _num_class_problems(model, classes, source: str) -> List[str]:
    if isinstance(classes, str):
        return [
            f"metainfo['classes'] of {source} is the string {classes!r}, "
            f'not a tuple of class names: write ({classes!r},) for a single '
            'class.'
        ]
    classes = list(classes)
    shown = ', '.join(repr(c) for c in classes[:5])
    shown = f'({shown}{", ..." if len(classes) > 5 else ""})'
    problems = []
    for key, head in _class_heads(model):
        num_classes = getattr(head, 'num_classes', None)
        if _is_int(num_classes) and num_classes != len(classes):
            problems.append(
                f'{key}.num_classes={num_classes} but {source} has '
                f'{len(classes)} classes {shown}: set '
                f'{key}.num_classes={len(classes)} in the config, or give '
                f"the dataset the right metainfo['classes'].")
    return problems


def _seg_head_problems(key: str, head, feats: List[int],
                       feats_text: str) -> List[str]:
    """An mmseg head's ``in_channels`` against the maps its ``in_index``
    selects from ``feats`` (channels per map)."""
    in_channels = getattr(head, 'in_channels', None)
    in_index = getattr(head, 'in_index', None)
    indices = _ints(in_index)
    if in_channels is None or indices is None:
        return []
    if any(not -len(feats) <= i < len(feats) for i in indices):
        return [
            f'{key}.in_index={in_index} but {feats_text} only '
            f'{len(feats)} maps (indices 0..{len(feats) - 1}): fix '
            f'{key}.in_index.'
        ]
    selected = [feats[i] for i in indices]
    transform = getattr(head, 'input_transform', None)
    if transform == 'resize_concat':
        expected, given = sum(selected), in_channels
        fix = f'sum of the selected maps, {expected}'
    elif transform == 'multiple_select':
        expected, given = selected, _ints(in_channels)
        fix = f'{expected}'
    else:
        expected, given = selected[0], in_channels
        fix = f'{expected}'
    if given is None or given == expected:
        return []
    return [
        f'{key}.in_channels={given} (in_index={in_index}) but '
        f'{feats_text} {feats}: set {key}.in_channels={fix}.'
    ]


def _neck_consumer_problems(model, neck) -> List[str]:
    """The heads fed by a neck of ``num_outs`` maps of ``out_channels``
    (mmdet and mmseg FPN)."""
    out_channels = getattr(neck, 'out_channels', None)
    num_outs = getattr(neck, 'num_outs', None)
    if not (isinstance(out_channels, int) and isinstance(num_outs, int)):
        return []
    problems = []
    for key, head in _seg_heads(model):
        problems += _seg_head_problems(
            key, head, [out_channels] * num_outs,
            f'model.neck ({num_outs} maps of {out_channels} channels) emits')

    def expect(key, part, attr, wanted, wanted_text):
        value = getattr(part, attr, None)
        if _is_int(value) and value != wanted:
            problems.append(f'{key}.{attr}={value} but {wanted_text}: set '
                            f'{key}.{attr}={wanted}.')

    source = f'model.neck.out_channels={out_channels}'
    roi_head = getattr(model, 'roi_head', None)
    # a single-stage detector's bbox_head reads the neck too
    for name in ['rpn_head'] + (['bbox_head'] if roi_head is None else []):
        for key, head in _parts(model, f'model.{name}'):
            expect(key, head, 'in_channels', out_channels, source)
    if roi_head is None:
        return problems
    bbox = list(_parts(roi_head, 'model.roi_head.bbox_roi_extractor'))
    mask = list(_parts(roi_head, 'model.roi_head.mask_roi_extractor'))
    for key, extractor in bbox + mask:
        expect(key, extractor, 'out_channels', out_channels, source)
    # the i-th head (cascade stage) reads the i-th extractor, or the last;
    # the mask head shares the bbox extractor without a mask extractor
    for part, extractors in (('bbox', bbox), ('mask', mask or bbox)):
        key = f'model.roi_head.{part}_head'
        for i, (head_key, head) in enumerate(_parts(roi_head, key)):
            if not extractors:
                break
            ekey, extractor = extractors[min(i, len(extractors) - 1)]
            width = getattr(extractor, 'out_channels', None)
            if isinstance(width, int):
                expect(head_key, head, 'in_channels', width,
                       f'{ekey}.out_channels={width}')
    return problems


def _channel_problems(model) -> List[str]:
    from ...models import XCiT
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, XCiT):
        return []
    dims = backbone.embed_dims
    outs = [dims] * len(backbone.out_indices)
    feats_text = f'model.backbone (XCiT, embed_dims={dims}) emits'
    neck = getattr(model, 'neck', None)
    if isinstance(neck, torch.nn.Sequential) and len(neck):
        neck = neck[0]
    if neck is None:
        return [
            problem for key, head in _seg_heads(model)
            for problem in _seg_head_problems(key, head, outs, feats_text)
        ]
    problems = []
    source = f'{feats_text} {len(outs)} maps of {dims} channels'
    given = getattr(neck, 'in_channels', None)
    given_list = _ints(given)
    if isinstance(given, (list, tuple)) and given_list is not None:
        if given_list != outs:
            problems.append(
                f'model.neck.in_channels={given_list} but {source}: set '
                f'model.neck.in_channels=[{dims}] * {len(outs)} (or pick a '
                'backbone arch with embed_dims='
                f'{given_list[0] if given_list else "?"}).')
    elif given_list is not None and given_list[0] != dims:
        problems.append(f'model.neck.in_channels={given} but {source}: set '
                        f'model.neck.in_channels={dims}.')
    return problems + _neck_consumer_problems(model, neck)


def model_config_problems(model,
                          classes: Optional[Sequence[str]] = None,
                          source: str = 'the dataset') -> List[str]:
    """The mismatches :func:`check_model_config` reports, one message each
    (an empty list when everything fits)."""
    if is_model_wrapper(model):
        model = model.module
    problems = []
    if classes is not None:
        problems += _num_class_problems(model, classes, source)
    return problems + _channel_problems(model)


def check_model_config(model,
                       classes: Optional[Sequence[str]] = None,
                       source: str = 'the dataset') -> None:
    """Checks a built mmdet detector or mmseg segmentor against its data and
    its own parts; parts the model lacks are not checked.

    (a) ``num_classes`` of every head against the number of classes: mmdet's
    ``roi_head.bbox_head``/``mask_head`` (each cascade stage) or
    single-stage ``bbox_head`` (the RPN is class-agnostic), as mmdet's
    ``NumClassCheckHook`` does; mmseg's ``decode_head`` and
    ``auxiliary_head``, whose ``num_classes`` counts background classes too
    (ADE20k's 150), as the dataset's ``classes`` do.

    (b) Channels, for an XCiT backbone (maps of ``embed_dims`` channels):
    the neck's ``in_channels`` (mmdet and mmseg FPN) or, without a neck, the
    mmseg heads' ``in_channels`` at their ``in_index`` (UPerHead's list,
    FCNHead's int); behind an FPN, ``rpn_head.in_channels``, the RoI
    extractors' ``out_channels``, the RoI heads' and mmseg heads'
    ``in_channels``.

    Args:
        model (nn.Module): The built model, DDP-wrapped or not.
        classes (Sequence[str], optional): The dataset's
            ``metainfo['classes']``; ``None`` checks the channels only.
        source (str): How the messages name the dataset.

    Raises:
        ValueError: all mismatches, each naming both sides and the config
            key to change.
    """
    problems = model_config_problems(model, classes, source)
    if problems:
        raise ValueError('The model does not fit the data or itself:\n- ' +
                         '\n- '.join(problems))


@HOOKS.register_module()
class XCiTConfigCheckHook(Hook):
    """Runs :func:`check_model_config` when a loop starts, once per
    dataloader, raising ``ValueError`` at the first loop whose data or
    model does not fit.

    ``before_train`` checks the train dataset and, in a training run with
    validation, the validation dataset too (so a mismatch there does not
    wait for the first evaluation); ``before_val`` and ``before_test`` check
    theirs. Only the dataloader of the loop being run is read
    (``runner.train_loop.dataloader`` and so on: those loops are built
    before their ``before_*`` hook runs); ``runner.train_dataloader`` in a
    test run would build the training data. Datasets without
    ``metainfo['classes']`` get the channel checks only.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._checked = set()

    def _check(self, runner, loop, name: str) -> None:
        dataloader = getattr(loop, 'dataloader', None)
        if dataloader is None or id(dataloader) in self._checked:
            return
        self._checked.add(id(dataloader))
        dataset = getattr(dataloader, 'dataset', None)
        metainfo = getattr(dataset, 'metainfo', None)
        classes = metainfo.get('classes') if isinstance(metainfo,
                                                        dict) else None
        check_model_config(runner.model, classes,
                           f'{name}.dataset ({type(dataset).__name__})')

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_loop, 'train_dataloader')
        # Runner.train builds the validation loop (if any) before before_run,
        # so this builds nothing.
        if runner.val_loop is not None:
            self._check(runner, runner.val_loop, 'val_dataloader')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_loop, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop, 'test_dataloader')
