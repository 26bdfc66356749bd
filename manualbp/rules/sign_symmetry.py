"""Sign symmetry (Liao, Leibo and Poggio 2016): the error goes back through sign(W)."""

from __future__ import annotations

from typing import Literal

import torch

from manualbp.rules.rule import Rule


class SignSymmetry(Rule):
    """Sign symmetry: uniform sign-concordant feedback, "uSF" in Liao, Leibo and Poggio, "How important is
    weight symmetry in backpropagation?" (AAAI 2016).

    Each layer sends its error back through the signs of its current weights, recomputed at every step (every
    forward pass that records a graph), times a scale; the weight gradient is unchanged:

        dL/dx = dL/dy · (s · sign(W))        dL/dW = Σ_n (dL/dy_n)ᵀ x_n        dL/db = Σ_n dL/dy_n

    ``scale``: s, a positive number (1, the default, is the paper's uSF: feedback of magnitude one), or
    ``"mean_abs"``, s = mean |W| of the layer at that step (the feedback then has the weights' typical
    magnitude). No buffer: nothing but W is needed, and nothing random (``seed`` is unused). A weight that is
    exactly 0 sends nothing back (sign 0). With weights all ±1 and s = 1 the gradients are backprop's.
    """

    name = "sign_symmetry"

    def __init__(self, scale: float | Literal["mean_abs"] = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        if scale != "mean_abs" and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(f"SignSymmetry: scale must be a positive number or 'mean_abs', got {scale!r}")
        self.scale = scale

    def feedback_matrix(self, weight: torch.Tensor, feedback_weight: torch.Tensor | None) -> torch.Tensor:
        if self.scale == 1.0:
            return weight.sign()
        scale = weight.abs().mean() if self.scale == "mean_abs" else self.scale
        return weight.sign().mul_(scale)

    def __repr__(self) -> str:
        return self.name if self.scale == 1.0 else f"{self.name}(scale={self.scale!r})"
