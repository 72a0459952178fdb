"""Converting the key layouts of XCiT checkpoints to this package's, told
apart by their keys: ``authors`` (ImageNet: ``pos_embeder.*``, fused
``cls_attn_blocks.*.attn.qkv``), ``timm``, ``mmpretrain``
(``backbone.xca_layers.*``, ``ConvModule`` names), ``authors-dense`` (their
mmdet 2.x / mmseg 0.x models: ``backbone.fpn1..4``, neck, heads),
``xcit_mm`` (``adapter.levels.*``), ``passl`` (PaddlePaddle: ``_mean`` /
``_variance``, linear weights stored ``(in, out)``, ``Student.`` /
``Teacher.`` distillation files) and ``mindcv`` (MindSpore: ``gamma`` /
``beta``, ``moving_*``; optimizer state dropped). MindCV's XCA does not
L2-normalise q and k and its GELU is the tanh form (mindcv 0.3.0), so its
weights need ``qk_norm=False`` and ``act_cfg=dict(type='GELU',
approximate='tanh')`` (:attr:`Conversion.requires`). Pure functions that
``XCiT.init_weights`` and ``tools/model_converters`` both call.
"""
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional

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

# layout -> (pattern, replacement) renames, in order; then _COMMON for all
_RULES = dict(
    mmpretrain=[
        (r'^xca_layers\.', 'blocks.'),
        (r'^patch_embed\.proj\.(\d+)\.(conv|bn|gn|norm)\.',
         lambda m: f'patch_embed.proj.{2 * int(m[1])}.'
         f'{0 if m[2] == "conv" else 1}.'),
        (r'^pos_embed\.token_projection\.conv\.',
         'pos_embed.token_projection.'),
        (r'\.local_mp\.conv([12])\.conv\.', r'.local_mp.conv\1.'),
        (r'\.local_mp\.conv1\.(bn|gn|norm|ln)\.', '.local_mp.bn.'),
        (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
        (r'\.ffn\.layers\.1\.', '.mlp.fc2.')],
    passl=[(r'\._mean$', '.running_mean'), (r'\._variance$', '.running_var')],
    mindcv=[(r'\.moving_mean$', '.running_mean'),
            (r'\.moving_variance$', '.running_var'),
            (r'\.gamma$', '.weight'), (r'\.beta$', '.bias')])
_COMMON = [(r'^pos_embeder\.', 'pos_embed.'),
           (r'^fpn([1-4])\.(weight|bias)$', r'fpn\1.0.\2'),  # a bare deconv
           (r'^fpn([1-4])\.', lambda m: f'adapter.levels.{int(m[1]) - 1}.')]


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
        tensors = OrderedDict((k[7:], v) for k, v in tensors.items())
    return tensors


def detect_layout(state_dict: Dict[str, torch.Tensor]) -> str:
    """Names the layout of a (bare or ``backbone.``-prefixed) state dict."""
    for layout, pattern in (
            ('mmpretrain', r'(^|\.)xca_layers\.'),
            ('passl', r'(^|\.)blocks\.\d+\.local_mp\.bn\._(mean|variance)$'),
            ('mindcv',
             r'(^|\.)blocks\.\d+\.local_mp\.bn\.moving_(mean|variance)$'),
            ('xcit_mm', r'(^|\.)adapter\.levels\.'),
            ('authors-dense', r'^backbone\.(fpn[1-4]|blocks|pos_embeder)\.'),
            ('authors',
             r'(^|\.)pos_embeder\.|cls_attn_blocks\.\d+\.attn\.qkv'),
            ('timm', r'(^|\.)blocks\.\d+\.local_mp\.')):
        if any(re.search(pattern, k) for k in state_dict):
            return layout
    raise CheckpointError(
        'Not an XCiT checkpoint: none of its keys look like the authors\', '
        "timm's, mmpretrain's, PASSL's, MindCV's or xcit_mm's XCiT (e.g. "
        f'"blocks.0.attn.qkv.weight"); first keys: {list(state_dict)[:5]}.')


class Conversion(NamedTuple):
    """What a conversion produced: the state dict, the layout found, the
    keys dropped, and the backbone arguments that the weights' maths needs
    (:data:`PUBLISHED_MATHS` but for MindCV; empty when unknown: weights
    trained with this package; :func:`switches_needed`)."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    layout: str
    dropped: List[str]
    requires: Dict[str, object] = {}


def switches_needed(requires: Dict[str, object]) -> Dict[str, object]:
    """The entries of a :attr:`Conversion.requires` that differ from the
    backbone's defaults: what a config must add."""
    return {k: v for k, v in requires.items() if PUBLISHED_MATHS.get(k) != v}


def _meta(checkpoint) -> dict:
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def convert_backbone_state_dict(checkpoint,
                                prefix: Optional[str] = None) -> Conversion:
    """Converts a loaded checkpoint or state dict of any :data:`LAYOUTS` to
    this package's ``XCiT`` keys, taking only the keys under ``prefix``
    (by default ``Student.backbone.``, ``Student.`` or ``backbone.`` where
    present). Class attention, cls token, final norm, head, optimizer state
    and everything outside ``prefix`` are dropped (and listed)."""
    state_dict = unwrap_state_dict(checkpoint)
    layout = detect_layout(state_dict)
    if prefix is None:
        prefix = next((p for p in ('Student.backbone.', 'Student.',
                                   'backbone.')
                       if any(k.startswith(p) for k in state_dict)), '')
    if not any(k.startswith(prefix) for k in state_dict):
        raise CheckpointError(
            f'No key of the checkpoint starts with prefix {prefix!r}.')
    dropped = [k for k in state_dict if not k.startswith(prefix)]
    out = OrderedDict()
    for key, v in state_dict.items():
        key = key[len(prefix):] if key.startswith(prefix) else None
        if key is None or _NOT_BACKBONE.match(key):
            dropped += [prefix + key] if key else []
            continue
        if layout == 'passl' and v.dim() == 2 and key.endswith('.weight'):
            v = v.t().contiguous()  # Paddle's Linear stores (in, out)
        for pattern, repl in _RULES.get(layout, []) + _COMMON:
            key = re.sub(pattern, repl, key)
        out[key] = v
    requires = _meta(checkpoint).get('requires')  # our converter's files
    if not isinstance(requires, dict):  # trained with this package: unknown
        requires = {} if layout == 'xcit_mm' else _MATHS.get(
            layout, PUBLISHED_MATHS)
    return Conversion(out, layout, dropped, dict(requires))


def convert_model_state_dict(checkpoint) -> Conversion:
    """Converts a whole detector / segmentor checkpoint (the authors' mmdet
    2.x / mmseg 0.x releases, or this package's): the backbone as
    :func:`convert_backbone_state_dict`; neck and head keys, whose names
    mmdet 3 and mmseg 1 kept, pass unchanged."""
    state_dict = unwrap_state_dict(checkpoint)
    if not any(k.startswith('backbone.') for k in state_dict):
        raise CheckpointError(
            'Not a whole-model checkpoint: no "backbone." keys. For an '
            'ImageNet checkpoint, load it with init_cfg=dict('
            "type='Pretrained', checkpoint=...) in the backbone instead.")
    backbone = convert_backbone_state_dict(
        dict(state_dict=state_dict, meta=_meta(checkpoint)), 'backbone.')
    out = OrderedDict(
        ('backbone.' + k, v) for k, v in backbone.state_dict.items())
    out.update((k, v) for k, v in state_dict.items()
               if not k.startswith('backbone.'))
    dropped = [k for k in backbone.dropped if k.startswith('backbone.')]
    return Conversion(out, backbone.layout, dropped, backbone.requires)


def convert_checkpoint(checkpoint, whole_model: Optional[bool] = None,
                       prefix: Optional[str] = None) -> Conversion:
    """Converts any supported checkpoint: a whole detector / segmentor (by
    default told from its keys: a backbone and a neck or heads) to this
    package's whole-model keys, anything else to backbone keys (those under
    ``prefix``, see :func:`convert_backbone_state_dict`)."""
    keys = list(unwrap_state_dict(checkpoint))
    if whole_model is None:
        parts = {k.split('.')[0] for k in keys}
        whole_model = prefix is None and 'backbone' in parts and bool(
            parts & {'neck', 'rpn_head', 'roi_head', 'bbox_head',
                     'mask_head', 'decode_head', 'auxiliary_head',
                     'panoptic_head'})
    if whole_model:
        return convert_model_state_dict(checkpoint)
    return convert_backbone_state_dict(checkpoint, prefix=prefix)
