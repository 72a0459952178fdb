#!/usr/bin/env python
"""Numpy-only reader + reference XCiT for the foreign fixtures in this folder.

    python verify_fixtures.py [DIR]      # any Python with numpy (1.x or 2.x)

* reads ``*.pdparams`` with a restricted unpickler (numpy globals only) and
  ``*.ckpt`` with a small protobuf wire-format reader (no paddle, no
  mindspore, no protobuf package needed);
* maps both to the key names / layouts of the authors' PyTorch XCiT
  (facebookresearch/xcit ``xcit.py``);
* runs a float64 numpy XCiT forward up to the last XCA block with
  switchable maths and prints the max abs error against the recorded
  features for each variant, showing which maths each framework computes.
"""
import glob
import io
import json
import math
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError('global %s.%s not allowed' % (module, name))
        if name == '_reconstruct':
            return np.ndarray.__reduce__(np.zeros(1))[0]      # numpy's own _reconstruct
        if name == 'scalar':
            return np.zeros(1, np.float32)[0].__reduce__()[0]
        return getattr(np, name)


def load_pdparams(path):
    with open(path, 'rb') as f:
        return _NumpyOnlyUnpickler(f).load()


def _varint(buf, i):
    out = shift = 0
    while True:
        c = buf[i]
        i += 1
        out |= (c & 0x7F) << shift
        if c < 0x80:
            return out, i
        shift += 7


def _fields(buf):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError('wire type %d' % wt)
        yield num, wt, val


_MS_DTYPES = {'Float16': '<f2', 'Float32': '<f4', 'Float64': '<f8', 'Int8': 'i1', 'UInt8': 'u1',
              'Int16': '<i2', 'UInt16': '<u2', 'Int32': '<i4', 'UInt32': '<u4', 'Int64': '<i8',
              'UInt64': '<u8', 'Bool': '?'}


def load_ckpt(path):
    """MindSpore .ckpt: concatenated `Checkpoint` protobuf messages.

    Checkpoint{ repeated Value value = 1; }
    Value{ required string tag = 1; oneof { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
    TensorProto{ repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }
    """
    with open(path, 'rb') as f:
        buf = f.read()
    if buf[-17:-10] == b'crc_num':          # optional trailer written with crc_check=True
        buf = buf[:-17]
    parts, order = {}, []
    for num, wt, val in _fields(buf):
        assert num == 1 and wt == 2
        tag, tensor = None, None
        for n2, w2, v2 in _fields(val):
            if n2 == 1:
                tag = v2.decode('utf-8')
            elif n2 == 2:
                tensor = v2
            elif n2 == 3:
                raise NotImplementedError('MapTensor entry ' + str(tag))
        dims, ttype, content = [], None, b''
        for n3, w3, v3 in _fields(tensor):
            if n3 == 1:
                if w3 == 0:
                    dims.append(v3)
                else:                       # packed encoding
                    j = 0
                    while j < len(v3):
                        d, j = _varint(v3, j)
                        dims.append(d)
            elif n3 == 2:
                ttype = v3.decode('utf-8')
            elif n3 == 3:
                content = v3
        if tag not in parts:
            order.append(tag)
            parts[tag] = (dims, ttype, [])
        parts[tag][2].append(content)       # >512 MB tensors are split into several entries
    out = {}
    for tag in order:
        dims, ttype, chunks = parts[tag]
        raw = b''.join(chunks)
        if ttype == 'str':
            out[tag] = np.frombuffer(raw, '<U1').tobytes().decode('utf-32-le') if raw else ''
        else:
            out[tag] = np.frombuffer(raw, _MS_DTYPES[ttype]).reshape(dims).copy()
    return out


