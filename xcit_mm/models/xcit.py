"""XCiT backbone for dense prediction (El-Nouby et al., NeurIPS 2021).

Layers keep the published module names (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{attn,local_mp,mlp,gamma1..3}``) so that timm's and the authors'
ImageNet weights load with at most one rename; see ``xcit_mm.weights``.
"""
import contextlib
import math
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
from .presets import resolve_arch


def _autocast_device_types() -> frozenset:
    available = getattr(torch.amp, 'is_autocast_available', None)
    if available is None:  # pragma: no cover - older torch
        return frozenset(('cpu', 'cuda'))
    found = set()
    for device_type in ('cpu', 'cuda', 'xpu', 'mps', 'hpu', 'mtia', 'xla'):
        try:
            if available(device_type):
                found.add(device_type)
        except (RuntimeError, ValueError):  # pragma: no cover
            pass
    return frozenset(found)


# Device types with autocast, looked up once (``torch.compile`` does not
# trace ``is_autocast_available``).
_AUTOCAST_DEVICES = _autocast_device_types()


def _autocast_off(device_type: str):
    """A context that runs its body outside autocast (for the few small
    float32 computations), a no-op where autocast does not exist (e.g. the
    ``meta`` device used to count FLOPs)."""
    if device_type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FourierPositionalEncoding(BaseModule):
    """DETR-style Fourier features of the token grid, projected to ``dim``.

    The features are recomputed for the grid of each input, so any
    resolution works. Coordinates run 1..H and 1..W, are normalised by the
    grid size and scaled to [0, 2*pi].

    The features of a grid point are ``[f(y), f(x)]``, so the 1x1 projection
    splits into a row term and a column term: ``W_y f(y) + W_x f(x) + b``.
    Only ``H + W`` feature vectors are computed and projected (in float32),
    and the ``H x W`` map is their broadcast sum. Nothing is cached, so the
    module has no Python-side state (``torch.compile`` traces it without
    graph breaks).

    Args:
        dim (int): Output channels.
        hidden_dim (int): Frequencies per axis. Defaults to 32.
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
        """``(n, hidden_dim)`` float32 features of coordinates 1..n."""
        pos = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        pos = pos / (n + self.eps) * (2 * math.pi)
        dim_t = torch.arange(
            self.hidden_dim, dtype=torch.float32, device=device)
        dim_t = self.temperature**(
            2 * torch.div(dim_t, 2, rounding_mode='floor') / self.hidden_dim)
        pos = pos[:, None] / dim_t
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()),
                           dim=2).flatten(1)

    def fourier_features(self, H: int, W: int,
                         device: torch.device) -> torch.Tensor:
        """The ``(1, 2 * hidden_dim, H, W)`` float32 features (for
        reference; :meth:`forward` does not build them)."""
        fy = self._axis_features(H, device)
        fx = self._axis_features(W, device)
        feats = torch.cat((fy[:, None, :].expand(H, W, -1),
                           fx[None, :, :].expand(H, W, -1)), dim=2)
        return feats.permute(2, 0, 1)[None].contiguous()

    def forward(self, H: int, W: int) -> torch.Tensor:
        """Returns the ``(1, dim, H, W)`` encoding of an ``H x W`` grid
        (a channels-last tensor: ``flatten(2).transpose(1, 2)`` of it is
        a contiguous ``(1, H*W, dim)`` token tensor)."""
        conv = self.token_projection
        device = conv.weight.device
        hid = self.hidden_dim
        weight = conv.weight.flatten(1).float()  # (dim, 2 * hidden)
        bias = None if conv.bias is None else conv.bias.float()
        with _autocast_off(device.type):
            rows = F.linear(self._axis_features(H, device), weight[:, :hid])
            cols = F.linear(self._axis_features(W, device), weight[:, hid:],
                            bias)
        pos = (rows[:, None, :] + cols[None, :, :]).to(conv.weight.dtype)
        return pos.permute(2, 0, 1)[None]


class ConvPatchEmbed(BaseModule):
    """Stack of 3x3 stride-2 conv + norm, activation between them.

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
        if patch_size == 16:
            widths = [embed_dims // 8, embed_dims // 4, embed_dims // 2]
        elif patch_size == 8:
            widths = [embed_dims // 4, embed_dims // 2]
        else:
            raise ValueError(
                f'patch_size must be 8 or 16, got {patch_size!r}.')
        widths.append(embed_dims)
        layers = []
        prev = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(build_activation_layer(act_cfg))
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
        return x.flatten(2).transpose(1, 2), H, W


def xca_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  temperature: torch.Tensor) -> torch.Tensor:
    """Cross-covariance attention, written as published.

    ``q, k, v``: ``(B, heads, d, N)``; ``temperature``: ``(heads, 1, 1)``.
    Returns ``(B, heads, d, N)``.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


def _scaled_residual(shortcut: torch.Tensor, scale: torch.Tensor,
                     branch: torch.Tensor,
                     drop_path: nn.Module) -> torch.Tensor:
    """``shortcut + drop_path(scale * branch)`` in as few passes as possible.

    One ``addcmul`` (instead of a multiply and an add) unless stochastic
    depth is active; without autograd the result is written into
    ``branch``'s buffer (a block-internal tensor) when the dtypes agree, so
    no new ``N x C`` tensor is allocated.
    """
    if drop_path.training and getattr(drop_path, 'drop_prob', 0.) > 0:
        return shortcut + drop_path(scale * branch)
    if not torch.is_grad_enabled() and branch.dtype == shortcut.dtype == \
            scale.dtype and branch.shape == shortcut.shape:
        return torch.addcmul(shortcut, branch, scale, out=branch)
    return torch.addcmul(shortcut, branch, scale)


def _activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; an exact GELU is applied in place when no autograd graph
    is recorded (``x`` is then a fresh block-internal tensor), which saves
    allocating another tensor of ``x``'s size."""
    if type(act) is nn.GELU and not torch.is_grad_enabled():
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


class XCA(BaseModule):
    """Cross-covariance attention: a ``d_h x d_h`` softmax per head.

    q and k are L2-normalised along the token axis and their cross-covariance
    is scaled by a learnable per-head temperature.

    How it is computed (the same maths as :func:`xca_reference`):

    - the Gram matrix ``q_h^T k_h`` of each head is one batched product on
      strided views of the qkv output (no copy), and the L2 normalisation is
      applied to it (``d_h x d_h``) instead of to the ``N x d_h`` tensors
      (the norms are one reduction over the tokens); the Gram matrix, the
      norms and the softmax are computed in float32 whatever the input
      dtype or autocast (no overflow in fp16, no bf16 rounding of the
      similarity logits);
    - the attention is folded into the output projection: ``proj(attn @ v)``
      is ``v @ (W_proj A)^T + b`` with ``A`` the block-diagonal matrix of
      the per-head attentions (a ``C x C x d_h`` product per image), so the
      ``N x C`` attention output is never materialised, no permute copies
      happen, and the ``attn @ v`` product and the projection are one GEMM
      of the projection's size.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_weights(self, qkv: torch.Tensor) -> torch.Tensor:
        """The ``(B, heads, d_h, d_h)`` float32 attention (after the softmax
        and the attention dropout) from the ``(B, N, 3C)`` qkv output."""
        B, N, C3 = qkv.shape
        C = C3 // 3
        h = self.num_heads
        d = C // h
        with _autocast_off(qkv.device.type):
            qk = qkv[..., :2 * C].float()  # a view when qkv is float32
            # ||q_c|| and ||k_c|| over the tokens, (B, 2C) (a plain sum of
            # squares: linalg.vector_norm reduces a strided dim slowly on CPU)
            norms = qk.square().sum(dim=1).sqrt().clamp_min(1e-12)
            q = qk[..., :C].unflatten(-1, (h, d))  # (B, N, h, d)
            k = qk[..., C:].unflatten(-1, (h, d))
            # q_h^T k_h for each image and head: (h, d, N) @ (h, N, d)
            gram = [
                torch.bmm(q[b].permute(1, 2, 0), k[b].permute(1, 0, 2))
                for b in range(B)
            ]
            gram = gram[0][None] if B == 1 else torch.stack(gram)
            q_norm = norms[:, :C].view(B, h, d, 1)
            k_norm = norms[:, C:].view(B, h, 1, d)
            attn = gram / (q_norm * k_norm) * self.temperature.float()
            attn = attn.softmax(dim=-1)
        return self.attn_drop(attn)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output before the projection, ``(B, N, C)``
        (explicit; :meth:`forward` does not materialise it)."""
        B, N, C = x.shape
        h = self.num_heads
        qkv = self.qkv(x)
        attn = self.attention_weights(qkv).to(qkv.dtype)
        v = qkv[..., 2 * C:].unflatten(-1, (h, C // h))  # (B, N, h, d)
        # out[n, i] = sum_j attn[i, j] v[n, j], per head
        out = torch.einsum('bnhj,bhij->bnhi', v, attn)
        return out.reshape(B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``proj(attention(x))``, ``(B, N, C)``."""
        B, N, C = x.shape
        h = self.num_heads
        d = C // h
        qkv = self.qkv(x)
        attn = self.attention_weights(qkv)  # (B, h, d, d), float32
        weight = self.proj.weight
        with _autocast_off(x.device.type):
            # The projection with the attention folded in, transposed:
            # mixed_t[(h, j), o] = sum_i attn[h, i, j] W[o, (h, i)], (B, C, C)
            mixed_t = torch.matmul(
                attn.transpose(-2, -1),
                weight.float().view(C, h, d).permute(1, 2, 0)).reshape(
                    B, C, C)
        v = qkv[..., 2 * C:]  # (B, N, C), a strided view
        mixed_t = mixed_t.to(v.dtype)
        bias = self.proj.bias
        if bias is None:
            out = torch.bmm(v, mixed_t)
        else:
            out = torch.baddbmm(bias.to(v.dtype), v, mixed_t)
        return self.proj_drop(out)


class LPI(BaseModule):
    """Local patch interaction: depthwise 3x3 conv, act, norm, depthwise 3x3.

    Tokens ``(B, H*W, C)`` are viewed as a channels-last image (the
    depthwise convolutions run channels-last), so no copy is made between
    the token and the image layout, in either direction.
    """

    def __init__(self,
                 dim: int,
                 norm_cfg: dict,
                 act_cfg: dict,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = build_activation_layer(act_cfg)
        self.bn = build_norm_layer(norm_cfg, dim)[1]
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
        x = self.conv2(self.bn(_activate(self.act, self.conv1(x))))
        return x.permute(0, 2, 3, 1).reshape(B, N, C)


class Mlp(BaseModule):
    """Linear, activation, dropout, linear, dropout."""

    def __init__(self,
                 dim: int,
                 hidden_dim: int,
                 act_cfg: dict,
                 drop: float = 0.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class XCABlock(BaseModule):
    """One XCiT layer: XCA, LPI and MLP, each pre-norm, layer-scaled and
    residual (in that order, as published).

    The token tensor is kept contiguous ``(B, N, C)`` (the patch embedding
    hands the first block a channel-major view, which every LayerNorm and
    residual sum would otherwise copy or stride through), and each residual
    update ``x + gamma * branch`` is one ``addcmul``. When no autograd graph
    is recorded, the residual sums are written into the branch outputs and
    the GELUs (MLP and LPI) act in place, so fewer large tensors are
    allocated.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
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
        self.attn = XCA(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.norm3 = build_norm_layer(layer_norm_cfg, dim)[1]
        self.local_mp = LPI(dim, norm_cfg, act_cfg)
        self.norm2 = build_norm_layer(layer_norm_cfg, dim)[1]
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_cfg, drop)
        self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma3 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)``; without autograd (and without hooks on
        ``self.mlp``, which the direct calls of its layers would skip) its
        activation runs in place."""
        mlp = self.mlp
        if torch.is_grad_enabled() or mlp._forward_hooks or \
                mlp._forward_pre_hooks:
            return mlp(x)
        x = mlp.drop(_activate(mlp.act, mlp.fc1(x)))
        return mlp.drop(mlp.fc2(x))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x.contiguous()
        x = _scaled_residual(x, self.gamma1, self.attn(self.norm1(x)),
                             self.drop_path)
        x = _scaled_residual(x, self.gamma3,
                             self.local_mp(self.norm3(x), H, W),
                             self.drop_path)
        x = _scaled_residual(x, self.gamma2, self._mlp(self.norm2(x)),
                             self.drop_path)
        return x


@contextlib.contextmanager
def _keep_batchnorm_stats(module: nn.Module):
    """Restores the running statistics of ``module``'s batch norms on exit.

    Gradient checkpointing runs each block's forward a second time during
    backward; without this, the batch norms inside would update their
    running statistics twice per step.
    """
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
    ``ceil(H / patch_size) x ceil(W / patch_size)``, the pooled levels floor
    it, as in the authors' model.

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
        act_cfg (dict): Activation. Defaults to ``dict(type='GELU')``.
        frozen_stages (int): -1 freezes nothing; 0 freezes the patch and
            positional embeddings; ``k > 0`` also the first ``k`` blocks.
            Defaults to -1.
        norm_eval (bool): Keep every batch norm in eval mode while training.
            Defaults to False.
        with_cp (bool): Gradient checkpointing of each block.
            Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL)`` loads the authors', timm's or
            mmpretrain's ImageNet weights, or this package's. Other mmengine
            init types apply as usual. Defaults to None.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'small-12',
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
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
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch)
        self.arch = settings['name']
        self.embed_dims = int(settings['embed_dims'])
        self.depth = int(settings['depth'])
        self.num_heads = int(settings['num_heads'])
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
        self.patch_size = patch_size
        self.out_indices = self._check_out_indices(
            settings['out_indices'] if out_indices is None else out_indices)
        if not isinstance(frozen_stages, int) or not \
                -1 <= frozen_stages <= self.depth:
            raise ValueError(
                f'frozen_stages must be an int from -1 (nothing frozen) to '
                f'{self.depth} (every block of this {self.depth}-block '
                f'model), got {frozen_stages!r}.')
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
            XCABlock(
                dims,
                self.num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                layer_scale_init_value=layer_scale_init_value,
                norm_cfg=norm_cfg,
                layer_norm_cfg=layer_norm_cfg,
                act_cfg=act_cfg) for i in range(self.depth)
        ])
        self.adapter = XCiTPyramidAdapter(dims, patch_size, norm_cfg,
                                          act_cfg)
        self.apply(self._init_module)
        self._freeze_stages()

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
                logger=MMLogger.get_current_instance())
            self._is_init = True
            return
        super().init_weights()

    def no_weight_decay(self) -> set:
        """Parameter names commonly kept out of weight decay."""
        return {'temperature'}

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
        before the adapter."""
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
        return self.adapter(
            [f.contiguous() for f in self.forward_blocks(x)])
