#!/usr/bin/env python
"""Generate XCiT fixtures with two foreign frameworks' own XCiT code.

    /tmp/fx_paddle/bin/python make_fixtures.py passl --passl-src /tmp/passl_src
    /tmp/fx_ms/bin/python     make_fixtures.py mindcv

Each run builds a small XCiT (embed 64, depth 4, heads 4, MLP ratio 0.5,
no class-attention layers, 10 classes) with the framework's own classes for
patch sizes 16 and 8, switches it to eval mode, overwrites every parameter
and buffer with seeded random values, saves it in the framework's native
format and records the token features after the last XCA block (B, N, C)
plus the patch grid (Hp, Wp) for two fixed inputs, as .npz.

This script is ours; the frameworks' code is not vendored. PASSL's files are
read from --passl-src (a directory that mirrors the PASSL repository paths,
see README.md) and executed under a synthetic package with small stubs for
the registries/helpers they import. MindCV's XCiT comes from the installed
mindcv package.
"""
import argparse
import importlib.util
import json
import os
import sys
import types
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# Model hyper-parameters shared by every fixture.
EMBED_DIM = 64
DEPTH = 4
NUM_HEADS = 4
MLP_RATIO = 0.5        # hidden 32: keeps files small, keeps fc1/fc2 non-square
NUM_CLASSES = 10
CLS_ATTN_LAYERS = 0    # both codes accept an empty class-attention stack
ETA = 1.0              # PASSL default; MindCV's default (None) crashes XCABlock
PATCH_SIZES = (16, 8)

INPUT_SHAPES = ((1, 3, 64, 96), (2, 3, 80, 48))
INPUT_SEED = 20240611
SEEDS = {'passl': {16: 1016, 8: 1008, 'teacher': 2016},
         'mindcv': {16: 3016, 8: 3008}}


# --------------------------------------------------------------------------
# Framework-independent helpers
# --------------------------------------------------------------------------
def make_inputs():
    rs = np.random.RandomState(INPUT_SEED)
    return [rs.standard_normal(s).astype(np.float32) for s in INPUT_SHAPES]


def random_value(role, shape, key, seed, fan_in=None):
    """Seeded random tensor for one state entry.

    The generator is keyed by (seed, entry name) so the values do not depend
    on iteration order.
    """
    rs = np.random.RandomState((seed * 1000003 + zlib.crc32(key.encode())) % (2 ** 32))
    shape = tuple(int(s) for s in shape)
    if role == 'weight':
        v = rs.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
    elif role in ('bias', 'norm_bias'):
        v = rs.normal(0.0, 0.1, shape)
    elif role in ('norm_weight', 'layer_scale'):
        v = rs.uniform(0.5, 1.5, shape)
    elif role == 'bn_mean':
        v = rs.normal(0.0, 0.2, shape)
    elif role == 'bn_var':
        v = rs.uniform(0.5, 2.0, shape)
    elif role == 'temperature':
        v = rs.uniform(0.5, 2.0, shape)
    elif role == 'cls_token':
        v = rs.normal(0.0, 0.5, shape)
    else:
        raise ValueError(role)
    return v.astype(np.float32)


def meta(framework, patch, seed, **extra):
    d = dict(framework=framework, patch_size=patch, embed_dim=EMBED_DIM, depth=DEPTH,
             num_heads=NUM_HEADS, mlp_ratio=MLP_RATIO, num_classes=NUM_CLASSES,
             cls_attn_layers=CLS_ATTN_LAYERS, eta=ETA, qkv_bias=True, tokens_norm=False,
             param_seed=seed, input_seed=INPUT_SEED,
             features='output of the last XCA block (before cls token / class attention), '
                      'shape (B, Hp*Wp, C), tokens in row-major (h, w) order')
    d.update(extra)
    return d


