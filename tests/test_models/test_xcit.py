import copy

import pytest
import torch
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from tests.helpers import (BN, check_norm_state, expected_sizes, randomize_,
                           reference_pyramid)
from xcit_mm.models import ARCH_SETTINGS, XCiT, xca_reference
from xcit_mm.models.presets import ARCH_ALIASES
from xcit_mm.weights import convert_backbone_state_dict

timm = pytest.importorskip('timm')


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
@pytest.mark.parametrize('patch_size', [8, 16])
def test_output_shapes_every_preset(arch, patch_size):
    model = XCiT(arch=arch, patch_size=patch_size, norm_cfg=BN).eval()
    dims = ARCH_SETTINGS[arch]['embed_dims']
    assert model.out_indices == ARCH_SETTINGS[arch]['out_indices']
    for h, w in [(64, 64), (75, 49)]:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, h, w))
        assert len(outs) == 4
        for out, (eh, ew) in zip(outs, expected_sizes(h, w, patch_size)):
            assert out.shape == (1, dims, eh, ew)


def test_aliases_and_custom_arch():
    assert XCiT(arch='s12', norm_cfg=BN).arch == 'small-12'
    assert set(ARCH_ALIASES.values()) == set(ARCH_SETTINGS)
    model = XCiT(arch=dict(embed_dims=64, depth=6, num_heads=2),
                 patch_size=8, norm_cfg=BN)
    assert model.out_indices == (1, 2, 3, 5)
    outs = model(torch.randn(2, 3, 32, 48))
    assert [o.shape[1:] for o in outs] == [(64, 8, 12), (64, 4, 6),
                                           (64, 2, 3), (64, 1, 1)]


def test_layer_scale_from_preset():
    assert XCiT('t24', norm_cfg=BN).blocks[0].gamma1.detach().max() == 1e-5
    assert XCiT('t12', norm_cfg=BN).blocks[0].gamma1.detach().min() == 1.0


def test_positional_encoding_follows_the_grid():
    model = XCiT('n12', norm_cfg=BN)
    a = model.pos_embed(3, 5)
    b = model.pos_embed(7, 4)
    assert a.shape == (1, 128, 3, 5) and b.shape == (1, 128, 7, 4)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_parity_with_timm(patch_size):
    """timm weights through the converter give timm's block outputs, and the
    adapter gives the authors' pyramid on top of them."""
    ref = timm.create_model(f'xcit_nano_12_p{patch_size}_224').eval()
    randomize_(ref, seed=patch_size)
    model = XCiT('nano-12', patch_size=patch_size, norm_cfg=BN).eval()
    conv = convert_backbone_state_dict(ref.state_dict())
    assert conv.layout == 'timm'
    missing, unexpected = model.load_state_dict(conv.state_dict,
                                                strict=False)
    assert unexpected == []
    assert all(k.startswith('adapter.') for k in missing)
    randomize_(model.adapter, seed=1)
    for h, w in [(224, 224), (99, 141)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            expected = ref.forward_intermediates(
                x, indices=list(model.out_indices), intermediates_only=True)
            blocks = model.forward_blocks(x)
            outs = model(x)
        for got, want in zip(blocks, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        pyramid = reference_pyramid(expected, model.state_dict(), patch_size)
        for got, want in zip(outs, pyramid):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_xca_equals_published_maths():
    model = XCiT('n12', norm_cfg=BN).eval()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.temperature.uniform_(0.5, 2.0)
    x = torch.randn(2, 37, 128, requires_grad=True)
    fast = attn.attention(x)
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, 4, C // 4).permute(2, 0, 3, 4, 1)
    slow = xca_reference(*qkv.unbind(0), attn.temperature)
    slow = slow.permute(0, 3, 1, 2).reshape(B, N, C)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    g_fast, = torch.autograd.grad(fast.square().sum(), x)
    g_slow, = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-5)


def _bn_modules(module):
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def test_frozen_stages():
    model = XCiT('n12', patch_size=16, frozen_stages=2, norm_cfg=BN)
    model.train()
    frozen = [model.patch_embed, model.pos_embed, model.blocks[0],
              model.blocks[1]]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert check_norm_state(m.modules(), False)
        assert not m.training
    for m in [model.blocks[2], model.adapter]:
        assert all(p.requires_grad for p in m.parameters())
        assert check_norm_state(m.modules(), True)
    # train() again, e.g. after evaluation, keeps the frozen norms in eval
    model.eval()
    model.train()
    assert check_norm_state(model.blocks[1].modules(), False)
    assert check_norm_state(model.blocks[2].modules(), True)
    # frozen norms do not update their statistics
    before = model.blocks[0].local_mp.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.blocks[0].local_mp.bn.running_mean,
                               before)
    assert not torch.equal(model.blocks[2].local_mp.bn.running_mean,
                           torch.zeros(128))


def test_frozen_stages_zero_freezes_embeddings_only():
    model = XCiT('n12', frozen_stages=0, norm_cfg=BN).train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.pos_embed.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())


