"""Models that the benchmark times beside ours, each as a callable.

- :func:`timm_xcit_trunk`: timm's XCiT with *our* weights (the trunk keys are
  the same; see ``xcit_mm.weights``), run with ``forward_intermediates`` up
  to the last block of ``out_indices`` (``stop_early``): the same maths as
  our backbone without the adapter.
- :func:`timm_vit`: a global-attention ViT (timm's ``VisionTransformer``,
  DeiT-style: no class token here) of the same width, depth and heads and
  the same patch size, so the same number of tokens (the input is padded
  to a multiple of the patch, as our convolutional stem's ceil division
  gives), with its learned positional embedding resized to each input.
"""
from typing import Callable, List, Sequence

import torch
import torch.nn as nn


class Runner:
    """A model and how to run it on an image batch (returns the tensors
    whose sum is the training loss)."""

    def __init__(self, name: str, model: nn.Module,
                 forward: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                 tokens: Callable[[int, int], int]):
        self.name = name
        self.model = model
        self.forward = forward
        self.tokens = tokens

    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = self.forward(x)
        if isinstance(out, torch.Tensor):
            return [out]
        return list(out)


def grid_tokens(patch_size: int) -> Callable[[int, int], int]:
    """Tokens of an ``H x W`` input: ``ceil(H / p) * ceil(W / p)``."""

    def tokens(h: int, w: int) -> int:
        return -(-h // patch_size) * -(-w // patch_size)

    return tokens


def ours(model: nn.Module, name: str = 'ours') -> Runner:
    """Our backbone, adapter included (the four pyramid maps)."""
    return Runner(name, model, model, grid_tokens(model.patch_size))


def timm_xcit_trunk(model: nn.Module, strict: bool = True) -> Runner:
    """timm's XCiT of ``model``'s size, holding ``model``'s trunk weights.

    Args:
        model: our ``XCiT`` (its batch norms must be plain BN or SyncBN;
            timm's are ``BatchNorm2d``).
        strict: check that every trunk tensor found its place.
    """
    from timm.models.xcit import Xcit
    ref = Xcit(
        patch_size=model.patch_size,
        embed_dim=model.embed_dims,
        depth=model.depth,
        num_heads=model.num_heads,
        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.embed_dims,
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        num_classes=0,
        cls_attn_layers=0,
        use_pos_embed=model.pos_embed is not None,
        eta=1.0)
    ref = ref.to(next(model.parameters()).device)
    trunk = {
        k: v
        for k, v in model.state_dict().items() if not k.startswith('adapter.')
    }
    missing, unexpected = ref.load_state_dict(trunk, strict=False)
    if strict:
        extra = [k for k in missing if k.startswith(('blocks.', 'patch_embed',
                                                     'pos_embed'))]
        if extra or unexpected:
            raise RuntimeError(
                'timm XCiT does not take our trunk weights: missing '
                f'{extra[:5]}, unexpected {unexpected[:5]}.')
    ref.train(model.training)
    indices = list(model.out_indices)

    def forward(x):
        return ref.forward_intermediates(
            x, indices=indices, intermediates_only=True, stop_early=True)

    return Runner('timm-xcit', ref, forward, grid_tokens(model.patch_size))


def timm_vit(embed_dims: int,
             depth: int,
             num_heads: int,
             patch_size: int,
             out_indices: Sequence[int],
             attention: str = 'fused',
             device='cpu') -> Runner:
    """A DeiT-style ViT of the given size (random weights).

    Args:
        attention: ``'fused'`` (timm's default,
            ``scaled_dot_product_attention``: memory-efficient kernels where
            available) or ``'naive'`` (the ``N x N`` attention matrix is
            materialised, as in the DeiT of the paper's figure).
    """
    from timm.models.vision_transformer import VisionTransformer
    if attention not in ('fused', 'naive'):
        raise ValueError(f"attention must be 'fused' or 'naive', got "
                         f'{attention!r}.')
    vit = VisionTransformer(
        img_size=224,
        patch_size=patch_size,
        embed_dim=embed_dims,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.,
        qkv_bias=True,
        class_token=False,
        global_pool='',
        num_classes=0,
        dynamic_img_size=True,
        dynamic_img_pad=True).to(device)
    for blk in vit.blocks:
        if hasattr(blk.attn, 'fused_attn'):
            blk.attn.fused_attn = attention == 'fused'
    indices = list(out_indices)

    def forward(x):
        return vit.forward_intermediates(
            x, indices=indices, intermediates_only=True, stop_early=True)

    return Runner(f'vit-{attention}', vit, forward, grid_tokens(patch_size))
