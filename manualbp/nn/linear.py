"""manualbp.nn.Linear: torch.nn.Linear with a hand-written backward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.nn._base import ManualModule, layer_name
from manualbp.rules.feedback import linear_feedback

if TYPE_CHECKING:
    from manualbp.rules.rule import Rule


class Linear(ManualModule, torch.nn.Linear):
    """y = x W^T + b, as ``torch.nn.Linear`` (same arguments, ``weight``/``bias``, init, repr).

    x: (*, in_features) -> y: (*, out_features); backward in ``manualbp.functional.LinearFunction``.

    ``rule``: the learning rule sending the error back (``manualbp.convert(model, rule=...)``, see
    ``manualbp.rules``); None, the default, is backprop through the plain Function.
    """

    rule: Rule | None = None

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        for name in ("in_features", "out_features"):
            check_int(layer_name(self), name, arguments[name], 0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.rule is None or not torch.is_grad_enabled():  # no rule, or no backward to change
            return MF.linear(input, self.weight, self.bias)
        return self.rule.forward(self, input)

    def forward_feedback(self, input: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
        """y = x Wᵀ + b, with the error sent back through ``feedback`` (W's shape) instead of W
        (``manualbp.rules.LinearFeedbackFunction``); None: no error sent back (dL/dx = None)."""
        return linear_feedback(input, self.weight, self.bias, feedback)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.rule is None else f", rule={self.rule!r}")


class NonDynamicallyQuantizableLinear(Linear, torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
    """The Linear subclass ``torch.nn.MultiheadAttention`` keeps as ``out_proj`` (a marker for torch's
    quantization tooling), as a manual Linear: the same layer in every other respect."""
