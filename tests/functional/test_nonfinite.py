"""manualbp.detect_nonfinite: every manual backward checks its gradients for nan and inf, when asked."""

from __future__ import annotations

import importlib.util
import inspect
import re

import pytest
import torch
from torch.utils._pytree import tree_leaves

import manualbp
import manualbp.functional as MF
from manualbp import NonFiniteGradientError, detect_nonfinite, is_nonfinite_detection_enabled
from manualbp import nn as mnn
from manualbp.functional import _nonfinite
from manualbp.functional._dispatch import function
from manualbp.verify import seeded
from tests.conftest import CASES
from tests.functional.test_dispatch import function_classes

NAN = float("nan")
INHERITED = "already held them, so {op} is not where they first appeared"
PRODUCED = "Its incoming gradient is finite, so {op}'s backward produced them"


@pytest.fixture(autouse=True)
def _check_off_afterwards():
    """A failing test must not leave the process-wide switch on for the tests that follow."""
    yield
    detect_nonfinite(False)


def _net_with_nan_in_last_weight(backend) -> torch.nn.Sequential:
    """Linear(6, 5) -> ReLU -> Linear(5, 3) with a nan in the last layer's row for output 1."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(backend.Linear(6, 5), backend.ReLU(), backend.Linear(5, 3))
    with torch.no_grad():
        net[2].weight[1, 3] = NAN
    return net


def test_off_by_default():
    """A fresh copy of the switch's module starts off (this process's state may have been toggled)."""
    spec = importlib.util.spec_from_file_location("fresh_nonfinite", _nonfinite.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.is_nonfinite_detection_enabled() is False


def test_every_function_class_has_the_checked_backward():
    """@function wraps each Function's own backward once; the twin inherits it; the source stays."""
    classes = function_classes()
    assert {"LinearFunction", "ReLUMaxPool2dFunction", "CrossEntropyFunction"} <= {c.__name__ for c in classes}
    for cls in classes:
        backward = cls.backward
        assert backward.__code__.co_qualname == "check_backward.<locals>.checked_backward", cls.__name__
        # the class's own backward, or, for an op made by a factory (manualbp.functional.elementwise), the factory's
        own = backward.__wrapped__
        assert own.__qualname__.rpartition(".")[2] == "backward" and not hasattr(own, "__wrapped__"), cls.__name__
        assert own.__qualname__ == f"{cls.__qualname__}.backward" or "<locals>" in own.__qualname__, cls.__name__
        assert cls.compile_twin.backward is backward
        assert inspect.getsource(backward) == inspect.getsource(backward.__wrapped__)


def test_nan_in_a_weight_names_the_layer_and_gradient_while_the_loss_is_finite():
    """The loss reads only output 0, so it is finite; the nan weight of output 1 still poisons dL/dx of
    the last Linear in column 3 (0 * nan), which is where the check stops: LinearFunction, 'x', shape (4, 5)."""
    net = _net_with_nan_in_last_weight(mnn)
    loss = net(torch.randn(4, 6))[:, 0].sum()
    assert torch.isfinite(loss)
    with detect_nonfinite(), pytest.raises(NonFiniteGradientError) as error:
        loss.backward()
    message = str(error.value)
    assert message.startswith(
        "LinearFunction.backward returned a non-finite gradient of 'x' (forward input 0): "
        "4 nan and 0 inf among 20 elements, shape (4, 5), float32."
    )
    assert PRODUCED.format(op="LinearFunction") in message
    assert net[0].weight.grad is None  # stopped before the first layer


def test_off_the_same_nan_propagates_silently_like_torch():
    x = torch.randn(4, 6)
    manual, twin = _net_with_nan_in_last_weight(mnn), _net_with_nan_in_last_weight(torch.nn)
    for net in (manual, twin):
        net(x)[:, 0].sum().backward()
    assert torch.isnan(manual[0].weight.grad).any()
    torch.testing.assert_close(manual[0].weight.grad, twin[0].weight.grad, equal_nan=True)
    torch.testing.assert_close(manual[2].weight.grad, twin[2].weight.grad, equal_nan=True)


