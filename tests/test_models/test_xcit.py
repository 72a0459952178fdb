"""The XCiT backbone: presets and their pyramids, the published maths
(timm), any input size, training switches (frozen stages, norm_eval,
checkpointing, stochastic depth), activation and normalisation switches,
the deprecated ``pretrained=``, argument checks, and building it the ways
mmdet and mmseg do."""
import copy
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope

from tests.helpers import (BN, SMALL_ARCH, check_norm_state, pyramid_sizes,
                           randomize_, reference_pyramid, small_xcit)
from xcit_mm.models import ARCH_SETTINGS, XCiT, resolve_arch
from xcit_mm.models.presets import ARCH_ALIASES, default_out_indices
from xcit_mm.models.xcit import XCA
from xcit_mm.weights import convert_backbone_state_dict

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'demo')


def registry(scope):
    import xcit_mm  # noqa: F401  (registers XCiT)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS


def build_in_scope(cfg, scope):
    """``cfg`` built by mmdet's or mmseg's registry, as their runners do."""
    models = registry(scope)
    with DefaultScope.overwrite_default_scope(scope):
        return models.build(cfg)


def loss_of(outs):
    return sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
               for o in outs)


# --------------------------------------------------------------- presets


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
@pytest.mark.parametrize('patch_size', [8, 16])
def test_output_shapes_every_preset(arch, patch_size):
    """Four maps of ``embed_dims`` channels at strides 4..32 (shapes only:
    built and run on the meta device)."""
    settings = ARCH_SETTINGS[arch]
    with torch.device('meta'):
        model = XCiT(arch=arch, patch_size=patch_size, norm_cfg=BN).eval()
        assert len(model.blocks) == settings['depth']
        assert model.blocks[0].attn.num_heads == settings['num_heads']
        assert model.out_indices == settings['out_indices']
        for h, w in [(64, 64), (75, 49)]:
            outs = model(torch.empty(2, 3, h, w))
            assert [tuple(o.shape) for o in outs] == [
                (2, settings['embed_dims']) + s
                for s in pyramid_sizes(h, w, patch_size)]


@pytest.mark.parametrize('alias', sorted(ARCH_ALIASES))
def test_aliases_name_their_preset(alias):
    preset = ARCH_ALIASES[alias]
    assert resolve_arch(alias)['name'] == preset
    assert resolve_arch(alias.upper())['name'] == preset
    with torch.device('meta'):
        model = XCiT(arch=alias, norm_cfg=BN)
    assert model.arch == preset
    assert model.embed_dims == ARCH_SETTINGS[preset]['embed_dims']


def test_custom_arch():
    model = XCiT(arch=dict(embed_dims=64, depth=6, num_heads=2),
                 patch_size=8, norm_cfg=BN).eval()
    assert model.arch == 'custom' and len(model.blocks) == 6
    assert model.out_indices == default_out_indices(6)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 32, 48))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (64, ) + s for s in pyramid_sizes(32, 48, 8)]
    # out_indices and layer scale in the dict, negative indices counted
    # from the end
    model = XCiT(arch=dict(SMALL_ARCH, out_indices=(0, 1, 2, -1),
                           layer_scale_init_value=0.1), norm_cfg=BN)
    assert model.out_indices == (0, 1, 2, 3)
    assert torch.all(model.blocks[0].gamma1 == 0.1)


def test_layer_scale_from_preset():
    assert torch.all(XCiT('t24', norm_cfg=BN).blocks[0].gamma1 == 1e-5)
    assert torch.all(XCiT('n12', norm_cfg=BN).blocks[0].gamma1 == 1.0)


def test_default_out_indices_for_custom_depths():
    assert default_out_indices(12) == ARCH_SETTINGS['small-12']['out_indices']
    assert default_out_indices(24) == ARCH_SETTINGS['small-24']['out_indices']
    for depth in range(4, 40):
        picks = default_out_indices(depth)
        assert len(picks) == 4 and picks[0] >= 0, depth
        assert all(a < b for a, b in zip(picks, picks[1:])), depth
        assert picks[-1] == depth - 1, depth
        model_picks = resolve_arch(
            dict(embed_dims=8, depth=depth, num_heads=1))['out_indices']
        assert model_picks == picks
    with pytest.raises(ValueError, match='at least 4 blocks'):
        default_out_indices(3)


