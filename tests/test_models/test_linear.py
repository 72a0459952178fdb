"""The oneDNN products: :class:`Linear` and the fused MLP GELU give
ATen's results and gradients, are taken where they
should be (seen in the dispatched ops) and stay out of autocast, tracing and
anything that is not float32 on the CPU."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from xcit_mm.models.linear import (Linear, _onednn_available, linear_gelu,
                                   onednn_linear)
from xcit_mm.models.xcit import Mlp

needs_onednn = pytest.mark.skipif(
    not _onednn_available(), reason='oneDNN products need x86-64 + mkldnn')


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


@pytest.mark.parametrize('shape', [(7, 12), (2, 9, 12), (2, 3, 5, 12)])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('out_features', [5, 30])
def test_linear_matches_aten(shape, bias, out_features):
    torch.manual_seed(0)
    layer = Linear(12, out_features, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    params = [x] + list(layer.parameters())
    got = grads(lambda: layer(x), *params)
    with onednn_linear(False):
        want = grads(lambda: layer(x), *params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('reduce', ['sum', 'mean'])
def test_linear_takes_expanded_gradients(reduce):
    """``out.sum().backward()`` hands the backward a stride-0 gradient."""
    torch.manual_seed(0)
    layer = Linear(12, 30)
    x = torch.randn(2, 9, 12, requires_grad=True)
    params = [x] + list(layer.parameters())

    def run():
        return torch.autograd.grad(getattr(layer(x), reduce)(), params)

    got = run()
    with onednn_linear(False):
        want = run()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_linear_takes_strided_inputs():
    torch.manual_seed(0)
    layer = Linear(12, 8)
    x = torch.randn(12, 20, requires_grad=True)
    got = grads(lambda: layer(x.t()), x, layer.weight)
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
    if _onednn_available():
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
