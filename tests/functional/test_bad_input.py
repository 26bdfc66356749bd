"""Bad input raises an error that names the op and the offending shapes or dtypes."""

from __future__ import annotations

import pytest
import torch

import manualbp.functional as MF
import manualbp.nn as mnn

W = torch.randn(3, 4)

BAD_CALLS = [
    # (id, call, exception, message pattern)
    (
        "linear-feature-size",
        lambda: MF.linear(torch.randn(2, 5), W),
        ValueError,
        r"linear: input of shape \(2, 5\) does not match weight of shape \(3, 4\).*in_features=4",
    ),
    (
        "linear-module-feature-size",
        lambda: mnn.Linear(4, 3)(torch.randn(2, 5)),
        ValueError,
        r"linear: input of shape \(2, 5\)",
    ),
    ("linear-0d-input", lambda: MF.linear(torch.tensor(1.0), W), ValueError, r"linear: input of shape \(\)"),
    (
        "linear-weight-dims",
        lambda: MF.linear(torch.randn(2, 4), torch.randn(3, 4, 1)),
        ValueError,
        r"linear: expected a 2-D weight.*\(3, 4, 1\)",
    ),
    (
        "linear-bias-shape",
        lambda: MF.linear(torch.randn(2, 4), W, torch.randn(4)),
        ValueError,
        r"linear: bias of shape \(4,\).*expected \(3,\)",
    ),
    (
        "linear-dtype-mismatch",
        lambda: MF.linear(torch.randn(2, 4, dtype=torch.float64), W),
        TypeError,
        r"linear: .*same dtype.*input torch.float64, weight torch.float32",
    ),
    (
        "linear-integer-input",
        lambda: MF.linear(torch.ones(2, 4, dtype=torch.int64), W),
        TypeError,
        r"linear: expected a floating-point input, got dtype torch.int64 with shape \(2, 4\)",
    ),
    (
        "relu-integer-input",
        lambda: MF.relu(torch.ones(3, dtype=torch.int32)),
        TypeError,
        r"relu: expected a floating-point input, got dtype torch.int32",
    ),
    ("sigmoid-not-a-tensor", lambda: MF.sigmoid([1.0, 2.0]), TypeError, r"sigmoid: input must be a Tensor, got list"),
    (
        "gelu-approximate",
        lambda: MF.gelu(torch.randn(3), approximate="fast"),
        ValueError,
        r"gelu: approximate must be one of \('none', 'tanh'\), got 'fast'",
    ),
    (
        "softmax-dim-out-of-range",
        lambda: MF.softmax(torch.randn(2, 3), dim=2),
        IndexError,
        r"softmax: dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)",
    ),
    (
        "log_softmax-integer-input",
        lambda: MF.log_softmax(torch.ones(2, 3, dtype=torch.int64), dim=1),
        TypeError,
        r"log_softmax: expected a floating-point input",
    ),
    (
        "flatten-dims-reversed",
        lambda: MF.flatten(torch.randn(2, 3, 4), 2, 1),
        ValueError,
        r"flatten: start_dim \(2\) comes after end_dim \(1\).*\(2, 3, 4\)",
    ),
    (
        "dropout-probability",
        lambda: MF.dropout(torch.randn(3), p=1.5),
        ValueError,
        r"dropout: probability has to be between 0 and 1, but got 1.5",
    ),
    (
        "cross_entropy-target-out-of-range",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 5, 2])),
        IndexError,
        r"cross_entropy: target 5 is out of bounds: input of shape \(4, 5\) has 5 classes",
    ),
    (
        "cross_entropy-negative-target",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, -3, 1, 2])),
        IndexError,
        r"cross_entropy: target -3 is out of bounds",
    ),
    (
        "cross_entropy-target-shape",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2])),
        ValueError,
        r"cross_entropy: expected target of shape \(4,\) for input of shape \(4, 5\), got target of shape \(3,\)",
    ),
    (
        "cross_entropy-spatial-target-shape",
        lambda: MF.cross_entropy(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)),
        ValueError,
        r"expected target of shape \(2, 4, 4\) for input of shape \(2, 3, 4, 4\)",
    ),
    (
        "cross_entropy-integer-logits",
        lambda: MF.cross_entropy(torch.ones(4, 5, dtype=torch.int64), torch.zeros(4, dtype=torch.long)),
        TypeError,
        r"cross_entropy: expected a floating-point input, got dtype torch.int64",
    ),
    (
        "cross_entropy-weight-shape",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), weight=torch.ones(4)),
        ValueError,
        r"cross_entropy: expected weight of shape \(5,\).*got \(4,\)",
    ),
    (
        "cross_entropy-probability-shape",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.rand(4, 4)),
        ValueError,
        r"cross_entropy: probability targets must have the input's shape \(4, 5\), got \(4, 4\)",
    ),
    (
        "cross_entropy-label-smoothing",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), label_smoothing=1.5),
        ValueError,
        r"cross_entropy: label_smoothing has to be between 0 and 1, but got 1.5",
    ),
    (
        "cross_entropy-reduction",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), reduction="avg"),
        ValueError,
        r"cross_entropy: reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
    ),
    (
        "cross_entropy-module-target-out-of-range",
        lambda: mnn.CrossEntropyLoss()(torch.randn(2, 3), torch.tensor([3, 0])),
        IndexError,
        r"cross_entropy: target 3 is out of bounds",
    ),
    (
        "nll_loss-target-out-of-range",
        lambda: MF.nll_loss(torch.randn(4, 5), torch.tensor([0, 1, 7, 2])),
        IndexError,
        r"nll_loss: target 7 is out of bounds",
    ),
    (
        "nll_loss-float-target",
        lambda: MF.nll_loss(torch.randn(4, 5), torch.zeros(4)),
        RuntimeError,
        r"nll_loss: expected a class-index target of dtype torch.int64 \(or torch.uint8\), as torch does, got dtype torch.float32",
    ),
    (
        "nll_loss-int32-target",
        lambda: MF.nll_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.int32)),
        TypeError,
        r"nll_loss: expected a class-index target of dtype torch.int64 \(or torch.uint8\).*got dtype torch.int32",
    ),
    (
        "cross_entropy-int32-target",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.int32)),
        RuntimeError,
        r"cross_entropy: expected a class-index target of dtype torch.int64 \(or torch.uint8\).*got dtype torch.int32",
    ),
    (
        "cross_entropy-module-bool-target",
        lambda: mnn.CrossEntropyLoss()(torch.randn(2, 3), torch.tensor([True, False])),
        TypeError,
        r"cross_entropy: expected a class-index target.*got dtype torch.bool",
    ),
    (
        "mse_loss-not-broadcastable",
        lambda: MF.mse_loss(torch.randn(3, 4), torch.randn(3, 5)),
        ValueError,
        r"mse_loss: input of shape \(3, 4\) and target of shape \(3, 5\) cannot be broadcast",
    ),
    (
        "mse_loss-dtype-mismatch",
        lambda: MF.mse_loss(torch.randn(3), torch.randn(3, dtype=torch.float64)),
        TypeError,
        r"mse_loss: .*same dtype.*input torch.float32, target torch.float64",
    ),
    (
        "mse_loss-integer-target",
        lambda: MF.mse_loss(torch.randn(3), torch.ones(3, dtype=torch.int64)),
        TypeError,
        r"mse_loss: expected a floating-point target",
    ),
    # hyper-parameters of the wrong type or out of range
    (
        "leaky_relu-slope-type",
        lambda: MF.leaky_relu(torch.randn(3), "0.1"),
        TypeError,
        r"leaky_relu: negative_slope must be a real number, got '0.1'",
    ),
    ("elu-alpha-type", lambda: MF.elu(torch.randn(3), None), TypeError, r"elu: alpha must be a real number, got None"),
    (
        "softmax-dim-type",
        lambda: MF.softmax(torch.randn(2, 3), dim=1.0),
        TypeError,
        r"softmax: dim must be an int, got 1.0",
    ),
    (
        "log_softmax-dim-type",
        lambda: MF.log_softmax(torch.randn(2, 3), dim="1"),
        TypeError,
        r"log_softmax: dim must be an int, got '1'",
    ),
    (
        "flatten-start-dim-type",
        lambda: MF.flatten(torch.randn(2, 3), 0.0),
        TypeError,
        r"flatten: start_dim must be an int, got 0.0",
    ),
    ("flatten-not-a-tensor", lambda: MF.flatten([[1.0]]), TypeError, r"flatten: input must be a Tensor, got list"),
    (
        "dropout-negative-probability",
        lambda: MF.dropout(torch.randn(3), p=-0.1),
        ValueError,
        r"dropout: probability has to be between 0 and 1, but got -0.1",
    ),
    (
        "dropout-probability-type",
        lambda: MF.dropout(torch.randn(3), p="0.5"),
        TypeError,
        r"dropout: probability must be a real number, got '0.5'",
    ),
    (
        "dropout-probability-nan",
        lambda: MF.dropout(torch.randn(3), p=float("nan")),
        ValueError,
        r"dropout: probability has to be between 0 and 1, but got nan",
    ),
    (
        "cross_entropy-negative-label-smoothing",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), label_smoothing=-0.1),
        ValueError,
        r"cross_entropy: label_smoothing has to be between 0 and 1, but got -0.1",
    ),
    (
        "cross_entropy-label-smoothing-type",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), label_smoothing="0.1"),
        TypeError,
        r"cross_entropy: label_smoothing must be a real number, got '0.1'",
    ),
    (
        "cross_entropy-ignore-index-type",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), ignore_index=1.5),
        TypeError,
        r"cross_entropy: ignore_index must be an int, got 1.5",
    ),
    (
        "cross_entropy-target-not-a-tensor",
        lambda: MF.cross_entropy(torch.randn(4, 5), [0, 1, 2, 3]),
        TypeError,
        r"cross_entropy: target must be a Tensor, got list",
    ),
    (
        "nll_loss-target-not-a-tensor",
        lambda: MF.nll_loss(torch.randn(4, 5), (0, 1, 2, 3)),
        TypeError,
        r"nll_loss: target must be a Tensor, got tuple",
    ),
    (
        "mse_loss-target-not-a-tensor",
        lambda: MF.mse_loss(torch.randn(3), [1.0, 2.0, 3.0]),
        TypeError,
        r"mse_loss: target must be a Tensor, got list",
    ),
    (
        "mse_loss-reduction",
        lambda: MF.mse_loss(torch.randn(3), torch.randn(3), reduction="avg"),
        ValueError,
        r"mse_loss: reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
    ),
    (
        "batch_norm-negative-eps",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-5),
        ValueError,
        r"batch_norm: eps must be non-negative, got -1e-05",
    ),
    (
        "batch_norm-zero-eps-training",
        lambda: MF.batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0),
        ValueError,
        r"batch_norm: eps must be positive during training, got 0.0",
    ),
    (
        "batch_norm-eps-type",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps="1e-5"),
        TypeError,
        r"batch_norm: eps must be a real number, got '1e-5'",
    ),
    (
        "batch_norm-momentum-above-one",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=1.5),
        ValueError,
        r"batch_norm: momentum has to be between 0 and 1, but got 1.5",
    ),
    (
        "batch_norm-negative-momentum",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=-0.1),
        ValueError,
        r"batch_norm: momentum has to be between 0 and 1, but got -0.1",
    ),
    (
        "layer_norm-negative-eps",
        lambda: MF.layer_norm(torch.randn(2, 4), (4,), eps=-1.0),
        ValueError,
        r"layer_norm: eps must be non-negative, got -1.0",
    ),
    (
        "layer_norm-shape-string",
        lambda: MF.layer_norm(torch.randn(2, 8), "8"),
        TypeError,
        r"layer_norm: normalized_shape must be an int or a sequence of ints, got '8'",
    ),
    (
        "layer_norm-shape-float",
        lambda: MF.layer_norm(torch.randn(2, 8), (8.5,)),
        TypeError,
        r"layer_norm: normalized_shape must be an int or a sequence of ints, got \(8.5,\)",
    ),
    (
        "layer_norm-shape-negative",
        lambda: MF.layer_norm(torch.randn(2, 8), (-8,)),
        ValueError,
        r"layer_norm: normalized_shape must hold sizes >= 0, got \(-8,\)",
    ),
    (
        "layer_norm-shape-mismatch",
        lambda: MF.layer_norm(torch.randn(2, 8), (4,)),
        ValueError,
        r"layer_norm: input of shape \(2, 8\) does not end in normalized_shape \(4,\)",
    ),
    (
        "layer_norm-weight-shape",
        lambda: MF.layer_norm(torch.randn(2, 8), (8,), torch.ones(4)),
        ValueError,
        r"layer_norm: weight of shape \(4,\) does not match normalized_shape \(8,\)",
    ),
    (
        "batch_norm-not-a-tensor",
        lambda: MF.batch_norm([[1.0, 2.0]], None, None, training=True),
        TypeError,
        r"batch_norm: input must be a Tensor, got list",
    ),
]

