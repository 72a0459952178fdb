"""XCA, the cross-covariance attention layer: the published maths (with
and without the q/k normalisation), and float32 attention under autocast."""
import pytest
import torch

from tests.test_models import reference
from xcit_mm.models.xcit import XCA

DIM, HEADS = 64, 4


def make_xca(qk_norm=True, seed=0):
    torch.manual_seed(seed)
    attn = XCA(DIM, HEADS, qk_norm=qk_norm)
    for m in (attn.qkv, attn.proj):
        torch.nn.init.normal_(m.weight, std=0.1)
        torch.nn.init.normal_(m.bias, std=0.1)
    with torch.no_grad():  # a different temperature per head
        attn.temperature.uniform_(0.3, 3.0)
    return attn


@pytest.mark.parametrize('qk_norm', [True, False])
@pytest.mark.parametrize('shape', [(2, 37), (1, 1), (3, 200)])
def test_equals_published_maths(qk_norm, shape):
    attn = make_xca(qk_norm)
    x = torch.randn(*shape, DIM, requires_grad=True)
    got = attn(x)
    want = reference.xca_like(attn, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the gradients, for the input and every parameter
    weight = torch.randn_like(want)
    params = [x] + list(attn.parameters())
    g_got = torch.autograd.grad((got * weight).sum(), params)
    g_want = torch.autograd.grad((want * weight).sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('qk_norm', [True, False])
def test_attention_is_the_channel_softmax(qk_norm):
    attn = make_xca(qk_norm)
    B, N, d = 2, 50, DIM // HEADS
    q, k = torch.randn(2, B, N, HEADS, d).unbind(0)
    got = attn.attention(q, k)
    assert got.shape == (B, HEADS, d, d) and got.dtype == torch.float32
    want = reference.xca_attention(
        q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1), attn.temperature,
        qk_norm)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(B, HEADS, d))


def test_qk_norm_matters():
    """Without the normalisation the layer computes something else (the
    switch for ports that omit it is not a no-op)."""
    with_norm, without = make_xca(True), make_xca(False)
    without.load_state_dict(with_norm.state_dict())
    x = torch.randn(2, 30, DIM)
    with torch.no_grad():
        assert not torch.allclose(with_norm(x), without(x), atol=1e-3)


def test_normalised_attention_ignores_the_scale_of_q_and_k():
    attn = make_xca(True)
    q, k = torch.randn(2, 1, 20, HEADS, DIM // HEADS).unbind(0)
    torch.testing.assert_close(attn.attention(100 * q, 0.01 * k),
                               attn.attention(q, k))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_attention_is_float32_under_autocast(dtype):
    """Large activations: q^T k overflows float16 (> 65504) and loses
    digits in bfloat16; the Gram matrix, norms and softmax are float32."""
    attn = make_xca(True)
    x = torch.randn(1, 1000, DIM) * 100
    with torch.no_grad():
        want = attn(x)
        with torch.autocast('cpu', dtype=dtype):
            q, k, _ = attn.qkv(x).view(1, 1000, 3, HEADS, -1).unbind(2)
            assert q.dtype == dtype  # autocast is on for the projection
            weights = attn.attention(q, k)
            got = attn(x)
    assert weights.dtype == torch.float32
    assert torch.isfinite(weights).all()
    # the premise: |q|^2, the diagonal of the Gram matrix, is past float16
    assert q.float().square().sum(dim=1).max() > torch.finfo(
        torch.float16).max
    assert torch.isfinite(got).all()
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 2e-2, rel


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_attention_ignores_autocast(dtype):
    """The same half-precision q and k give the same float32 attention with
    autocast on or off: nothing inside runs in half precision."""
    attn = make_xca(True)
    q, k = (torch.randn(2, 2, 300, HEADS, DIM // HEADS) * 3).to(
        dtype).unbind(0)
    want = attn.attention(q.float(), k.float())
    with torch.autocast('cpu', dtype=dtype):
        got = attn.attention(q, k)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
