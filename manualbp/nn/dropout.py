"""manualbp.nn.Dropout: torch.nn.Dropout with a hand-written backward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_unit_interval
from manualbp.nn._base import ManualModule, layer_name


class Dropout(ManualModule, torch.nn.Dropout):
    """Inverted dropout as ``torch.nn.Dropout``: zero with probability p and scale by 1/(1-p) in training,
    identity in eval. On CPU, with the same seed, it drops the same elements as torch. With ``inplace=True``
    the result is written into the input (the backward needs only the mask)."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        check_unit_interval(layer_name(self), "p", arguments["p"])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.dropout(input, self.p, self.training, self.inplace)