def test_an_overflow_in_the_weight_gradient_names_weight():
    """dL/dW = G^T X overflows float32 (4 * 1e20 * 1e20) while dL/dx = G W and dL/db = Σ G stay finite."""
    x = torch.full((4, 2), 1e20, requires_grad=True)
    weight = torch.randn(3, 2, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    y = MF.linear(x, weight, bias)
    with detect_nonfinite(), pytest.raises(FloatingPointError) as error:
        y.backward(torch.full_like(y, 1e20))
    message = str(error.value)
    assert "gradient of 'weight' (forward input 1): 0 nan and 6 inf among 6 elements, shape (3, 2)" in message
    assert PRODUCED.format(op="LinearFunction") in message


def test_log_of_zero_upstream_is_reported_as_inherited():
    """log(relu(x)) at x < 0: torch's log sends inf into ReLUFunction, whose mask makes 0 * inf = nan. The
    message says the grad_output already held the inf, so ReLU is not where it appeared."""
    x = torch.tensor([[-1.0, 2.0, -3.0]], requires_grad=True)
    loss = torch.log(MF.relu(x)).sum()
    with detect_nonfinite(), pytest.raises(RuntimeError) as error:
        loss.backward()
    message = str(error.value)
    assert message.startswith("ReLUFunction.backward returned a non-finite gradient of 'x' (forward input 0): 2 nan")
    assert "grad_output (0 nan and 2 inf among 3 elements, shape (1, 3), float32)" in message
    assert INHERITED.format(op="ReLUFunction") in message


def test_several_grad_outputs_are_named_by_index():
    """The fused ReLU+MaxPool2d has two outputs (values, pooling indices): the inherited inf is grad_outputs[0]."""
    x = -torch.rand(1, 1, 4, 4) - 0.5
    x[0, 0, 0, 0] = 1.0  # one live window, three dead ones (output 0 there)
    x.requires_grad_(True)
    loss = torch.log(MF.relu_max_pool2d(x, 2)).sum()
    with detect_nonfinite(), pytest.raises(NonFiniteGradientError, match=r"^ReLUMaxPool2dFunction\.backward") as error:
        loss.backward()
    assert "Its incoming grad_outputs[0] (0 nan and 3 inf among 4 elements, shape (1, 1, 2, 2)" in str(error.value)


@pytest.mark.parametrize("case", CASES)
def test_every_registry_op_passes_finite_gradients_and_stops_at_a_nan_grad_output(case):
    """With the check on, the ordinary backward raises nothing; a nan grad_output is stopped at the first
    manual backward, which names itself and says that the nan came in with its grad_output."""
    manual, _ = case.build(torch.float32)
    args = case.sample(torch.float32)
    with detect_nonfinite():
        out = tree_leaves(seeded(manual)(*args))[0]  # the first output (a recurrent layer's sequence)
        out.backward(torch.ones_like(out), retain_graph=True)  # finite: no false alarm, extreme cases included
        with pytest.raises(NonFiniteGradientError) as error:
            out.backward(torch.full_like(out, NAN))
    op = str(error.value).split(".", 1)[0]
    assert op in {cls.__name__ for cls in function_classes()}
    assert f"{op}.backward returned a non-finite gradient of '" in str(error.value)
    assert INHERITED.format(op=op) in str(error.value)


def test_context_manager_restores_the_previous_state_also_after_an_exception():
    assert is_nonfinite_detection_enabled() is False
    with detect_nonfinite():
        assert is_nonfinite_detection_enabled() is True
        with detect_nonfinite(False):
            assert is_nonfinite_detection_enabled() is False
        assert is_nonfinite_detection_enabled() is True
    assert is_nonfinite_detection_enabled() is False
    with pytest.raises(ValueError), detect_nonfinite():
        raise ValueError("user error inside the block")
    assert is_nonfinite_detection_enabled() is False
    x = torch.tensor([-1.0], requires_grad=True)
    with pytest.raises(NonFiniteGradientError), detect_nonfinite():
        torch.log(MF.relu(x)).sum().backward()
    assert is_nonfinite_detection_enabled() is False


def test_plain_call_switches_globally():
    x = torch.tensor([-1.0], requires_grad=True)
    manualbp.detect_nonfinite(True)
    assert manualbp.is_nonfinite_detection_enabled()
    with pytest.raises(NonFiniteGradientError):
        torch.log(MF.relu(x)).sum().backward()
    manualbp.detect_nonfinite(False)
    torch.log(MF.relu(x)).sum().backward()
    assert torch.isnan(x.grad).all()


def test_mode_must_be_a_bool():
    with pytest.raises(TypeError, match=r"detect_nonfinite: mode must be True or False, got 'off' \(str\)"):
        detect_nonfinite("off")
    assert is_nonfinite_detection_enabled() is False


def test_plain_training_step_stops_before_a_poisoned_batch_reaches_the_weights():
    """SGD steps on manualbp.nn layers: clean batches pass the check; a batch with a nan pixel makes the loss
    nan, and the loss's own backward raises before any gradient or update reaches the parameters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(mnn.Flatten(), mnn.Linear(16, 8), mnn.Tanh(), mnn.Linear(8, 3))
    loss_fn = mnn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def step(batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = loss_fn(model(batch), target)
        loss.backward()
        optimizer.step()
        return loss.item()

    with detect_nonfinite():
        losses = [step(x) for _ in range(5)]
        assert losses[-1] < losses[0]
        before = [p.detach().clone() for p in model.parameters()]
        poisoned = x.clone()
        poisoned[2, 0, 1, 1] = NAN
        with pytest.raises(NonFiniteGradientError) as error:
            step(poisoned)
    assert re.match(r"CrossEntropyFunction\.backward .* of 'x' .*: 3 nan and 0 inf .* shape \(6, 3\)", str(error.value))
    assert PRODUCED.format(op="CrossEntropyFunction") in str(error.value)
    for p, p0 in zip(model.parameters(), before):
        assert p.grad is None and torch.equal(p, p0)


def test_a_function_with_ctx_in_forward_gets_the_right_input_names():
    """The older style, forward(ctx, ...) without setup_context: gradients still map to the inputs."""

    @function
    class Divide(torch.autograd.Function):
        @staticmethod
        def forward(ctx, numerator, denominator):
            ctx.save_for_backward(denominator)
            return numerator / denominator

        @staticmethod
        def backward(ctx, grad):
            (denominator,) = ctx.saved_tensors
            return grad / denominator, None

    numerator = torch.ones(2, requires_grad=True)
    out = Divide.apply(numerator, torch.tensor([0.0, 1.0]))
    expected = "Divide.backward returned a non-finite gradient of 'numerator' (forward input 0): 0 nan and 1 inf"
    with detect_nonfinite(), pytest.raises(NonFiniteGradientError, match=re.escape(expected)):
        out.sum().backward()


def test_skipped_under_vmap_where_a_data_dependent_check_cannot_run():
    """vmap forbids the check's data-dependent ``if``: it is skipped, and the nan comes out as without it."""
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])
    with detect_nonfinite():
        grads = torch.func.vmap(torch.func.grad(lambda row: torch.log(MF.relu(row)).sum()))(x)
    assert torch.isnan(grads[x < 0]).all() and torch.isfinite(grads[x > 0]).all()


def test_compiled_backward_has_no_graph_break_with_the_check_on():
    """While torch.compile traces, the check is skipped (fullgraph=True would fail on a graph break)."""
    layer = mnn.Linear(3, 2)
    x = torch.randn(4, 3)
    compiled = torch.compile(lambda inp: layer(inp).sum(), backend="aot_eager", fullgraph=True)
    with detect_nonfinite():
        compiled(x).backward()
    expected = torch.autograd.grad(torch.nn.functional.linear(x, layer.weight, layer.bias).sum(), layer.weight)[0]
    torch.testing.assert_close(layer.weight.grad, expected)
