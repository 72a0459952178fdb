"""FLOP and parameter counts: the published figures, the per-block
formula, and mmengine's tracer on timm's model."""
import pytest
import torch

from xcit_mm.analysis.flops import (PUBLISHED_IMAGENET, backbone_flops,
                                    block_macs, build_imagenet_model,
                                    count_flops, imagenet_flops,
                                    vit_block_macs)

timm = pytest.importorskip('timm')


def test_small_12_p16_imagenet_model_matches_published():
    count = imagenet_flops('small-12', 16)
    params, gmacs = PUBLISHED_IMAGENET[('small-12', 16)]
    assert (params, gmacs) == (26.25, 4.81)
    assert count.params / 1e6 == pytest.approx(params, rel=0.01)
    assert count.total / 1e9 == pytest.approx(gmacs, rel=0.01)
    # the class-attention layers and the head are part of the figure
    assert count.of('cls_attn_blocks') > 0 and count.of('head') > 0


@pytest.mark.parametrize('arch, patch_size', [('nano-12', 8),
                                              ('tiny-24', 16),
                                              ('large-24', 8)])
def test_other_presets_match_published(arch, patch_size):
    count = imagenet_flops(arch, patch_size)
    params, gmacs = PUBLISHED_IMAGENET[(arch, patch_size)]
    assert count.total / 1e9 == pytest.approx(gmacs, rel=0.02)
    if params is not None:
        assert count.params / 1e6 == pytest.approx(params, rel=0.02)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_backbone_block_is_the_published_formula(patch_size):
    h, w = 200, 333
    count = backbone_flops('small-12', patch_size, (h, w), batch_size=2)
    n = -(-h // patch_size) * -(-w // patch_size)
    d, heads = 384, 8
    norms = 3 * 5 * n * d + 2 * n * d  # 3 LayerNorms, LPI's BN (eval)
    assert count.of('blocks.0') == 2 * (block_macs(n, d, heads) + norms)
    assert count.of('blocks') == 12 * count.of('blocks.0')
    # the fused XCA (attention folded into proj) is counted as published
    xca = count.of('blocks.0.attn') / 2
    assert xca == 4 * n * d * d + 2 * n * d * (d // heads)


def test_backbone_trunk_equals_timm_trunk():
    """Our trunk and timm's count the same (same maths, other kernels)."""
    ours = backbone_flops('tiny-12', 16, (224, 224))
    ref = imagenet_flops('tiny-12', 16, (224, 224))
    for part in ('patch_embed', 'pos_embed', 'blocks'):
        assert ours.of(part) == ref.of(part), part
    assert ours.of('adapter') > 0


def test_counter_agrees_with_mmengine_on_timm():
    """mmengine's tracer counts timm's (matmul-based) XCA; our per-module
    counter gives the same figure, up to the class-attention products
    that timm computes with scaled_dot_product_attention (which the
    tracer does not count)."""
    from mmengine.analysis import FlopAnalyzer
    model = build_imagenet_model('nano-12', 16, device='cpu')
    x = torch.randn(1, 3, 96, 128)
    analyzer = FlopAnalyzer(model, x)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    theirs = analyzer.total()
    ours = count_flops(model, lambda: model(x)).total
    n = (96 // 16) * (128 // 16) + 1
    class_attention_products = 2 * 2 * n * 128
    assert ours == theirs + class_attention_products


def test_vit_attention_is_quadratic():
    from xcit_mm.analysis.references import timm_vit
    vit = timm_vit(64, 2, 4, 16, (0, 0, 1, 1))
    x = torch.zeros(1, 3, 64, 96)
    count = count_flops(vit.model, lambda: vit(x))
    n = 4 * 6
    norms = 2 * 5 * n * 64
    assert count.of('blocks.0') == vit_block_macs(n, 64) + norms
