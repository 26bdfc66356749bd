"""The context battery: every supported layer family (``contexts.FAMILIES``) under every way of running a
backward (``contexts.WAYS``) inside each per-sample context (``contexts.CONTEXTS``), against a loop over
single-sample batches through the plain backward; and the DP invariant, that no sample moves the clipped sum by
more than C, whatever its input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import manualbp
from manualbp.functional._reduction import REDUCTION
from manualbp.per_sample import PerSampleError
from tests.per_sample.contexts import (
    CONTEXTS,
    FAMILIES,
    WAYS,
    batch_loss,
    clipped,
    open_context,
    reference_grads,
)
from tests.per_sample.references import trainable

TOL = dict(rtol=0, atol=1e-10)
BY_FAMILY = {family.id: family for family in FAMILIES}


def _max_grad_norm(per_sample: dict[str, torch.Tensor]) -> float:
    """The median of the samples' norms: some are clipped, some not."""
    norms, _ = clipped(per_sample, 1.0, "sum")
    return norms.median().item()


def _expected(family, model, run, context, loss_reduction, max_grad_norm):
    """name -> (grad_sample or None, grad), for the parameters the run writes; and the last backward's norms."""
    names = list(trainable(model)) if run.written is None else run.written
    grad_sample, grads, norms = {}, {}, None
    for x, r in run.batches:
        per_sample = {name: g for name, g in reference_grads(family, model, x, r).items() if name in names}
        if context == "per_sample_grads":
            for name, g in per_sample.items():
                grad_sample[name] = grad_sample.get(name, 0) + g
                grads[name] = grads.get(name, 0) + (g.mean(0) if loss_reduction == "mean" else g.sum(0))
        elif per_sample:
            norms, sums = clipped(per_sample, max_grad_norm, loss_reduction)
            for name, g in sums.items():
                grads[name] = grads.get(name, 0) + g
    return grad_sample, grads, norms


@pytest.mark.filterwarnings(
    "ignore:torch.utils.checkpoint:UserWarning", "ignore:Using backward\\(\\) with create_graph=True:UserWarning"
)
@pytest.mark.parametrize("context, loss_reduction", CONTEXTS, ids=[f"{c}-{r}" for c, r in CONTEXTS])
@pytest.mark.parametrize("way", WAYS, ids=[w.id for w in WAYS])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_a_context_gives_the_reference_or_raises(family, way, context, loss_reduction):
    model = family.network()
    max_grad_norm = _max_grad_norm(reference_grads(family, model, *family.data(1)))
    if way.raises:
        with pytest.raises(PerSampleError, match=way.raises):
            with open_context(context, model, loss_reduction, family.batch_first, max_grad_norm):
                way.run(family, model, loss_reduction)
        assert REDUCTION.mode is None
        return
    with open_context(context, model, loss_reduction, family.batch_first, max_grad_norm) as opened:
        run = way.run(family, model, loss_reduction)
    grad_sample, grads, norms = _expected(family, model, run, context, loss_reduction, max_grad_norm)
    for name, p in trainable(model).items():
        if name not in grads:  # not written by this backward
            assert p.grad is None, name
            assert not hasattr(p, "grad_sample"), name
            continue
        assert_close(p.grad, grads[name], **TOL, msg=name)
        if context == "per_sample_grads":
            assert_close(p.grad_sample, grad_sample[name], **TOL, msg=name)
        else:
            assert not hasattr(p, "grad_sample"), name
    if context == "clip_per_sample":
        if norms is None:
            assert opened.norms is None
        else:
            assert_close(opened.norms, norms, **TOL)
    if run.returned is not None:  # what torch.autograd.grad or torch.func returned: as outside the block
        outside = way.run(family, family.network(), loss_reduction)
        for got, want in zip(run.returned, outside.returned, strict=True):
            assert_close(got, want, **TOL)


@pytest.mark.parametrize("context", ["per_sample_grads", "clip_per_sample"])
def test_a_time_major_sequence_read_batch_first_raises(context):
    """T == N: with the default batch_first=True the Linear after a time-major GRU would take the steps for the
    samples, with sizes that agree; the contexts see the GRU's layout and refuse."""
    family = BY_FAMILY["gru_time_major"]
    model = family.network()
    x, r = family.data(1)
    assert x.shape[0] == x.shape[1]
    with pytest.raises(PerSampleError, match="batch_first=False"):
        with open_context(context, model, "sum", batch_first=True, max_grad_norm=1.0):
            batch_loss(family, model(x), r, "sum").backward()


