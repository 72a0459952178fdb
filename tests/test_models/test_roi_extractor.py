"""SparseRoIAlign / SparseRoIExtractor: mmcv's average RoIAlign computed as a
sparse product on the CPU; the same features and gradients as mmcv's and
torchvision's kernels, mmcv's own op where the product does not apply."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope

from xcit_mm.models.roi_extractor import SparseRoIAlign, SparseRoIExtractor


def make_inputs(seed=0, num_images=3, channels=6, size=(20, 24), num=40):
    """Features and RoIs, some reaching past the map (samples beyond one
    pixel outside it count 0), some thinner than a pixel."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(num_images, channels, *size, generator=gen)
    images = torch.randint(0, num_images, (num, 1), generator=gen).float()
    corner = torch.rand(num, 2, generator=gen) * 120 - 15
    extent = torch.rand(num, 2, generator=gen) * 60
    extent[:4] = 0.2
    return feats, torch.cat([images, corner, corner + extent], 1)


def features_and_grad(layer, feats, rois, weights):
    feats = feats.clone().requires_grad_()
    out = layer(feats, rois)
    grad, = torch.autograd.grad((out * weights).sum(), feats)
    return out, grad


@pytest.mark.parametrize('use_torchvision', [False, True])
@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('output_size,ratio,scale', [
    ((7, 7), 2, 1 / 4), ((14, 14), 2, 1 / 8), ((3, 5), 3, 1 / 2),
    ((7, 7), 1, 1 / 4)])
def test_same_as_mmcv_and_torchvision(use_torchvision, aligned, output_size,
                                      ratio, scale):
    feats, rois = make_inputs()
    ref_layer = RoIAlign(output_size, scale, ratio, aligned=aligned,
                         use_torchvision=use_torchvision)
    layer = SparseRoIAlign(output_size, scale, ratio, aligned=aligned)
    weights = torch.randn(rois.shape[0], feats.shape[1], *output_size)
    ref, ref_grad = features_and_grad(ref_layer, feats, rois, weights)
    out, grad = features_and_grad(layer, feats, rois, weights)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.5  # the RoIs do sample the features
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-4)


def test_no_rois():
    feats = torch.randn(2, 4, 10, 10, requires_grad=True)
    out = SparseRoIAlign((7, 7), 0.25, 2)(feats, torch.zeros(0, 5))
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert feats.grad.abs().sum() == 0


@pytest.mark.parametrize('kwargs', [dict(sampling_ratio=0),
                                    dict(sampling_ratio=2, pool_mode='max')])
def test_other_modes_are_mmcvs_op(kwargs, monkeypatch):
    """Adaptive sampling and max pooling are left to mmcv's kernel."""
    feats, rois = make_inputs(seed=1)
    layer = SparseRoIAlign((7, 7), 1 / 4, **kwargs)
    monkeypatch.setattr(SparseRoIAlign, '_sparse_align', None)  # unused
    torch.testing.assert_close(
        layer(feats, rois), RoIAlign((7, 7), 1 / 4, **kwargs)(feats, rois))


def test_bf16_autocast_keeps_the_dtype():
    feats, rois = make_inputs(seed=2)
    layer = SparseRoIAlign((7, 7), 1 / 4, 2)
    ref = layer(feats, rois)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(feats.bfloat16(), rois)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def extractor_cfg(type_, **layer):
    return dict(type=type_, out_channels=6, featmap_strides=[4, 8, 16, 32],
                roi_layer=dict(type='RoIAlign', output_size=7,
                               sampling_ratio=2, **layer))


def test_extractor_matches_single_roi_extractor():
    init_default_scope('mmdet')
    sparse = MODELS.build(extractor_cfg('SparseRoIExtractor'))
    plain = MODELS.build(extractor_cfg('SingleRoIExtractor'))
    assert isinstance(sparse, SparseRoIExtractor)
    assert all(type(m) is SparseRoIAlign for m in sparse.roi_layers)
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 6, 64 // s, 64 // s, generator=gen)
             for s in (1, 2, 4, 8)]  # a 256 x 256 input
    sides = torch.linspace(20, 600, 30)[:, None]  # every level's range
    corner = torch.rand(30, 2, generator=gen) * 200 - 20
    images = (torch.arange(30) % 2).float()[:, None]
    rois = torch.cat([images, corner, corner + sides], 1)
    assert sparse.map_roi_levels(rois, 4).unique().tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(sparse(feats, rois), plain(feats, rois),
                               rtol=1e-5, atol=1e-5)


def test_extractor_refuses_other_layers():
    init_default_scope('mmdet')
    cfg = extractor_cfg('SparseRoIExtractor')
    cfg['roi_layer']['type'] = 'RoIPool'
    with pytest.raises(ValueError, match="roi_layer type 'RoIPool' is not "
                       'RoIAlign; use SingleRoIExtractor'):
        MODELS.build(cfg)
