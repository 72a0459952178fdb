"""The multi-scale adapter: four single-stride XCiT maps -> strides 4, 8, 16, 32.

XCiT keeps one token grid (stride = patch size) through all its blocks. For an
FPN it needs a pyramid, which the authors build from four intermediate maps by
deconvolution (up), identity and max-pooling (down):

- patch 16: 4x up (deconv, norm, act, deconv), 2x up (deconv), identity,
  2x2 max-pool;
- patch 8: 2x up (deconv), identity, 2x2 max-pool, 4x4 max-pool.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule


def _deconv2x(channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)


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
        self.patch_size = patch_size
        if patch_size == 16:
            levels = [
                nn.Sequential(
                    _deconv2x(embed_dims),
                    build_norm_layer(norm_cfg, embed_dims)[1],
                    build_activation_layer(act_cfg),
                    _deconv2x(embed_dims)),
                nn.Sequential(_deconv2x(embed_dims)),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        else:
            levels = [
                nn.Sequential(_deconv2x(embed_dims)),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.MaxPool2d(kernel_size=4, stride=4),
            ]
        self.levels = nn.ModuleList(levels)

    @property
    def strides(self) -> Tuple[int, ...]:
        """Output strides relative to the input image."""
        return (4, 8, 16, 32)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        if len(feats) != len(self.levels):
            raise ValueError(f'XCiTPyramidAdapter takes {len(self.levels)} '
                             f'maps, got {len(feats)}.')
        return tuple(level(x) for level, x in zip(self.levels, feats))
