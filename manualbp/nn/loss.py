"""Loss layers: the torch.nn twins with hand-written backward passes."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.nn._base import ManualModule


class CrossEntropyLoss(ManualModule, torch.nn.CrossEntropyLoss):
    """Cross entropy of logits as ``torch.nn.CrossEntropyLoss`` (weight, ignore_index, reduction,
    label_smoothing; class-index or class-probability targets)."""

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

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(ManualModule, torch.nn.MSELoss):
    """Mean squared error as ``torch.nn.MSELoss`` (reduction)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return MF.mse_loss(input, target, reduction=self.reduction)
