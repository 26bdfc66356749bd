"""Per-sample gradients and clipping on whole networks (under every learning rule), and what the contexts
refuse, share, accumulate and leave behind."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp
from manualbp.functional import _reduction
from manualbp.functional._reduction import REDUCTION, ghost_is_cheaper, ghost_sq_norms, outer_per_sample
from manualbp.per_sample import PerSampleError
from manualbp.rules import apply_rule
from tests.per_sample.references import batch_loss, clipped_reference, loop_grads, trainable

TOL = dict(rtol=0, atol=1e-10)
IN_SHAPE = (1, 8, 8)


def _data(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *IN_SHAPE), generator=g, dtype=torch.float64)
    return x, torch.randn(n, 10, generator=g, dtype=torch.float64)


def _network(arch: str, rule: str = "backprop") -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "mlp":
        model = manualbp.models.mlp(hidden=(12, 9), in_shape=IN_SHAPE)
    else:
        model = manualbp.models.lenet5(in_shape=IN_SHAPE)
    model = model.double()
    if rule != "backprop":
        apply_rule(model, rule, example_input=torch.zeros(2, *IN_SHAPE, dtype=torch.float64))
    return model


@pytest.mark.parametrize("loss_reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "arch, rule",
    [
        ("mlp", "backprop"),
        ("lenet5", "backprop"),
        ("mlp", "feedback_alignment"),
        ("mlp", "sign_symmetry"),
        ("mlp", "direct_feedback_alignment"),
        ("lenet5", "feedback_alignment"),
    ],
)
def test_networks_under_every_rule(arch, rule, loss_reduction):
    """A rule changes the feedback, the per-sample modes the reduction: the rule's per-sample updates are
    those of a loop over single samples through the same rule."""
    model = _network(arch, rule)
    x, r = _data()
    expected = loop_grads(model, x, r)
    with manualbp.per_sample_grads(model, loss_reduction):
        batch_loss(model(x), r, loss_reduction).backward()
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, expected[name], **TOL)
    norms, clipped = clipped_reference(expected, 0.5, loss_reduction)
    model.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(model, 0.5, loss_reduction) as clip:
        batch_loss(model(x), r, loss_reduction).backward()
    assert_close(clip.norms, norms, **TOL)
    for name, p in trainable(model).items():
        assert_close(p.grad, clipped[name], **TOL)


class Twice(torch.nn.Module):
    """One Linear applied twice (shared weights), then another."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = manualbp.nn.Linear(6, 6)
        self.head = manualbp.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.shared(torch.tanh(self.shared(x))))


def test_a_shared_weight_sums_its_uses_and_clips_exactly():
    torch.manual_seed(0)
    model = Twice().double()
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    expected = loop_grads(model, x, r)
    with manualbp.per_sample_grads(model, "sum"):
        batch_loss(model(x), r, "sum").backward()
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, expected[name], **TOL)
    norms, clipped = clipped_reference(expected, 0.3, "sum")
    model.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(model, 0.3, "sum") as clip:
        batch_loss(model(x), r, "sum").backward()
    assert_close(clip.norms, norms, **TOL)
    for name, p in trainable(model).items():
        assert_close(p.grad, clipped[name], **TOL)


def test_backward_passes_in_one_block_add_up_and_a_new_block_starts_afresh():
    model = _network("mlp")
    x, r = _data()
    expected = loop_grads(model, x, r)
    loss = batch_loss(model(x), r, "sum")  # the forward may run outside the block
    with manualbp.per_sample_grads(model, "sum"):
        loss.backward()
        batch_loss(model(x), r, "sum").backward()
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, 2 * expected[name], **TOL)
    with manualbp.per_sample_grads(model, "sum"):
        batch_loss(model(x), r, "sum").backward()
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, expected[name], **TOL)


def test_a_new_block_writes_into_the_memory_of_a_result_nothing_else_holds():
    """A result held by a name or a view survives the next block; one held by its parameter alone is
    written over (its memory reused), and the new values are right either way."""
    model = _network("mlp")
    x, r = _data()
    fc = model.fc1
    expected = loop_grads(model, x, r)

    def block(scale: float) -> None:
        with manualbp.per_sample_grads(model, "sum"):
            (scale * batch_loss(model(x), r, "sum")).backward()

    block(1.0)
    held, row = fc.weight.grad_sample, fc.bias.grad_sample[0]  # a name, and a view of the bias's
    held_values, row_values = held.clone(), row.clone()
    block(2.0)
    assert_close(held, held_values, **TOL)
    assert_close(row, row_values, **TOL)
    assert fc.weight.grad_sample.data_ptr() != held.data_ptr()
    del held, row
    memory = fc.weight.grad_sample.data_ptr()
    block(3.0)
    assert fc.weight.grad_sample.data_ptr() == memory  # reused
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, 3 * expected[name], **TOL)


def test_nothing_is_kept_outside_the_block():
    model = _network("lenet5")
    x, r = _data()
    params = list(trainable(model).values())
    hooks_before = [dict(p._backward_hooks or {}) for p in params]
    with manualbp.clip_per_sample(model, 1.0) as clip:
        batch_loss(model(x), r, "mean").backward()
    assert REDUCTION.mode is None and clip._tasks == {} and not clip._orphans and not clip.params
    assert [dict(p._backward_hooks or {}) for p in params] == hooks_before
    assert not any(hasattr(p, "grad_sample") for p in params)
    model.zero_grad(set_to_none=True)
    batch_loss(model(x), r, "mean").backward()  # plain, as if no block had been
    plain = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    y = model(x)
    with pytest.raises(RuntimeError, match="inside"):
        with manualbp.per_sample_grads(model):
            raise RuntimeError("inside")
    assert REDUCTION.mode is None
    batch_loss(y, r, "mean").backward()
    assert not any(hasattr(p, "grad_sample") for p in params)
    for p, grad in zip(params, plain):
        assert_close(p.grad, grad, rtol=0, atol=0)


