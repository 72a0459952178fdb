"""Converting the key layouts of XCiT checkpoints to this package's, told
apart by their keys: ``authors`` (ImageNet: ``pos_embeder.*``, fused
``cls_attn_blocks.*.attn.qkv``), ``timm`` (``.pth`` / ``.safetensors``),
``mmpretrain`` (``backbone.xca_layers.*``, ``ConvModule`` names),
``authors-dense`` (their mmdet 2.x / mmseg 0.x models: ``backbone.fpn1..4``
and the neck and heads), ``xcit_mm`` (``adapter.levels.*``), ``passl``
(PaddlePaddle: ``_mean`` / ``_variance`` statistics, linear weights stored
``(in, out)``, training and ``Student.`` / ``Teacher.`` distillation files)
and ``mindcv`` (MindSpore: ``gamma`` / ``beta``, ``moving_*``; optimizer
state dropped). MindCV's XCA does not L2-normalise q and k and its GELU is
the tanh form (mindcv 0.3.0 ``models/xcit.py``; MindSpore's ``nn.GELU``
defaults to ``approximate=True``), so its weights need ``qk_norm=False``
and ``act_cfg=dict(type='GELU', approximate='tanh')``
(:attr:`Conversion.requires`, :func:`switches_needed`).

The converters are pure functions that ``XCiT.init_weights`` and
``tools/model_converters`` both call.
"""
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .io import CheckpointError

LAYOUTS = ('authors', 'timm', 'mmpretrain', 'authors-dense', 'xcit_mm',
           'passl', 'mindcv')

# Parts of a classification model that a dense backbone does not have, and
# optimizer state that MindSpore saves beside the weights.
_NOT_BACKBONE = re.compile(
    r'^(cls_token|cls_attn_blocks\.|ca_layers\.|norm\.|head\.|fc_norm\.|'
    r'adam_[mv]\.|moments\.|accum\.|global_step$|learning_rate$|'
    r'beta[12]_power$)')

# The backbone arguments the maths of each layout's framework needs.
PUBLISHED_MATHS = dict(qk_norm=True, act_cfg=dict(type='GELU'))
_MATHS = dict(
    mindcv=dict(qk_norm=False, act_cfg=dict(type='GELU', approximate='tanh')))


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
    if has(r'(^|\.)blocks\.\d+\.local_mp\.bn\._(mean|variance)$'):
        return 'passl'
    if has(r'(^|\.)blocks\.\d+\.local_mp\.bn\.moving_(mean|variance)$'):
        return 'mindcv'
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
        "timm's, mmpretrain's, PASSL's, MindCV's or xcit_mm's XCiT (e.g. "
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


_FOREIGN_RULES = dict(
    passl=[(re.compile(r'\._mean$'), '.running_mean'),
           (re.compile(r'\._variance$'), '.running_var')],
    mindcv=[(re.compile(r'\.moving_mean$'), '.running_mean'),
            (re.compile(r'\.moving_variance$'), '.running_var'),
            (re.compile(r'\.gamma$'), '.weight'),
            (re.compile(r'\.beta$'), '.bias')],
)


def _rename_backbone_key(key: str, layout: str) -> str:
    for pattern, repl in _FOREIGN_RULES.get(layout, ()):
        key = pattern.sub(repl, key)
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
    """What a conversion produced: the state dict, the layout found, the
    keys dropped, and the backbone arguments that the checkpoint's maths
    needs (:data:`PUBLISHED_MATHS`, the backbone's defaults, for the
    authors', timm's, mmpretrain's and PASSL's weights; MindCV's differ;
    empty when unknown: a checkpoint trained with this package).
    :func:`switches_needed` says which of them a user must set."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    layout: str
    dropped: List[str]
    requires: Dict[str, object] = {}


def _default_prefix(state_dict) -> Optional[str]:
    keys = list(state_dict)
    for head in ('Student.backbone.', 'Student.', 'backbone.'):
        if any(k.startswith(head) for k in keys):
            return head
    return None


def _meta(checkpoint) -> dict:
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def switches_needed(requires: Dict[str, object]) -> Dict[str, object]:
    """The entries of a :attr:`Conversion.requires` that differ from the
    backbone's defaults: what a config must add."""
    return {k: v for k, v in requires.items() if PUBLISHED_MATHS.get(k) != v}


def _requires(checkpoint, layout: str) -> Dict[str, object]:
    converted = _meta(checkpoint).get('requires')
    if isinstance(converted, dict):  # files of our converter say it
        return dict(converted)
    if layout == 'xcit_mm':  # trained with this package: unknown
        return {}
    return dict(_MATHS.get(layout, PUBLISHED_MATHS))


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
        Conversion: the ``XCiT`` state dict, the layout found, the keys
        that were dropped (class attention, cls token, final norm, head,
        optimizer state, and for whole models everything outside the
        backbone) and the maths the weights need.
    """
    state_dict = unwrap_state_dict(checkpoint)
    layout = detect_layout(state_dict)
    if prefix is None:
        prefix = _default_prefix(state_dict)
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
        if _NOT_BACKBONE.match(k):
            dropped.append((prefix or '') + k)
            continue
        if layout == 'passl' and v.dim() == 2 and k.endswith('.weight'):
            v = v.t().contiguous()  # Paddle's Linear stores (in, out)
        out[_rename_backbone_key(k, layout)] = v
    return Conversion(out, layout, dropped, _requires(checkpoint, layout))


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
    backbone = convert_backbone_state_dict(
        dict(state_dict=state_dict, meta=_meta(checkpoint)),
        prefix='backbone.')
    out = OrderedDict(
        ('backbone.' + k, v) for k, v in backbone.state_dict.items())
    for k, v in state_dict.items():
        if not k.startswith('backbone.'):
            out[k] = v
    dropped = [k for k in backbone.dropped if k.startswith('backbone.')]
    return Conversion(out, backbone.layout, dropped, backbone.requires)



def is_whole_model(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a whole detector / segmentor (a backbone
    and a neck or heads) rather than a backbone or a classifier."""
    keys = list(state_dict)
    has_backbone = any(k.startswith('backbone.') for k in keys)
    others = {k.split('.')[0] for k in keys if not k.startswith('backbone.')}
    return has_backbone and bool(
        others & {'neck', 'rpn_head', 'roi_head', 'bbox_head', 'mask_head',
                  'decode_head', 'auxiliary_head', 'panoptic_head'})


def convert_checkpoint(checkpoint, whole_model: Optional[bool] = None,
                       prefix: Optional[str] = None) -> Conversion:
    """Converts any supported checkpoint: a whole detector / segmentor to
    this package's whole-model keys, anything else to backbone keys.

    Args:
        checkpoint (dict): A loaded checkpoint or state dict.
        whole_model (bool, optional): Force one or the other; by default it
            is told from the keys (:func:`is_whole_model`).
        prefix (str, optional): For a backbone conversion, take only the
            keys under this prefix.
    """
    state_dict = unwrap_state_dict(checkpoint)
    if whole_model is None:
        whole_model = prefix is None and is_whole_model(state_dict)
    if whole_model:
        return convert_model_state_dict(checkpoint)
    return convert_backbone_state_dict(checkpoint, prefix=prefix)