def save_features(path, inputs, feats, grids, info):
    arrays = {}
    for i, (x, f, g) in enumerate(zip(inputs, feats, grids)):
        arrays['input_%d' % i] = x
        arrays['features_%d' % i] = f.astype(np.float32)
        arrays['grid_%d' % i] = np.asarray(g, dtype=np.int64)
    arrays['meta'] = np.array(json.dumps(info, sort_keys=True))
    np.savez(path, **arrays)
    print('wrote', os.path.relpath(path, HERE), [tuple(f.shape) for f in feats], grids)


def check_close(a, b, what, atol=1e-5):
    err = float(np.max(np.abs(a - b)))
    if err > atol:
        raise RuntimeError('%s: reload mismatch %.3g' % (what, err))


# --------------------------------------------------------------------------
# PASSL (PaddlePaddle)
# --------------------------------------------------------------------------
PASSL_FILES = {
    # synthetic module name             -> path under --passl-src
    'passl_fx.modeling.backbones.vision_transformer':
        'passl_v110/modeling/backbones/vision_transformer.py',
    'passl_fx.modeling.backbones.xcit': 'passl_v110/modeling/backbones/xcit.py',
    'passl_fx.modeling.heads.clas_head': 'passl/modeling/heads/clas_head.py',
    'passl_fx.modeling.heads.swin_transformer_head':
        'passl_v110/modeling/heads/swin_transformer_head.py',
    'passl_fx.modeling.architectures.SwinWrapper':
        'passl/modeling/architectures/SwinWrapper.py',
    'passl_fx.modeling.architectures.DistillationWrapper':
        'passl_v110/modeling/architectures/DistillationWrapper.py',
    'passl_fx.hooks.checkpoint_hook': 'passl/hooks/checkpoint_hook.py',
}


class _Registry:
    """Stand-in for passl.utils.registry.Registry (register / get by name)."""

    def __init__(self, name):
        self.name = name
        self._map = {}

    def register(self, obj=None):
        if obj is None:
            return self._add
        return self._add(obj)

    def _add(self, obj):
        self._map[obj.__name__] = obj
        return obj

    def get(self, name):
        return self._map[name]


def _build_from_config(cfg, registry):
    cfg = dict(cfg)
    name = cfg.pop('name')
    return registry.get(name)(**cfg)


def install_paddle_shims(paddle):
    """Shims for running PASSL code on current CPU Paddle (2.6)."""
    # 1. `paddle.fluid` is gone; PASSL's checkpoint `save()` only needs the two
    #    tensor classes for isinstance checks.
    fluid = types.ModuleType('paddle.fluid')
    fluid.framework = types.SimpleNamespace(Variable=paddle.base.framework.Variable)
    fluid.core = types.SimpleNamespace(VarBase=paddle.Tensor)
    paddle.fluid = fluid
    sys.modules['paddle.fluid'] = fluid

    # 2. SyncBatchNorm has no CPU kernel. Same constructor defaults
    #    (momentum=0.9, epsilon=1e-5), same state names (weight, bias, _mean,
    #    _variance); eval mode uses the running statistics exactly as
    #    SyncBatchNorm does. The class is named SyncBatchNorm so that Paddle's
    #    auto-generated parameter names stay 'sync_batch_norm_N.w_0' etc.
    class SyncBatchNorm(paddle.nn.BatchNorm2D):
        def __init__(self, num_features, momentum=0.9, epsilon=1e-05, weight_attr=None,
                     bias_attr=None, data_format='NCHW', name=None):
            super().__init__(num_features, momentum=momentum, epsilon=epsilon,
                             weight_attr=weight_attr, bias_attr=bias_attr,
                             data_format=data_format, name=name)

    paddle.nn.SyncBatchNorm = SyncBatchNorm


