"""The fast XCA / LPI / block / positional-encoding code equals the
straightforward published maths (outputs and gradients), in fp32, and
stays close (and finite) under bf16 / fp16 autocast."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import BN, randomize_
from xcit_mm.models import XCiT, xca_reference

SMALL = dict(embed_dims=64, depth=4, num_heads=4)


def ref_xca(attn, x):
    """proj(XCA(x)) written as published: normalise q and k over the
    tokens, softmax(q k^T * temperature) per head, times v."""
    B, N, C = x.shape
    h = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    qkv = qkv.reshape(B, N, 3, h, C // h).permute(2, 0, 3, 4, 1)
    out = xca_reference(*qkv.unbind(0), attn.temperature)  # (B, h, d, N)
    out = out.permute(0, 3, 1, 2).reshape(B, N, C)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


def ref_lpi(lpi, x, H, W):
    """LPI in the channel-first image layout, plain functional ops."""
    B, N, C = x.shape
    y = x.transpose(1, 2).reshape(B, C, H, W)
    y = F.conv2d(y, lpi.conv1.weight, lpi.conv1.bias, padding=1, groups=C)
    y = F.gelu(y)
    bn = lpi.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                     bn.training, bn.momentum, bn.eps)
    y = F.conv2d(y, lpi.conv2.weight, lpi.conv2.bias, padding=1, groups=C)
    return y.reshape(B, C, N).transpose(1, 2)


def ref_block(blk, x, H, W):
    x = x + blk.gamma1 * ref_xca(blk.attn, blk.norm1(x))
    x = x + blk.gamma3 * ref_lpi(blk.local_mp, blk.norm3(x), H, W)
    mlp = blk.mlp
    y = F.linear(F.gelu(F.linear(blk.norm2(x), mlp.fc1.weight, mlp.fc1.bias)),
                 mlp.fc2.weight, mlp.fc2.bias)
    return x + blk.gamma2 * y


def ref_backbone(model, img):
    """The four pre-adapter maps and the pyramid, written plainly."""
    x = model.patch_embed.proj(img)
    B, C, H, W = x.shape
    pe = model.pos_embed
    feats = pe.fourier_features(H, W, img.device)
    pos = F.conv2d(feats, pe.token_projection.weight,
                   pe.token_projection.bias)
    x = (x + pos).flatten(2).transpose(1, 2)
    maps = []
    for i, blk in enumerate(model.blocks[:model.out_indices[-1] + 1]):
        x = ref_block(blk, x, H, W)
        if i in model.out_indices:
            maps.append(x.transpose(1, 2).reshape(B, C, H, W))
    return maps, model.adapter(maps)


def make_model(patch_size, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = XCiT(SMALL, patch_size=patch_size, norm_cfg=BN, **kwargs)
    randomize_(model, seed=seed)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.temperature.uniform_(0.3, 3.0)
    return model.eval()


@pytest.mark.parametrize('patch_size', [8, 16])
@pytest.mark.parametrize('size', [(61, 93), (64, 48)])
def test_backbone_equals_published_maths(patch_size, size):
    model = make_model(patch_size, seed=patch_size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want_maps, want_pyr = ref_backbone(model, x)
        got_maps = model.forward_blocks(x)
        got_pyr = model(x)
    for got, want in zip(got_maps + list(got_pyr), want_maps + list(want_pyr)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_gradients_equal_published_maths(patch_size):
    model = make_model(patch_size, seed=3).train()
    for m in model.modules():  # BN in eval: same statistics on both paths
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(2, 3, 45, 70, requires_grad=True)
    # The max-pooled levels are left out: a last-ulp difference may flip
    # which element of a pooling window is the maximum, and so where its
    # gradient goes.
    smooth = [i for i, level in enumerate(model.adapter.levels)
              if not isinstance(level, torch.nn.MaxPool2d)]

    def fast():
        maps = model.forward_blocks(x)
        pyramid = model.adapter([m.contiguous() for m in maps])
        return maps + [pyramid[i] for i in smooth]

    def slow():
        maps, pyramid = ref_backbone(model, x)
        return maps + [pyramid[i] for i in smooth]

    grads = []
    for fn in (fast, slow):
        model.zero_grad()
        x.grad = None
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
                   for o in fn())
        loss.backward()
        grads.append({'input': x.grad.clone(),
                      **{n: p.grad.clone()
                         for n, p in model.named_parameters()}})
    fast, slow = grads
    assert fast.keys() == slow.keys()
    for name in slow:
        scale = slow[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(fast[name] / scale, slow[name] / scale,
                                   rtol=1e-4, atol=2e-5, msg=name)


def test_block_no_grad_path_equals_grad_path():
    """Without autograd the residuals are written in place; same values."""
    blk = make_model(8).blocks[1]
    x = torch.randn(2, 7 * 9, 64)
    with torch.no_grad():
        a = blk(x.clone(), 7, 9)
    b = blk(x.clone().requires_grad_(), 7, 9)
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    torch.testing.assert_close(a, ref_block(blk, x, 7, 9).detach(),
                               rtol=1e-5, atol=1e-5)


def test_block_input_is_not_modified_and_layout_is_contiguous():
    blk = make_model(8).blocks[0]
    base = torch.randn(2, 64, 5 * 6)
    x = base.transpose(1, 2)  # channel-major view, as the patch embedding
    before = x.clone()
    with torch.no_grad():
        out = blk(x, 5, 6)
    assert torch.equal(x, before)
    assert out.is_contiguous()


def test_xca_attention_method_and_single_image():
    attn = make_model(16).blocks[2].attn
    x = torch.randn(1, 33, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref_xca(attn, x), rtol=1e-5,
                                   atol=1e-6)
        pre = attn.attention(x)
        want = F.linear(pre, attn.proj.weight, attn.proj.bias)
        torch.testing.assert_close(want, ref_xca(attn, x), rtol=1e-5,
                                   atol=1e-6)


def test_drop_path_training_path():
    """Stochastic depth takes the unfused path: same RNG, same result."""
    torch.manual_seed(0)
    model = XCiT(SMALL, patch_size=8, drop_path_rate=0.5, norm_cfg=BN)
    blk = model.blocks[0].train()
    blk.local_mp.bn.eval()
    x = torch.randn(4, 12, 64)
    torch.manual_seed(5)
    got = blk(x, 3, 4)
    torch.manual_seed(5)
    dp = blk.drop_path
    want = x + dp(blk.gamma1 * ref_xca(blk.attn, blk.norm1(x)))
    want = want + dp(blk.gamma3 * ref_lpi(blk.local_mp, blk.norm3(want), 3, 4))
    mlp = blk.mlp
    want = want + dp(blk.gamma2 * mlp(blk.norm2(want)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_positional_encoding_equals_conv_on_features():
    pe = make_model(8).pos_embed
    for H, W in [(1, 1), (5, 9), (64, 80)]:
        got = pe(H, W)
        feats = pe.fourier_features(H, W, torch.device('cpu'))
        want = F.conv2d(feats, pe.token_projection.weight,
                        pe.token_projection.bias)
        assert got.shape == (1, 64, H, W)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not hasattr(pe, '_cache')  # no Python-side state


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_autocast_close_to_fp32(dtype):
    model = make_model(8)
    x = torch.randn(2, 3, 61, 93)
    with torch.no_grad():
        want = model(x)
        with torch.autocast('cpu', dtype=dtype):
            got = model(x)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        rel = (g.float() - w).norm() / w.norm()
        assert rel < (3e-2 if dtype == torch.bfloat16 else 5e-3), rel


def test_fp16_gram_does_not_overflow():
    """Large activations: q^T k overflows fp16 (> 65504); the Gram matrix
    and the norms are computed in fp32."""
    attn = make_model(8).blocks[0].attn
    x = torch.randn(1, 1000, 64) * 100
    with torch.no_grad():
        want = attn(x)
        with torch.autocast('cpu', dtype=torch.float16):
            got = attn(x)
        q = attn.qkv(x)[..., :64].half()
        assert not torch.isfinite(q.transpose(1, 2) @ q).all()
    assert torch.isfinite(got).all()
    assert (got.float() - want).norm() / want.norm() < 5e-3


def test_compiles_without_graph_breaks():
    import torch._dynamo as dynamo
    model = make_model(8)
    x = torch.randn(1, 3, 40, 56)
    dynamo.reset()
    try:
        with torch.no_grad():
            explanation = dynamo.explain(model)(x)
    finally:
        dynamo.reset()
    assert explanation.graph_break_count == 0, [
        b.reason for b in explanation.break_reasons]


def test_runs_on_meta_device():
    with torch.device('meta'):
        model = XCiT(SMALL, patch_size=16, norm_cfg=BN).eval()
        outs = model(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 24),
                                              (1, 64, 8, 12), (1, 64, 4, 6),
                                              (1, 64, 2, 3)]


def test_hooks_on_the_mlp_still_run():
    """Without autograd the block calls the MLP's layers itself (in-place
    GELU) unless something hooks the MLP module."""
    blk = make_model(8).blocks[0]
    x = torch.randn(1, 12, 64)
    seen = []
    handle = blk.mlp.register_forward_hook(
        lambda mod, args, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            hooked = blk(x, 3, 4)
    finally:
        handle.remove()
    with torch.no_grad():
        plain = blk(x, 3, 4)
    assert seen == [(1, 12, 64)]
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
