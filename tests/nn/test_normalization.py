"""BatchNorm1d/2d and LayerNorm beyond the registry: running statistics over several steps, eval after
training, the fixed-statistics gradients, torch.func, and the input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.convert import convert

LAYOUTS = [
    pytest.param("BatchNorm1d", (4, 3), id="batch_norm1d-2d"),
    pytest.param("BatchNorm1d", (3, 3, 5), id="batch_norm1d-3d"),
    pytest.param("BatchNorm2d", (2, 3, 4, 3), id="batch_norm2d"),
]


def _pair(layer: str, dtype: torch.dtype = torch.float64, **kwargs):
    manual = getattr(mnn, layer)(3, dtype=dtype, **kwargs)
    reference = getattr(torch.nn, layer)(3, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in reference.parameters():
            p.uniform_(0.5, 1.5)
    manual.load_state_dict(reference.state_dict())
    return manual, reference


def _probe(out: torch.Tensor) -> torch.Tensor:
    """A fixed, non-constant dL/dy of out's shape."""
    return torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)


def _step(manual, reference, x):
    """One forward/backward on both; asserts equal outputs and gradients and returns nothing."""
    outs, grads = [], []
    for module in (manual, reference):
        xi = x.clone().requires_grad_()
        out = module(xi)
        wrt = [xi, *module.parameters()]
        grads.append(torch.autograd.grad(out, wrt, _probe(out)))
        outs.append(out.detach())
    assert_close(outs[0], outs[1])
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "momentum_none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("layer, shape", LAYOUTS)
def test_running_statistics_follow_torch_over_three_steps(layer, shape, momentum, dtype):
    manual, reference = _pair(layer, dtype, momentum=momentum)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * (step + 1) + step).to(dtype)
        _step(manual, reference, x)
        assert_close(manual.running_mean, reference.running_mean)
        assert_close(manual.running_var, reference.running_var)
        assert manual.num_batches_tracked.item() == reference.num_batches_tracked.item() == step + 1
    # eval after training: the running statistics normalise, with the simple affine backward
    manual.eval()
    reference.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    _step(manual, reference, x)
    assert manual.num_batches_tracked.item() == 3
    assert_close(manual.state_dict(), reference.state_dict())


@pytest.mark.parametrize("layer, shape", LAYOUTS)
def test_running_statistics_untouched_without_tracking_or_in_eval(layer, shape):
    manual, reference = _pair(layer, track_running_stats=False)
    assert manual.running_mean is None and manual.num_batches_tracked is None
    x = torch.randn(shape, dtype=torch.float64)
    _step(manual, reference, x)
    manual, reference = _pair(layer)
    manual.eval()
    reference.eval()
    before = {k: v.clone() for k, v in manual.state_dict().items()}
    _step(manual, reference, x)
    assert_close(manual.state_dict(), before, rtol=0, atol=0)


def test_output_grad_fn_after_training_is_custom_in_both_modes():
    layer = mnn.BatchNorm2d(3)
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    assert isinstance(layer(x).grad_fn, torch.autograd.function.BackwardCFunction)
    assert isinstance(layer.eval()(x).grad_fn, torch.autograd.function.BackwardCFunction)


