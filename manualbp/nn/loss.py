"""Loss layers: the torch.nn twins with hand-written backward passes."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.functional._validation import (
    REDUCTIONS,
    check_choice,
    check_dim,
    check_floating,
    check_int,
    check_unit_interval,
)
from manualbp.nn._base import ManualModule, layer_name


def _check_class_loss(module: torch.nn.CrossEntropyLoss | torch.nn.NLLLoss) -> None:
    """reduction, ignore_index and the optional class weight (C,) of a classification loss layer."""
    name = layer_name(module)
    check_choice(name, "reduction", module.reduction, REDUCTIONS)
    check_int(name, "ignore_index", module.ignore_index)
    if module.weight is not None:
        check_floating(name, weight=module.weight)
        check_dim(name, "weight", module.weight, (1,))


class CrossEntropyLoss(ManualModule, torch.nn.CrossEntropyLoss):
    """Cross entropy of logits as ``torch.nn.CrossEntropyLoss`` (weight, ignore_index, reduction,
    label_smoothing; class-index or class-probability targets)."""

    def check_supported(self) -> None:
        _check_class_loss(self)
        check_unit_interval(layer_name(self), "label_smoothing", self.label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class NLLLoss(ManualModule, torch.nn.NLLLoss):
    """Negative log-likelihood as ``torch.nn.NLLLoss`` (weight, ignore_index, reduction)."""

    check_supported = _check_class_loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(ManualModule, torch.nn.MSELoss):
    """Mean squared error as ``torch.nn.MSELoss`` (reduction)."""

    def check_supported(self) -> None:
        check_choice(layer_name(self), "reduction", self.reduction, REDUCTIONS)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.mse_loss(input, target, reduction=self.reduction)
