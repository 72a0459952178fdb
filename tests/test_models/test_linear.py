"""The oneDNN products: :class:`Linear` and the fused MLP GELU give
ATen's results and gradients, are taken where they should be (seen in the
dispatched ops) and stay out of autocast, tracing and anything that is not
float32 on the CPU; the process's choice (``onednn_chosen``): a missing or
wrong op falls back to ``F.linear`` with one warning, the environment
variable and the timing decide."""
import platform
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from xcit_mm.models import linear as linear_module
from xcit_mm.models.linear import Linear, linear_gelu, onednn_linear
from xcit_mm.models.xcit import Mlp

HAVE_ONEDNN = (platform.machine().lower() in ('x86_64', 'amd64')
               and torch.backends.mkldnn.is_available()
               and hasattr(torch.ops.mkldnn, '_linear_pointwise'))
needs_onednn = pytest.mark.skipif(
    not HAVE_ONEDNN, reason='oneDNN products need x86-64 + mkldnn')


@pytest.fixture(autouse=True)
def onednn_forced(monkeypatch):
    """Each test decides afresh, with the path forced on (where it works),
    before any op is logged."""
    monkeypatch.setenv('XCIT_MM_ONEDNN_LINEAR', '1')
    monkeypatch.setattr(linear_module, '_chosen', None)
    assert linear_module.onednn_chosen() == HAVE_ONEDNN


def decide_afresh(monkeypatch, env=None):
    if env is None:
        monkeypatch.delenv('XCIT_MM_ONEDNN_LINEAR')
    else:
        monkeypatch.setenv('XCIT_MM_ONEDNN_LINEAR', env)
    monkeypatch.setattr(linear_module, '_chosen', None)


