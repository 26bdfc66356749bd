"""Feedback alignment (Lillicrap, Cownden, Tweed and Akerman 2016): the error goes back through fixed random B."""

from __future__ import annotations

import torch

from manualbp.rules.rule import Rule, uniform_feedback


class FeedbackAlignment(Rule):
    """Feedback alignment (Lillicrap et al., "Random synaptic feedback weights support error backpropagation
    for deep learning", Nature Communications 2016).

    Each layer sends its error back through a fixed random matrix B of its weight's shape, its buffer
    ``feedback_weight``, instead of W; the weight gradient is unchanged:

        dL/dx = dL/dy · B            dL/dW = Σ_n (dL/dy_n)ᵀ x_n            dL/db = Σ_n dL/dy_n

    (a Conv2d: dL/dx = conv_transpose2d(dL/dy, B)). The forward weights then come to align with B, which is
    what makes the error B carries useful: the angle between this update and backprop's falls well below 90°
    (``manualbp.callbacks.Alignment`` logs it).

    B is drawn once, when the rule is attached, from a generator seeded from ``seed``: uniform, at the scale of
    the layer's own default initialisation, U(−1/√fan_in, 1/√fan_in) (``uniform_feedback``; the paper draws
    B uniformly at the scale of the forward weights). It is saved in the state dict, so a resumed run goes
    on with the same B. With B = W (set ``feedback_weight`` to ``weight``) the gradients are backprop's.
    """

    name = "feedback_alignment"

    def make_feedback_weight(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return uniform_feedback(weight.shape, generator)

    def feedback_matrix(self, weight: torch.Tensor, feedback_weight: torch.Tensor | None) -> torch.Tensor:
        if feedback_weight is None:
            raise RuntimeError(
                "feedback_alignment: the layer has no feedback_weight buffer; attach the rule with manualbp.convert"
            )
        return feedback_weight
