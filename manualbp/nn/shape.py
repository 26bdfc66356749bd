"""manualbp.nn.Flatten: torch.nn.Flatten with a hand-written backward."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.nn._base import ManualModule


class Flatten(ManualModule, torch.nn.Flatten):
    """Merge dims ``start_dim``..``end_dim`` as ``torch.nn.Flatten``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.flatten(input, self.start_dim, self.end_dim)