# Tensors on two devices: "meta" stands in for an accelerator, so this runs on any machine, and the
# check must fire before the forward (a meta tensor cannot meet a CPU one in any kernel).
META = "meta"
DEVICE_CALLS = [
    (
        "linear-weight",
        lambda: MF.linear(torch.randn(2, 4), torch.randn(3, 4, device=META)),
        r"linear: expected all tensors to be on the same device, got input on cpu, weight on meta",
    ),
    (
        "linear-bias",
        lambda: MF.linear(torch.randn(2, 4), W, torch.zeros(3, device=META)),
        r"linear: .*input on cpu, weight on cpu, bias on meta",
    ),
    (
        "linear-module-input",
        lambda: mnn.Linear(4, 3)(torch.randn(2, 4, device=META)),
        r"linear: .*input on meta, weight on cpu, bias on cpu",
    ),
    (
        "batch_norm-running-stats",
        lambda: MF.batch_norm(torch.randn(4, 3), torch.zeros(3, device=META), torch.ones(3, device=META)),
        r"batch_norm: .*input on cpu, running_mean on meta, running_var on meta",
    ),
    (
        "batch_norm-module-input",
        lambda: mnn.BatchNorm1d(3)(torch.randn(4, 3, device=META)),
        r"batch_norm: .*input on meta, running_mean on cpu",
    ),
    (
        "layer_norm-weight",
        lambda: MF.layer_norm(torch.randn(2, 4), (4,), torch.ones(4, device=META)),
        r"layer_norm: .*input on cpu, weight on meta",
    ),
    (
        "cross_entropy-target",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long, device=META)),
        r"cross_entropy: .*input on cpu, target on meta",
    ),
    (
        "cross_entropy-weight",
        lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), torch.ones(5, device=META)),
        r"cross_entropy: .*target on cpu, weight on meta",
    ),
    (
        "nll_loss-target",
        lambda: MF.nll_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long, device=META)),
        r"nll_loss: .*input on cpu, target on meta",
    ),
    (
        "mse_loss-target",
        lambda: MF.mse_loss(torch.randn(3), torch.randn(3, device=META)),
        r"mse_loss: .*input on cpu, target on meta",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input_names_op_and_shapes(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


@pytest.mark.parametrize("call, pattern", [pytest.param(*c[1:], id=c[0]) for c in DEVICE_CALLS])
def test_tensors_on_two_devices_name_op_and_devices(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_same_device_check_accepts_one_device_and_absent_tensors():
    """The check compares devices only: all-meta tensors pass it (and the op runs on meta)."""
    x, w = torch.randn(2, 4, device=META), torch.randn(3, 4, device=META)
    assert MF.linear(x, w).device.type == META
    assert MF.linear(x, w, None).shape == (2, 3)


def test_hyper_parameters_accept_what_torch_accepts():
    """Python and NumPy numbers, ints for floats and 0-d tensors pass the new type checks, as in torch."""
    import numpy as np

    x = torch.randn(4, 3)
    torch.testing.assert_close(MF.leaky_relu(x, np.float32(0.2)), torch.nn.functional.leaky_relu(x, 0.2))
    torch.testing.assert_close(MF.elu(x, 1), torch.nn.functional.elu(x, 1.0))
    torch.testing.assert_close(MF.softmax(x, np.int64(1)), torch.softmax(x, 1))
    assert MF.flatten(torch.randn(2, 3, 4), np.int32(1)).shape == (2, 12)
    torch.testing.assert_close(MF.layer_norm(x, torch.Size([3])), torch.nn.functional.layer_norm(x, (3,)))
    torch.testing.assert_close(MF.layer_norm(x, [np.int64(3)]), torch.nn.functional.layer_norm(x, (3,)))
    assert MF.dropout(x, torch.tensor(0.0)).shape == x.shape
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    MF.batch_norm(x, running_mean, running_var, training=True, momentum=torch.tensor(0.5))
    torch.testing.assert_close(running_mean, 0.5 * x.mean(0))
    torch.testing.assert_close(
        MF.batch_norm(x, torch.zeros(3), torch.ones(3), eps=0.0),
        torch.nn.functional.batch_norm(x, torch.zeros(3), torch.ones(3), eps=0.0),
    )


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8])
def test_class_targets_of_a_dtype_torch_refuses_are_refused_as_torch_does(dtype):
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3], dtype=dtype)
    with pytest.raises(RuntimeError, match="expected target dtype to be Long or Byte"):
        torch.nn.functional.cross_entropy(logits, target)
    for loss in (MF.cross_entropy, MF.nll_loss):
        with pytest.raises(RuntimeError, match=f"expected a class-index target .* got dtype {dtype}"):
            loss(logits, target)


