"""Bad input raises an error that names the op and the offending shapes or dtypes."""

from __future__ import annotations

import pytest
import torch

import manualbp.functional as MF
import manualbp.nn as mnn

W = torch.randn(3, 4)

BAD_CALLS = [
    # (id, call, exception, message pattern)
    ("linear-feature-size", lambda: MF.linear(torch.randn(2, 5), W), ValueError, r"linear: input of shape \(2, 5\) does not match weight of shape \(3, 4\).*in_features=4"),
    ("linear-module-feature-size", lambda: mnn.Linear(4, 3)(torch.randn(2, 5)), ValueError, r"linear: input of shape \(2, 5\)"),
    ("linear-0d-input", lambda: MF.linear(torch.tensor(1.0), W), ValueError, r"linear: input of shape \(\)"),
    ("linear-weight-dims", lambda: MF.linear(torch.randn(2, 4), torch.randn(3, 4, 1)), ValueError, r"linear: expected a 2-D weight.*\(3, 4, 1\)"),
    ("linear-bias-shape", lambda: MF.linear(torch.randn(2, 4), W, torch.randn(4)), ValueError, r"linear: bias of shape \(4,\).*expected \(3,\)"),
    ("linear-dtype-mismatch", lambda: MF.linear(torch.randn(2, 4, dtype=torch.float64), W), TypeError, r"linear: .*same dtype.*input torch.float64, weight torch.float32"),
    ("linear-integer-input", lambda: MF.linear(torch.ones(2, 4, dtype=torch.int64), W), TypeError, r"linear: expected a floating-point input, got dtype torch.int64 with shape \(2, 4\)"),
    ("relu-integer-input", lambda: MF.relu(torch.ones(3, dtype=torch.int32)), TypeError, r"relu: expected a floating-point input, got dtype torch.int32"),
    ("sigmoid-not-a-tensor", lambda: MF.sigmoid([1.0, 2.0]), TypeError, r"sigmoid: input must be a Tensor, got list"),
    ("gelu-approximate", lambda: MF.gelu(torch.randn(3), approximate="fast"), ValueError, r"gelu: approximate must be 'none' or 'tanh', got 'fast'"),
    ("softmax-dim-out-of-range", lambda: MF.softmax(torch.randn(2, 3), dim=2), IndexError, r"softmax: dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"),
    ("log_softmax-integer-input", lambda: MF.log_softmax(torch.ones(2, 3, dtype=torch.int64), dim=1), TypeError, r"log_softmax: expected a floating-point input"),
    ("flatten-dims-reversed", lambda: MF.flatten(torch.randn(2, 3, 4), 2, 1), ValueError, r"flatten: start_dim \(2\) comes after end_dim \(1\).*\(2, 3, 4\)"),
    ("dropout-probability", lambda: MF.dropout(torch.randn(3), p=1.5), ValueError, r"dropout: probability has to be between 0 and 1, but got 1.5"),
    ("cross_entropy-target-out-of-range", lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 5, 2])), IndexError, r"cross_entropy: target 5 is out of bounds: input of shape \(4, 5\) has 5 classes"),
    ("cross_entropy-negative-target", lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, -3, 1, 2])), IndexError, r"cross_entropy: target -3 is out of bounds"),
    ("cross_entropy-target-shape", lambda: MF.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2])), ValueError, r"cross_entropy: expected target of shape \(4,\) for input of shape \(4, 5\), got target of shape \(3,\)"),
    ("cross_entropy-spatial-target-shape", lambda: MF.cross_entropy(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)), ValueError, r"expected target of shape \(2, 4, 4\) for input of shape \(2, 3, 4, 4\)"),
    ("cross_entropy-integer-logits", lambda: MF.cross_entropy(torch.ones(4, 5, dtype=torch.int64), torch.zeros(4, dtype=torch.long)), TypeError, r"cross_entropy: expected a floating-point input, got dtype torch.int64"),
    ("cross_entropy-weight-shape", lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), weight=torch.ones(4)), ValueError, r"cross_entropy: expected weight of shape \(5,\).*got \(4,\)"),
    ("cross_entropy-probability-shape", lambda: MF.cross_entropy(torch.randn(4, 5), torch.rand(4, 4)), ValueError, r"cross_entropy: probability targets must have the input's shape \(4, 5\), got \(4, 4\)"),
    ("cross_entropy-label-smoothing", lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), label_smoothing=1.5), ValueError, r"label_smoothing must be between 0.0 and 1.0"),
    ("cross_entropy-reduction", lambda: MF.cross_entropy(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), reduction="avg"), ValueError, r"cross_entropy: reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
    ("cross_entropy-module-target-out-of-range", lambda: mnn.CrossEntropyLoss()(torch.randn(2, 3), torch.tensor([3, 0])), IndexError, r"cross_entropy: target 3 is out of bounds"),
    ("nll_loss-target-out-of-range", lambda: MF.nll_loss(torch.randn(4, 5), torch.tensor([0, 1, 7, 2])), IndexError, r"nll_loss: target 7 is out of bounds"),
    ("nll_loss-float-target", lambda: MF.nll_loss(torch.randn(4, 5), torch.zeros(4)), TypeError, r"nll_loss: expected an integer \(class index\) target, got dtype torch.float32"),
    ("mse_loss-not-broadcastable", lambda: MF.mse_loss(torch.randn(3, 4), torch.randn(3, 5)), ValueError, r"mse_loss: input of shape \(3, 4\) and target of shape \(3, 5\) cannot be broadcast"),
    ("mse_loss-dtype-mismatch", lambda: MF.mse_loss(torch.randn(3), torch.randn(3, dtype=torch.float64)), TypeError, r"mse_loss: .*same dtype.*input torch.float32, target torch.float64"),
    ("mse_loss-integer-target", lambda: MF.mse_loss(torch.randn(3), torch.ones(3, dtype=torch.int64)), TypeError, r"mse_loss: expected a floating-point target"),
]


@pytest.mark.parametrize("call, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input_names_op_and_shapes(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


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
