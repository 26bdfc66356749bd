"""Learning rules on MultiheadAttention's input projections (packed ``in_proj_weight`` or ``q/k/v_proj_weight``).

The reference is attention written with torch ops whose projections send the error back through M by a
straight-through sum, y = x.detach() Wᵀ + b + (x Mᵀ − (x Mᵀ).detach()): the value is x Wᵀ + b, dL/dx = G · M,
dL/dW = Gᵀ x. Every input's and every parameter's gradient must equal it, for self-attention (one packed
matmul), cross-attention with the packed weight (each input projected by the whole of it) and separate weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp
from manualbp.rules import BUFFER, DirectFeedbackAlignment, FeedbackAlignment, SignSymmetry, feedback_buffer


def _through(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, matrix: torch.Tensor) -> torch.Tensor:
    feedback = F.linear(x, matrix)
    return F.linear(x.detach(), weight, bias) + (feedback - feedback.detach())


def _reference(mha: torch.nn.Module, query, key, value, rule) -> torch.Tensor:
    """torch's attention of batch-first inputs, each projection sending the error back through the rule's M."""
    e, heads = mha.embed_dim, mha.num_heads
    bias = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
        matrices = rule.feedback(mha, "in_proj_weight").chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        matrices = tuple(rule.feedback(mha, name) for name in mha.feedback_weights)
    q, k, v = (_through(x, w, b, m) for x, w, b, m in zip((query, key, value), weights, bias, matrices))
    q, k, v = (t.unflatten(-1, (heads, e // heads)).transpose(1, 2) for t in (q, k, v))
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    out = mha.out_proj
    return _through(attended, out.weight, out.bias, rule.feedback(out))


def _inputs(kind: str, kdim: int):
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    if kind == "self":
        return query, query, query
    key = torch.randn(2, 4, kdim, generator=g, dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, 4, kdim, generator=g, dtype=torch.float64, requires_grad=True)
    return query, key, value


@pytest.mark.parametrize("rule", [FeedbackAlignment(seed=2), SignSymmetry(), SignSymmetry(scale="mean_abs")], ids=repr)
@pytest.mark.parametrize(("kind", "kdim"), [("self", 8), ("cross", 8), ("cross", 6)], ids=["self", "packed", "kdim"])
def test_the_projections_send_the_error_back_through_the_rules_matrix(rule, kind, kdim):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim, dtype=torch.float64)
    mha = manualbp.convert(mha, rule=rule)
    expected_buffers = {"in_proj_feedback_weight"} if kdim == 8 else {f"{p}_proj_feedback_weight" for p in "qkv"}
    assert ({name for name, _ in mha.named_buffers(recurse=False)} == expected_buffers) == isinstance(
        rule, FeedbackAlignment
    )
    query, key, value = _inputs(kind, kdim)
    inputs = (query,) if kind == "self" else (query, key, value)
    tensors = (*inputs, *mha.parameters())
    grad_out = torch.randn(2, 5, 8, dtype=torch.float64)
    mine = torch.autograd.grad(mha(query, key, value, need_weights=False)[0], tensors, grad_out)
    reference = _reference(mha, query, key, value, rule)
    theirs = torch.autograd.grad(reference, tensors, grad_out)
    for a, b in zip(mine, theirs):
        assert_close(a, b)
    backprop = torch.autograd.grad(manualbp.to_torch(mha)(query, key, value)[0], inputs, grad_out)
    assert all(not torch.allclose(a, b) for a, b in zip(mine, backprop))  # the rule did act on every input


def test_feedback_equal_to_the_weights_is_backprop_exactly():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    backprop = manualbp.convert(copy.deepcopy(layer))
    aligned = manualbp.convert(copy.deepcopy(layer), rule="feedback_alignment")
    with torch.no_grad():
        for module in aligned.modules():
            for name in getattr(module, "feedback_weights", ("weight",)):
                if feedback_buffer(name) in module._buffers:
                    getattr(module, feedback_buffer(name)).copy_(getattr(module, name))
    x = torch.randn(3, 5, 8, requires_grad=True)
    mine = torch.autograd.grad(aligned(x).square().sum(), (x, *aligned.parameters()))
    theirs = torch.autograd.grad(backprop(x).square().sum(), (x, *backprop.parameters()))
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)


def test_the_state_dict_carries_the_matrices_and_backprop_or_to_torch_removes_them():
    torch.manual_seed(0)
    mha = manualbp.convert(torch.nn.MultiheadAttention(8, 2), rule="feedback_alignment")
    state = mha.state_dict()
    assert {"in_proj_feedback_weight", f"out_proj.{BUFFER}"} <= set(state) and "rule=feedback_alignment" in repr(mha)
    again = manualbp.convert(torch.nn.MultiheadAttention(8, 2), rule="feedback_alignment")
    again.load_state_dict(state)
    assert torch.equal(again.in_proj_feedback_weight, mha.in_proj_feedback_weight)
    assert not any("feedback" in key for key in manualbp.to_torch(mha).state_dict())
    assert not any("feedback" in key for key in manualbp.convert(mha, rule="backprop").state_dict())
    assert mha.rule is None and "rule" not in repr(mha)


def test_direct_feedback_alignment_leaves_the_in_projection_on_backprop():
    """DFA drives the Linear layers (attention's out_proj among them), not the in-projection: no buffer there, and its
    gradient is the error e · B delivered to out_proj's input, carried back through attention."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8),
        torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        torch.nn.Flatten(),
        torch.nn.Linear(40, 3),
    )
    x = torch.randn(4, 5, 8)
    model = manualbp.convert(model, rule="direct_feedback_alignment", example_input=x)
    attention = model[1].self_attn
    assert isinstance(attention.out_proj.rule, DirectFeedbackAlignment) and attention.rule is None
    assert "in_proj_feedback_weight" not in attention.state_dict()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert attention.in_proj_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", ["feedback_alignment", "sign_symmetry"])
def test_per_sample_gradients_under_a_rule_are_each_samples_own(rule):
    torch.manual_seed(0)
    mha = manualbp.convert(torch.nn.MultiheadAttention(8, 2, batch_first=True), rule=rule)
    x = torch.randn(3, 5, 8)
    with manualbp.per_sample_grads(mha, loss_reduction="sum"):
        mha(x, x, x)[0].square().sum().backward()
    per_sample = {name: p.grad_sample.clone() for name, p in mha.named_parameters()}
    for n in range(3):
        sample = x[n : n + 1]
        grads = torch.autograd.grad(mha(sample, sample, sample)[0].square().sum(), list(mha.parameters()))
        for (name, _), grad in zip(mha.named_parameters(), grads):
            assert_close(per_sample[name][n], grad, rtol=1e-5, atol=1e-5)
