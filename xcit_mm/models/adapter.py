"""The multi-scale adapter: four single-stride XCiT maps -> strides 4, 8, 16, 32.

XCiT keeps one token grid (stride = patch size) through all its blocks. For an
FPN it needs a pyramid, which the authors build from four intermediate maps by
deconvolution (up), identity and max-pooling (down):

- patch 16: 4x up (deconv, norm, act, deconv), 2x up (deconv), identity,
  2x2 max-pool;
- patch 8: 2x up (deconv), identity, 2x2 max-pool, 4x4 max-pool.

The maps arrive as channels-last views of the tokens and every level takes
them as they are (max-pooling runs channels-last natively, the
deconvolutions are token products, :class:`Deconv2x`); every level returns
a contiguous (NCHW) map.

A grid smaller than a pooling window (an input of fewer than 2 patches a side
at patch 16, 4 at patch 8) is padded with -inf up to the window, so that
level is one pixel instead of an error: any input size works.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule

from .linear import linear


class Deconv2x(nn.ConvTranspose2d):
    """``ConvTranspose2d(C, C, 2, stride=2)`` as the product it is: each
    input pixel's channels times a ``C x 4C`` matrix give its 2x2 output
    block, by :func:`~xcit_mm.models.linear.linear` (a channels-last input
    needs no copy; the backward of oneDNN's deconvolution, given such an
    input, took twice as long on a Zen 2). Returns a contiguous NCHW map."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        weight = self.weight.permute(1, 2, 3, 0).reshape(-1, C)  # (o, a, b)
        y = linear(x.permute(0, 2, 3, 1), weight,
                   self.bias.repeat_interleave(4)).view(B, H, W, -1, 2, 2)
        return y.permute(0, 3, 1, 4, 2, 5).reshape(B, -1, 2 * H, 2 * W)


class MaxPoolAtLeastOne(nn.MaxPool2d):
    """``MaxPool2d(k, stride=k)`` that pads a map smaller than ``k`` with
    -inf up to ``k`` (one output pixel) instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        h, w = x.shape[-2:]
        if h < k or w < k:
            x = F.pad(x, (0, max(k - w, 0), 0, max(k - h, 0)),
                      value=float('-inf'))
        return super().forward(x)


class XCiTPyramidAdapter(BaseModule):
    """Maps four ``(B, C, H, W)`` maps at stride ``patch_size`` to a pyramid.

    Args:
        embed_dims (int): Channels of every map (unchanged by the adapter).
        patch_size (int): 8 or 16, the stride of the input maps.
        norm_cfg (dict): Norm between the two deconvolutions of the 4x branch
            (patch 16 only). Defaults to ``dict(type='SyncBN')``.
        act_cfg (dict): Activation there. Defaults to ``dict(type='GELU')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 embed_dims: int,
                 patch_size: int = 16,
                 norm_cfg: dict = dict(type='SyncBN', requires_grad=True),
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if patch_size not in (8, 16):
            raise ValueError(
                f'patch_size must be 8 or 16, got {patch_size!r}.')
        if patch_size == 16:
            levels = [
                nn.Sequential(
                    Deconv2x(embed_dims),
                    build_norm_layer(norm_cfg, embed_dims)[1],
                    build_activation_layer(act_cfg),
                    Deconv2x(embed_dims)),
                nn.Sequential(Deconv2x(embed_dims)),
                nn.Identity(),
                MaxPoolAtLeastOne(kernel_size=2, stride=2),
            ]
        else:
            levels = [
                nn.Sequential(Deconv2x(embed_dims)),
                nn.Identity(),
                MaxPoolAtLeastOne(kernel_size=2, stride=2),
                MaxPoolAtLeastOne(kernel_size=4, stride=4),
            ]
        self.levels = nn.ModuleList(levels)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        if len(feats) != len(self.levels):
            raise ValueError(f'XCiTPyramidAdapter takes {len(self.levels)} '
                             f'maps, got {len(feats)}.')
        return tuple(
            level(x).contiguous() for level, x in zip(self.levels, feats))
