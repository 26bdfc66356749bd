"""Manual twins of torchvision's own layers (``torchvision.ops``): loaded on first need, as they import torchvision."""

from __future__ import annotations

import torch
from torchvision import ops

from manualbp import functional as MF
from manualbp.nn._base import ManualModule


class StochasticDepth(ManualModule, ops.StochasticDepth):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ``StochasticDepth`` (a residual branch dropped whole with probability p in training, per sample
    with ``mode="row"`` or for the whole batch with ``"batch"``), through ``manualbp.functional.stochastic_depth``:
    y = x ⊙ m, dL/dx = dL/dy ⊙ m, with the mask torchvision draws for the same seed."""

    p: float
    mode: str

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:  # torchvision's own repr does not go through ``_get_name``
        return "manualbp." + super().__repr__()
