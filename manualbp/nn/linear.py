"""manualbp.nn.Linear: torch.nn.Linear with a hand-written backward."""

from __future__ import annotations

import torch

from collections.abc import Mapping
from typing import Any

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.nn._base import ManualModule, layer_name


class Linear(ManualModule, torch.nn.Linear):
    """y = x W^T + b, as ``torch.nn.Linear`` (same arguments, ``weight``/``bias``, init, repr).

    x: (*, in_features) -> y: (*, out_features); backward in ``manualbp.functional.LinearFunction``.
    """

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        for name in ("in_features", "out_features"):
            check_int(layer_name(self), name, arguments[name], 0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.linear(input, self.weight, self.bias)