def test_positional_encoding_follows_the_grid():
    model = small_xcit()
    a, b = model.pos_embed(3, 5), model.pos_embed(7, 4)
    assert a.shape == (1, 64, 3, 5) and b.shape == (1, 64, 7, 4)
    assert not torch.allclose(a[..., :3, :4], b[..., :3, :4])


# ---------------------------------------------------------- published maths


@pytest.mark.parametrize('patch_size', [8, 16])
def test_parity_with_timm(patch_size):
    """timm's weights through the converter give timm's block outputs (the
    published maths), and the adapter gives the authors' pyramid of them."""
    timm = pytest.importorskip('timm')
    ref = timm.create_model(f'xcit_nano_12_p{patch_size}_224').eval()
    randomize_(ref, seed=patch_size)
    model = XCiT('nano-12', patch_size=patch_size, norm_cfg=BN).eval()
    conv = convert_backbone_state_dict(ref.state_dict())
    missing, unexpected = model.load_state_dict(conv.state_dict,
                                                strict=False)
    assert unexpected == []
    assert missing and all(k.startswith('adapter.') for k in missing)
    randomize_(model.adapter, seed=1)
    for h, w in [(224, 224), (99, 141)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            expected = ref.forward_intermediates(
                x, indices=list(model.out_indices), intermediates_only=True)
            blocks = model.forward_blocks(x)
            outs = model(x)
        assert len(blocks) == 4
        for got, want in zip(blocks, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        pyramid = reference_pyramid(expected, model.state_dict(), patch_size)
        for got, want in zip(outs, pyramid):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_qk_norm_reaches_every_block():
    model = small_xcit(qk_norm=False)
    assert model.qk_norm is False
    assert all(not b.attn.qk_norm for b in model.blocks)
    published = small_xcit()
    published.load_state_dict(model.state_dict())
    assert all(b.attn.qk_norm for b in published.blocks)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x)[2],
                                  published.eval()(x)[2], atol=1e-4)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_tanh_gelu_act_cfg(patch_size):
    """``act_cfg`` is the activation of every layer that has one (patch
    embedding, LPI, MLP, adapter) and so changes the outputs."""
    tanh_cfg = dict(type='GELU', approximate='tanh')
    model = small_xcit(patch_size, act_cfg=tanh_cfg).eval()
    assert model.act_cfg == tanh_cfg
    exact = small_xcit(patch_size).eval()
    exact.load_state_dict(model.state_dict())
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    exact_gelus = [m for m in exact.modules()
                   if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == len(exact_gelus) > 2 * len(model.blocks)
    assert all(m.approximate == 'tanh' for m in gelus)
    assert all(m.approximate == 'none' for m in exact_gelus)
    x = torch.randn(1, 3, 40, 56) * 3
    with torch.no_grad():
        tanh_outs = model(x)
        # the two GELUs differ by up to ~1e-3: different outputs ...
        assert (exact(x)[0] - tanh_outs[0]).abs().max() > 1e-6
        for m in exact_gelus:  # ... and the activation is the only cause
            m.approximate = 'tanh'
        for a, b in zip(exact(x), tanh_outs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------- any input size

SIZES = {
    8: [(24, 24), (8, 8), (1, 1), (15, 300), (33, 17), (63, 65)],
    16: [(24, 24), (16, 16), (1, 1), (15, 300), (31, 47), (100, 20)],
}


@pytest.mark.parametrize('patch_size, size',
                         [(p, s) for p, sizes in SIZES.items()
                          for s in sizes])
def test_any_input_size(patch_size, size):
    """ceil(H / p) x ceil(W / p) tokens; the pyramid at strides 4..32,
    the pooled levels floored and at least one pixel."""
    model = small_xcit(patch_size).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    assert [tuple(o.shape[2:]) for o in outs] == \
        pyramid_sizes(*size, patch_size)
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_mask_rcnn_at_24x24(patch_size):
    """A tiny image through the demo Mask R-CNN (no padding to 32): a
    loss step and a prediction."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(osp.join(DEMO, 'mask_rcnn_xcit_n12_p8_shapes.py'))
    cfg.model.backbone.patch_size = patch_size
    cfg.model.data_preprocessor.pad_size_divisor = 1
    model = build_in_scope(cfg.model, 'mmdet')
    size = 24
    sample = DetDataSample(metainfo=dict(img_shape=(size, size),
                                         ori_shape=(size, size),
                                         scale_factor=(1., 1.)))
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 3:20, 5:18] = 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[5., 3., 18., 20.]]), labels=torch.tensor([1]),
        masks=BitmapMasks(masks.numpy(), size, size))
    batch = dict(inputs=[torch.randint(0, 256, (3, size, size),
                                       dtype=torch.uint8)],
                 data_samples=[sample])
    model.train()
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    assert data['inputs'].shape[-2:] == (size, size)
    feats = model.backbone(data['inputs'])
    assert [tuple(f.shape[2:]) for f in feats] == \
        pyramid_sizes(size, size, patch_size)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(batch, False),
                        mode='predict')
    assert len(results) == 1
    assert 'bboxes' in results[0].pred_instances


@pytest.mark.parametrize('patch_size', [8, 16])
def test_semantic_fpn_at_24x24(patch_size):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    cfg = Config.fromfile(osp.join(DEMO, 'fpn_xcit_n12_p8_shapes.py'))
    cfg.model.backbone.patch_size = patch_size
    size = 24
    cfg.model.data_preprocessor.size = (size, size)
    model = build_in_scope(cfg.model, 'mmseg')
    num_classes = cfg.model.decode_head.num_classes
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size),
                                             ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    batch = dict(inputs=[torch.randint(0, 256, (3, size, size),
                                       dtype=torch.uint8)] * 2,
                 data_samples=samples)
    model.train()
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    assert data['inputs'].shape[-2:] == (size, size)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(batch, False),
                        mode='predict')
    assert results[0].seg_logits.data.shape == (num_classes, size, size)


# ------------------------------------------------------------- precision


def test_bf16_autocast(monkeypatch):
    """Under bfloat16 autocast the backbone runs, XCA's attention stays
    float32 and the outputs stay within 2% of float32."""
    model = XCiT('nano-12', patch_size=8, norm_cfg=BN)
    randomize_(model, seed=3).eval()
    seen, errors = [], []
    attention = XCA.attention

    def spy(self, q, k):
        out = attention(self, q, k)
        with torch.autocast('cpu', enabled=False):
            exact = attention(self, q.float(), k.float())
        seen.append((q.dtype, out.dtype))
        errors.append((out - exact).abs().max().item())
        return out

    monkeypatch.setattr(XCA, 'attention', spy)
    x = torch.randn(2, 3, 61, 93)
    with torch.no_grad():
        want = model(x)
        seen.clear()
        errors.clear()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = model(x)
    assert seen == [(torch.bfloat16, torch.float32)] * \
        (model.out_indices[-1] + 1)
    assert max(errors) < 1e-5  # float32 maths on the bf16 q and k
    assert any(o.dtype == torch.bfloat16 for o in got)  # autocast was on
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        rel = (g.float() - w).norm() / w.norm()
        assert rel < 2e-2, rel


# ------------------------------------------------------- training switches


def test_frozen_stages():
    model = XCiT('n12', frozen_stages=2, norm_cfg=BN)
    model.train()
    frozen = [model.patch_embed, model.pos_embed, model.blocks[0],
              model.blocks[1]]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert check_norm_state(m.modules(), False)
        assert not m.training
    for m in [model.blocks[2], model.blocks[11], model.adapter]:
        assert all(p.requires_grad for p in m.parameters())
        assert check_norm_state(m.modules(), True)
    # train() again, e.g. after evaluation, keeps the frozen part in eval
    model.eval()
    model.train()
    assert check_norm_state(model.blocks[1].modules(), False)
    assert check_norm_state(model.blocks[2].modules(), True)
    # frozen norms keep their statistics; the others update theirs
    frozen_before = model.blocks[0].local_mp.bn.running_mean.clone()
    free_before = model.blocks[2].local_mp.bn.running_mean.clone()
    outs = model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.blocks[0].local_mp.bn.running_mean,
                               frozen_before, rtol=0, atol=0)
    assert not torch.equal(model.blocks[2].local_mp.bn.running_mean,
                           free_before)
    loss_of(outs).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert model.blocks[2].attn.qkv.weight.grad is not None


def test_frozen_stages_zero_freezes_the_embeddings_only():
    model = small_xcit(frozen_stages=0).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.pos_embed.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())


def test_frozen_stages_all_blocks():
    model = small_xcit(frozen_stages=SMALL_ARCH['depth']).train()
    assert not any(p.requires_grad for p in model.blocks.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())


def test_norm_eval():
    model = small_xcit(16, norm_eval=True).train()
    assert check_norm_state(model.modules(), False)
    assert model.blocks[0].training  # only the batch norms
    before = model.adapter.levels[0][1].running_mean.clone()
    model(torch.randn(2, 3, 48, 48))
    torch.testing.assert_close(model.adapter.levels[0][1].running_mean,
                               before, rtol=0, atol=0)
    model = small_xcit(16, norm_eval=False).train()
    assert check_norm_state(model.modules(), True)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_with_cp_same_outputs_grads_and_stats(patch_size):
    torch.manual_seed(0)
    base = small_xcit(patch_size, drop_path_rate=0.1).train()
    randomize_(base)
    checkpointed = copy.deepcopy(base)
    checkpointed.with_cp = True
    x = torch.randn(2, 3, 64, 80)
    results = []
    for model in (base, checkpointed):
        torch.manual_seed(1)  # the same stochastic depth draws
        outs = model(x)
        loss_of(outs).backward()
        results.append((outs, {n: p.grad for n, p in
                               model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()}))
    (outs_a, grads_a, bufs_a), (outs_b, grads_b, bufs_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name],
                                   rtol=1e-4, atol=1e-6, msg=name)
    for name in bufs_a:  # the recomputation does not update BN twice
        torch.testing.assert_close(bufs_a[name], bufs_b[name], msg=name)


@pytest.mark.parametrize('patch_size', [8, 16])
@pytest.mark.parametrize('norm_cfg', [BN, dict(type='GN', num_groups=8)])
def test_gradients_reach_every_parameter(patch_size, norm_cfg):
    # seeded: a branch dropped for both images would leave its layer
    # scale without a gradient, which unseeded draws do now and then
    torch.manual_seed(0)
    model = small_xcit(patch_size, drop_path_rate=0.1,
                       norm_cfg=norm_cfg).train()
    outs = model(torch.randn(2, 3, 64, 64))
    loss_of(outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_sync_bn_is_the_default():
    model = XCiT(SMALL_ARCH)
    sync = [m for m in model.modules()
            if isinstance(m, torch.nn.SyncBatchNorm)]
    assert model.blocks[0].local_mp.bn in sync
    assert model.patch_embed.proj[0][1] in sync
    assert model.adapter.levels[0][1] in sync
    assert not any(isinstance(m, torch.nn.BatchNorm2d)
                   for m in model.modules())


def test_drop_path_schedules():
    const = small_xcit(drop_path_rate=0.1)
    assert [b.drop_path.drop_prob for b in const.blocks] == [0.1] * 4
    linear = small_xcit(drop_path_rate=0.3, drop_path_schedule='linear')
    assert isinstance(linear.blocks[0].drop_path, torch.nn.Identity)
    rates = [b.drop_path.drop_prob for b in linear.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3])
    none = small_xcit()
    assert all(isinstance(b.drop_path, torch.nn.Identity)
               for b in none.blocks)
    # stochastic in training, deterministic in evaluation (seeded: two
    # passes drew the same 24 masks in about 1% of unseeded runs)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    const.train()
    for m in const.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    first, *others = [const(x)[2] for _ in range(4)]
    assert any(not torch.allclose(first, o) for o in others)
    const.eval()
    torch.testing.assert_close(const(x)[2], const(x)[2], rtol=0, atol=0)


# ------------------------------------------------------------- pretrained=


def test_pretrained_is_a_deprecated_init_cfg():
    with pytest.warns(DeprecationWarning, match='pretrained is deprecated'):
        model = small_xcit(pretrained='weights/xcit.pth')
    assert model.init_cfg == dict(type='Pretrained',
                                  checkpoint='weights/xcit.pth')


def test_pretrained_and_init_cfg_together_raise():
    with pytest.raises(ValueError, match='both pretrained= and init_cfg='):
        small_xcit(pretrained='a.pth',
                   init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


@pytest.mark.parametrize('value', [1, dict(checkpoint='a.pth'),
                                   ['a.pth']])
def test_pretrained_must_be_a_path(value):
    with pytest.raises(TypeError, match='pretrained must be a checkpoint'):
        small_xcit(pretrained=value)


def _encoder_decoder(pretrained):
    # A ConfigDict, as from a config file: mmseg sets the backbone's
    # pretrained by attribute (a plain dict raises AttributeError in mmseg)
    return ConfigDict(
        type='EncoderDecoder',
        pretrained=pretrained,
        backbone=dict(type='XCiT', arch=SMALL_ARCH, patch_size=16,
                      norm_cfg=BN),
        neck=dict(type='FPN', in_channels=[64] * 4, out_channels=32,
                  num_outs=4),
        decode_head=dict(
            type='FPNHead', in_channels=[32] * 4, in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 16, 32], channels=16, num_classes=3,
            norm_cfg=BN, align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)))


def test_encoder_decoder_without_pretrained():
    model = build_in_scope(_encoder_decoder(None), 'mmseg')
    assert isinstance(model.backbone, XCiT)
    assert model.backbone.init_cfg is None


def test_encoder_decoder_passes_pretrained_to_the_backbone(tmp_path):
    """mmseg's ``EncoderDecoder(pretrained=PATH)`` (mmseg 0.x configs) sets
    the backbone's ``pretrained``; init_weights() then loads that file."""
    source = small_xcit(16)
    randomize_(source, seed=5)
    path = str(tmp_path / 'backbone.pth')
    torch.save(source.state_dict(), path)
    with pytest.warns(DeprecationWarning, match='pretrained is deprecated'):
        model = build_in_scope(_encoder_decoder(path), 'mmseg')
    assert model.backbone.init_cfg == dict(type='Pretrained',
                                           checkpoint=path)
    model.init_weights()
    own = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith(('patch_embed', 'pos_embed', 'blocks')):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0,
                                       msg=key)


# --------------------------------------------------------- argument checks


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='huge-99'), 'Unknown XCiT arch'),
    (dict(arch=12), 'arch must be a preset name or a dict'),
    (dict(arch=dict(embed_dims=64, depth=4)), 'needs keys'),
    (dict(arch=dict(SMALL_ARCH, mlp_ratio=2)), 'unknown'),
    (dict(arch=dict(embed_dims=64, depth=3, num_heads=4)),
     'at least 4 blocks'),
    (dict(arch=dict(embed_dims=100, depth=4, num_heads=3)),
     'must divide embed_dims'),
    (dict(arch=dict(embed_dims=36, depth=4, num_heads=2)),
     'must be divisible by 8'),
    (dict(patch_size=12), 'patch_size must be 8 or 16'),
    (dict(out_indices=(0, 1, 2, 4)), 'out of range'),
    (dict(out_indices=(0, 2, 1, 3)), 'strictly increasing'),
    (dict(out_indices=(1, 2, 3)), 'must list 4 blocks'),
    (dict(out_indices=3), 'must list 4 blocks'),
    (dict(frozen_stages=5), 'frozen_stages must be an int'),
    (dict(frozen_stages=-2), 'frozen_stages must be an int'),
    (dict(drop_path_schedule='cosine'), 'drop_path_schedule'),
    (dict(drop_path_rate=1.0), 'drop_path_rate must be in'),
])
def test_wrong_arguments_raise(kwargs, message):
    kwargs.setdefault('arch', SMALL_ARCH)
    with pytest.raises(ValueError, match=message):
        XCiT(norm_cfg=BN, **kwargs)


