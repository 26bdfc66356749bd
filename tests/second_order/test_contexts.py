"""How ``manualbp.curvature`` meets the rest: learning rules, the per-sample contexts, torch's layers and losses,
curved ops under ``diag_h``, shared weights, the ways to run a backward (``inputs=``, ``autograd.grad``,
checkpointing, a scaled loss), and the block's lifetime. Each either gives the reference's numbers or raises
``CurvatureError``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

import manualbp
import manualbp.functional as MF
from manualbp.functional._reduction import REDUCTION
from manualbp.second_order import CurvatureError

TOL = dict(rtol=1e-10, atol=1e-14)


def mlp(activation: type[torch.nn.Module] = torch.nn.ReLU) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), activation(), torch.nn.Linear(5, 3)).double()
    return manualbp.convert(model)


def batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def run(model, *names, loss=None, **kwargs):
    x, y = batch()
    with manualbp.curvature(model, *names, **kwargs):
        (loss or MF.cross_entropy)(model(x), y).backward()
    return {n: {q: getattr(p, q) for q in names if hasattr(p, q)} for n, p in model.named_parameters()}


def test_arguments_are_checked():
    model = mlp()
    with pytest.raises(ValueError, match=r"unknown quantity 'diag_gn'.*diag_ggn_exact"):
        manualbp.curvature(model, "diag_gn")
    with pytest.raises(ValueError, match=r"name at least one quantity"):
        manualbp.curvature(model)
    with pytest.raises(ValueError, match=r"mc_samples must be a positive int"):
        manualbp.curvature(model, "kfac", mc_samples=0)


def test_a_ddp_model_is_refused():
    """DDP averages gradients through hooks the context's written p.grad never reaches: refused, not unsynced."""
    ddp = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(ddp)  # no process group is needed to be recognised
    with pytest.raises(CurvatureError, match=r"DistributedDataParallel model.*Pass model\.module"):
        manualbp.curvature(ddp, "diag_ggn_exact")


def test_second_order_refuses_a_learning_rule_and_first_order_composes():
    model = manualbp.convert(mlp(), rule="feedback_alignment")
    with pytest.raises(CurvatureError, match=r"learning rule feedback_alignment"):
        run(model, "diag_ggn_exact")
    assert REDUCTION.mode is None
    ours = run(model, "batch_l2")  # the reduction is the rule's unchanged one: per-sample norms of it
    x, y = batch()
    with manualbp.per_sample_grads(model, loss_reduction="sum"):
        MF.cross_entropy(model(x), y, reduction="sum").backward()
    for name, p in model.named_parameters():
        assert_close(ours[name]["batch_l2"] * x.shape[0] ** 2, p.grad_sample.flatten(1).square().sum(1), **TOL)


def test_torch_loss_raises():
    with pytest.raises(CurvatureError, match=r"reached no manualbp.functional.cross_entropy or mse_loss"):
        run(mlp(), "diag_ggn_exact", loss=torch.nn.functional.cross_entropy)


def test_torch_layer_left_in_the_model_raises():
    model = torch.nn.Sequential(mlp(), torch.nn.Linear(3, 3).double())
    with pytest.raises(CurvatureError, match=r"'1\.(weight|bias)' got a gradient from an op"):
        run(model, "diag_ggn_exact")


@pytest.mark.parametrize("activation", [torch.nn.Sigmoid, torch.nn.GELU, torch.nn.Tanh])
def test_diag_h_refuses_curved_ops_and_equals_the_ggn_otherwise(activation):
    with pytest.raises(CurvatureError, match=r"diag_h: the graph holds .*Backward.*diag_ggn_exact instead"):
        run(mlp(activation), "diag_h")
    ours = run(mlp(), "diag_h", "diag_ggn_exact")
    for q in ours.values():
        assert_close(q["diag_h"], q["diag_ggn_exact"], rtol=0, atol=0)


def test_batch_statistics_are_refused():
    model = torch.nn.Sequential(mlp(), manualbp.nn.BatchNorm1d(3, dtype=torch.float64))
    with pytest.raises(CurvatureError, match=r"statistics of the batch"):
        run(model, "diag_ggn_exact")
    model.eval()
    assert run(model, "diag_ggn_exact")["1.weight"]["diag_ggn_exact"].shape == (3,)


def test_shared_weights_raise():
    model = mlp()
    model[2].weight = model[0].weight if model[0].weight.shape == model[2].weight.shape else model[2].weight
    shared = manualbp.nn.Linear(6, 6, dtype=torch.float64)
    twice = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, manualbp.nn.Linear(6, 3, dtype=torch.float64))
    with pytest.raises(CurvatureError, match=r"'0.weight' is used by two layers"):
        run(twice, "diag_ggn_exact")


def test_per_sample_contexts_do_not_nest_with_it():
    model = mlp()
    with manualbp.curvature(model, "diag_ggn_exact"):
        with pytest.raises(manualbp.per_sample.PerSampleError, match=r"do not nest"):
            with manualbp.per_sample_grads(model):
                pass
    with manualbp.clip_per_sample(model, 1.0):
        with pytest.raises(CurvatureError, match=r"do not nest"):
            with manualbp.curvature(model, "diag_ggn_exact"):
                pass