def test_norm_eval():
    model = XCiT('n12', norm_eval=True, norm_cfg=BN).train()
    assert check_norm_state(model.modules(), False)
    assert model.blocks[0].training
    model = XCiT('n12', norm_eval=False, norm_cfg=BN).train()
    assert check_norm_state(model.modules(), True)


@pytest.mark.parametrize('patch_size', [8, 16])
def test_with_cp_same_outputs_grads_and_stats(patch_size):
    torch.manual_seed(0)
    base = XCiT('n12', patch_size=patch_size, drop_path_rate=0.1,
                norm_cfg=BN).train()
    cp_model = copy.deepcopy(base)
    cp_model.with_cp = True
    x = torch.randn(2, 3, 64, 80)
    results = []
    for model in (base, cp_model):
        torch.manual_seed(1)
        outs = model(x)
        loss = sum(o.square().mean() for o in outs)
        loss.backward()
        results.append((outs, {n: p.grad for n, p in
                               model.named_parameters()},
                        {n: b.clone() for n, b in model.named_buffers()}))
    (outs_a, grads_a, bufs_a), (outs_b, grads_b, bufs_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name],
                                   rtol=1e-4, atol=1e-6, msg=name)
    for name in bufs_a:  # no double update of the BN running statistics
        torch.testing.assert_close(bufs_a[name], bufs_b[name], msg=name)


@pytest.mark.parametrize('norm_cfg', [BN, dict(type='GN', num_groups=8)])
def test_every_trainable_parameter_gets_a_gradient(norm_cfg):
    model = XCiT('n12', patch_size=16, drop_path_rate=0.1,
                 norm_cfg=norm_cfg).train()
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_sync_bn_is_the_default():
    model = XCiT('n12')
    assert isinstance(model.blocks[0].local_mp.bn, torch.nn.SyncBatchNorm)
    assert isinstance(model.patch_embed.proj[0][1], torch.nn.SyncBatchNorm)
    assert isinstance(model.adapter.levels[0][1], torch.nn.SyncBatchNorm)


def test_drop_path_schedules():
    const = XCiT('n12', drop_path_rate=0.1, norm_cfg=BN)
    assert [b.drop_path.drop_prob for b in const.blocks] == [0.1] * 12
    linear = XCiT('n12', drop_path_rate=0.1, drop_path_schedule='linear',
                  norm_cfg=BN)
    assert isinstance(linear.blocks[0].drop_path, torch.nn.Identity)
    assert linear.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='huge-99'), 'Unknown XCiT arch'),
    (dict(arch=dict(embed_dims=64, depth=4)), 'needs keys'),
    (dict(patch_size=12), 'patch_size must be 8 or 16'),
    (dict(out_indices=(3, 5, 7, 12)), 'out of range'),
    (dict(out_indices=(3, 7, 5, 11)), 'strictly increasing'),
    (dict(out_indices=(5, 7, 11)), 'must list 4 blocks'),
    (dict(frozen_stages=13), 'frozen_stages must be an int'),
    (dict(frozen_stages=-2), 'frozen_stages must be an int'),
    (dict(arch=dict(embed_dims=100, depth=4, num_heads=3)),
     'must divide embed_dims'),
    (dict(drop_path_schedule='cosine'), 'drop_path_schedule'),
])
def test_wrong_arguments_raise(kwargs, message):
    kwargs.setdefault('arch', 'n12')
    with pytest.raises(ValueError, match=message):
        XCiT(norm_cfg=BN, **kwargs)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_config_under_each_scope(scope, tmp_path):
    from mmengine.registry import DefaultScope, init_default_scope
    path = tmp_path / 'cfg.py'
    path.write_text(
        f"default_scope = '{scope}'\n"
        "custom_imports = dict(imports=['xcit_mm'], "
        "allow_failed_imports=False)\n"
        "backbone = dict(type='XCiT', arch='small-12', patch_size=8, "
        "norm_cfg=dict(type='BN'))\n")
    cfg = Config.fromfile(str(path))
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        init_default_scope(scope)
        model = MODELS.build(cfg.backbone)
    assert isinstance(model, XCiT) and model.patch_size == 8


def test_import_needs_neither_mmdet_nor_mmseg(repo_root):
    import subprocess
    import sys
    code = (
        "import sys\n"
        "sys.modules['mmdet'] = None\n"
        "sys.modules['mmseg'] = None\n"
        "import xcit_mm\n"
        "from mmengine.registry import MODELS\n"
        "m = MODELS.build(dict(type='XCiT', arch='n12', "
        "norm_cfg=dict(type='BN')))\n"
        "assert 'mmdet' not in sys.modules or sys.modules['mmdet'] is None\n"
        "print(type(m).__name__)\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=repo_root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'XCiT'


def test_default_out_indices_for_custom_depths():
    from xcit_mm.models.presets import default_out_indices
    assert default_out_indices(12) == ARCH_SETTINGS['small-12']['out_indices']
    assert default_out_indices(24) == ARCH_SETTINGS['small-24']['out_indices']
    for depth in range(4, 30):
        picks = default_out_indices(depth)
        assert all(0 <= a < b for a, b in zip(picks, picks[1:]))
        assert picks[-1] == depth - 1
    with pytest.raises(ValueError, match='at least 4 blocks'):
        default_out_indices(3)