@pytest.mark.parametrize(
    "manual, twin",
    [
        pytest.param(lambda: mnn.Linear(3, 2), lambda: torch.nn.Linear(3, 2), id="linear"),
        pytest.param(lambda: mnn.Conv2d(1, 2, 3), lambda: torch.nn.Conv2d(1, 2, 3), id="conv2d"),
    ],
)
def test_a_dtype_fault_is_caught_by_the_except_clause_written_for_torch(manual, twin):
    """torch raises RuntimeError for float64 input into float32 weights; manualbp's error is one too."""
    x = torch.randn(2, 1, 5, 3, dtype=torch.float64)
    for layer in (twin(), manual()):
        with pytest.raises(RuntimeError):
            layer(x)
    with pytest.raises(TypeError, match="expected all tensors to have the same dtype"):
        manual()(x)


def test_byte_class_targets_are_taken_as_torch_takes_them():
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 4], dtype=torch.uint8)
    torch.testing.assert_close(MF.cross_entropy(logits, target), torch.nn.functional.cross_entropy(logits, target))


def test_ignored_targets_may_lie_outside_the_class_range():
    logits, target = torch.randn(3, 4), torch.tensor([1, -100, 3])
    torch.testing.assert_close(MF.cross_entropy(logits, target), torch.nn.functional.cross_entropy(logits, target))


