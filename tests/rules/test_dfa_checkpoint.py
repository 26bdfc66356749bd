"""Direct feedback alignment under activation checkpointing (``torch.utils.checkpoint``): with
``use_reentrant=False`` the gradients are those of the run without checkpoints; ``use_reentrant=True`` (the
block runs without a graph in the forward pass, unseen by the rule) and a checkpointed output layer are refused
with a ``RuntimeError`` that says so."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import manualbp


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(16, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 4),
    ).double()
    return manualbp.convert(model, rule="direct_feedback_alignment")


X = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 0])


def _grads(model: torch.nn.Sequential, run) -> list[torch.Tensor]:
    F.cross_entropy(run(model, X), Y).backward()
    return [p.grad for p in model.parameters()]


def _middle_block(model, x, reentrant):
    """Layers 1 and 2 of the rule (with their ReLUs) in one checkpoint; layer 0 before it, the output after."""
    h = model[2](model[1](model[0](x)))
    h = checkpoint(lambda h: model[6](model[5](model[4](model[3](h)))), h, use_reentrant=reentrant)
    return model[7](h)


FORMS = {
    "checkpoint-middle-block": _middle_block,
    "checkpoint_sequential": lambda model, x, reentrant: checkpoint_sequential(model, 3, x, use_reentrant=reentrant),
}


@pytest.mark.parametrize("form", FORMS)
def test_non_reentrant_checkpointing_gives_the_gradients_without_it(form):
    model = _model()
    want = _grads(copy.deepcopy(model), lambda m, x: m(x))
    got = _grads(model, lambda m, x: FORMS[form](m, x, False))
    for g, w in zip(got, want):
        assert_close(g, w, rtol=0, atol=0)
    # a second step (the rule's state after a pass with recomputation) still gives them
    model.zero_grad()
    for g, w in zip(_grads(model, lambda m, x: FORMS[form](m, x, False)), want):
        assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_reentrant_checkpointing_is_refused_in_the_forward_pass(form):
    model = _model()
    with pytest.raises(
        RuntimeError,
        match=r"direct_feedback_alignment: layer \d of the rule ran where layer \d was "
        r"expected.*use_reentrant=True.*use_reentrant=False\)",
    ):
        FORMS[form](model, X, True)
    assert_close(model(X), _model()(X))  # the next pass runs as ever


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_a_checkpointed_output_layer_is_refused(reentrant):
    model = _model()

    def run(model, x):
        h = model[:5](x)
        return checkpoint(lambda h: model[7](model[6](model[5](h))), h, use_reentrant=reentrant)

    with pytest.raises(
        RuntimeError,
        match=r"the output layer \(layer 3 of the rule\) ran inside an activation "
        "checkpoint.*keep the output layer out of the checkpoint",
    ):
        _grads(model, run)