def load_passl(src):
    import paddle

    def pkg(name):
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
        return m

    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    for p in ('passl_fx', 'passl_fx.modeling', 'passl_fx.modeling.backbones',
              'passl_fx.modeling.heads', 'passl_fx.modeling.architectures',
              'passl_fx.modules', 'passl_fx.utils', 'passl_fx.hooks'):
        pkg(p)
    backbones, heads, models, hooks = (_Registry('BACKBONES'), _Registry('HEADS'),
                                       _Registry('MODELS'), _Registry('HOOKS'))

    def normal_init(layer, mean=0, std=1, bias=0):      # init values are overwritten later
        layer.weight.set_value(np.random.normal(mean, std, layer.weight.shape).astype('float32'))
        if getattr(layer, 'bias', None) is not None:
            layer.bias.set_value(np.full(layer.bias.shape, bias, 'float32'))

    stub('passl_fx.modeling.backbones.builder', BACKBONES=backbones)
    stub('passl_fx.modeling.backbones.vit', to_2tuple=lambda x: tuple([x] * 2))
    stub('passl_fx.modeling.backbones.base_transformer', QuickGELU=paddle.nn.GELU)
    stub('passl_fx.utils.logger', get_logger=lambda *a, **k: __import__('logging').getLogger('passl'))
    stub('passl_fx.modeling.heads.builder', HEADS=heads)
    stub('passl_fx.modules.init', normal_init=normal_init, reset_parameters=lambda m: None)
    stub('passl_fx.modeling.architectures.builder', MODELS=models,
         build_model=lambda cfg: _build_from_config(cfg, models))
    stub('passl_fx.hooks.hook', Hook=object)
    stub('passl_fx.hooks.builder', HOOKS=hooks)
    sys.modules['passl_fx.modeling.backbones'].build_backbone = \
        lambda cfg: _build_from_config(cfg, backbones)
    sys.modules['passl_fx.modeling.heads'].build_head = lambda cfg: _build_from_config(cfg, heads)

    mods = {}
    for name, rel in PASSL_FILES.items():
        path = os.path.join(src, rel)
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mods[name.rsplit('.', 1)[1]] = mod
    return mods, models


def passl_model_cfg(patch):
    return dict(name='SwinWrapper',
                architecture=dict(name='XCiT', patch_size=patch, embed_dim=EMBED_DIM, depth=DEPTH,
                                  num_heads=NUM_HEADS, mlp_ratio=MLP_RATIO,
                                  cls_attn_layers=CLS_ATTN_LAYERS, eta=ETA, tokens_norm=False),
                head=dict(name='SwinTransformerClsHead', in_channels=EMBED_DIM,
                          num_classes=NUM_CLASSES))


def passl_roles(model):
    import paddle.nn as nn
    from paddle.nn.layer.norm import _BatchNormBase
    roles = {}
    for lname, layer in model.named_sublayers(include_self=True):
        pre = lname + '.' if lname else ''
        if isinstance(layer, nn.Linear):          # weight (in, out)
            roles[pre + 'weight'] = ('weight', layer.weight.shape[0])
            roles[pre + 'bias'] = ('bias', None)
        elif isinstance(layer, nn.Conv2D):        # weight (out, in/groups, kh, kw)
            roles[pre + 'weight'] = ('weight', int(np.prod(layer.weight.shape[1:])))
            roles[pre + 'bias'] = ('bias', None)
        elif isinstance(layer, nn.LayerNorm):
            roles[pre + 'weight'] = ('norm_weight', None)
            roles[pre + 'bias'] = ('norm_bias', None)
        elif isinstance(layer, _BatchNormBase):
            roles[pre + 'weight'] = ('norm_weight', None)
            roles[pre + 'bias'] = ('norm_bias', None)
            roles[pre + '_mean'] = ('bn_mean', None)
            roles[pre + '_variance'] = ('bn_var', None)
    out = {}
    for k in model.state_dict():
        leaf = k.rsplit('.', 1)[-1]
        if k in roles:
            out[k] = roles[k]
        elif leaf in ('gamma1', 'gamma2', 'gamma3'):
            out[k] = ('layer_scale', None)
        elif leaf == 'temperature':
            out[k] = ('temperature', None)
        elif leaf == 'cls_token':
            out[k] = ('cls_token', None)
        else:
            raise KeyError('no randomisation rule for ' + k)
    return out


