"""Small helpers shared by the tests."""
import argparse
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

BN = dict(type='BN', requires_grad=True)


def syncbn_to_bn(node):
    """Replaces every SyncBN with BN in a config tree, in place (tests only:
    no process group on the test machine)."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            syncbn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            syncbn_to_bn(value)


def randomize_(module: torch.nn.Module, seed: int = 0):
    """Random values for the tensors that init leaves constant (norm stats
    and affine, layer scale, temperature), so parity checks mean something.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif re.search(r'(running_mean|gamma\d|temperature|norm\d?\.\w+|'
                           r'bn\.\w+|proj\.\d+\.1\.\w+)$', name):
                tensor.copy_(
                    torch.randn(tensor.shape, generator=gen) * 0.2 +
                    (1.0 if name.endswith(('weight', 'temperature')) or
                     re.search(r'gamma\d$', name) else 0.0))
    return module


def check_norm_state(modules, train_state: bool) -> bool:
    """Whether every batch norm in ``modules`` is in ``train_state``."""
    for mod in modules:
        if isinstance(mod, _BatchNorm) and mod.training != train_state:
            return False
    return True


def timm_to_authors(state_dict):
    """timm XCiT keys -> the authors' ImageNet layout (pos_embeder, fused
    class-attention qkv), wrapped as the authors saved it."""
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k.replace('pos_embed.', 'pos_embeder.')] = v
    for i in range(2):
        pre = f'cls_attn_blocks.{i}.attn.'
        if pre + 'q.weight' in out:
            out[pre + 'qkv.weight'] = torch.cat(
                [out.pop(pre + s + '.weight') for s in 'qkv'])
            out[pre + 'qkv.bias'] = torch.cat(
                [out.pop(pre + s + '.bias') for s in 'qkv'])
    return {
        'model': out,
        'optimizer': {},
        'epoch': 399,
        'args': argparse.Namespace(model='xcit', lr=5e-4)
    }


def timm_to_mmpretrain(state_dict, patch_size):
    """timm XCiT keys -> mmpretrain's XCiT layout under ``backbone.``."""
    out = OrderedDict()
    for k, v in state_dict.items():
        m = re.match(r'patch_embed\.proj\.(\d+)\.([01])\.(.+)', k)
        if m:
            k = (f'patch_embed.proj.{int(m.group(1)) // 2}.'
                 f'{"conv" if m.group(2) == "0" else "bn"}.{m.group(3)}')
        k = k.replace('pos_embed.token_projection.',
                      'pos_embed.token_projection.conv.')
        k = re.sub(r'^blocks\.', 'xca_layers.', k)
        k = re.sub(r'^cls_attn_blocks\.', 'ca_layers.', k)
        k = k.replace('.local_mp.conv1.', '.local_mp.conv1.conv.')
        k = k.replace('.local_mp.bn.', '.local_mp.conv1.bn.')
        k = k.replace('.local_mp.conv2.', '.local_mp.conv2.conv.')
        k = k.replace('.mlp.fc1.', '.ffn.layers.0.0.')
        k = k.replace('.mlp.fc2.', '.ffn.layers.1.')
        if k.startswith('head.'):
            out['head.fc.' + k[len('head.'):]] = v
        else:
            out['backbone.' + k] = v
    return {'state_dict': out, 'meta': {'mmpretrain_version': '1.2.0'}}


def reference_pyramid(feats, state_dict, patch_size):
    """The authors' fpn1..fpn4 in plain functional ops (eval mode)."""
    sd = {k[len('adapter.levels.'):]: v
          for k, v in state_dict.items() if k.startswith('adapter.levels.')}

    def deconv(x, pre):
        return F.conv_transpose2d(x, sd[pre + '.weight'], sd[pre + '.bias'],
                                  stride=2)

    if patch_size == 16:
        x = deconv(feats[0], '0.0')
        x = F.batch_norm(x, sd['0.1.running_mean'], sd['0.1.running_var'],
                         sd['0.1.weight'], sd['0.1.bias'], False, 0.0, 1e-5)
        x = deconv(F.gelu(x), '0.3')
        return [x, deconv(feats[1], '1.0'), feats[2],
                F.max_pool2d(feats[3], 2)]
    return [deconv(feats[0], '0.0'), feats[1], F.max_pool2d(feats[2], 2),
            F.max_pool2d(feats[3], 4)]


def pyramid_sizes(h, w, patch_size):
    """The sizes of the four maps (strides 4, 8, 16, 32) for an h x w input.

    The token grid is ``ceil(h / p) x ceil(w / p)`` (padded stride-2 convs);
    the levels above stride ``p`` are deconvolved from it, those below
    pooled from it with the floor, as in the authors' model, and at least
    one pixel.
    """
    gh, gw = -(-h // patch_size), -(-w // patch_size)
    sizes = []
    for stride in (4, 8, 16, 32):
        if stride <= patch_size:
            f = patch_size // stride
            sizes.append((gh * f, gw * f))
        else:
            f = stride // patch_size
            sizes.append((max(1, gh // f), max(1, gw // f)))
    return sizes


SMALL_ARCH = dict(embed_dims=64, depth=4, num_heads=4)


def small_xcit(patch_size=16, **kwargs):
    """A 4-block, 64-channel XCiT with BN: the published layers, cheap."""
    from xcit_mm.models import XCiT
    kwargs.setdefault('norm_cfg', BN)
    return XCiT(arch=SMALL_ARCH, patch_size=patch_size, **kwargs)


def tools_module(name, folder=''):
    """Imports ``tools/<folder>/<name>.py`` (the tools are scripts, not a
    package), leaving ``sys.path`` as it was: ``tools/`` holds ``test.py``
    and ``train.py``, which must not shadow other modules."""
    import importlib
    import os.path as osp
    import sys
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                    'tools', folder)
    saved = list(sys.path)
    sys.path.insert(0, path.rstrip('/'))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