def test_a_layer_outside_the_model_reduces_as_usual():
    torch.manual_seed(0)
    model, other = manualbp.nn.Linear(4, 3).double(), manualbp.nn.Linear(3, 2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    with manualbp.clip_per_sample(model, 1e-3, "sum"):
        other(model(x)).sum().backward()
    expected = torch.autograd.grad(other(model(x)).sum(), other.weight)[0]
    assert_close(other.weight.grad, expected, **TOL)
    assert not hasattr(other.weight, "grad_sample")


@pytest.mark.parametrize("mode", ["grads", "clip"])
def test_a_torch_layer_is_named(mode):
    model = torch.nn.Sequential(manualbp.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    context = manualbp.per_sample_grads(model) if mode == "grads" else manualbp.clip_per_sample(model, 1.0)
    with pytest.raises(PerSampleError, match=r"'1\.(weight|bias)'"):
        with context:
            model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    assert REDUCTION.mode is None


def test_batch_statistics_in_the_backward_are_refused():
    """A batch norm in training mode between the model and the loss (not part of the model)."""
    model, norm = manualbp.nn.Linear(4, 3).double(), manualbp.nn.BatchNorm1d(3).double()
    with pytest.raises(PerSampleError, match="batch statistics"):
        with manualbp.per_sample_grads(model):
            norm(model(torch.randn(5, 4, dtype=torch.float64))).square().sum().backward()


def test_other_refusals():
    model = manualbp.nn.Linear(4, 3).double()
    with pytest.raises(PerSampleError, match="batch dim"):
        with manualbp.per_sample_grads(model):
            model(torch.randn(4, dtype=torch.float64)).sum().backward()
    with pytest.raises(PerSampleError, match="do not nest"):
        with manualbp.per_sample_grads(model), manualbp.clip_per_sample(model, 1.0):
            pass
    assert REDUCTION.mode is None
    with pytest.raises(ValueError, match="loss_reduction"):
        manualbp.per_sample_grads(model, "none")
    with pytest.raises(ValueError, match="max_grad_norm"):
        manualbp.clip_per_sample(model, 0.0)


def test_an_empty_batch_clips_to_zero():
    model = _network("lenet5")
    x = torch.zeros(0, *IN_SHAPE, dtype=torch.float64)
    with manualbp.clip_per_sample(model, 1.0, "sum") as clip:
        model(x).sum().backward()
    assert clip.norms.shape == (0,)
    for p in trainable(model).values():
        assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()


@pytest.mark.parametrize("positions, out_features, in_features", [(1, 5, 7), (2, 8, 8), (9, 3, 2), (4, 8, 36)])
def test_the_ghost_norm_is_the_norm_of_the_materialised_gradient(positions, out_features, in_features):
    """||g||² ||x||² (T = 1) and the ghost-norm identity (T > 1) give the squared norm of Σ_t g_tᵀ x_t."""
    g = torch.Generator().manual_seed(positions)
    grads = torch.randn(5, 2, positions, out_features, generator=g, dtype=torch.float64)
    inputs = torch.randn(5, 2, positions, in_features, generator=g, dtype=torch.float64)
    expected = outer_per_sample(grads, inputs).square().sum((1, 2, 3))
    assert_close(ghost_sq_norms(grads, inputs), expected, rtol=1e-12, atol=1e-12)


def test_the_package_exports_both_contexts():
    assert manualbp.per_sample_grads is manualbp.per_sample.per_sample_grads
    assert manualbp.clip_per_sample is manualbp.per_sample.clip_per_sample
    assert {"per_sample_grads", "clip_per_sample", "per_sample"} <= set(dir(manualbp))


def test_clipping_without_keeping_the_materialised_gradients(monkeypatch):
    """Above ``KEEP_LIMIT`` a layer drops the per-sample gradients it took the norm from and forms its clipped
    sum by a second reduction of the weighted error signal: the same result."""
    monkeypatch.setattr(_reduction, "KEEP_LIMIT", 0)
    model = _network("lenet5")
    x, r = _data()
    norms, clipped = clipped_reference(loop_grads(model, x, r), 0.5, "mean")
    with manualbp.clip_per_sample(model, 0.5) as clip:
        batch_loss(model(x), r, "mean").backward()
    assert_close(clip.norms, norms, **TOL)
    for name, p in trainable(model).items():
        assert_close(p.grad, clipped[name], **TOL)


@pytest.mark.parametrize(
    "positions, out_features, in_features, ghost",
    [(10, 2, 3, False), (2, 8, 8, True), (3, 7, 9, True), (4, 8, 36, True), (64, 6, 25, False), (784, 6, 25, False)],
)
def test_the_layer_cases_reach_both_ways_to_a_norm(positions, out_features, in_features, ghost):
    """The configurations of ``tests/per_sample/cases.py`` named ghost / materialised take that way."""
    assert ghost_is_cheaper(positions, out_features, in_features) is ghost