def passl_randomise(model, seed):
    roles = passl_roles(model)
    sd = model.state_dict()
    values = {}
    for k, t in sd.items():
        role, fan_in = roles[k]
        v = random_value(role, t.shape, k, seed, fan_in)
        t.set_value(v)
        values[k] = v
    for k, t in model.state_dict().items():      # every entry really changed
        assert np.array_equal(t.numpy(), values[k]), k
    return values


def passl_features(paddle, model, inputs):
    store = {}
    bb = model.backbone
    h1 = bb.blocks[-1].register_forward_post_hook(
        lambda layer, inp, out: store.__setitem__('feat', out.numpy().copy()))
    h2 = bb.patch_embed.register_forward_post_hook(
        lambda layer, inp, out: store.__setitem__('grid', tuple(int(v) for v in out[1])))
    feats, grids = [], []
    with paddle.no_grad():
        for x in inputs:
            model(paddle.to_tensor(x), mode='extract')   # SwinWrapper -> XCiT.forward
            feats.append(store['feat'])
            grids.append(store['grid'])
    h1.remove()
    h2.remove()
    return feats, grids


def run_passl(src, outdir):
    import scipy  # noqa: F401  (must be imported before paddle on this setup)
    import paddle
    paddle.set_device('cpu')
    paddle.seed(0)
    install_paddle_shims(paddle)
    mods, models = load_passl(src)
    build = lambda cfg: _build_from_config(cfg, models)
    inputs = make_inputs()
    versions = dict(paddlepaddle=paddle.__version__, numpy=np.__version__,
                    python=sys.version.split()[0])

    p16 = None
    for patch in PATCH_SIZES:
        seed = SEEDS['passl'][patch]
        model = build(passl_model_cfg(patch))
        model.eval()
        values = passl_randomise(model, seed)
        feats, grids = passl_features(paddle, model, inputs)
        path = os.path.join(outdir, 'passl_p%d.pdparams' % patch)
        paddle.save(model.state_dict(), path)
        print('wrote', os.path.basename(path), len(values), 'entries')
        # reload into a fresh model and compare
        fresh = build(passl_model_cfg(patch))
        fresh.eval()
        fresh.set_state_dict(paddle.load(path))
        f2, _ = passl_features(paddle, fresh, inputs)
        for a, b in zip(feats, f2):
            check_close(a, b, path)
        save_features(os.path.join(outdir, 'passl_p%d_features.npz' % patch), inputs, feats,
                      grids, meta('passl', patch, seed, **versions))
        if patch == 16:
            p16 = (model, values, feats)

    model, values, feats = p16
    # ---- training checkpoint, in the structure PASSL's CheckpointHook writes
    iters_per_epoch = 1
    sched = paddle.optimizer.lr.LinearWarmup(
        learning_rate=paddle.optimizer.lr.CosineAnnealingDecay(
            learning_rate=5e-4, T_max=400 * iters_per_epoch, eta_min=1e-5),
        warmup_steps=5 * iters_per_epoch, start_lr=1e-6, end_lr=5e-4)
    no_decay = [p.name for n, p in model.named_parameters()
                if any(s in n for s in ('temperature', 'pos_embed', 'cls_token', 'dist_token'))]
    opt = paddle.optimizer.AdamW(sched, beta1=0.9, beta2=0.999, weight_decay=0.05,
                                 parameters=model.parameters(),
                                 apply_decay_param_fun=lambda name: name not in no_decay)
    model.train()
    img = paddle.to_tensor(inputs[1])
    label = paddle.to_tensor(np.eye(NUM_CLASSES, dtype=np.float32)[[3, 7]])
    losses = model(img, label, mode='train')           # SwinWrapper.train_iter
    losses['loss'].backward()
    opt.step()
    opt.clear_grad()
    sched.step()
    # put the fixture weights back so passl_p16_features.npz applies to this file too
    model.set_state_dict(values)
    model.eval()
    f3, _ = passl_features(paddle, model, inputs)
    for a, b in zip(feats, f3):
        check_close(a, b, 'restored p16')
    trainer = types.SimpleNamespace(current_epoch=0, model=model, optimizer=opt, lr_scheduler=sched)
    hook = mods['checkpoint_hook'].CheckpointHook()
    hook.save_checkpoint(outdir, trainer, filename_tmpl='passl_p16_train.pdparams')
    print('wrote passl_p16_train.pdparams (PASSL CheckpointHook.save_checkpoint)')

    # ---- distillation wrapper: Teacher (other random values) + Student (= p16)
    distill = mods['DistillationWrapper'].DistillationWrapper(
        models=[{'Teacher': passl_model_cfg(16)}, {'Student': passl_model_cfg(16)}],
        infer_model_key='Student')
    distill.eval()
    passl_randomise(distill.Teacher, SEEDS['passl']['teacher'])
    distill.Student.set_state_dict(values)
    f4, _ = passl_features(paddle, distill.Student, inputs)
    for a, b in zip(feats, f4):
        check_close(a, b, 'distill student')
    paddle.save(distill.state_dict(), os.path.join(outdir, 'passl_p16_distill.pdparams'))
    print('wrote passl_p16_distill.pdparams')


