"""XCiT backbone for dense prediction (El-Nouby et al., NeurIPS 2021).

Layers keep the published module names (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{attn,local_mp,mlp,gamma1..3}``) so that timm's and the authors'
ImageNet weights load with at most one rename; see :mod:`xcit_mm.weights`.
"""
import contextlib
import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import MODELS
from .adapter import XCiTPyramidAdapter
from .linear import Linear, linear_gelu
from .presets import resolve_arch


@torch.compiler.assume_constant_result
def _has_autocast(device_type: str) -> bool:
    # constant for torch.compile, which cannot trace the look-up
    return torch.amp.is_autocast_available(device_type)


def fp32_region(device_type: str):
    """A context in which autocast is off, so the precision-sensitive parts
    (the XCA Gram matrix, its norms and softmax, the positional encoding)
    run in float32 under any autocast; a no-op on devices without
    autocast."""
    if _has_autocast(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FourierPositionalEncoding(BaseModule):
    """DETR-style Fourier features of the token grid, projected to ``dim``.

    Computed for the grid of each input, so any resolution works.
    Coordinates run 1..H and 1..W, are normalised by the grid size and
    scaled to [0, 2*pi]; each axis gives ``hidden_dim`` features
    (sin/cos pairs of ``hidden_dim / 2`` frequencies), and the ``[f(y),
    f(x)]`` features of each grid point are projected by a 1x1 conv.

    Args:
        dim (int): Output channels.
        hidden_dim (int): Features per axis. Defaults to 32.
        temperature (float): Frequency base. Defaults to 10000.
    """

    def __init__(self,
                 dim: int,
                 hidden_dim: int = 32,
                 temperature: float = 10000.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.eps = 1e-6

    def _axis_features(self, n: int, device: torch.device) -> torch.Tensor:
        """``(n, hidden_dim)`` features of the coordinates 1..n."""
        pos = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        pos = pos / (n + self.eps) * (2 * math.pi)
        i = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        freq = self.temperature**(2 * (i // 2) / self.hidden_dim)
        pos = pos[:, None] / freq
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()),
                           dim=2).flatten(1)

    def forward(self, H: int, W: int) -> torch.Tensor:
        """The ``(1, dim, H, W)`` encoding of an ``H x W`` grid."""
        weight = self.token_projection.weight
        with fp32_region(weight.device.type):
            fy = self._axis_features(H, weight.device)
            fx = self._axis_features(W, weight.device)
            feats = torch.cat((fy[:, None].expand(H, W, -1),
                               fx[None].expand(H, W, -1)), dim=2)
            feats = feats.permute(2, 0, 1)[None]
            bias = self.token_projection.bias
            pos = F.conv2d(feats, weight.float(),
                           None if bias is None else bias.float())
        return pos.to(weight.dtype)


class ConvPatchEmbed(BaseModule):
    """3x3 stride-2 conv + norm, repeated, an activation between them.

    Four convs (dim/8, dim/4, dim/2, dim) for patch 16, three (dim/4, dim/2,
    dim) for patch 8. Padding 1, so an ``H x W`` input gives a
    ``ceil(H / p) x ceil(W / p)`` grid for any ``H`` and ``W``.
    """

    def __init__(self,
                 patch_size: int,
                 in_channels: int,
                 embed_dims: int,
                 norm_cfg: dict,
                 act_cfg: dict,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        divisors = (8, 4, 2, 1) if patch_size == 16 else (4, 2, 1)
        layers, prev = [], in_channels
        for i, divisor in enumerate(divisors):
            if i > 0:
                layers.append(build_activation_layer(act_cfg))
            width = embed_dims // divisor
            layers.append(
                nn.Sequential(
                    nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False),
                    build_norm_layer(norm_cfg, width)[1]))
            prev = width
        # Indices 0, 2, 4(, 6) hold conv+norm, as in the published keys.
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """Returns the ``(B, H*W, C)`` tokens and the grid size."""
        x = self.proj(x)
        _, _, H, W = x.shape
        return x.flatten(2).transpose(1, 2).contiguous(), H, W


class XCA(BaseModule):
    """Cross-covariance attention: a ``d x d`` softmax per head.

    For each head, q and k (``N x d``) are L2-normalised along the tokens
    and ``softmax(temperature * q^T k)`` mixes the channels of v. The
    normalisation is applied to the ``d x d`` Gram matrix (dividing by the
    norms of q's and k's columns), which is the same maths as normalising
    q and k. The Gram matrix, the norms and the softmax run in float32
    under any autocast.

    Args:
        dim (int): Channels.
        num_heads (int): Heads; ``d = dim / num_heads``.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        qk_norm (bool): L2-normalise q and k, as published. Without it the
            Gram matrix is used as it is (some ports of XCiT omit the
            normalisation; their weights need ``qk_norm=False``).
            Defaults to True.
        attn_drop (float): Dropout on the attention. Defaults to 0.
        proj_drop (float): Dropout after the projection. Defaults to 0.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 qk_norm: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_heads = num_heads
        self.qk_norm = qk_norm
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``softmax(temperature * q^T k / (|q| |k|))`` in float32.

        ``q, k``: ``(B, N, heads, d)``; returns ``(B, heads, d, d)``.
        """
        with fp32_region(q.device.type):
            q, k = q.float(), k.float()
            attn = torch.einsum('bnhi,bnhj->bhij', q, k)
            if self.qk_norm:
                q_norm = q.square().sum(dim=1).sqrt().clamp_min(1e-12)
                k_norm = k.square().sum(dim=1).sqrt().clamp_min(1e-12)
                attn = attn / (q_norm[..., :, None] * k_norm[..., None, :])
            attn = (attn * self.temperature.float()).softmax(dim=-1)
        return self.attn_drop(attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, -1).unbind(2)
        attn = self.attention(q, k).to(v.dtype)
        # out[n, (h, i)] = sum_j attn[h, i, j] v[n, (h, j)]
        out = torch.einsum('bhij,bnhj->bnhi', attn, v).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class LPI(BaseModule):
    """Local patch interaction: depthwise 3x3 conv, act, norm, depthwise 3x3.

    The ``(B, H*W, C)`` tokens are viewed as a channels-last image, so the
    depthwise convolutions take them without a copy in either direction.
    """

    def __init__(self, dim: int, norm_cfg: dict, act_cfg: dict, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = build_activation_layer(act_cfg)
        self.bn = build_norm_layer(norm_cfg, dim)[1]
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.permute(0, 2, 3, 1).reshape(B, N, C)


class Mlp(BaseModule):
    """Linear, activation, dropout, linear, dropout.

    Without gradients, a GELU is applied by oneDNN as the first product is
    written (see :func:`~xcit_mm.models.linear.linear_gelu`); ``fc1`` and
    ``act`` are then not called as modules, so hooks registered on them do
    not run (the block and ``mlp`` itself run theirs as usual)."""

    def __init__(self,
                 dim: int,
                 hidden_dim: int,
                 act_cfg: dict,
                 drop: float = 0.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc1 = Linear(dim, hidden_dim)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = None
        if type(self.act) is nn.GELU:
            hidden = linear_gelu(x, self.fc1.weight, self.fc1.bias,
                                 self.act.approximate)
        if hidden is None:
            hidden = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(hidden)))


class XCABlock(BaseModule):
    """One XCiT layer: XCA, LPI and MLP, each pre-norm, layer-scaled and
    residual, in that order (as published)."""

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_norm: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 layer_scale_init_value: float = 1.,
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 layer_norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm1 = build_norm_layer(layer_norm_cfg, dim)[1]
        self.attn = XCA(dim, num_heads, qkv_bias, qk_norm, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.norm3 = build_norm_layer(layer_norm_cfg, dim)[1]
        self.local_mp = LPI(dim, norm_cfg, act_cfg)
        self.norm2 = build_norm_layer(layer_norm_cfg, dim)[1]
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_cfg, drop)
        self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma3 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(
            self.gamma3 * self.local_mp(self.norm3(x), H, W))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        return x


@contextlib.contextmanager
def _keep_batchnorm_stats(module: nn.Module):
    """Restores the running statistics of ``module``'s batch norms on exit
    (gradient checkpointing runs a block's forward again in the backward,
    which would update them twice per step)."""
    saved = [(buf, buf.detach().clone()) for m in module.modules()
             if isinstance(m, _BatchNorm) for buf in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


@MODELS.register_module()
class XCiT(BaseModule):
    """XCiT backbone with a multi-scale adapter for FPN-style necks.

    Emits four maps at strides 4, 8, 16 and 32, ``embed_dims`` channels each,
    taken after the blocks in ``out_indices`` and resized by
    :class:`XCiTPyramidAdapter`. Any input size works: the grid is
    ``ceil(H / patch_size) x ceil(W / patch_size)``; the pooled levels floor
    it, as in the authors' model, and are at least one pixel.

    Args:
        arch (str | dict): A preset (``'nano-12'``, ``'tiny-12'``,
            ``'tiny-24'``, ``'small-12'``, ``'small-24'``, ``'medium-24'``,
            ``'large-24'`` or an alias such as ``'s12'``) or a dict with
            ``embed_dims``, ``depth``, ``num_heads`` (and optionally
            ``layer_scale_init_value``, ``out_indices``).
            Defaults to ``'small-12'``.
        patch_size (int): 8 or 16. Defaults to 16.
        in_channels (int): Input channels. Defaults to 3.
        out_indices (Sequence[int], optional): The four blocks feeding the
            adapter, increasing, negative values counted from the end.
            Defaults to the preset's.
        mlp_ratio (float): MLP width ratio. Defaults to 4.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        qk_norm (bool): L2-normalise q and k in XCA, as published.
            Defaults to True.
        drop_rate (float): Dropout after projections. Defaults to 0.
        attn_drop_rate (float): Dropout on the attention. Defaults to 0.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        drop_path_schedule (str): ``'constant'`` (every block gets
            ``drop_path_rate``, as published) or ``'linear'`` (0 up to
            ``drop_path_rate``). Defaults to ``'constant'``.
        layer_scale_init_value (float, optional): Layer-scale init; defaults
            to the preset's.
        use_pos_embed (bool): Add the Fourier positional encoding.
            Defaults to True.
        norm_cfg (dict): The batch norms (patch embedding, LPI, adapter).
            Defaults to ``dict(type='SyncBN', requires_grad=True)``.
        layer_norm_cfg (dict): The token norms.
            Defaults to ``dict(type='LN', eps=1e-6)``.
        act_cfg (dict): Activation, e.g. ``dict(type='GELU',
            approximate='tanh')`` for weights trained with the tanh GELU.
            Defaults to ``dict(type='GELU')``.
        frozen_stages (int): -1 freezes nothing; 0 freezes the patch and
            positional embeddings; ``k > 0`` also the first ``k`` blocks.
            Defaults to -1.
        norm_eval (bool): Keep every batch norm in eval mode while training.
            Defaults to False.
        with_cp (bool): Gradient checkpointing of each block.
            Defaults to False.
        pretrained (str, optional): Deprecated, as in mmdet's and mmseg's
            backbones: the same as ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained)``. Defaults to None.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL)`` loads XCiT weights of any supported
            framework (see :mod:`xcit_mm.weights`). Other mmengine init
            types apply as usual. Defaults to None.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'small-12',
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_norm: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 drop_path_schedule: str = 'constant',
                 layer_scale_init_value: Optional[float] = None,
                 use_pos_embed: bool = True,
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 layer_norm_cfg: dict = dict(type='LN', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(
                    'XCiT got both pretrained= and init_cfg=; give only '
                    "init_cfg=dict(type='Pretrained', checkpoint=...).")
            if not isinstance(pretrained, str):
                raise TypeError('pretrained must be a checkpoint path or URL '
                                f'(str), got {type(pretrained).__name__}.')
            warnings.warn(
                'DeprecationWarning: pretrained is deprecated, please use '
                '"init_cfg" instead', DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch)
        self.arch = settings['name']
        self.embed_dims = int(settings['embed_dims'])
        self.depth = int(settings['depth'])
        self.num_heads = int(settings['num_heads'])
        self._check_args(settings, patch_size, drop_path_schedule,
                         drop_path_rate, frozen_stages)
        self.patch_size = patch_size
        self.out_indices = self._check_out_indices(
            settings['out_indices'] if out_indices is None else out_indices)
        self.qk_norm = qk_norm
        self.act_cfg = dict(act_cfg)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        if layer_scale_init_value is None:
            layer_scale_init_value = settings['layer_scale_init_value']

        dims = self.embed_dims
        self.patch_embed = ConvPatchEmbed(patch_size, in_channels, dims,
                                          norm_cfg, act_cfg)
        self.pos_embed = FourierPositionalEncoding(dims) \
            if use_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        if drop_path_schedule == 'constant':
            dpr = [drop_path_rate] * self.depth
        else:
            dpr = torch.linspace(0, drop_path_rate, self.depth).tolist()
        self.blocks = nn.ModuleList([
            XCABlock(dims, self.num_heads, mlp_ratio=mlp_ratio,
                     qkv_bias=qkv_bias, qk_norm=qk_norm, drop=drop_rate,
                     attn_drop=attn_drop_rate, drop_path=dpr[i],
                     layer_scale_init_value=layer_scale_init_value,
                     norm_cfg=norm_cfg, layer_norm_cfg=layer_norm_cfg,
                     act_cfg=act_cfg) for i in range(self.depth)
        ])
        self.adapter = XCiTPyramidAdapter(dims, patch_size, norm_cfg,
                                          act_cfg)
        self.apply(self._init_module)
        self._freeze_stages()

    def _check_args(self, settings, patch_size, drop_path_schedule,
                    drop_path_rate, frozen_stages):
        if self.embed_dims <= 0 or self.depth <= 0 or self.num_heads <= 0:
            raise ValueError('embed_dims, depth and num_heads must be '
                             f'positive, got {settings}.')
        if self.embed_dims % self.num_heads:
            raise ValueError(
                f'num_heads ({self.num_heads}) must divide embed_dims '
                f'({self.embed_dims}).')
        if patch_size not in (8, 16):
            raise ValueError(
                f'patch_size must be 8 or 16, got {patch_size!r}.')
        if self.embed_dims % (8 if patch_size == 16 else 4):
            raise ValueError(
                f'embed_dims ({self.embed_dims}) must be divisible by '
                f'{8 if patch_size == 16 else 4} for the patch-{patch_size} '
                'embedding.')
        if drop_path_schedule not in ('constant', 'linear'):
            raise ValueError("drop_path_schedule must be 'constant' or "
                             f"'linear', got {drop_path_schedule!r}.")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(
                f'drop_path_rate must be in [0, 1), got {drop_path_rate}.')
        if not isinstance(frozen_stages, int) or not \
                -1 <= frozen_stages <= self.depth:
            raise ValueError(
                f'frozen_stages must be an int from -1 (nothing frozen) to '
                f'{self.depth} (every block of this {self.depth}-block '
                f'model), got {frozen_stages!r}.')

    def _check_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int) or len(out_indices) != 4:
            raise ValueError(
                'out_indices must list 4 blocks (one per pyramid level, '
                f'strides 4, 8, 16, 32), got {out_indices!r}.')
        resolved = []
        for index in out_indices:
            if not isinstance(index, int) or \
                    not -self.depth <= index < self.depth:
                raise ValueError(
                    f'out_indices {tuple(out_indices)}: {index!r} is out of '
                    f'range for a {self.depth}-block model; use ints in '
                    f'[{-self.depth}, {self.depth - 1}].')
            resolved.append(index % self.depth)
        if any(b <= a for a, b in zip(resolved, resolved[1:])):
            raise ValueError(
                f'out_indices must be strictly increasing, got '
                f'{tuple(out_indices)} (blocks {tuple(resolved)}).')
        return tuple(resolved)

    @staticmethod
    def _init_module(m: nn.Module):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self):
        """Loads ``init_cfg=dict(type='Pretrained', ...)`` through the XCiT
        converter; any other ``init_cfg`` is applied by mmengine."""
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            from ..weights import load_pretrained
            unknown = set(self.init_cfg) - {
                'type', 'checkpoint', 'prefix', 'map_location'}
            if unknown or 'checkpoint' not in self.init_cfg:
                raise ValueError(
                    "init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL"
                    "[, prefix=...]) is expected; got "
                    f'{self.init_cfg}.')
            load_pretrained(
                self,
                self.init_cfg['checkpoint'],
                prefix=self.init_cfg.get('prefix'),
                map_location=self.init_cfg.get('map_location', 'cpu'),
                logger=MMLogger.get_current_instance())
            self._is_init = True
            return
        super().init_weights()

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen: List[nn.Module] = [self.patch_embed]
        if self.pos_embed is not None:
            frozen.append(self.pos_embed)
        frozen.extend(self.blocks[:self.frozen_stages])
        for m in frozen:
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _run_block(self, block: XCABlock, x: torch.Tensor, H: int,
                   W: int) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(
                block,
                x,
                H,
                W,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(),
                                    _keep_batchnorm_stats(block)))
        return block(x, H, W)

    def forward_blocks(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The ``(B, C, Hp, Wp)`` maps after the blocks in ``out_indices``,
        before the adapter: channels-last views of the tokens (call
        ``.contiguous()`` for NCHW)."""
        B = x.shape[0]
        x, H, W = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(H, W).flatten(2).transpose(1, 2)
        x = self.pos_drop(x)
        feats = []
        for i, block in enumerate(self.blocks[:self.out_indices[-1] + 1]):
            x = self._run_block(block, x, H, W)
            if i in self.out_indices:
                feats.append(
                    x.reshape(B, H, W, self.embed_dims).permute(0, 3, 1, 2))
        return feats

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.adapter(self.forward_blocks(x))
