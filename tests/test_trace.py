"""manualbp.trace: activations, error signals ∂L/∂y and parameter gradients of every layer, on both backends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp
import manualbp.functional as MF
from manualbp.models import lenet5, mlp, recurrent
from manualbp.trace import LayerTrace, Trace, _first_tensor

BUILDS = {
    "mlp": lambda backend: mlp((16, 12), "tanh", 0.0, (1, 8, 8), 10, backend),
    "lenet5": lambda backend: lenet5((1, 8, 8), 10, "relu", backend),
    # the output sequence gets no gradient (the classifier reads h_n): its error stays None
    "lstm": lambda backend: recurrent("lstm", 6, 2, True, (1, 8, 8), 10, backend),
    "gru": lambda backend: recurrent("gru", 6, 1, False, (1, 8, 8), 10, backend),
}
CASES = [(arch, backend) for arch in BUILDS for backend in ("manual", "autograd")]
IDS = [f"{arch}-{backend}" for arch, backend in CASES]


def _loss_fn(backend):
    return MF.cross_entropy if backend == "manual" else F.cross_entropy


def _no_hooks_left(model: torch.nn.Module) -> bool:
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return False
        if getattr(module, "_backward_pre_hooks", None):
            return False
    return all(not p._backward_hooks for p in model.parameters())


@pytest.mark.parametrize("arch, backend", CASES, ids=IDS)
def test_trace_records_what_backprop_computes(arch, backend):
    torch.manual_seed(0)
    model = BUILDS[arch](backend)
    x, t = torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 5, 9, 5])
    with manualbp.trace(model) as tr:
        logits = model(x)
        loss = _loss_fn(backend)(logits, t)
        loss.backward()

    assert isinstance(tr, Trace)
    leaves = [name for name, m in model.named_modules() if not list(m.children())]
    assert list(tr.layers) == leaves  # every leaf, in forward order
    assert all(isinstance(layer, LayerTrace) for layer in tr.layers.values())

    # dL/dW recorded == .grad (which started at None)
    assert list(tr.param_grads()) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert_close(tr.param_grads()[name], p.grad)

    # the last layer's error is (softmax - onehot) / N for mean cross entropy
    expected = (torch.softmax(logits.detach(), 1) - F.one_hot(t, 10).float()) / len(t)
    assert_close(tr.layers["out"].error, expected)
    assert_close(tr.layers["out"].activation, logits.detach())

    # every error equals autograd's dL/dy_l, recomputed on a fresh forward with the activations kept
    kept = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: kept.__setitem__(name, _first_tensor(out)))
        for name, module in model.named_modules()
        if name in tr.layers
    ]
    loss2 = _loss_fn(backend)(model(x), t)
    for h in handles:
        h.remove()
    with_grad = [name for name in tr.layers if kept[name].requires_grad]
    grads = torch.autograd.grad(loss2, [kept[name] for name in with_grad], allow_unused=True)
    for name, grad in zip(with_grad, grads):
        layer = tr.layers[name]
        if grad is None:  # a recurrent layer's output sequence, when only its final state is read
            assert layer.error is None, name
            continue
        assert layer.error is not None, name
        assert layer.error.shape == layer.activation.shape == kept[name].shape, name
        assert_close(layer.error, grad, msg=lambda m, name=name: f"{name}: {m}")
    # the first layer's output (flatten of the input, the recurrent archs' rows of the image) is the only
    # possible exception
    first = next(iter(tr.layers))
    assert set(tr.layers) - set(with_grad) <= {first}
    if first not in with_grad:
        assert tr.layers[first].error is None

    assert _no_hooks_left(model)


def test_linear_weight_gradient_is_error_times_input():
    """∂L/∂W_l = δ_lᵀ · x_l for a linear layer, read off the trace."""
    torch.manual_seed(0)
    model = mlp((16,), "tanh", 0.0, (1, 8, 8), 10, "manual")
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    with manualbp.trace(model) as tr:
        MF.cross_entropy(model(x), t).backward()
    fc1, out = tr["fc1"], tr["out"]
    assert_close(fc1.param_grads["weight"], fc1.error.T @ tr["flatten"].activation)
    assert_close(fc1.param_grads["bias"], fc1.error.sum(0))
    assert_close(out.param_grads["weight"], out.error.T @ tr["act1"].activation)


def test_a_fused_linear_relu_layer_masks_its_error_first():
    """For y = relu(x Wᵀ + b) as one layer (manualbp.nn.LinearReLU): ∂L/∂W = (δ ⊙ [y > 0])ᵀ · x."""
    torch.manual_seed(0)
    model = mlp((16,), "relu", 0.0, (1, 8, 8), 10, "manual")
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    with manualbp.trace(model) as tr:
        MF.cross_entropy(model(x), t).backward()
    fc1 = tr["fc1"]
    masked = fc1.error * (fc1.activation > 0)
    assert not torch.equal(masked, fc1.error)  # some units are off, so the mask matters
    assert_close(fc1.param_grads["weight"], masked.T @ tr["flatten"].activation)
    assert_close(fc1.param_grads["bias"], masked.sum(0))


def test_only_the_last_step_is_kept_and_grad_accumulation_does_not_leak_in():
    torch.manual_seed(0)
    model = mlp((8,), "relu", 0.0, (1, 8, 8), 10, "manual")
    x1, x2, t = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    with manualbp.trace(model) as tr:
        MF.cross_entropy(model(x1), t).backward()
        first = model.out.weight.grad.clone()
        MF.cross_entropy(model(x2), t).backward()  # .grad now holds the sum of both steps
    assert tr.steps == 2
    assert_close(tr["flatten"].activation, x2.flatten(1))
    assert_close(tr["out"].param_grads["weight"], model.out.weight.grad - first)


def test_torch_autograd_grad_is_traced_and_leaves_grad_untouched():
    torch.manual_seed(0)
    model = lenet5((1, 8, 8), 10, "relu", "manual")
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    with manualbp.trace(model) as tr:
        loss = MF.cross_entropy(model(x), torch.tensor([5, 5]))
        grads = torch.autograd.grad(loss, [x, *model.parameters()])
    assert all(p.grad is None for p in model.parameters())
    assert_close(tr["conv1"].param_grads["weight"], grads[1])
    assert tr["conv1"].error.shape == tr["conv1"].activation.shape == (2, 6, 8, 8)


def test_hooks_are_removed_on_exceptions_and_later_backwards_are_not_recorded():
    torch.manual_seed(0)
    model = mlp((8,), "relu", 0.0, (1, 8, 8), 10, "manual")
    with pytest.raises(RuntimeError, match="boom"):
        with manualbp.trace(model):
            model(torch.randn(2, 1, 8, 8))
            raise RuntimeError("boom")
    assert _no_hooks_left(model)

    with manualbp.trace(model) as tr:
        loss = MF.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1]))
    loss.backward()  # after the block: nothing recorded
    assert tr["out"].error is None and tr["out"].param_grads == {}
    assert _no_hooks_left(model)
