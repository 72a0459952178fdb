"""FLOPs (multiply-adds, one multiply-add counted once) and parameters.

The counter runs the model once with forward hooks and counts each module
from the shapes it sees, with the conventions of mmengine's
``FlopAnalyzer`` (itself fvcore's), so that its figures can be compared with
the published ones:

- ``Linear``: ``tokens * in * out``; convolutions: ``out elements * in / groups
  * kernel`` (transposed: ``in elements * out / groups * kernel``); biases
  are not counted;
- batch norm: 1 per element (2 with an affine) in eval mode, 4 (5) when
  training; layer / group / instance norm: 4 (5) per element;
- activations, dropout, pooling and additions: 0 (as mmengine);
- attention modules are counted as a whole, from their published maths,
  whatever kernels compute them: XCA (ours and timm's) ``qkv + 2 N C d_h +
  proj``; timm's class attention (``q`` for the class token, ``k``, ``v`` for
  all tokens, ``2 N C`` for the products, ``proj``); timm's ViT attention
  ``qkv + 2 N^2 C + proj``. mmengine's tracer misses products that are not
  ``aten::matmul``/``bmm``/``einsum`` (e.g. the fused ``baddbmm`` of this
  package's XCA, or ``scaled_dot_product_attention``); counting per module
  does not depend on how the maths is computed.

Functional calls outside modules (``F.interpolate`` in a neck, RoI
operators) are not counted; neither does mmengine count most of them.
"""
import math
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..models.presets import ARCH_SETTINGS, resolve_arch

# ImageNet classification models at 224 x 224 (2 class-attention layers and
# the head included), as published (parameters in millions, GMACs).
PUBLISHED_IMAGENET: Dict[Tuple[str, int], Tuple[Optional[float], float]] = {
    ('nano-12', 16): (3.05, 0.56),
    ('tiny-12', 16): (6.72, 1.24),
    ('tiny-24', 16): (12.1, 2.34),
    ('small-12', 16): (26.25, 4.81),
    ('small-24', 16): (47.7, 9.10),
    ('medium-24', 16): (84.4, 16.13),
    ('large-24', 16): (189.1, 35.86),
    ('nano-12', 8): (None, 2.16),
    ('tiny-12', 8): (None, 4.81),
    ('tiny-24', 8): (None, 9.21),
    ('small-12', 8): (None, 18.69),
    ('small-24', 8): (None, 35.81),
    ('medium-24', 8): (None, 63.52),
    ('large-24', 8): (None, 141.23),
}

# Our preset names -> timm's model names (``xcit_<size>_<depth>_p<p>_224``).
_TIMM_SIZE = {
    'nano-12': 'nano_12', 'tiny-12': 'tiny_12', 'tiny-24': 'tiny_24',
    'small-12': 'small_12', 'small-24': 'small_24',
    'medium-24': 'medium_24', 'large-24': 'large_24'
}


def timm_model_name(arch: str, patch_size: int) -> str:
    """timm's name of the ImageNet XCiT of preset ``arch``."""
    name = resolve_arch(arch)['name']
    if name not in _TIMM_SIZE:
        raise ValueError(f'No timm ImageNet model for arch {arch!r}.')
    return f'xcit_{_TIMM_SIZE[name]}_p{patch_size}_224'


def block_macs(tokens: int, dim: int, heads: int) -> int:
    """The published per-block count: ``12 N d^2 + 2 N d^2 / h + 18 N d``
    (qkv, projection and MLP; XCA's two products; LPI's two depthwise
    3x3 convolutions); norms not included."""
    return 12 * tokens * dim**2 + 2 * tokens * dim * (dim // heads) + \
        18 * tokens * dim


def vit_block_macs(tokens: int, dim: int) -> int:
    """A global-attention ViT block: ``12 N d^2 + 2 N^2 d``."""
    return 12 * tokens * dim**2 + 2 * tokens**2 * dim


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------
# Handlers: module, inputs, output -> multiply-adds
# --------------------------------------------------------------------------
def _first_tensor(values) -> Optional[torch.Tensor]:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, (list, tuple)):
        for v in values:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(values, dict):
        return _first_tensor(list(values.values()))
    return None