class OpLog(TorchDispatchMode):
    """Names (and string arguments) of the ops dispatched inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket),
                           [a for a in args if isinstance(a, str)]))
        return func(*args, **(kwargs or {}))

    def names(self):
        return {name for name, _ in self.calls}


ONEDNN = 'mkldnn._linear_pointwise'


def grads(fn, *tensors):
    out = fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return [out.detach()] + list(torch.autograd.grad(out, tensors, g))


@needs_onednn
@pytest.mark.parametrize('shape', [(7, 12), (2, 9, 12), (2, 3, 5, 12)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('out_features', [5, 30])
def test_linear_matches_aten(shape, bias, out_features):
    torch.manual_seed(0)
    layer = Linear(12, out_features, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    params = [x] + list(layer.parameters())
    with OpLog() as log:
        got = grads(lambda: layer(x), *params)
    assert ONEDNN in log.names()  # else both sides would be F.linear
    with onednn_linear(False), OpLog() as log:
        want = grads(lambda: layer(x), *params)
    assert ONEDNN not in log.names()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize('reduce', ['sum', 'mean'])
def test_linear_takes_expanded_gradients(reduce):
    """``out.sum().backward()`` hands the backward a stride-0 gradient."""
    torch.manual_seed(0)
    layer = Linear(12, 30)
    x = torch.randn(2, 9, 12, requires_grad=True)
    params = [x] + list(layer.parameters())

    def run():
        return torch.autograd.grad(getattr(layer(x), reduce)(), params)

    with OpLog() as log:
        got = run()
    assert ONEDNN in log.names()
    with onednn_linear(False):
        want = run()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_linear_takes_strided_inputs():
    torch.manual_seed(0)
    layer = Linear(12, 8)
    x = torch.randn(12, 20, requires_grad=True)
    with OpLog() as log:
        got = grads(lambda: layer(x.t()), x, layer.weight)
    assert ONEDNN in log.names()
    with onednn_linear(False):
        want = grads(lambda: layer(x.t()), x, layer.weight)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_both_passes_run_through_onednn():
    layer = Linear(16, 32)
    x = torch.randn(4, 16, requires_grad=True)
    with OpLog() as forward:
        out = layer(x)
    assert ONEDNN in forward.names()
    assert 'aten.addmm' not in forward.names()
    with OpLog() as backward:
        out.sum().backward()
    assert ONEDNN in backward.names()
    assert not {'aten.mm', 'aten.addmm'} & backward.names()
    assert layer.weight.grad.shape == layer.weight.shape
    # frozen weights, no input gradient: a plain oneDNN product
    layer.requires_grad_(False)
    with OpLog() as frozen:
        layer(torch.randn(4, 16))
    assert ONEDNN in frozen.names()
    with onednn_linear(False), OpLog() as off:
        layer(torch.randn(4, 16))
    assert ONEDNN not in off.names()
    with torch.backends.mkldnn.flags(enabled=False), OpLog() as off:
        layer(torch.randn(4, 16))
    assert ONEDNN not in off.names()


@needs_onednn
def test_not_used_under_autocast_tracing_or_other_dtypes():
    layer = Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16), OpLog() as log:
        out = layer(x)
    assert out.dtype == torch.bfloat16
    assert ONEDNN not in log.names()
    graph = torch.jit.trace(layer, x).graph
    assert 'aten::linear' in str(graph) and 'mkldnn' not in str(graph)
    with OpLog() as log:
        out = layer.double()(x.double())
    assert out.dtype == torch.float64 and ONEDNN not in log.names()


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_fused_gelu(approximate):
    torch.manual_seed(0)
    mlp = Mlp(12, 48, dict(type='GELU', approximate=approximate)).eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad(), OpLog() as log:
        got = mlp(x)
    want = mlp.fc2(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias),
                          approximate=approximate))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if HAVE_ONEDNN:
        assert (ONEDNN, ['gelu', approximate]) in log.calls
        assert 'aten.gelu' not in log.names()
    # with gradients the activation stays a separate op (its input is
    # needed for the backward)
    assert linear_gelu(x.requires_grad_(), mlp.fc1.weight, mlp.fc1.bias) \
        is None


def test_mlp_with_another_activation_is_not_fused():
    mlp = Mlp(12, 48, dict(type='ReLU')).eval()
    x = torch.randn(3, 12)
    with torch.no_grad(), OpLog() as log:
        got = mlp(x)
    assert 'aten.relu' in log.names()
    torch.testing.assert_close(got, mlp.fc2(mlp.fc1(x).relu()))


# ------------------------------------------------ the process's choice


def count_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fn()
    return [str(w.message) for w in caught
            if '_linear_pointwise' in str(w.message)]


def check_falls_back(layer, x):
    """Forward and backward equal F.linear's, with no oneDNN op dispatched
    and exactly one warning over several calls."""
    x.requires_grad_()

    def calls():
        first = layer(x)  # decides (and warns), running the op itself
        torch.testing.assert_close(first, F.linear(x, layer.weight,
                                                   layer.bias))
        with OpLog() as log:
            for _ in range(3):
                got = grads(lambda: layer(x), x, layer.weight, layer.bias)
                with torch.no_grad():
                    layer(x)
                    Mlp(12, 24, dict(type='GELU')).eval()(x)
        assert ONEDNN not in log.names()
        want = grads(lambda: F.linear(x, layer.weight, layer.bias), x,
                     layer.weight, layer.bias)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)

    messages = count_warnings(calls)
    assert len(messages) == 1, messages
    assert 'F.linear' in messages[0]
    assert not linear_module.onednn_chosen()


@pytest.mark.parametrize('env', ['1', None])
def test_missing_op_falls_back_with_one_warning(monkeypatch, env):
    decide_afresh(monkeypatch, env)
    monkeypatch.setattr(torch.ops, 'mkldnn', types.SimpleNamespace())
    check_falls_back(Linear(12, 8), torch.randn(4, 12))


@needs_onednn
@pytest.mark.parametrize('wrong', ['values', 'shape', 'grad'])
def test_wrong_op_falls_back_with_one_warning(monkeypatch, wrong):
    op = torch.ops.mkldnn._linear_pointwise

    def bad(x, weight, *args):
        out = op(x, weight, *args)
        if wrong == 'values':
            return out * 1.01
        if wrong == 'shape':
            return out[..., :-1]
        # right forward, wrong backward: the transposed products are off
        return out + 1e-2 * (weight.stride(0) == 1)

    decide_afresh(monkeypatch)
    monkeypatch.setattr(torch.ops, 'mkldnn', types.SimpleNamespace(
        _linear_pointwise=bad))
    monkeypatch.setattr(linear_module, '_onednn_faster', lambda *s: True)
    check_falls_back(Linear(12, 8), torch.randn(4, 12))


def test_env_turns_it_off(monkeypatch):
    decide_afresh(monkeypatch, '0')
    layer = Linear(12, 8)
    with OpLog() as log:
        out = layer(torch.randn(4, 12, requires_grad=True))
        out.sum().backward()
        with torch.no_grad():
            Mlp(12, 24, dict(type='GELU')).eval()(torch.randn(4, 12))
    assert ONEDNN not in log.names()
    assert 'aten.addmm' in log.names()
    assert not linear_module.onednn_chosen()


def test_env_rejects_other_values(monkeypatch):
    decide_afresh(monkeypatch, 'yes')
    with pytest.raises(ValueError, match='XCIT_MM_ONEDNN_LINEAR=.yes.*0.*1'):
        Linear(12, 8)(torch.randn(4, 12))


@needs_onednn
@pytest.mark.parametrize('faster', [True, False])
def test_unset_env_takes_the_timing(monkeypatch, faster):
    decide_afresh(monkeypatch)
    timed = []
    monkeypatch.setattr(linear_module, '_onednn_faster',
                        lambda *shape: timed.append(shape) or faster)
    layer = Linear(12, 8)
    assert not count_warnings(lambda: layer(torch.randn(4, 12)))
    with OpLog() as log:
        layer(torch.randn(3, 12))
    assert (ONEDNN in log.names()) == faster
    assert timed == [(4, 12, 8)]  # once per shape: 3 rows time as 4
    assert linear_module.linear_choices() == {
        'rows<=4, 12->8': 'oneDNN' if faster else 'F.linear'}


@needs_onednn
def test_each_shape_takes_its_own_timing(monkeypatch):
    """oneDNN can lose at one size and win at another (a Zen 2, two
    threads: nano's products and small's): each shape is timed, large row
    counts on ``_TIMED_ROWS`` rows, and each follows its own result."""
    decide_afresh(monkeypatch)
    timed = []
    monkeypatch.setattr(linear_module, '_onednn_faster',
                        lambda *shape: timed.append(shape) or shape[1] == 16)
    assert linear_module.onednn_chosen()  # the op's check, before the log
    narrow, wide = Linear(12, 8), Linear(16, 8)
    many = linear_module._TIMED_ROWS + 1
    with OpLog() as log:
        narrow(torch.randn(5, 12))
    assert ONEDNN not in log.names()
    with OpLog() as log:
        wide(torch.randn(many, 16))
    assert ONEDNN in log.names()
    with OpLog() as log:  # fewer rows: another power of two, timed again
        wide(torch.randn(7, 16))
    assert ONEDNN in log.names()
    assert timed == [(5, 12, 8), (linear_module._TIMED_ROWS, 16, 8),
                     (7, 16, 8)]
    assert linear_module.linear_choices() == {
        'rows<=8, 12->8': 'F.linear', 'rows<=8, 16->8': 'oneDNN',
        f'rows<={2 * linear_module._TIMED_ROWS}, 16->8': 'oneDNN'}


@needs_onednn
@pytest.mark.parametrize('slowed', ['aten', 'onednn'])
def test_timing_picks_the_faster_product(monkeypatch, slowed):
    """The one-off timing follows what it measures: the side made slower
    (by 20 ms of CPU time a call; the timing reads CPU time) loses."""
    import time

    def slow(fn):
        def run(*args, **kwargs):
            end = time.process_time() + 0.02
            while time.process_time() < end:
                pass
            return fn(*args, **kwargs)
        return run

    if slowed == 'aten':
        monkeypatch.setattr(F, 'linear', slow(F.linear))
    else:
        monkeypatch.setattr(linear_module, '_product',
                            slow(linear_module._product))
    assert linear_module._onednn_faster() == (slowed == 'aten')


@pytest.mark.parametrize('env', ['1', None])
def test_first_use_inside_activation_checkpointing(monkeypatch, env):
    """The first product of the process may run inside a block under
    ``torch.utils.checkpoint`` (``with_cp=True``): the check's own backward
    must not set off the block's recomputation; training goes on and the
    gradients are ATen's."""
    from torch.utils.checkpoint import checkpoint
    decide_afresh(monkeypatch, env)
    layer = Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    out = checkpoint(lambda t: layer(t).relu(), x, use_reentrant=False)
    out.sum().backward()
    assert linear_module._chosen is not None  # decided inside the block
    expected = torch.autograd.grad(
        F.linear(x, layer.weight, layer.bias).relu().sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-4)