# --------------------------------------------------------------------------
# Conversion to the authors' PyTorch names / layouts
# --------------------------------------------------------------------------
def passl_to_torch(sd):
    """PASSL SwinWrapper state dict -> facebookresearch/xcit XCiT state dict."""
    out = {}
    for k, v in sd.items():
        if k == 'StructuredToParameterName@@':
            continue
        if k.startswith('head.fc_cls.'):
            k = 'head.' + k[len('head.fc_cls.'):]
        elif k.startswith('backbone.'):
            k = k[len('backbone.'):]
        else:
            raise KeyError(k)
        if k.endswith('._mean'):
            k = k[:-len('_mean')] + 'running_mean'
        elif k.endswith('._variance'):
            k = k[:-len('_variance')] + 'running_var'
        v = np.asarray(v)
        if k.endswith('.weight') and v.ndim == 2:      # paddle Linear weight is (in, out)
            v = v.T
        out[k] = np.ascontiguousarray(v)
    return out


def mindcv_to_torch(sd):
    """MindCV XCiT checkpoint -> facebookresearch/xcit XCiT state dict."""
    out = {}
    for k, v in sd.items():
        if not isinstance(v, np.ndarray):
            continue
        head, _, leaf = k.rpartition('.')
        leaf = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean',
                'moving_variance': 'running_var'}.get(leaf, leaf)   # gamma1/2/3 unchanged
        out[(head + '.' if head else '') + leaf] = v
    return out


# --------------------------------------------------------------------------
# Reference XCiT forward (float64), maths switchable
# --------------------------------------------------------------------------
_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x, approx):
    if approx == 'tanh':
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))


