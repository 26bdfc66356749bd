"""Autograd references of the learning rules, built from torch's own ops only.

A rule's backward is not the derivative of its forward, so a reference needs a value that is the layer's
output and a graph whose vector-Jacobian product is the rule's. The straight-through construction gives both:

    y = f(x.detach(), W, b) + (f(x, M) − f(x, M).detach())

has the value f(x, W, b) (the second term is exactly zero), sends dL/dW and dL/db through the first term
(the layer's own reduction, with no path to x) and dL/dx through the second, f being linear in its input:
dL/dx = the transposed map of M applied to dL/dy, i.e. dL/dy · M. M is a constant (a buffer, or a function
of W's detached values), so no gradient reaches it. Forward mode sees the same linear map: ẏ = f(ẋ, M) +
f(x, Ẇ) + ḃ. For LinearReLU the ReLU comes after the sum, so its mask applies to both paths.

Direct feedback alignment: each layer runs on its input detached, and the logits get, for every hidden
block output h_l, the zero term (h_l,flat · B_lᵀ − its detached value), whose gradient sends e · B_l to h_l.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from manualbp.rules import Rule

Op = Callable[..., torch.Tensor]


def straight_through(
    op: Op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, feedback: torch.Tensor, **options
) -> torch.Tensor:
    """op(x, W, b) in value; dL/dW, dL/db as op's; dL/dx through ``feedback`` in W's place."""
    through = op(x, feedback.detach(), None, **options)
    return op(x.detach(), weight, bias, **options) + (through - through.detach())


def sign_matrix(weight: torch.Tensor, feedback_weight: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
    return weight.detach().sign() * scale


def buffer_matrix(weight: torch.Tensor, feedback_weight: torch.Tensor | None) -> torch.Tensor:
    return feedback_weight


class FeedbackReference(torch.nn.Module):
    """The reference of ``layer``, a manualbp Linear, LinearReLU or Conv2d under a matrix rule: the same
    ``weight``, ``bias`` and ``feedback_weight`` (when the layer has one), computing ``straight_through`` with
    M = ``matrix(W, B)``, then a ReLU for a LinearReLU."""

    def __init__(self, layer: torch.nn.Module, matrix: Callable) -> None:
        super().__init__()
        self.matrix = matrix
        self.weight = torch.nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().clone())
        buffer = layer._buffers.get("feedback_weight")
        self.register_buffer("feedback_weight", None if buffer is None else buffer.clone())
        self.relu = type(layer).__name__ == "LinearReLU"
        self.conv = (
            dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            if isinstance(layer, torch.nn.Conv2d)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feedback = self.matrix(self.weight, self.feedback_weight)
        if self.conv is not None:
            y = straight_through(F.conv2d, x, self.weight, self.bias, feedback, **self.conv)
        else:
            y = straight_through(F.linear, x, self.weight, self.bias, feedback)
        return torch.relu(y) if self.relu else y


def injected(logits: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """logits in value; dL/dh_l = dL/dlogits · B_l reshaped to h_l (the reference of DirectFeedbackFunction)."""
    out = logits
    for hidden, feedback in pairs:
        through = hidden.reshape(hidden.shape[0], -1) @ feedback.detach().t()
        out = out + (through - through.detach())
    return out


class DFAReference(torch.nn.Sequential):
    """A Sequential under direct feedback alignment, in autograd. Its children run in order, each parametrised
    one (with a ``weight``) on its input detached; the inputs of the parametrised layers after the first are
    collected, and the logits carry their injected terms with the previous parametrised layer's
    ``feedback_weight``. Build it from the torch twin of the manual model (``manualbp.to_torch``) and the
    manual model's buffers with ``from_manual``: the names of parameters and buffers are the same."""

    @classmethod
    def from_manual(cls, model: torch.nn.Sequential) -> DFAReference:
        import manualbp

        twin = manualbp.to_torch(model)
        reference = cls(*twin)
        for (_, manual), (_, torch_layer) in zip(model.named_children(), reference.named_children()):
            buffer = manual._buffers.get("feedback_weight")
            if buffer is not None:
                torch_layer.register_buffer("feedback_weight", buffer.clone())
        return reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs, previous = [], None
        for module in self:
            if hasattr(module, "weight"):
                if previous is not None:
                    pairs.append((x, previous.feedback_weight))
                x = module(x.detach())
                previous = module
            else:
                x = module(x)
        return injected(x, pairs)


class NoisyFeedback(Rule):
    """The README's example of a user's rule: dL/dx = G · (W + σ ξ), a fresh ξ ~ N(0, 1) every forward pass."""

    name = "noisy_feedback"

    def __init__(self, sigma: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed)
        self.sigma = sigma

    def feedback_matrix(self, weight, feedback_weight):
        return weight + self.sigma * torch.randn_like(weight)