# --------------------------------------------------------------------------
# MindCV (MindSpore)
# --------------------------------------------------------------------------
def mindcv_build(patch):
    from mindcv.models.xcit import XCiT
    return XCiT(patch_size=patch, num_classes=NUM_CLASSES, embed_dim=EMBED_DIM, depth=DEPTH,
                num_heads=NUM_HEADS, mlp_ratio=MLP_RATIO, qkv_bias=True,
                cls_attn_layers=CLS_ATTN_LAYERS, eta=ETA, tokens_norm=False)


def mindcv_roles(net):
    from mindspore import nn
    roles = {}
    for cname, cell in net.cells_and_names():
        pre = cname + '.' if cname else ''
        if isinstance(cell, nn.Dense):             # weight (out, in)
            roles[pre + 'weight'] = ('weight', cell.weight.shape[1])
            roles[pre + 'bias'] = ('bias', None)
        elif isinstance(cell, nn.Conv2d):          # weight (out, in/group, kh, kw)
            roles[pre + 'weight'] = ('weight', int(np.prod(cell.weight.shape[1:])))
            roles[pre + 'bias'] = ('bias', None)
        elif isinstance(cell, nn.LayerNorm):
            roles[pre + 'gamma'] = ('norm_weight', None)
            roles[pre + 'beta'] = ('norm_bias', None)
        elif isinstance(cell, nn.BatchNorm2d):
            roles[pre + 'gamma'] = ('norm_weight', None)
            roles[pre + 'beta'] = ('norm_bias', None)
            roles[pre + 'moving_mean'] = ('bn_mean', None)
            roles[pre + 'moving_variance'] = ('bn_var', None)
    out = {}
    for k, _ in net.parameters_and_names():
        leaf = k.rsplit('.', 1)[-1]
        if k in roles:
            out[k] = roles[k]
        elif leaf in ('gamma1', 'gamma2', 'gamma3'):
            out[k] = ('layer_scale', None)
        elif leaf == 'temperature':
            out[k] = ('temperature', None)
        elif leaf == 'cls_token':
            out[k] = ('cls_token', None)
        else:
            raise KeyError('no randomisation rule for ' + k)
    return out


def mindcv_randomise(net, seed):
    from mindspore import Tensor
    roles = mindcv_roles(net)
    values = {}
    for k, p in net.parameters_and_names():
        role, fan_in = roles[k]
        v = random_value(role, p.shape, k, seed, fan_in)
        p.set_data(Tensor(v))
        values[k] = v
    for k, p in net.parameters_and_names():
        assert np.array_equal(p.asnumpy(), values[k]), k
    return values


