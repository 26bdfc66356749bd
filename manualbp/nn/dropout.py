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


class Dropout1d(ManualModule, torch.nn.Dropout1d):
    """Channel-wise dropout as ``torch.nn.Dropout1d``: each channel of (N, C, L) or (C, L) zeroed with probability
    p in training, the rest scaled by 1/(1-p). The same mask as torch's for the same seed."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        check_unit_interval(layer_name(self), "p", arguments["p"])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(ManualModule, torch.nn.Dropout2d):
    """Channel-wise dropout as ``torch.nn.Dropout2d``: each channel of (N, C, H, W) zeroed with probability p."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        check_unit_interval(layer_name(self), "p", arguments["p"])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(ManualModule, torch.nn.Dropout3d):
    """Channel-wise dropout as ``torch.nn.Dropout3d``: each channel of (N, C, D, H, W) or (C, D, H, W) zeroed."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        check_unit_interval(layer_name(self), "p", arguments["p"])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.dropout3d(input, self.p, self.training, self.inplace)
