"""manualbp.nn.Linear: torch.nn.Linear with a hand-written backward."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.nn._base import ManualModule


class Linear(ManualModule, torch.nn.Linear):
    """y = x W^T + b, as ``torch.nn.Linear`` (same arguments, ``weight``/``bias``, init, repr).

    x: (*, in_features) -> y: (*, out_features); backward in ``manualbp.functional.LinearFunction``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.linear(input, self.weight, self.bias)
