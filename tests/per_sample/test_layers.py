"""Per-sample gradients and clipping on every supported layer configuration, in float64, against torch.func's
vmap(grad) over the torch twin and a loop over single-sample batches, with both loss reductions."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp
from manualbp.functional._reduction import REDUCTION
from manualbp.per_sample import PerSampleError
from tests.per_sample.cases import LAYER_PARAMS, MIXING_PARAMS, batch_input
from tests.per_sample.references import batch_loss, clipped_reference, loop_grads, trainable, vmap_grads

TOL = dict(rtol=0, atol=1e-10)
REDUCTIONS = pytest.mark.parametrize("loss_reduction", ["mean", "sum"])

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def _setup(case):
    manual, reference = case.build()
    if not trainable(manual):
        pytest.skip("no trainable parameters")
    x = batch_input(case)
    with torch.no_grad():
        y = manual(x)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return manual, reference, x, r


_VMAP_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _vmap_reference(case, manual, reference, x, r):
    """vmap(grad) per-sample gradients keyed by the manual module's names; computed once per case (they do
    not depend on the loss reduction), since vmap over grouped convolutions is slow."""
    if case.id not in _VMAP_CACHE:
        grads = vmap_grads(reference, x, r)
        _VMAP_CACHE[case.id] = {m: grads[n] for m, n in zip(trainable(manual), trainable(reference))}
    return _VMAP_CACHE[case.id]


@REDUCTIONS
@pytest.mark.parametrize("case", LAYER_PARAMS)
def test_grad_sample_is_each_samples_gradient(case, loss_reduction):
    manual, reference, x, r = _setup(case)
    with manualbp.per_sample_grads(manual, loss_reduction=loss_reduction):
        batch_loss(manual(x), r, loss_reduction).backward()
    by_vmap = _vmap_reference(case, manual, reference, x, r)
    by_loop = loop_grads(manual, x, r)
    plain = torch.autograd.grad(batch_loss(manual(x), r, loss_reduction), list(trainable(manual).values()))
    for (name, p), grad in zip(trainable(manual).items(), plain):
        assert p.grad_sample.shape == (x.shape[0], *p.shape)
        assert_close(p.grad_sample, by_vmap[name], **TOL)
        assert_close(p.grad_sample, by_loop[name], **TOL)
        assert_close(p.grad, grad, **TOL)  # p.grad as usual
        rows = p.grad_sample.mean(0) if loss_reduction == "mean" else p.grad_sample.sum(0)
        assert_close(rows, p.grad, **TOL)


@REDUCTIONS
@pytest.mark.parametrize("case", LAYER_PARAMS)
def test_clip_per_sample_clips_each_samples_gradient(case, loss_reduction):
    manual, reference, x, r = _setup(case)
    per_sample = _vmap_reference(case, manual, reference, x, r)
    norms, _ = clipped_reference(per_sample, 1.0, loss_reduction)
    max_grad_norm = norms.median().item()  # some samples clipped, some not
    _, expected = clipped_reference(per_sample, max_grad_norm, loss_reduction)
    with manualbp.clip_per_sample(manual, max_grad_norm, loss_reduction=loss_reduction) as clip:
        batch_loss(manual(x), r, loss_reduction).backward()
    assert_close(clip.norms, norms, **TOL)
    for name, p in trainable(manual).items():
        assert_close(p.grad, expected[name], **TOL)
        assert not hasattr(p, "grad_sample")


@pytest.mark.parametrize("case", MIXING_PARAMS)
def test_batch_statistics_are_refused(case):
    manual, _ = case.build()
    with pytest.raises(PerSampleError, match="statistics of the batch"):
        with manualbp.per_sample_grads(manual):
            pass
    assert REDUCTION.mode is None  # the seam is closed again