def test_mse_loss_warns_like_torch_when_shapes_broadcast():
    x, t = torch.randn(3, 4, requires_grad=True), torch.randn(4)
    with pytest.warns(UserWarning, match="target size"):
        manual = MF.mse_loss(x, t)
    torch.testing.assert_close(manual, torch.nn.functional.mse_loss(x, t.expand(3, 4)))
    with pytest.warns(UserWarning, match="target size"):
        loss = MF.mse_loss(x, t.requires_grad_(), reduction="sum")
    (grad_t,) = torch.autograd.grad(loss, t)
    assert grad_t.shape == t.shape


@pytest.mark.parametrize(
    "manual, twin",
    [
        pytest.param(
            lambda: mnn.Linear(3, 2)(torch.randn(2, 4)),
            lambda: torch.nn.Linear(3, 2)(torch.randn(2, 4)),
            id="linear-features",
        ),
        pytest.param(
            lambda: mnn.Conv2d(3, 2, 3)(torch.randn(1, 2, 5, 5)),
            lambda: torch.nn.Conv2d(3, 2, 3)(torch.randn(1, 2, 5, 5)),
            id="conv2d-channels",
        ),
        pytest.param(
            lambda: mnn.MaxPool2d(4)(torch.randn(1, 1, 2, 2)),
            lambda: torch.nn.MaxPool2d(4)(torch.randn(1, 1, 2, 2)),
            id="max_pool2d-too-small",
        ),
        pytest.param(
            lambda: mnn.BatchNorm2d(3)(torch.randn(2, 4, 3, 3)),
            lambda: torch.nn.BatchNorm2d(3)(torch.randn(2, 4, 3, 3)),
            id="batch_norm2d-channels",
        ),
        pytest.param(
            lambda: mnn.LayerNorm(4)(torch.randn(2, 3)),
            lambda: torch.nn.LayerNorm(4)(torch.randn(2, 3)),
            id="layer_norm-shape",
        ),
    ],
)
def test_a_shape_fault_is_caught_by_the_except_clause_written_for_torch(manual, twin):
    """torch raises RuntimeError for these; manualbp's error is a RuntimeError too (and a ValueError)."""
    with pytest.raises(RuntimeError):
        twin()
    with pytest.raises(RuntimeError) as caught:
        manual()
    assert isinstance(caught.value, ValueError)
