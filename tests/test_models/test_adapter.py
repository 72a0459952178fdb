"""XCiTPyramidAdapter alone: four stride-p maps -> strides 4, 8, 16, 32, for
any map size (the pooled levels padded with -inf below their window)."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import BN, randomize_, reference_pyramid
from xcit_mm.models import XCiTPyramidAdapter
from xcit_mm.models.adapter import Deconv2x

C = 16


def make_adapter(patch_size):
    torch.manual_seed(patch_size)
    adapter = XCiTPyramidAdapter(C, patch_size, norm_cfg=BN)
    return randomize_(adapter).eval()


def level_sizes(h, w, patch_size):
    """What each level gives for an ``h x w`` grid: deconvolved up to
    stride 4 / 8, identity at stride p, max-pooled (floor, at least one
    pixel) below."""
    factors = (4, 2, 1, 1 / 2) if patch_size == 16 else (2, 1, 1 / 2, 1 / 4)
    return [(max(1, int(h * f)), max(1, int(w * f))) for f in factors]


@pytest.mark.parametrize('patch_size', [8, 16])
@pytest.mark.parametrize('grid', [(1, 1), (1, 19), (2, 2), (3, 3), (3, 5),
                                  (4, 4), (7, 9), (14, 14)])
def test_level_sizes(patch_size, grid):
    adapter = make_adapter(patch_size)
    feats = [torch.randn(2, C, *grid) for _ in range(4)]
    with torch.no_grad():
        outs = adapter(feats)
    assert [tuple(o.shape) for o in outs] == [
        (2, C) + s for s in level_sizes(*grid, patch_size)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_equals_the_authors_pyramid(patch_size):
    """Where every map fills its pooling window, the levels are the
    authors' fpn1..fpn4."""
    adapter = make_adapter(patch_size)
    feats = [torch.randn(2, C, 12, 20) for _ in range(4)]
    with torch.no_grad():
        outs = adapter(feats)
        want = reference_pyramid(
            feats, {'adapter.' + k: v
                    for k, v in adapter.state_dict().items()}, patch_size)
    for got, ref in zip(outs, want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel, size', [(2, (1, 1)), (2, (1, 5)),
                                          (4, (3, 3)), (4, (2, 9)),
                                          (4, (6, 1))])
def test_small_maps_pool_their_real_values(kernel, size):
    """A map smaller than the window: each pixel is the max of the real
    values under its window (the -inf padding never wins), and the
    gradient goes to that value only."""
    adapter = make_adapter(8)  # 2x2 and 4x4 pools
    pool = adapter.levels[2 if kernel == 2 else 3]
    x = -10 - torch.rand(1, C, *size)  # all negative: 0-padding would win
    x.requires_grad_(True)
    out = pool(x)
    h, w = size
    oh, ow = max(1, h // kernel), max(1, w // kernel)
    assert out.shape == (1, C, oh, ow)
    for i in range(oh):
        for j in range(ow):
            window = x[..., i * kernel:(i + 1) * kernel,
                       j * kernel:(j + 1) * kernel]
            torch.testing.assert_close(out[..., i, j],
                                       window.amax(dim=(-2, -1)))
    out.sum().backward()
    assert (x.grad.sum(dim=(-2, -1)) == oh * ow).all()
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_maps_filling_the_window_are_pooled_as_usual():
    pool = make_adapter(8).levels[3]
    x = torch.randn(2, C, 9, 13)
    torch.testing.assert_close(pool(x), F.max_pool2d(x, 4), rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    adapter = make_adapter(16).train()
    outs = adapter([torch.randn(2, C, 3, 4) for _ in range(4)])
    sum(o.square().mean() for o in outs).backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_wrong_arguments_raise():
    with pytest.raises(ValueError, match='patch_size must be 8 or 16'):
        XCiTPyramidAdapter(C, patch_size=4, norm_cfg=BN)
    with pytest.raises(ValueError, match='takes 4 maps, got 3'):
        make_adapter(16)([torch.randn(1, C, 4, 4)] * 3)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_channels_last_views_give_contiguous_maps(patch_size):
    """The backbone hands the adapter channels-last views of its tokens;
    every level comes back contiguous NCHW, equal to what NCHW maps give."""
    adapter = make_adapter(patch_size)
    tokens = [torch.randn(2, 6 * 10, C) for _ in range(4)]
    views = [t.view(2, 6, 10, C).permute(0, 3, 1, 2) for t in tokens]
    with torch.no_grad():
        got = adapter(views)
        want = adapter([v.contiguous() for v in views])
    for a, b in zip(got, want):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True])
def test_deconv_product_is_the_transposed_convolution(channels_last):
    """Deconv2x (a token product) gives ConvTranspose2d's map and
    gradients (input, weight, bias) for NCHW and channels-last inputs."""
    torch.manual_seed(0)
    deconv = Deconv2x(C)
    x = torch.randn(2, 5, 7, C).permute(0, 3, 1, 2)
    x = (x if channels_last else x.contiguous()).requires_grad_()
    grad = torch.randn(2, C, 10, 14)
    got = deconv(x)
    assert got.is_contiguous() and got.shape == grad.shape
    got_grads = torch.autograd.grad(got, [x, deconv.weight, deconv.bias],
                                    grad)
    want = F.conv_transpose2d(x, deconv.weight, deconv.bias, stride=2)
    want_grads = torch.autograd.grad(want, [x, deconv.weight, deconv.bias],
                                     grad)
    for a, b in zip([got, *got_grads], [want, *want_grads]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