def test_fixed_statistics_gradients_pass_gradcheck_and_gradgradcheck():
    """In eval mode the running estimates are inputs too: their hand-written gradients are checked
    numerically (torch itself does not differentiate through them)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape, offset=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) + offset).requires_grad_()

    x, w, b, mean, var = t(2, 3, 2), t(3), t(3), t(3), t(3).detach().abs().add(0.5).requires_grad_()

    def fn(x, w, b, mean, var):
        return MF.batch_norm(x, mean, var, w, b, training=False, eps=1e-3)

    assert torch.autograd.gradcheck(fn, (x, w, b, mean, var))
    assert torch.autograd.gradgradcheck(fn, (x, w, b, mean, var))


def test_functional_batch_norm_matches_torch_functional_with_update():
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    stats_m = [torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5]
    stats_r = [s.clone() for s in stats_m]
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    out_m = MF.batch_norm(x, *stats_m, w, b, training=True, momentum=0.3, eps=1e-3)
    out_r = torch.nn.functional.batch_norm(x, *stats_r, w, b, training=True, momentum=0.3, eps=1e-3)
    assert_close(out_m, out_r)
    assert_close(stats_m, stats_r)
    assert_close(MF.batch_norm(x, *stats_m, w, b), torch.nn.functional.batch_norm(x, *stats_r, w, b))


def test_torch_func_grad_and_vmap():
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)

    def loss(fn):
        return lambda x: fn(x).pow(3).sum()

    manual = torch.func.grad(loss(lambda x: MF.batch_norm(x, None, None, w, training=True)))(x)
    reference = torch.func.grad(loss(lambda x: torch.nn.functional.batch_norm(x, None, None, w, training=True)))(x)
    assert_close(manual, reference)
    manual = torch.func.vmap(torch.func.grad(loss(lambda r: MF.layer_norm(r, 3, w))))(x)
    reference = torch.func.vmap(torch.func.grad(loss(lambda r: torch.nn.functional.layer_norm(r, (3,), w))))(x)
    assert_close(manual, reference)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    affine=st.booleans(),
)
def test_batch_norm_training_matches_torch_on_drawn_shapes(n, c, spatial, affine):
    shape = (n, c, *spatial)
    if n * torch.Size(spatial).numel() == 1:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            MF.batch_norm(torch.randn(shape), None, None, training=True)
        return
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.rand(c, dtype=torch.float64) + 0.5 if affine else None
    b = torch.randn(c, dtype=torch.float64) if affine else None
    results = []
    for fn in (MF.batch_norm, torch.nn.functional.batch_norm):
        xi = x.clone().requires_grad_()
        out = fn(xi, None, None, w, b, training=True)
        results.append((out, torch.autograd.grad(out, xi, _probe(out))))
    assert_close(results[0], results[1])


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), k=st.integers(1, 4))
def test_layer_norm_matches_torch_on_drawn_shapes(shape, k):
    normalized = tuple(shape[-min(k, len(shape)) :])
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.rand(normalized, dtype=torch.float64) + 0.5
    results = []
    for fn in (MF.layer_norm, torch.nn.functional.layer_norm):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(xi, normalized, wi, None)
        results.append((out, torch.autograd.grad(out, (xi, wi), _probe(out))))
    assert_close(results[0], results[1])


BN1, BN2 = mnn.BatchNorm1d, mnn.BatchNorm2d
BAD_CALLS = [
    # (id, call, exception, message pattern)
    (
        "batch_norm1d-4d-input",
        lambda: BN1(3)(torch.randn(2, 3, 4, 4)),
        ValueError,
        r"manualbp.nn.BatchNorm1d: expected input with 2 or 3 dimensions, got 4-D input of shape \(2, 3, 4, 4\)",
    ),
    (
        "batch_norm1d-1d-input",
        lambda: BN1(3)(torch.randn(3)),
        ValueError,
        r"manualbp.nn.BatchNorm1d: expected input with 2 or 3 dimensions, got 1-D input of shape \(3,\)",
    ),
    (
        "batch_norm2d-3d-input",
        lambda: BN2(3)(torch.randn(3, 4, 4)),
        ValueError,
        r"manualbp.nn.BatchNorm2d: expected input with 4 dimensions, got 3-D input of shape \(3, 4, 4\)",
    ),
    (
        "batch_norm-functional-1d-input",
        lambda: MF.batch_norm(torch.randn(3), None, None, training=True),
        ValueError,
        r"batch_norm: expected input with 2 or more dimensions, got 1-D input of shape \(3,\)",
    ),
    (
        "batch_norm2d-channels-vs-running_mean",
        lambda: BN2(3)(torch.randn(2, 4, 2, 2)),
        ValueError,
        r"batch_norm: input of shape \(2, 4, 2, 2\) has 4 channels \(dim 1\), but running_mean has shape \(3,\); "
        r"expected \(4,\)",
    ),
    (
        "batch_norm1d-channels-vs-weight",
        lambda: BN1(3, track_running_stats=False)(torch.randn(4, 5)),
        ValueError,
        r"batch_norm: input of shape \(4, 5\) has 5 channels \(dim 1\), but weight has shape \(3,\)",
    ),
    (
        "batch_norm-channels-vs-running_var",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(2)),
        ValueError,
        r"batch_norm: input of shape \(4, 3\) has 3 channels \(dim 1\), but running_var has shape \(2,\)",
    ),
    (
        "batch_norm-channels-vs-bias",
        lambda: MF.batch_norm(torch.randn(4, 3), None, None, bias=torch.ones(3, 1)),
        ValueError,
        r"batch_norm: .* but bias has shape \(3, 1\)",
    ),
    (
        "batch_norm1d-integer-input",
        lambda: BN1(3)(torch.ones(4, 3, dtype=torch.int64)),
        TypeError,
        r"batch_norm: expected a floating-point input, got dtype torch.int64 with shape \(4, 3\)",
    ),
    (
        "batch_norm2d-dtype-mismatch",
        lambda: BN2(3)(torch.randn(2, 3, 2, 2, dtype=torch.float64)),
        TypeError,
        r"batch_norm: .*same dtype.*input torch.float64, running_mean torch.float32",
    ),
    (
        "batch_norm1d-one-value-per-channel",
        lambda: BN1(3)(torch.randn(1, 3)),
        ValueError,
        r"batch_norm: expected more than 1 value per channel when training, got input of shape \(1, 3\)",
    ),
    (
        "batch_norm1d-one-value-per-channel-3d",
        lambda: BN1(3)(torch.randn(1, 3, 1)),
        ValueError,
        r"more than 1 value per channel when training, got input of shape \(1, 3, 1\)",
    ),
    (
        "batch_norm2d-one-value-per-channel",
        lambda: BN2(3)(torch.randn(1, 3, 1, 1)),
        ValueError,
        r"batch_norm: expected more than 1 value per channel when training, got input of shape \(1, 3, 1, 1\)",
    ),
    (
        "batch_norm2d-eval-untracked-one-value",
        lambda: BN2(3, track_running_stats=False).eval()(torch.randn(1, 3, 1, 1)),
        ValueError,
        r"more than 1 value per channel when training",
    ),
    (
        "batch_norm-eval-without-running-stats",
        lambda: MF.batch_norm(torch.randn(4, 3), None, None),
        ValueError,
        r"batch_norm: running_mean and running_var must be given in evaluation mode",
    ),
    (
        "batch_norm-half-running-stats",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), None),
        ValueError,
        r"batch_norm: running_mean and running_var must be given together",
    ),
    (
        "layer_norm-trailing-shape",
        lambda: mnn.LayerNorm((3, 4))(torch.randn(2, 4, 3)),
        ValueError,
        r"layer_norm: input of shape \(2, 4, 3\) does not end in normalized_shape \(3, 4\): "
        r"expected input of shape \(\*, 3, 4\)",
    ),
    (
        "layer_norm-too-few-dims",
        lambda: MF.layer_norm(torch.randn(4), (3, 4)),
        ValueError,
        r"layer_norm: input of shape \(4,\) does not end in normalized_shape \(3, 4\)",
    ),
    (
        "layer_norm-weight-shape",
        lambda: MF.layer_norm(torch.randn(2, 4), 4, torch.ones(3)),
        ValueError,
        r"layer_norm: weight of shape \(3,\) does not match normalized_shape \(4,\)",
    ),
    (
        "layer_norm-empty-shape",
        lambda: MF.layer_norm(torch.randn(2, 4), ()),
        ValueError,
        r"layer_norm: normalized_shape must name at least one dimension",
    ),
    (
        "layer_norm-integer-input",
        lambda: mnn.LayerNorm(4)(torch.ones(2, 4, dtype=torch.int32)),
        TypeError,
        r"layer_norm: expected a floating-point input, got dtype torch.int32 with shape \(2, 4\)",
    ),
    (
        "layer_norm-dtype-mismatch",
        lambda: mnn.LayerNorm(4)(torch.randn(2, 4, dtype=torch.float64)),
        TypeError,
        r"layer_norm: .*same dtype.*input torch.float64, weight torch.float32, bias torch.float32",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input_names_op_and_shapes(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_eval_with_running_stats_accepts_one_value_per_channel():
    manual, reference = _pair("BatchNorm2d")
    manual.eval()
    reference.eval()
    _step(manual, reference, torch.randn(1, 3, 1, 1, dtype=torch.float64))


def test_torch_rejects_what_we_reject():
    """Some rejected inputs above, rejected by torch too (with its own wording)."""
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        torch.nn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        torch.nn.BatchNorm1d(3)(torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError):
        torch.nn.LayerNorm((3, 4))(torch.randn(2, 4, 3))


def test_convert_shares_the_running_statistics():
    torch_layer = torch.nn.BatchNorm1d(3, momentum=None)
    model = convert(torch.nn.Sequential(torch_layer))
    assert isinstance(model[0], mnn.BatchNorm1d)
    reference = torch.nn.BatchNorm1d(3, momentum=None)
    for _ in range(2):
        x = torch.randn(5, 3)
        model(x)
        reference(x)
    assert torch_layer.num_batches_tracked.item() == 2
    assert_close(torch_layer.state_dict(), reference.state_dict())
