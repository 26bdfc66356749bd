"""Manual twins of torchvision's ConvNeXt block (``CNBlock``) and of the ``Permute`` layer it is built with:
loaded on first need, as they import torchvision. With them ``manualbp.convert`` turns a torchvision ConvNeXt's
blocks fully manual."""

from __future__ import annotations

import torch
from torchvision.models import convnext as tv
from torchvision.ops import misc

from manualbp import functional as MF
from manualbp.nn._base import ManualModule
from manualbp.nn._composite import ManualComposite


class Permute(ManualModule, misc.Permute):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ``Permute`` (a view of the input with its dims reordered) through
    ``manualbp.functional.permute``: dL/dx = dL/dy permuted back."""

    dims: list[int]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.permute(input, self.dims)


class CNBlock(ManualComposite, tv.CNBlock):  # type: ignore[misc]  # as Permute
    """torchvision's ConvNeXt block (same arguments, parameters and init), every layer manual:

        y = x + StochasticDepth(γ ⊙ block(x))        x, y: (N, C, H, W)   γ (``layer_scale``): (C, 1, 1)

    block = depthwise 7x7 Conv2d, Permute to (N, H, W, C), the norm layer, Linear(C, 4C), GELU, Linear(4C, C),
    Permute back. The layer scale is ``manualbp.functional.layer_scale`` (dL/dγ = Σ dL/dy ⊙ block(x) over the
    batch and the positions; per sample over the positions), the stochastic depth
    ``manualbp.functional.stochastic_depth`` (one value per sample, ``"row"``).
    """

    block: torch.nn.Module
    layer_scale: torch.nn.Parameter
    stochastic_depth: torch.nn.Module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(MF.layer_scale(self.block(input), self.layer_scale)) + input