def test_init_cfg_pretrained_needs_a_checkpoint():
    model = small_xcit(init_cfg=dict(type='Pretrained', path='a.pth'))
    with pytest.raises(ValueError, match="type='Pretrained', checkpoint="):
        model.init_weights()


# ------------------------------------------------------------------ builds


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_config_under_each_scope(scope, tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text(
        f"default_scope = '{scope}'\n"
        "custom_imports = dict(imports=['xcit_mm'], "
        "allow_failed_imports=False)\n"
        "backbone = dict(type='XCiT', arch='s12', patch_size=8, "
        "norm_cfg=dict(type='BN'))\n")
    cfg = Config.fromfile(str(path))
    model = build_in_scope(cfg.backbone, scope)
    assert isinstance(model, XCiT)
    assert (model.arch, model.patch_size) == ('small-12', 8)


def test_import_needs_neither_mmdet_nor_mmseg():
    code = (
        "import sys\n"
        "import xcit_mm\n"
        "from mmengine.registry import MODELS\n"
        "m = MODELS.build(dict(type='XCiT', arch='n12', "
        "norm_cfg=dict(type='BN')))\n"
        "print(type(m).__name__, sorted(n for n in sys.modules "
        "if n.split('.')[0] in ('mmdet', 'mmseg')))\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == 'XCiT []'


def test_compiles_without_graph_breaks():
    import torch._dynamo as dynamo
    model = small_xcit(8).eval()
    dynamo.reset()
    try:
        with torch.no_grad():
            explanation = dynamo.explain(model)(torch.randn(1, 3, 40, 56))
    finally:
        dynamo.reset()
    assert explanation.graph_break_count == 0, [
        b.reason.splitlines()[0] for b in explanation.break_reasons]
