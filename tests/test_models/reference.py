"""Cross-covariance attention written as the paper gives it (El-Nouby et
al., 2021, eq. 2-3 and Algorithm 1), with plain tensor ops, to check
:class:`xcit_mm.models.xcit.XCA` against.

For each head, q, k and v are ``d x N`` (channels by tokens); q and k are
L2-normalised along the tokens, ``A = softmax(temperature * q k^T)`` is
``d x d`` and the output is ``A v``, projected.
"""
import torch
import torch.nn.functional as F


def split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, heads, d, N)``."""
    B, N, C = t.shape
    return t.reshape(B, N, num_heads, C // num_heads).permute(0, 2, 3, 1)


def xca_attention(q: torch.Tensor, k: torch.Tensor,
                  temperature: torch.Tensor,
                  qk_norm: bool = True) -> torch.Tensor:
    """``softmax(temperature * q k^T)`` of ``(B, heads, d, N)`` q and k."""
    if qk_norm:
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
    return (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)


def xca(x: torch.Tensor,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor,
        proj_weight: torch.Tensor,
        proj_bias: torch.Tensor,
        temperature: torch.Tensor,
        num_heads: int,
        qk_norm: bool = True) -> torch.Tensor:
    """The XCA layer on ``(B, N, C)`` tokens, from its weights."""
    B, N, C = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1)
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))
    out = xca_attention(q, k, temperature, qk_norm) @ v  # (B, h, d, N)
    out = out.permute(0, 3, 1, 2).reshape(B, N, C)
    return F.linear(out, proj_weight, proj_bias)


def xca_like(module, x: torch.Tensor) -> torch.Tensor:
    """:func:`xca` with the weights and settings of an ``XCA`` module."""
    return xca(x, module.qkv.weight, module.qkv.bias, module.proj.weight,
               module.proj.bias, module.temperature, module.num_heads,
               module.qk_norm)
