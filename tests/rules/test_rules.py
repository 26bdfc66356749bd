"""Learning rules as a switch: ``manualbp.convert(model, rule=...)``.

Where a rule must be backprop (feedback alignment with B = W, sign symmetry on ±1 weights, DFA with one
hidden layer and B = the output layer's weight) the gradients are exactly backprop's; with random feedback
they differ where the rule acts and only there. Then the rules' state (buffers, seeds, state dicts), their
life in a training loop (gradient accumulation, nothing kept across steps, no-grad evaluation) and their
errors.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp
import manualbp.nn as mnn
from manualbp.models import lenet5, mlp
from manualbp.rules import BUFFER, DirectFeedbackAlignment, FeedbackAlignment, SignSymmetry
from tests.rules.references import NoisyFeedback


def _convnet() -> torch.nn.Sequential:
    """Conv2d, LinearReLU (fused) and Linear: every kind of layer a rule applies to."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    )
    return manualbp.convert(model, fuse=True)


def _batch(shape=(5, 2, 8, 8), classes=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)


def _grads(model, x, y) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def _weights(model):
    return [m for m in model.modules() if hasattr(type(m), "forward_feedback")]


# ---- where a rule must be backprop ---------------------------------------------------------------------------


def test_feedback_alignment_with_b_equal_to_w_gives_backprops_gradients_exactly():
    backprop = _convnet()
    kinds = {type(m).__name__ for m in _weights(backprop)}
    assert kinds == {"Conv2d", "LinearReLU", "Linear"}
    aligned = manualbp.convert(copy.deepcopy(backprop), rule="feedback_alignment")
    with torch.no_grad():
        for layer in _weights(aligned):
            getattr(layer, BUFFER).copy_(layer.weight)
    x, y = _batch()
    for mine, theirs in zip(_grads(aligned, x, y), _grads(backprop, x, y)):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(_grads(aligned, x, y), _grads(manualbp.to_torch(backprop), x, y)):
        assert_close(mine, theirs)


def test_sign_symmetry_on_weights_of_plus_or_minus_one_gives_backprops_gradients_exactly():
    backprop = _convnet()
    with torch.no_grad():
        for layer in _weights(backprop):
            layer.weight.copy_(torch.where(torch.rand_like(layer.weight) < 0.5, -1.0, 1.0))
    symmetric = manualbp.convert(copy.deepcopy(backprop), rule=SignSymmetry(scale=1.0))
    x, y = _batch()
    for mine, theirs in zip(_grads(symmetric, x, y), _grads(backprop, x, y)):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("fuse", [False, True], ids=["linear-relu", "fused-linear_relu"])
@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh])
def test_dfa_with_one_hidden_layer_and_b_equal_to_the_output_weight_gives_backprops_gradients(fuse, activation):
    """dL/dh = e · B with B = W_out is backprop's e · W_out, and it reaches the hidden layer through the
    activation's own backward."""
    torch.manual_seed(0)
    backprop = manualbp.convert(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), activation(), torch.nn.Linear(6, 4)), fuse=fuse
    )
    direct = manualbp.convert(copy.deepcopy(backprop), rule="direct_feedback_alignment")
    hidden, out = _weights(direct)
    assert getattr(hidden, BUFFER).shape == out.weight.shape == (4, 6) and BUFFER not in out._buffers
    with torch.no_grad():
        getattr(hidden, BUFFER).copy_(out.weight)
    x, y = _batch((5, 3, 4), classes=4)
    for mine, theirs in zip(_grads(direct, x, y), _grads(manualbp.to_torch(backprop), x, y)):
        assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


# ---- random feedback: different where the rule acts, and only there -------------------------------------------


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry", "direct_feedback_alignment"])
def test_a_rule_changes_the_hidden_layers_gradients_and_not_the_output_layers(rule):
    backprop = _convnet()
    ruled = manualbp.convert(copy.deepcopy(backprop), rule=rule, example_input=torch.zeros(1, 2, 8, 8))
    x, y = _batch()
    mine, theirs = _grads(ruled, x, y), _grads(backprop, x, y)
    *hidden, out_w, out_b = zip(mine, theirs)
    assert torch.equal(out_w[0], out_w[1]) and torch.equal(out_b[0], out_b[1])  # e is the same; the reduction too
    assert all(not torch.allclose(a, b) for a, b in hidden)