def conv2d(x, w, b=None, stride=1, pad=0, groups=1):
    B, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    xg = xp.reshape(B, groups, Cg, xp.shape[2], xp.shape[3])
    wg = w.reshape(groups, O // groups, Cg, kh, kw)
    out = np.zeros((B, groups, O // groups, Ho, Wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
            out += np.einsum('bgchw,goc->bgohw', patch, wg[:, :, :, i, j])
    out = out.reshape(B, O, Ho, Wo)
    if b is not None:
        out += b[None, :, None, None]
    return out


def bn(x, sd, p, eps):
    return ((x - sd[p + 'running_mean'][None, :, None, None])
            / np.sqrt(sd[p + 'running_var'][None, :, None, None] + eps)
            * sd[p + 'weight'][None, :, None, None] + sd[p + 'bias'][None, :, None, None])


def ln(x, sd, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[p + 'weight'] + sd[p + 'bias']


def linear(x, sd, p):
    return x @ sd[p + 'weight'].T + sd[p + 'bias']


def fourier_pe(sd, B, H, W, hidden_dim=32, temperature=10000):
    y = np.cumsum(np.ones((B, H, W)), 1)
    x = np.cumsum(np.ones((B, H, W)), 2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = temperature ** (2 * (np.arange(hidden_dim) // 2) / hidden_dim)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = np.stack((np.sin(px[..., 0::2]), np.cos(px[..., 1::2])), 4).reshape(B, H, W, -1)
    py = np.stack((np.sin(py[..., 0::2]), np.cos(py[..., 1::2])), 4).reshape(B, H, W, -1)
    pos = np.concatenate((py, px), 3).transpose(0, 3, 1, 2)
    return conv2d(pos, sd['pos_embeder.token_projection.weight'],
                  sd['pos_embeder.token_projection.bias'])


def xcit_tokens(sd, x, num_heads, l2norm=True, act='erf', ln_eps=1e-6, bn_eps=1e-5,
                dtype=np.float64):
    sd = {k: np.asarray(v, dtype) for k, v in sd.items()}
    x = np.asarray(x, dtype)
    n_stages = len({k.split('.')[2] for k in sd if k.startswith('patch_embed.proj.')})
    for s in range(n_stages):
        p = 'patch_embed.proj.%d.' % (2 * s)
        if s:
            x = gelu(x, act)
        x = bn(conv2d(x, sd[p + '0.weight'], None, 2, 1), sd, p + '1.', bn_eps)
    B, C, Hp, Wp = x.shape
    x = x.reshape(B, C, Hp * Wp).transpose(0, 2, 1)
    x = x + fourier_pe(sd, B, Hp, Wp).reshape(B, C, -1).transpose(0, 2, 1)
    N = Hp * Wp
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    for i in range(depth):
        p = 'blocks.%d.' % i
        # XCA
        h = ln(x, sd, p + 'norm1.', ln_eps)
        qkv = linear(h, sd, p + 'attn.qkv.').reshape(B, N, 3, num_heads, C // num_heads)
        q, k, v = qkv.transpose(2, 0, 3, 4, 1)          # (B, heads, d, N)
        if l2norm:
            q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
            k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
        attn = q @ k.transpose(0, 1, 3, 2) * sd[p + 'attn.temperature']
        attn = np.exp(attn - attn.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        h = (attn @ v).transpose(0, 3, 1, 2).reshape(B, N, C)
        x = x + sd[p + 'gamma1'] * linear(h, sd, p + 'attn.proj.')
        # LPI
        h = ln(x, sd, p + 'norm3.', ln_eps).transpose(0, 2, 1).reshape(B, C, Hp, Wp)
        h = conv2d(h, sd[p + 'local_mp.conv1.weight'], sd[p + 'local_mp.conv1.bias'], 1, 1, C)
        h = bn(gelu(h, act), sd, p + 'local_mp.bn.', bn_eps)
        h = conv2d(h, sd[p + 'local_mp.conv2.weight'], sd[p + 'local_mp.conv2.bias'], 1, 1, C)
        x = x + sd[p + 'gamma3'] * h.reshape(B, C, N).transpose(0, 2, 1)
        # MLP
        h = linear(gelu(linear(ln(x, sd, p + 'norm2.', ln_eps), sd, p + 'mlp.fc1.'), act),
                   sd, p + 'mlp.fc2.')
        x = x + sd[p + 'gamma2'] * h
    return x, (Hp, Wp)


VARIANTS = [('paper (L2-norm q,k; exact erf GELU)', dict(l2norm=True, act='erf')),
            ('no L2-norm; exact GELU', dict(l2norm=False, act='erf')),
            ('L2-norm; tanh GELU', dict(l2norm=True, act='tanh')),
            ('no L2-norm; tanh GELU', dict(l2norm=False, act='tanh'))]


def check(weights_path, features_path, loader, converter, prefix=''):
    raw = loader(weights_path)
    if isinstance(raw, dict) and 'state_dict' in raw:
        raw = raw['state_dict']
    if prefix:
        raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    sd = converter(raw)
    npz = np.load(features_path)
    info = json.loads(str(npz['meta']))
    print('%s  (features: %s)' % (os.path.basename(weights_path) + (' [' + prefix + ']' if prefix else ''),
                                 os.path.basename(features_path)))
    for name, kw in VARIANTS:
        errs = []
        for i in range(2):
            tok, grid = xcit_tokens(sd, npz['input_%d' % i], info['num_heads'], **kw)
            assert tuple(grid) == tuple(npz['grid_%d' % i])
            errs.append(float(np.abs(tok - npz['features_%d' % i]).max()))
        print('    %-40s max|diff| = %.2e' % (name, max(errs)))


def main():
    os.chdir(sys.argv[1] if len(sys.argv) > 1 else HERE)
    for p in (16, 8):
        feats = 'passl_p%d_features.npz' % p
        check('passl_p%d.pdparams' % p, feats, load_pdparams, passl_to_torch)
    check('passl_p16_train.pdparams', 'passl_p16_features.npz', load_pdparams, passl_to_torch)
    check('passl_p16_distill.pdparams', 'passl_p16_features.npz', load_pdparams, passl_to_torch,
          prefix='Student.')
    for p in (16, 8):
        check('mindcv_p%d.ckpt' % p, 'mindcv_p%d_features.npz' % p, load_ckpt, mindcv_to_torch)
    # model entries of the train-network checkpoint carry the bare network names;
    # adam_m.* / adam_v.* / global_step / learning_rate / beta*_power are ignored
    check('mindcv_p16_optim.ckpt', 'mindcv_p16_features.npz', load_ckpt, mindcv_to_torch)


if __name__ == '__main__':
    sys.exit(main())