def mindcv_set(net, values):
    from mindspore import Tensor
    for k, p in net.parameters_and_names():
        p.set_data(Tensor(values[k]))


def mindcv_features(net, inputs):
    from mindspore import Tensor
    store = {}
    h1 = net.blocks[-1].register_forward_hook(
        lambda cell, inp, out: store.__setitem__('feat', out.asnumpy().copy()))
    h2 = net.patch_embed.register_forward_hook(
        lambda cell, inp, out: store.__setitem__('grid', tuple(int(v) for v in out[1])))
    feats, grids = [], []
    for x in inputs:
        net(Tensor(x))                                 # XCiT.construct
        feats.append(store['feat'])
        grids.append(store['grid'])
    h1.remove()
    h2.remove()
    return feats, grids


def run_mindcv(outdir):
    import mindspore as ms
    import mindcv
    from mindspore import Tensor
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target='CPU')
    ms.set_seed(0)
    inputs = make_inputs()
    versions = dict(mindspore=ms.__version__, mindcv=mindcv.__version__, numpy=np.__version__,
                    python=sys.version.split()[0])

    p16 = None
    for patch in PATCH_SIZES:
        seed = SEEDS['mindcv'][patch]
        net = mindcv_build(patch)
        net.set_train(False)
        values = mindcv_randomise(net, seed)
        feats, grids = mindcv_features(net, inputs)
        path = os.path.join(outdir, 'mindcv_p%d.ckpt' % patch)
        ms.save_checkpoint(net, path)
        os.chmod(path, 0o644)           # save_checkpoint leaves files read-only (0400)
        print('wrote', os.path.basename(path), len(values), 'entries')
        fresh = mindcv_build(patch)
        fresh.set_train(False)
        not_loaded = ms.load_param_into_net(fresh, ms.load_checkpoint(path))
        assert not any(not_loaded), not_loaded
        f2, _ = mindcv_features(fresh, inputs)
        for a, b in zip(feats, f2):
            check_close(a, b, path)
        save_features(os.path.join(outdir, 'mindcv_p%d_features.npz' % patch), inputs, feats,
                      grids, meta('mindcv', patch, seed, **versions))
        if patch == 16:
            p16 = (net, values, feats)

    # ---- training checkpoint, as MindCV's StateMonitor saves it: the
    #      train network (model + optimizer state) of mindcv.utils.create_trainer
    net, values, feats = p16
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer
    from mindcv.utils import create_trainer
    loss = create_loss(name='CE', label_smoothing=0.1)
    opt = create_optimizer(net.trainable_params(), opt='adamw', lr=5e-4, weight_decay=0.05,
                           weight_decay_filter='norm_and_bias')
    model = create_trainer(net, loss, opt, metrics={'acc': ms.nn.Accuracy()}, amp_level='O0',
                           amp_cast_list=None, loss_scale_type='fixed', loss_scale=1.0,
                           drop_overflow_update=False)
    train_net = model._train_network
    train_net.set_train(True)
    train_net(Tensor(inputs[1]), Tensor(np.array([3, 7], dtype=np.int32)))
    # put the fixture weights back so mindcv_p16_features.npz applies to this file too
    mindcv_set(net, values)
    net.set_train(False)
    f3, _ = mindcv_features(net, inputs)
    for a, b in zip(feats, f3):
        check_close(a, b, 'restored p16')
    path = os.path.join(outdir, 'mindcv_p16_optim.ckpt')
    ms.save_checkpoint(train_net, path)
    os.chmod(path, 0o644)
    print('wrote mindcv_p16_optim.ckpt (%s)' % type(train_net).__name__)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('framework', choices=['passl', 'mindcv'])
    ap.add_argument('--passl-src', default='/tmp/passl_src',
                    help='directory mirroring the PASSL repository (see README.md)')
    ap.add_argument('--out', default=HERE)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.framework == 'passl':
        run_passl(os.path.abspath(args.passl_src), args.out)
    else:
        run_mindcv(args.out)


if __name__ == '__main__':
    main()
