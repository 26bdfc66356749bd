"""Learning rules: what carries the error backward through each parametrised layer.

A parametrised layer's backward does two things with G = dL/dy: **feedback**, dL/dx = G · W (the error sent
to the layer below), and **reduction**, dL/dW = Σ_n G_nᵀ x_n (the weight gradient). A learning rule changes
only the feedback. Choose one with ``manualbp.convert(model, rule=...)``:

* ``"backprop"`` (the default): dL/dx = G · W, the true gradient (``Backprop``);
* ``"feedback_alignment"``: dL/dx = G · B, B fixed random (Lillicrap et al. 2016; ``FeedbackAlignment``);
* ``"sign_symmetry"``: dL/dx = G · sign(W), recomputed every step (Liao, Leibo and Poggio 2016; ``SignSymmetry``);
* ``"direct_feedback_alignment"``: every layer before the last receives the output error e projected by its
  own fixed B_l, dL/dh_l = e · B_l (Nøkland 2016; ``DirectFeedbackAlignment``);
* a ``Rule`` object: a built-in one with options (``SignSymmetry(scale="mean_abs")``, ``FeedbackAlignment(seed=3)``)
  or your own subclass of ``Rule`` (its docstring shows how).

Rules apply to ``manualbp.nn.Linear``, ``LinearReLU``, ``Conv1d``/``Conv2d``/``Conv3d`` and the input projections of
``MultiheadAttention`` (its ``out_proj`` is a Linear); direct feedback alignment drives the first three and leaves
attention's in-projection on backprop inside its block. Fixed random matrices are the layers' ``feedback_weight``
buffers (``in_proj_feedback_weight`` and so on for attention: ``feedback_buffer``), drawn from the rule's ``seed`` and
saved in the state dict.

The seam, ``manualbp.rules.feedback``: every layer's hand-written backward reads its weight only to send the
error back, so a layer under a rule applies the same backward with the rule's matrix M saved in W's place
(``LinearFeedbackFunction``, ``LinearReLUFeedbackFunction``, ``ConvFeedbackFunction``). A layer without a
rule runs its plain Function, untouched.
"""

from __future__ import annotations

from typing import Literal

import torch

from manualbp.rules.direct_feedback_alignment import DirectFeedbackAlignment, DirectFeedbackFunction
from manualbp.rules.feedback import (
    ConvFeedbackFunction,
    LinearFeedbackFunction,
    LinearReLUFeedbackFunction,
    conv1d_feedback,
    conv2d_feedback,
    conv3d_feedback,
    linear_feedback,
    linear_relu_feedback,
)
from manualbp.rules.feedback_alignment import FeedbackAlignment
from manualbp.rules.rule import BUFFER, Backprop, Rule, detach_rule, feedback_buffer, uniform_feedback
from manualbp.rules.sign_symmetry import SignSymmetry

#: The names of the built-in rules (``--model.rule`` of the ``manualbp`` command).
RuleName = Literal["backprop", "feedback_alignment", "sign_symmetry", "direct_feedback_alignment"]

#: The built-in rules by name, as ``manualbp.convert(model, rule=name)`` and ``--model.rule=name`` take them.
RULES: dict[str, type[Rule]] = {
    rule.name: rule for rule in (Backprop, FeedbackAlignment, SignSymmetry, DirectFeedbackAlignment)
}


def get_rule(rule: str | Rule) -> Rule:
    """``rule`` itself when it is a ``Rule``, else the built-in rule of that name with its defaults (seed 0)."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str) and rule in RULES:
        return RULES[rule]()
    raise ValueError(
        f"unknown learning rule {rule!r}: expected one of {', '.join(map(repr, RULES))} or a manualbp.rules.Rule"
    )


def rule_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers of ``model`` a rule applies to (those with ``forward_feedback``: manualbp's Linear, LinearReLU,
    Conv2d; and those naming ``feedback_weights``: MultiheadAttention), by name, in ``model.named_modules()`` order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if callable(getattr(type(module), "forward_feedback", None)) or hasattr(type(module), "feedback_weights")
    ]


def apply_rule(model: torch.nn.Module, rule: str | Rule, example_input: torch.Tensor | None = None) -> Rule:
    """Give every layer of ``model`` that a rule applies to the learning rule ``rule`` (replacing any it had,
    with its buffers); returns the ``Rule`` object. ``example_input``: a batch of inputs, for rules that need
    the layers' input sizes (direct feedback alignment through a Conv2d). ``manualbp.convert(model, rule=...)``
    calls this after swapping the layers."""
    resolved = get_rule(rule)
    layers = rule_layers(model)
    if not layers and not isinstance(resolved, Backprop):
        raise ValueError(
            f"learning rule {resolved!r}: the model has no manualbp Linear, LinearReLU, Conv2d or MultiheadAttention to "
            "apply it to (convert its layers first: manualbp.convert(model, rule=...))"
        )
    for _, layer in layers:
        detach_rule(layer)
    resolved.attach(model, layers, example_input)
    return resolved


__all__ = [
    "BUFFER",
    "RULES",
    "Backprop",
    "ConvFeedbackFunction",
    "DirectFeedbackAlignment",
    "DirectFeedbackFunction",
    "FeedbackAlignment",
    "LinearFeedbackFunction",
    "LinearReLUFeedbackFunction",
    "Rule",
    "RuleName",
    "SignSymmetry",
    "apply_rule",
    "conv1d_feedback",
    "conv2d_feedback",
    "conv3d_feedback",
    "detach_rule",
    "feedback_buffer",
    "get_rule",
    "linear_feedback",
    "linear_relu_feedback",
    "rule_layers",
    "uniform_feedback",
]