@pytest.mark.parametrize("context", ["per_sample_grads", "clip_per_sample"])
def test_layers_that_disagree_on_the_batch_size_raise(context):
    family = BY_FAMILY["gru_time_major"]
    model = family.network()
    x = torch.randn(5, 4, 3, dtype=torch.float64)  # T = 5 steps of N = 4: read batch-first, the Linear sees 5
    with pytest.raises(PerSampleError, match=r"batch_first=False|different sizes"):
        with open_context(context, model, "sum", batch_first=True, max_grad_norm=1.0):
            model(x).sum().backward()


# ---- the DP invariant: one sample moves the clipped sum by at most C ------------------------------------------

_DP_FAMILIES = [BY_FAMILY[name] for name in ("mlp", "conv_batchnorm", "lstm", "shared_weight")]


@settings(max_examples=12)
@given(
    family=st.sampled_from(_DP_FAMILIES),
    scale=st.sampled_from([1e-6, 1.0, 1e3, 1e6]),
    outlier=st.sampled_from([1.0, 1e4, -1e8]),
    seed=st.integers(0, 2**16),
)
def test_no_sample_moves_the_clipped_sum_by_more_than_c(family, scale, outlier, seed):
    """Neighbouring batches (one sample left out) give clipped sums at most C apart, adversarial inputs (tiny,
    huge, one outlier sample) included: each sample's contribution c_n g_n has norm ≤ C."""
    max_grad_norm = 0.7
    model = family.network()
    x, r = family.data(seed, scale)
    x.select(family.batch_dim, 0).mul_(outlier)

    def clipped_sum(keep: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        x_kept, r_kept = x.index_select(family.batch_dim, keep), r.index_select(family.batch_dim, keep)
        with manualbp.clip_per_sample(model, max_grad_norm, "sum", batch_first=family.batch_first):
            batch_loss(family, model(x_kept), r_kept, "sum").backward()
        return torch.cat([p.grad.flatten() for p in trainable(model).values()])

    everyone = torch.arange(x.shape[family.batch_dim])
    full = clipped_sum(everyone)
    for n in everyone:
        without = clipped_sum(everyone[everyone != n])
        assert (full - without).norm() <= max_grad_norm * (1 + 1e-9)


def test_a_sample_whose_gradient_is_not_finite_raises():
    """A nan or inf in a sample's gradient leaves its clipped contribution undefined: refused, not summed."""
    family = BY_FAMILY["mlp"]
    model = family.network()
    x, r = family.data(1)
    x[2, 0] = float("inf")
    with pytest.raises(PerSampleError, match="not finite"):
        with manualbp.clip_per_sample(model, 1.0, "sum"):
            batch_loss(family, model(x), r, "sum").backward()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", [BY_FAMILY["sequence"], BY_FAMILY["lstm"]], ids=["sequence", "lstm"])
def test_a_compiled_model_gives_the_eager_results_in_both_contexts(family):
    """torch.compile'd before the block opens (the per-sample seam is a global mode each layer's backward reads):
    grad_sample, the clipped gradient and the norms are those of the eager model. LeNet-5: tests/test_compile.py."""
    torch._dynamo.reset()
    model = family.network()
    compiled = torch.compile(model)
    x, r = family.data(1)
    batch_loss(family, compiled(x), r, "sum").backward()  # compiled outside any context first
    per_sample = reference_grads(family, model, x, r)
    norms, sums = clipped(per_sample, 0.5, "sum")
    model.zero_grad(set_to_none=True)
    with manualbp.per_sample_grads(model, "sum"):
        batch_loss(family, compiled(x), r, "sum").backward()
    for name, p in trainable(model).items():
        assert_close(p.grad_sample, per_sample[name], rtol=1e-6, atol=1e-8, msg=name)
    model.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(model, 0.5, "sum") as clip:
        batch_loss(family, compiled(x), r, "sum").backward()
    assert_close(clip.norms, norms, rtol=1e-6, atol=1e-8)
    for name, p in trainable(model).items():
        assert_close(p.grad, sums[name], rtol=1e-6, atol=1e-8, msg=name)
