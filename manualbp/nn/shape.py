"""manualbp.nn.Flatten: torch.nn.Flatten with a hand-written backward."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.nn._base import ManualModule, layer_name


class Flatten(ManualModule, torch.nn.Flatten):
    """Merge dims ``start_dim``..``end_dim`` as ``torch.nn.Flatten``."""

    def check_supported(self) -> None:
        check_int(layer_name(self), "start_dim", self.start_dim)
        check_int(layer_name(self), "end_dim", self.end_dim)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.flatten(input, self.start_dim, self.end_dim)
