"""mlp and lenet5: both backends build the same network with the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp.functional as MF
from manualbp.models import cross_entropy, lenet5, mlp
from manualbp.nn import LinearReLU, ManualModule, ReLUMaxPool2d


def _walk(fn):
    """Every autograd node reachable from ``fn``."""
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return seen


@pytest.mark.parametrize(
    "build, in_shape",
    [
        (lambda b, s: mlp((32, 16), "tanh", 0.0, s, 10, b), (1, 8, 8)),
        (lambda b, s: mlp((20,), "gelu", 0.3, s, 10, b), (1, 28, 28)),
        (lambda b, s: lenet5(s, 10, "relu", b), (1, 28, 28)),
        (lambda b, s: lenet5(s, 10, "elu", b), (1, 8, 8)),
    ],
    ids=["mlp-digits", "mlp-dropout-mnist", "lenet5-mnist", "lenet5-digits"],
)
def test_backends_share_names_weights_outputs_and_gradients(build, in_shape):
    torch.manual_seed(0)
    manual = build("manual", in_shape)
    torch.manual_seed(0)
    reference = build("autograd", in_shape)
    assert list(manual.state_dict()) == list(reference.state_dict())
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)
    leaves = [m for m in manual.modules() if not list(m.children())]
    assert all(
        isinstance(m, (ManualModule, LinearReLU, ReLUMaxPool2d)) for m in leaves
    )  # fused layers have no torch twin
    assert not any(isinstance(m, ManualModule) for m in reference.modules())

    x = torch.randn(3, *in_shape)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        out = manual(x)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ref = reference(x)
    assert out.shape == (3, 10)
    assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(manual.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, msg=name)

    native = {type(n).__name__ for n in _walk(out.grad_fn)} - {"AccumulateGrad"}
    assert all(name.endswith("FunctionBackward") for name in native), native


def test_lenet5_shapes():
    assert lenet5((1, 28, 28)).fc1.in_features == 400
    assert lenet5((1, 8, 8)).fc1.in_features == 64
    assert lenet5((3, 32, 32)).fc1.in_features == 16 * 6 * 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be"):
        mlp(backend="jax")
    with pytest.raises(ValueError, match="backend must be"):
        cross_entropy("jax")
    assert cross_entropy("manual") is MF.cross_entropy and cross_entropy("autograd") is F.cross_entropy
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp(activation="swish")
    with pytest.raises(ValueError, match="in_shape must be"):
        lenet5(in_shape=(28, 28))
