"""Fuzzing the learning rules' Functions (``manualbp.rules``) on drawn shapes, in float64, against autograd.

The layer configurations are the ones ``tests/fuzz/strategies.py`` draws for ``linear``, ``linear_relu`` and
``conv2d`` (leading dims, bias or not, groups, stride, dilation, padding of every kind, unbatched inputs),
with a feedback matrix M of the weight's shape drawn from the same seed, or M = None (no error sent back, as
direct feedback alignment's layers). A rule's backward is not the derivative of its forward, so the
reference is autograd's own vector-Jacobian products, each of the op it belongs to:

    dL/dx = VJP in x of op(x, M)            dL/dW, dL/db = VJP in (W, b) of op(x, W, b)

(for linear_relu, op's ReLU mask is the one of the real forward, relu(x Wᵀ + b)). Both sides must agree on
  1. the forward output (torch's op),
  2. the first derivatives under one random dL/dy,
  3. the second derivatives d/dθ Σ <dL/dθ, v>, θ = x, W, b and dL/dy itself, the reference's taken by
     autograd through its VJPs (``create_graph=True``).

``DirectFeedbackFunction`` is fuzzed on drawn logits and hidden shapes against its straight-through
reference with ``assert_matches_torch``, like every op.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from manualbp.rules import DirectFeedbackFunction, conv2d_feedback, linear_feedback, linear_relu_feedback
from tests.fuzz.strategies import FAMILIES, FuzzCase
from tests.fuzz.test_ops_match_torch import assert_matches_torch
from tests.rules.references import injected

FEEDBACK_OPS = {
    "linear": (linear_feedback, F.linear, False),
    "linear_relu": (linear_relu_feedback, F.linear, True),
    "conv2d": (conv2d_feedback, F.conv2d, False),
}


def _first_and_second(grads_of, leaves: dict[str, torch.Tensor], grad_out: torch.Tensor, g: torch.Generator):
    """First derivatives ``grads_of(leaves, grad_out)`` and the second ones, d/dθ Σ <first, v>."""
    first = grads_of(leaves, grad_out)
    probe = [
        (d * torch.randn(d.shape, generator=g, dtype=d.dtype)).sum() for d in first if d is not None and d.requires_grad
    ]
    wrt = (*leaves.values(), grad_out)
    if probe:
        second = torch.autograd.grad(sum(probe), wrt, allow_unused=True, materialize_grads=True)
    else:
        second = tuple(torch.zeros_like(t) for t in wrt)
    return [d if d is not None else torch.zeros_like(leaf) for d, leaf in zip(first, leaves.values())], second


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")  # torch's conv2d
@pytest.mark.parametrize("family", sorted(FEEDBACK_OPS))
@given(data=st.data())
def test_feedback_function_matches_autograds_products(family: str, data: st.DataObject) -> None:
    case: FuzzCase = data.draw(FAMILIES[family], label=family)
    manual_op, torch_op, relu = FEEDBACK_OPS[family]
    sends_feedback = data.draw(st.booleans(), label="feedback matrix (else None: no error sent back)")
    g = torch.Generator().manual_seed(case.seed + 7)
    weight = case.inputs["weight"]
    feedback = torch.randn(weight.shape, generator=g, dtype=weight.dtype) if sends_feedback else None
    options = case.constants

    def leaves_of() -> dict[str, torch.Tensor]:
        return {k: v.clone().requires_grad_() for k, v in case.inputs.items()}

    def forward(op, leaves, matrix):
        return op(leaves["input"], leaves["weight"], leaves.get("bias"), matrix, **options)

    # ours
    mine = leaves_of()
    y = forward(manual_op, mine, feedback)
    grad_out = torch.randn(y.shape, generator=g, dtype=y.dtype).requires_grad_()

    def my_grads(leaves, grad_y):
        return torch.autograd.grad(y, tuple(leaves.values()), grad_y, create_graph=True, allow_unused=True)

    g_probe = torch.Generator().manual_seed(case.seed + 8)
    my_first, my_second = _first_and_second(my_grads, mine, grad_out, g_probe)

    # autograd's products
    theirs = leaves_of()
    x, w, b = theirs["input"], theirs["weight"], theirs.get("bias")
    affine = torch_op(x, w, b, **options)
    expected_y = affine.relu() if relu else affine
    mask = (affine > 0).to(affine.dtype).detach() if relu else None

    def their_grads(leaves, grad_y):
        grad_a = grad_y * mask if relu else grad_y
        params = tuple(t for t in (w, b) if t is not None)
        grad_params = torch.autograd.grad(torch_op(x, w, b, **options), params, grad_a, create_graph=True)
        if feedback is None:
            grad_x = None
        else:
            (grad_x,) = torch.autograd.grad(torch_op(x, feedback, None, **options), (x,), grad_a, create_graph=True)
        return (grad_x, *grad_params)

    their_first, their_second = _first_and_second(
        their_grads, theirs, grad_out.detach().clone().requires_grad_(), torch.Generator().manual_seed(case.seed + 8)
    )
    names = list(case.inputs)
    where = f"{case} with {'a feedback matrix' if sends_feedback else 'no feedback'}"
    assert_close(y, expected_y, msg=lambda m: f"{where}: forward: {m}")
    assert_close(my_first, their_first, msg=lambda m: f"{where}: first derivatives wrt {names}: {m}")
    assert_close(my_second, their_second, msg=lambda m: f"{where}: second derivatives wrt {names} + dL/dy: {m}")


@st.composite
def direct_feedback(draw) -> FuzzCase:
    """Logits (N, K) and 1 to 3 hidden block outputs (N, *) of 1 to 3 dims, with their (K, F_l) matrices."""
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    shapes = draw(st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=3), min_size=1, max_size=3))
    inputs = {"logits": torch.randn(n, k, generator=g, dtype=torch.float64)}
    constants = {}
    for i, shape in enumerate(shapes):
        inputs[f"h{i}"] = torch.randn(n, *shape, generator=g, dtype=torch.float64)
        constants[f"b{i}"] = torch.randn(k, torch.Size(shape).numel(), generator=g, dtype=torch.float64)

    def manual(logits, **tensors):
        args = [t for i in range(len(shapes)) for t in (tensors[f"h{i}"], tensors[f"b{i}"])]
        return DirectFeedbackFunction.call(logits, *args)

    def reference(logits, **tensors):
        return injected(logits, [(tensors[f"h{i}"], tensors[f"b{i}"]) for i in range(len(shapes))])

    return FuzzCase("direct_feedback", manual, reference, inputs, constants, seed)


@given(data=st.data())
def test_direct_feedback_function_matches_its_reference(data: st.DataObject) -> None:
    case = data.draw(direct_feedback(), label="direct_feedback")
    assert_matches_torch(case, strided=data.draw(st.booleans(), label="strided inputs and dL/dy"))