def _linear(m: nn.Linear, inputs, output) -> int:
    x = _first_tensor(inputs)
    return (x.numel() // m.in_features) * m.in_features * m.out_features


def _conv(m: _ConvNd, inputs, output) -> int:
    out = _first_tensor(output)
    return out.numel() * (m.in_channels // m.groups) * \
        math.prod(m.kernel_size)


def _conv_transposed(m: _ConvTransposeNd, inputs, output) -> int:
    x = _first_tensor(inputs)
    return x.numel() * (m.out_channels // m.groups) * \
        math.prod(m.kernel_size)


def _batch_norm(m: _BatchNorm, inputs, output) -> int:
    x = _first_tensor(inputs)
    training = m.training or not m.track_running_stats
    if training:
        return x.numel() * (5 if m.affine else 4)
    return x.numel() * (2 if m.affine else 1)


def _norm(m: nn.Module, inputs, output) -> int:
    x = _first_tensor(inputs)
    affine = getattr(m, 'elementwise_affine', None)
    if affine is None:
        affine = getattr(m, 'affine', False)
    return x.numel() * (5 if affine else 4)


def _upsample(m: nn.Upsample, inputs, output) -> int:
    out = _first_tensor(output)
    return out.numel() * (1 if m.mode == 'nearest' else 4)


def _adaptive_avg_pool(m: nn.Module, inputs, output) -> int:
    return _first_tensor(inputs).numel()


def _xca(m: nn.Module, inputs, output) -> int:
    """XCA as published: qkv, ``q^T k`` and ``attn v`` per head, proj."""
    x = _first_tensor(inputs)
    B, N, C = x.shape
    d_h = C // m.num_heads
    return B * N * C * 3 * C + 2 * B * N * C * d_h + B * N * C * C


def _fourier_encoding(m: nn.Module, inputs, output) -> int:
    """The published 1x1 projection of the ``2 * hidden_dim`` Fourier
    features of every grid point (computed separably here, counted as
    published)."""
    out = _first_tensor(output)
    return out.numel() * m.token_projection.in_channels


def _class_attention(m: nn.Module, inputs, output) -> int:
    """CaiT/XCiT class attention: the class token attends to all tokens."""
    x = _first_tensor(inputs)
    B, N, C = x.shape
    return B * C * C + 2 * B * N * C * C + 2 * B * N * C + B * C * C


def _global_attention(m: nn.Module, inputs, output) -> int:
    """Multi-head self-attention: qkv, ``q k^T`` and ``attn v``, proj."""
    x = _first_tensor(inputs)
    B, N, C = x.shape
    return B * N * C * 3 * C + 2 * B * N * N * C + B * N * C * C


def _handlers() -> List[Tuple[type, Callable, bool]]:
    """(module type, handler, counts the whole module) in look-up order."""
    from ..models.xcit import XCA, FourierPositionalEncoding
    whole = [(XCA, _xca), (FourierPositionalEncoding, _fourier_encoding)]
    try:
        from timm.layers.attention import Attention as TimmAttention
        from timm.models.cait import ClassAttn as TimmClassAttn
        from timm.models.xcit import XCA as TimmXCA
        whole += [(TimmXCA, _xca), (TimmClassAttn, _class_attention),
                  (TimmAttention, _global_attention)]
    except ImportError:  # pragma: no cover - timm is optional here
        pass
    leaves = [
        (nn.Linear, _linear),
        (_ConvTransposeNd, _conv_transposed),
        (_ConvNd, _conv),
        (_BatchNorm, _batch_norm),
        (nn.LayerNorm, _norm),
        (nn.GroupNorm, _norm),
        (nn.modules.instancenorm._InstanceNorm, _norm),
        (nn.Upsample, _upsample),
        (nn.AdaptiveAvgPool1d, _adaptive_avg_pool),
        (nn.AdaptiveAvgPool2d, _adaptive_avg_pool),
        (nn.AdaptiveAvgPool3d, _adaptive_avg_pool),
    ]
    return [(t, h, True) for t, h in whole] + \
        [(t, h, False) for t, h in leaves]


class FlopCount:
    """The result of :func:`count_flops`: ``total`` multiply-adds and the
    count of every module, by qualified name (``''`` is the root)."""

    def __init__(self, by_module: Dict[str, int], params: int):
        self.by_module = by_module
        self.params = params

    @property
    def total(self) -> int:
        return self.by_module.get('', 0)

    def of(self, prefix: str) -> int:
        """The count of the module named ``prefix`` (0 if never called)."""
        return self.by_module.get(prefix, 0)

    def children(self, prefix: str = '') -> 'OrderedDict[str, int]':
        """The counts of the direct children of ``prefix``."""
        depth = 0 if not prefix else prefix.count('.') + 1
        out = OrderedDict()
        for name, value in self.by_module.items():
            if not name or (prefix and not name.startswith(prefix + '.')):
                continue
            if name.count('.') == depth:
                out[name] = value
        return out


def count_flops(model: nn.Module, run: Callable[[], object]) -> FlopCount:
    """Runs ``run()`` (which calls ``model``) once, without autograd, and
    counts the multiply-adds of every module of ``model``.

    A module with a whole-module handler (the attention modules) is counted
    from its inputs and its children are not counted again.
    """
    handlers = _handlers()
    names = {id(m): n for n, m in model.named_modules()}
    leaf_counts: Dict[str, int] = {}
    # One entry per active hooked call: (counted by an enclosing whole-module
    # handler, this call or an enclosing one counts as a whole).
    stack: List[Tuple[bool, bool]] = []
    hooks = []

    def find(module):
        for cls, handler, whole in handlers:
            if isinstance(module, cls):
                return handler, whole
        return None, False

    def make_hooks(module):
        handler, whole = find(module)
        if handler is None:
            return
        name = names[id(module)]

        def pre_hook(mod, args, kwargs):
            inside = bool(stack) and stack[-1][1]
            stack.append((inside, inside or whole))

        def post_hook(mod, args, kwargs, output):
            inside, _ = stack.pop()
            if not inside:
                inputs = list(args) + list(kwargs.values())
                leaf_counts[name] = leaf_counts.get(name, 0) + int(
                    handler(mod, inputs, output))

        hooks.append(
            module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        hooks.append(
            module.register_forward_hook(post_hook, with_kwargs=True))

    for module in model.modules():
        make_hooks(module)
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    by_module: Dict[str, int] = OrderedDict((n, 0)
                                            for n, _ in model.named_modules())
    for name, value in leaf_counts.items():
        parts = name.split('.') if name else []
        for i in range(len(parts) + 1):
            key = '.'.join(parts[:i])
            by_module[key] = by_module.get(key, 0) + value
    return FlopCount(by_module, count_parameters(model))


# --------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------
def build_backbone(arch, patch_size: int, device='meta', **kwargs):
    """Our backbone (BN instead of SyncBN) built on ``device``; ``'meta'``
    allocates nothing, so counting is instant."""
    from ..models import XCiT
    kwargs.setdefault('norm_cfg', dict(type='BN'))
    with torch.device(device):
        model = XCiT(arch=arch, patch_size=patch_size, **kwargs)
    return model.eval()


def build_imagenet_model(arch: str, patch_size: int, device='meta'):
    """timm's ImageNet XCiT of the preset (random weights)."""
    import timm
    with torch.device(device):
        model = timm.create_model(
            timm_model_name(arch, patch_size), pretrained=False)
    return model.eval()


def backbone_flops(arch,
                   patch_size: int,
                   shape: Sequence[int],
                   batch_size: int = 1,
                   device='meta',
                   **kwargs) -> FlopCount:
    """Counts our backbone on a ``batch_size x 3 x H x W`` input."""
    model = build_backbone(arch, patch_size, device, **kwargs)
    x = torch.zeros(batch_size, 3, *shape, device=device)
    return count_flops(model, lambda: model(x))


def imagenet_flops(arch: str,
                   patch_size: int,
                   shape: Sequence[int] = (224, 224),
                   device='meta') -> FlopCount:
    """Counts timm's ImageNet classification XCiT (trunk, 2 class-attention
    layers, head) on a ``1 x 3 x H x W`` input."""
    model = build_imagenet_model(arch, patch_size, device)
    x = torch.zeros(1, 3, *shape, device=device)
    return count_flops(model, lambda: model(x))


def preset_table(shape: Sequence[int] = (224, 224),
                 imagenet_shape: Sequence[int] = (224, 224),
                 presets: Optional[Sequence[str]] = None,
                 patch_sizes: Sequence[int] = (16, 8),
                 device='meta') -> List[dict]:
    """One row per preset and patch size: our backbone at ``shape`` and
    the ImageNet model at ``imagenet_shape``, beside the published figures
    (which are for 224 x 224)."""
    rows = []
    for arch in presets or list(ARCH_SETTINGS):
        settings = ARCH_SETTINGS[arch]
        for p in patch_sizes:
            bb = backbone_flops(arch, p, shape, device=device)
            trunk = sum(bb.of(k) for k in ('patch_embed', 'pos_embed',
                                           'blocks'))
            im = imagenet_flops(arch, p, imagenet_shape, device=device)
            pub_params, pub_gmacs = PUBLISHED_IMAGENET.get((arch, p),
                                                           (None, None))
            rows.append(
                OrderedDict(
                    arch=arch,
                    patch_size=p,
                    embed_dims=settings['embed_dims'],
                    depth=settings['depth'],
                    num_heads=settings['num_heads'],
                    shape=f'{shape[0]}x{shape[1]}',
                    backbone_params_m=bb.params / 1e6,
                    backbone_gmacs=bb.total / 1e9,
                    trunk_gmacs=trunk / 1e9,
                    adapter_gmacs=bb.of('adapter') / 1e9,
                    imagenet_shape=f'{imagenet_shape[0]}x'
                    f'{imagenet_shape[1]}',
                    imagenet_params_m=im.params / 1e6,
                    imagenet_gmacs=im.total / 1e9,
                    published_params_m=pub_params,
                    published_gmacs=pub_gmacs,
                    params_diff_pct=None if pub_params is None else
                    100 * (im.params / 1e6 / pub_params - 1),
                    gmacs_diff_pct=None if pub_gmacs is None else
                    100 * (im.total / 1e9 / pub_gmacs - 1)))
    return rows
