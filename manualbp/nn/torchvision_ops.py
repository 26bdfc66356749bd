"""Manual twins of torchvision's own layers (``torchvision.ops``, ConvNeXt's ``LayerNorm2d``): loaded on first need,
as they import torchvision."""

from __future__ import annotations

import torch
from torchvision import ops
from torchvision.models import convnext

from manualbp import functional as MF
from manualbp.functional._validation import check_dim
from manualbp.nn._base import ManualModule, layer_name
from manualbp.nn.normalization import LayerNorm


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


class LayerNorm2d(ManualModule, convnext.LayerNorm2d):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ``LayerNorm2d`` (ConvNeXt's layer norm over the channels of (N, C, H, W), which torchvision
    computes as permute -> layer_norm -> permute) as a channels-first layer norm, without permutes, through
    ``manualbp.functional.channels_first_layer_norm``: one mean and variance per sample and position over the C
    channels (eps, elementwise_affine, bias). Backward in ``manualbp.functional.ChannelNormFunction``."""

    normalized_shape: tuple[int, ...]
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    check_arguments = LayerNorm.check_arguments

    def check_supported(self) -> None:
        LayerNorm.check_supported(self)
        if len(self.normalized_shape) != 1:
            raise NotImplementedError(
                f"{layer_name(self)}: normalized_shape {self.normalized_shape} normalises more than the channels; "
                "only a single size, the number of channels, is supported"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_dim(layer_name(self), "input", input, (4,))
        return MF.channels_first_layer_norm(input, self.weight, self.bias, self.eps)