def test_sign_symmetry_follows_the_weights_every_step():
    """B = sign(W) of the current weights: flip them and the error sent back flips."""
    torch.manual_seed(0)
    layer = manualbp.convert(mnn.Linear(4, 3), rule="sign_symmetry")
    x = torch.randn(2, 4, requires_grad=True)
    (first,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.equal(first, torch.ones(2, 3) @ layer.weight.detach().sign())
    with torch.no_grad():
        layer.weight.neg_()
    (second,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.equal(second, -first)
    assert_close(
        torch.autograd.grad(manualbp.convert(layer, rule=SignSymmetry(scale="mean_abs"))(x).sum(), x)[0],
        first.neg() * layer.weight.abs().mean().item(),
    )


def test_a_users_rule_is_a_feedback_matrix():
    """The README's example: backprop plus noise in the feedback, dL/dx = G · (W + σ ξ)."""

    torch.manual_seed(0)
    layer = manualbp.convert(mnn.Linear(4, 3), rule=NoisyFeedback(0.5))
    assert repr(layer).endswith("rule=noisy_feedback)") and BUFFER not in layer._buffers
    x = torch.randn(2, 4, requires_grad=True)
    torch.manual_seed(3)
    (grad,) = torch.autograd.grad(layer(x).sum(), x)
    torch.manual_seed(3)
    noisy = layer.weight.detach() + 0.5 * torch.randn(3, 4)
    assert_close(grad, torch.ones(2, 3) @ noisy)
    assert not torch.allclose(grad, torch.ones(2, 3) @ layer.weight.detach())


# ---- the rules' state -------------------------------------------------------------------------------------------


def test_fixed_matrices_are_buffers_drawn_from_the_seed_and_not_from_the_weights_stream():
    """Same seed, same B; another seed, another B; and B ≠ W after torch.manual_seed(seed) (a generator seeded
    with the bare seed would draw the layer's own initialisation again, making feedback alignment backprop)."""
    torch.manual_seed(0)
    layer = manualbp.convert(mnn.Linear(5, 4), rule=FeedbackAlignment(seed=0))
    b = getattr(layer, BUFFER)
    assert b.shape == layer.weight.shape and not torch.allclose(b, layer.weight)
    bound = 1 / 5**0.5  # U(-1/√fan_in, 1/√fan_in), the layer's own initialisation scale
    assert b.abs().max() <= bound and b.abs().max() > bound / 2
    assert torch.equal(getattr(manualbp.convert(mnn.Linear(5, 4), rule=FeedbackAlignment(seed=0)), BUFFER), b)
    assert not torch.equal(getattr(manualbp.convert(mnn.Linear(5, 4), rule=FeedbackAlignment(seed=1)), BUFFER), b)


def test_the_state_dict_carries_the_matrices_so_a_run_resumes_exactly():
    def step(model, x, y, optimizer):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for rule in (FeedbackAlignment, DirectFeedbackAlignment):
        torch.manual_seed(0)
        model = manualbp.convert(mlp((16, 8), in_shape=(1, 4, 4), num_classes=3), rule=rule(seed=0))
        assert [k for k in model.state_dict() if k.endswith(BUFFER)] == [
            "fc1.feedback_weight",
            "fc2.feedback_weight",
        ] + (["out.feedback_weight"] if rule is FeedbackAlignment else [])
        x, y = _batch((6, 1, 4, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step(model, x, y, optimizer)
        saved = copy.deepcopy(model.state_dict())
        resumed = manualbp.convert(mlp((16, 8), in_shape=(1, 4, 4), num_classes=3), rule=rule(seed=7))  # other B
        resumed.load_state_dict(saved)
        step(model, x, y, optimizer)
        step(resumed, x, y, torch.optim.SGD(resumed.parameters(), lr=0.1))
        for key, value in model.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[key]), key


def test_backprop_removes_a_rule_and_to_torch_carries_none():
    model = manualbp.convert(_convnet(), rule="feedback_alignment")
    assert "rule=feedback_alignment" in repr(model)
    twin = manualbp.to_torch(model)
    assert not any(k.endswith(BUFFER) for k in twin.state_dict()) and "rule" not in repr(twin)
    assert any(k.endswith(BUFFER) for k in model.state_dict())  # to_torch left the model as it was
    manualbp.convert(model)  # rule="backprop", the default
    assert not any(k.endswith(BUFFER) for k in model.state_dict()) and "rule" not in repr(model)
    assert all(layer.rule is None for layer in _weights(model))


def test_convert_swaps_torch_layers_and_gives_them_the_rule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    converted = manualbp.convert(model, rule="sign_symmetry")
    assert converted is model and all(
        isinstance(layer, mnn.Linear) and isinstance(layer.rule, SignSymmetry) for layer in _weights(model)
    )


# ---- in a training loop ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["feedback_alignment", "direct_feedback_alignment"])
def test_gradient_accumulation_sums_the_micro_batches(rule):
    """Two micro-batches, backward after each or one backward of both losses: the sum of the separate steps."""
    model = manualbp.convert(_convnet(), rule=rule, example_input=torch.zeros(1, 2, 8, 8))
    (x1, y1), (x2, y2) = _batch(), _batch((3, 2, 8, 8))
    separate = [a + b for a, b in zip(_grads(model, x1, y1), _grads(model, x2, y2))]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x1), y1).backward()
    F.cross_entropy(model(x2), y2).backward()
    for accumulated, expected in zip((p.grad for p in model.parameters()), separate):
        assert_close(accumulated, expected)
    model.zero_grad(set_to_none=True)
    both = F.cross_entropy(model(x1), y1) + F.cross_entropy(model(x2), y2)  # two passes, one graph
    both.backward()
    for accumulated, expected in zip((p.grad for p in model.parameters()), separate):
        assert_close(accumulated, expected)


def test_direct_feedback_alignment_keeps_nothing_across_steps():
    """The pass's block outputs live on the rule only until the last layer takes them, and on the graph only
    until backward frees it; evaluation without a graph records nothing."""
    model = manualbp.convert(_convnet(), rule="direct_feedback_alignment", example_input=torch.zeros(1, 2, 8, 8))
    rule = _weights(model)[0].rule
    x, y = _batch()
    seen: list[weakref.ref] = []
    hook = model[3].register_forward_pre_hook(lambda module, args: seen.append(weakref.ref(args[0])))
    loss = F.cross_entropy(model(x), y)
    assert rule._hidden == [] and rule._feedback == []
    loss.backward()
    del loss
    gc.collect()
    assert seen[0]() is None  # the hidden activation is gone with the graph
    hook.remove()
    with torch.no_grad():
        model[:4](x)  # an interrupted pass without a graph: the rule is not involved
    assert rule._hidden == [] and rule._feedback == []
    model[:4](x)  # an interrupted pass with a graph: kept until the next pass starts
    assert len(rule._hidden) == 1
    F.cross_entropy(model(x), y).backward()
    assert rule._hidden == []


def test_direct_feedback_alignment_needs_the_layers_in_order():
    model = manualbp.convert(_convnet(), rule="direct_feedback_alignment", example_input=torch.zeros(1, 2, 8, 8))
    x, _ = _batch()
    h = model[:5](x)
    with pytest.raises(RuntimeError, match="must run in the model's order"):
        model[7](h[:, :8])  # the output layer right after the second convolution, skipping the LinearReLU
    model(x)  # and the next pass starts clean


def test_direct_feedback_alignment_through_lenet5_sizes_each_matrix_by_the_blocks_output():
    torch.manual_seed(0)
    model = manualbp.convert(
        lenet5(in_shape=(1, 8, 8), num_classes=10),
        rule="direct_feedback_alignment",
        example_input=torch.zeros(2, 1, 8, 8),
    )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith(BUFFER)}
    # conv1 -> pool1 (6, 4, 4); conv2 -> pool2 -> flatten (64); fc1 (120); fc2 (84); out: none
    assert shapes == {
        "conv1.feedback_weight": (10, 96),
        "conv2.feedback_weight": (10, 64),
        "fc1.feedback_weight": (10, 120),
        "fc2.feedback_weight": (10, 84),
    }
    x, y = _batch((4, 1, 8, 8), classes=10)
    assert all(g.abs().sum() > 0 for g in _grads(model, x, y))
    assert all(m.training for m in model.modules())  # the measuring pass ran in eval mode and restored the modes


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown learning rule 'feedback'"):
        manualbp.convert(mnn.Linear(3, 2), rule="feedback")
    with pytest.raises(ValueError, match="example_input"):
        manualbp.convert(_convnet(), rule="direct_feedback_alignment")
    with pytest.raises(ValueError, match="must be a Linear"):
        manualbp.convert(torch.nn.Sequential(mnn.Linear(4, 4), mnn.Conv2d(1, 1, 1)), rule="direct_feedback_alignment")
    with pytest.raises(ValueError, match="at least two layers"):
        manualbp.convert(mnn.Linear(4, 4), rule="direct_feedback_alignment")
    with pytest.raises(ValueError, match="no manualbp Linear"):
        manualbp.convert(torch.nn.Sequential(torch.nn.ReLU()), rule="feedback_alignment")
    with pytest.raises(ValueError, match="scale"):
        SignSymmetry(scale=0)
    with pytest.raises(ValueError, match="does not match weight"):
        manualbp.rules.linear_feedback(torch.randn(2, 3), torch.randn(4, 3), None, torch.randn(3, 4))


def test_compiled_training_step_matches_eager():
    """torch.compile(fullgraph=True) of a step under each rule: the rules' Functions and DFA's pass trace."""
    x, y = _batch()
    for rule in ("feedback_alignment", "sign_symmetry", "direct_feedback_alignment"):
        model = manualbp.convert(_convnet(), rule=rule, example_input=torch.zeros(1, 2, 8, 8))
        eager = _grads(model, x, y)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        model.zero_grad(set_to_none=True)
        F.cross_entropy(compiled(x), y).backward()
        for a, b in zip((p.grad for p in model.parameters()), eager):
            assert_close(a, b)


def test_every_built_in_rule_has_a_name_the_command_line_accepts():
    import typing

    assert set(typing.get_args(manualbp.rules.RuleName)) == set(manualbp.rules.RULES)
    for name, cls in manualbp.rules.RULES.items():
        assert isinstance(manualbp.rules.get_rule(name), cls) and repr(cls()) == name