def test_loss_options_without_a_factor_raise():
    x, y = batch()
    model = mlp()
    with pytest.raises(CurvatureError, match=r"cross_entropy with a weight"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            MF.cross_entropy(model(x), y, weight=torch.ones(3, dtype=torch.float64)).backward()
    with pytest.raises(CurvatureError, match=r"reduction='none'"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            MF.cross_entropy(model(x), y, reduction="none").sum().backward()
    with pytest.raises(CurvatureError, match=r"a target of the output's shape"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            MF.mse_loss(model(x), torch.zeros(1, 3, dtype=torch.float64)).backward()
    with pytest.raises(CurvatureError, match=r"needs a finite loss input; it holds nan or inf"):
        with manualbp.curvature(model, "kfac"):
            MF.cross_entropy(model(x) * float("inf"), y).backward()
    with pytest.raises(CurvatureError, match=r"scaled by -1.0 < 0"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            (-MF.cross_entropy(model(x), y)).backward()


def test_label_smoothing_and_ignore_index_have_their_hessian():
    """Label smoothing leaves the Hessian; an ignored sample drops out, and the mean is over the others."""
    x, y = batch()
    model = mlp()
    y_ignored = y.clone()
    y_ignored[1] = -100
    with manualbp.curvature(model, "diag_ggn_exact"):
        MF.cross_entropy(model(x), y_ignored, label_smoothing=0.2).backward()
    got = {n: p.diag_ggn_exact for n, p in model.named_parameters()}
    keep = torch.tensor([0, 2, 3])
    with manualbp.curvature(model, "diag_ggn_exact"):
        MF.cross_entropy(model(x[keep]), y[keep]).backward()
    for n, p in model.named_parameters():
        assert_close(got[n], p.diag_ggn_exact, **TOL)


def test_a_scaled_loss_scales_the_curvature():
    plain = run(mlp(), "diag_ggn_exact", "kflr")
    scaled = run(mlp(), "diag_ggn_exact", "kflr", loss=lambda f, y: 3 * MF.cross_entropy(f, y))
    for name in plain:
        assert_close(scaled[name]["diag_ggn_exact"], 3 * plain[name]["diag_ggn_exact"], **TOL)
        assert_close(scaled[name]["kflr"][0], 3 * plain[name]["kflr"][0], **TOL)


def test_backward_inputs_writes_those_parameters_alone():
    full = run(mlp(), "diag_ggn_exact", "batch_l2")
    model = mlp()
    x, y = batch()
    with manualbp.curvature(model, "diag_ggn_exact", "batch_l2"):
        MF.cross_entropy(model(x), y).backward(inputs=[model[2].weight])
    assert_close(model[2].weight.diag_ggn_exact, full["2.weight"]["diag_ggn_exact"], **TOL)
    assert_close(model[2].weight.batch_l2, full["2.weight"]["batch_l2"], **TOL)
    assert not hasattr(model[0].weight, "diag_ggn_exact") and model[0].weight.grad is None


def test_autograd_grad_of_parameters_raises():
    model = mlp()
    x, y = batch()
    with pytest.raises(CurvatureError, match=r"returns to the caller"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            torch.autograd.grad(MF.cross_entropy(model(x), y), [model[0].weight])


def test_checkpointing_gives_the_same_quantities_or_raises():
    """Non-reentrant checkpointing: the same numbers. A reentrant checkpoint hides the parameters inside it from
    ``torch.autograd.grad``, which runs the columns: that raises instead of leaving them without a quantity."""
    full = run(mlp(), "diag_ggn_exact", "kflr", "sum_grad_squared")
    model = mlp()
    x, y = batch()

    def body(t):
        return model[1](model[0](t))

    with manualbp.curvature(model, "diag_ggn_exact", "kflr", "sum_grad_squared"):
        hidden = torch.utils.checkpoint.checkpoint(body, x, use_reentrant=False)
        MF.cross_entropy(model[2](hidden), y).backward()
    for name, p in model.named_parameters():
        assert_close(p.diag_ggn_exact, full[name]["diag_ggn_exact"], **TOL)
        assert_close(p.sum_grad_squared, full[name]["sum_grad_squared"], **TOL)
        for a, b in zip(p.kflr, full[name]["kflr"]):
            assert_close(a, b, **TOL)
    x.requires_grad_(True)
    with pytest.raises(CurvatureError, match=r"'0.weight', '0.bias' got a gradient.*use_reentrant=False"):
        with manualbp.curvature(model, "diag_ggn_exact"):
            hidden = torch.utils.checkpoint.checkpoint(body, x, use_reentrant=True)
            MF.cross_entropy(model[2](hidden), y).backward()


def test_each_block_starts_afresh_and_a_second_backward_replaces():
    model = mlp()
    first = run(model, "diag_ggn_exact")["0.weight"]["diag_ggn_exact"]
    run(model, "batch_l2")
    assert not hasattr(model[0].weight, "diag_ggn_exact")  # deleted when the next block opened
    x, y = batch()
    with manualbp.curvature(model, "diag_ggn_exact"):
        for _ in range(2):
            MF.cross_entropy(model(x), y).backward()
    assert_close(model[0].weight.diag_ggn_exact, first, **TOL)
    assert REDUCTION.mode is None


def test_outside_the_block_nothing_is_computed():
    model = mlp()
    run(model, "diag_ggn_exact")
    before = model[0].weight.diag_ggn_exact.clone()
    x, y = batch(6)
    MF.cross_entropy(model(x), y).backward()
    assert_close(model[0].weight.diag_ggn_exact, before, rtol=0, atol=0)
    assert REDUCTION.mode is None


def test_a_deep_copy_runs_the_same():
    model = mlp()
    twin = copy.deepcopy(model)
    a, b = run(model, "kfac", mc_samples=2), None
    torch.manual_seed(0)
    a = run(model, "kfac", mc_samples=2)
    torch.manual_seed(0)
    b = run(twin, "kfac", mc_samples=2)
    for name in a:
        for u, v in zip(a[name]["kfac"], b[name]["kfac"]):
            assert_close(u, v, rtol=0, atol=0)
