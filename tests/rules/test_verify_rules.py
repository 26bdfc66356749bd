"""Every rule's Function through the verification battery, against an autograd reference (``references``).

A rule's backward is, by design, not the derivative of its forward, and two checks cannot hold for it:

* ``gradcheck`` compares with numerical derivatives of the forward, which give backprop's dL/dx, not the
  rule's; it is tested on its own below: it fails exactly on the gradient the rule replaces (dL/dx), passes
  on the parameters', and passes everywhere when the rule's matrix is W (where the rule is backprop);
* ``double_backward`` compares second derivatives with the reference's, and no autograd-only reference has
  the rule's: the backward (G·M, Gᵀx, ΣG) makes dL/dW depend on x while dL/dx does not depend on W, and any
  autograd graph of a forward pass ties the two together (the path that saves x for dL/dW is the path that
  sends G·W to x; detaching x cuts both). ``gradgradcheck`` (numerical derivatives of the backward itself)
  runs here and checks the second derivatives; ``tests/fuzz/test_rules_fuzz.py`` also compares them with
  autograd's derivatives of the reference's vector-Jacobian products.

Every other CPU check runs (forward, backward in float64 and float32, gradgradcheck, forward AD, vmap,
torch.func.grad, non-contiguous and expanded dL/dy, partial requires_grad, torch.compile (static, dynamic),
torch.export, memory formats, CPU autocast, the autocast chain) and must pass, with two more exceptions for
``gradgradcheck``, for the same reason as ``gradcheck``'s:

* a rule whose M moves with W's values (``SignSymmetry(scale="mean_abs")``, the noisy rule): M is held
  constant in the step (no gradient flows through it), while numerical differentiation of the backward in
  W sees M move;
* a whole network (direct feedback alignment): the derivative of dL/dW_2 (a function of h_1) with respect
  to x goes back through layer 1's backward, which is the rule's, not the derivative. The Function DFA adds
  (``DirectFeedbackFunction``) passes gradgradcheck on its own.

The layers are verified as modules (the battery's module form): the fixed matrices are buffers, constants of
the step as in training, and the battery casts and batches them with the module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

import manualbp
import manualbp.nn as mnn
from manualbp.rules import Rule
from manualbp.verify import CPU_CHECKS, GRAPH_CAPTURE_CHECKS, verify
from tests.rules.references import DFAReference, FeedbackReference, NoisyFeedback, buffer_matrix, injected, sign_matrix

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)  # torch's conv2d

CHECKS = [check for check in CPU_CHECKS if check not in ("gradcheck", "double_backward")]
# each battery test runs twice: the quick checks, and the graph-capture ones in the slow tier (pytest -m slow)
TIERS = pytest.mark.parametrize(
    "tier",
    [pytest.param(False, id="quick"), pytest.param(True, id="graph_capture", marks=pytest.mark.slow)],
)


def _tier(checks: list[str], graph_capture: bool) -> list[str]:
    return [check for check in checks if (check in GRAPH_CAPTURE_CHECKS) == graph_capture]


#: DirectFeedbackFunction's backward (e, e · B_l) depends on dL/dy alone, which an autograd reference can express
CHECKS_WITH_DOUBLE = [check for check in CPU_CHECKS if check != "gradcheck"]


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _noisy_matrix(weight, feedback_weight):
    return weight.detach() + 0.1 * torch.randn_like(weight)


#: (layer id, layer factory, input)
LAYERS = {
    "linear-2d": (lambda: mnn.Linear(5, 4), _randn(3, 5)),
    "linear-3d-nobias": (lambda: mnn.Linear(5, 4, bias=False), _randn(2, 3, 5)),
    "linear_relu": (lambda: mnn.LinearReLU(5, 4), _randn(3, 5)),
    "conv2d-stride2-pad1": (lambda: mnn.Conv2d(2, 3, 3, stride=2, padding=1), _randn(2, 2, 6, 6)),
    "conv2d-groups2-dilation2": (lambda: mnn.Conv2d(4, 6, 3, groups=2, dilation=2, padding=1), _randn(2, 4, 6, 5)),
    "conv2d-same-even_kernel-unbatched": (lambda: mnn.Conv2d(2, 2, (4, 2), padding="same"), _randn(2, 5, 5)),
}

MOVING_M = ("gradgradcheck",)  # see the module docstring

#: (rule id, rule, reference matrix, layers it is checked on, checks left out)
RULES: list[tuple[str, Callable[[], Rule | str], Callable, list[str], tuple[str, ...]]] = [
    ("feedback_alignment", lambda: "feedback_alignment", buffer_matrix, list(LAYERS), ()),
    (
        "sign_symmetry",
        lambda: "sign_symmetry",
        sign_matrix,
        ["linear-3d-nobias", "linear_relu", "conv2d-groups2-dilation2"],
        (),
    ),
    (
        "sign_symmetry-mean_abs",
        lambda: manualbp.rules.SignSymmetry(scale="mean_abs"),
        lambda w, b: w.detach().sign() * w.detach().abs().mean(),
        ["linear-2d"],
        MOVING_M,
    ),
    ("noisy_feedback", lambda: NoisyFeedback(0.1), _noisy_matrix, ["linear-2d", "conv2d-stride2-pad1"], MOVING_M),
]

CASES = [
    pytest.param(rule_id, rule, matrix, layer_id, left_out, id=f"{rule_id}-{layer_id}")
    for rule_id, rule, matrix, layer_ids, left_out in RULES
    for layer_id in layer_ids
]


def _layer_under(rule: Rule | str, layer_id: str) -> torch.nn.Module:
    torch.manual_seed(0)
    make, _ = LAYERS[layer_id]
    return manualbp.convert(make(), rule=rule)


def _failures(report) -> list[str]:
    return [f"{row.check}: {row.status}: {row.detail}" for row in report.rows if row.status != "pass"]


@TIERS
@pytest.mark.parametrize("rule_id, rule, matrix, layer_id, left_out", CASES)
def test_rule_passes_the_battery(rule_id, rule, matrix, layer_id, left_out, tier):
    layer = _layer_under(rule(), layer_id)
    checks = _tier([check for check in CHECKS if check not in left_out], tier)
    report = verify(
        layer, FeedbackReference(layer, matrix), [(LAYERS[layer_id][1],)], checks=checks, name=f"{rule_id}-{layer_id}"
    )
    failed = _failures(report)
    assert not failed, "\n".join(failed)


def test_gradcheck_fails_on_the_input_gradient_only_where_the_rule_replaces_backprop():
    """gradcheck compares with numerical derivatives of the forward: the rule's dL/dx is not one (B ≠ W),
    while dL/dW and dL/db are (with B := W the layer is backprop and gradcheck passes)."""
    layer = _layer_under("feedback_alignment", "linear-2d")
    (row,) = verify(
        layer, FeedbackReference(layer, buffer_matrix), [(LAYERS["linear-2d"][1],)], checks=["gradcheck"]
    ).rows
    assert row.status == "fail" and "input 0" in row.detail, row
    params_only = verify(
        lambda w, b, B: manualbp.rules.linear_feedback(LAYERS["linear-2d"][1], w, b, B.detach()),
        lambda w, b, B: torch.nn.functional.linear(LAYERS["linear-2d"][1], w, b),
        [(_randn(4, 5), _randn(4), _randn(4, 5))],
        checks=["gradcheck"],
    )
    assert params_only.rows[0].status == "pass", params_only.rows[0]
    with torch.no_grad():
        layer.feedback_weight.copy_(layer.weight)
    (row,) = verify(
        layer, FeedbackReference(layer, buffer_matrix), [(LAYERS["linear-2d"][1],)], checks=["gradcheck"]
    ).rows
    assert row.status == "pass", row


def _dfa_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)
    )
    return manualbp.convert(model, rule="direct_feedback_alignment")


def _dfa_convnet() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )
    return manualbp.convert(model, rule="direct_feedback_alignment", example_input=torch.zeros(1, 2, 8, 8))


@pytest.mark.parametrize(
    "make, x",
    [pytest.param(_dfa_mlp, _randn(3, 5), id="mlp"), pytest.param(_dfa_convnet, _randn(2, 2, 8, 8), id="convnet")],
)
@TIERS
def test_direct_feedback_alignment_passes_the_battery(make, x, tier):
    """The whole network: DFA's Function at the output, the layers sending no error down the chain. The convnet's
    compile with dynamic shapes (30 s) is left to the MLP's: DFA's graph is the same whatever the layers."""
    model = make()
    checks = _tier([check for check in CHECKS if check != "gradgradcheck"], tier)  # see the module docstring
    if make is _dfa_convnet:
        checks = [check for check in checks if check != "compile_dynamic"]
    report = verify(model, DFAReference.from_manual(copy.deepcopy(model)), [(x,)], checks=checks, name="dfa")
    failed = _failures(report)
    assert not failed, "\n".join(failed)


class _Injection(torch.nn.Module):
    """DirectFeedbackFunction on (z, h_1, h_2) with B_1, B_2 as buffers (constants of the step, as in a model)."""

    def __init__(self, reference: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("b1", torch.randn(3, 8, generator=g))
        self.register_buffer("b2", torch.randn(3, 4, generator=g))
        self.reference = reference

    def forward(self, z, h1, h2):
        if self.reference:
            return injected(z, [(h1, self.b1), (h2, self.b2)])
        return manualbp.rules.DirectFeedbackFunction.call(z, h1, self.b1, h2, self.b2)


def test_direct_feedback_function_passes_the_battery():
    """DFA's own Function: every CPU check but gradcheck (dz'/dh_l is 0 in value, e · B_l in backward)."""
    report = verify(
        _Injection(),
        _Injection(reference=True),
        [(_randn(2, 3), _randn(2, 2, 2, 2), _randn(2, 4))],
        checks=CHECKS_WITH_DOUBLE,
    )
    failed = _failures(report)
    assert not failed, "\n".join(failed)
