"""Registry cases: Transposed convolutions (ConvTranspose1d/2d/3d).

The 3-d inputs are tiny ((2, 2, 3, 3, 3) and the like, kernels of 2 or 3): every case runs gradcheck in float64 and
torch.compile. ``output_size`` given to the forward (which picks the output_padding) goes through ``WithOutputSize``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from manualbp.verify.case import OpCase
from manualbp.verify.case_makers import args, randn, twin, wrapped


class WithOutputSize(torch.nn.Module):
    """``layer(input, output_size=output_size)``, a transposed convolution asked for a fixed output size: the
    battery calls a module on tensors alone."""

    def __init__(self, layer: torch.nn.Module, output_size: list[int]) -> None:
        super().__init__()
        self.layer, self.output_size = layer, output_size

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.layer(input, output_size=self.output_size)


def with_output_size(output_size: list[int]) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """The ``wrap`` of ``wrapped`` that asks a layer for ``output_size``."""
    return lambda layer: WithOutputSize(layer, output_size)


CASES: list[OpCase] = [
    # ConvTranspose1d
    twin("conv_transpose1d-k3", "ConvTranspose1d", 2, 3, 3, inputs=args(randn(2, 2, 5))),
    twin(
        "conv_transpose1d-nobias-stride2-output_padding1",
        "ConvTranspose1d",
        2,
        3,
        3,
        stride=2,
        output_padding=1,
        bias=False,
        inputs=args(randn(2, 2, 4)),
    ),
    twin(
        "conv_transpose1d-pad1-dilation2",
        "ConvTranspose1d",
        2,
        2,
        3,
        padding=1,
        dilation=2,
        inputs=args(randn(2, 2, 5)),
    ),
    # output_padding 2 >= stride 2, allowed since it is below the dilation 3: dL/dx's convolution gives an extra position
    twin(
        "conv_transpose1d-output_padding_past_stride",
        "ConvTranspose1d",
        2,
        2,
        2,
        stride=2,
        dilation=3,
        output_padding=2,
        inputs=args(randn(2, 2, 4)),
    ),
    twin("conv_transpose1d-groups2", "ConvTranspose1d", 4, 6, 3, groups=2, padding=1, inputs=args(randn(2, 4, 5))),
    twin("conv_transpose1d-unbatched", "ConvTranspose1d", 2, 3, 3, stride=2, inputs=args(randn(2, 5))),
    wrapped(
        "conv_transpose1d-output_size",
        with_output_size([10]),
        "ConvTranspose1d",
        2,
        3,
        3,
        stride=2,
        padding=1,
        inputs=args(randn(2, 2, 5)),
    ),
    # ConvTranspose2d
    twin("conv_transpose2d-k3", "ConvTranspose2d", 2, 3, 3, inputs=args(randn(2, 2, 4, 4))),
    twin(
        "conv_transpose2d-stride2-pad1-output_padding1",
        "ConvTranspose2d",
        2,
        3,
        3,
        stride=2,
        padding=1,
        output_padding=1,
        inputs=args(randn(2, 2, 4, 3)),
    ),
    twin("conv_transpose2d-nobias", "ConvTranspose2d", 2, 3, 2, bias=False, inputs=args(randn(2, 2, 4, 4))),
    twin(
        "conv_transpose2d-rect_kernel-rect_stride-dilation",
        "ConvTranspose2d",
        2,
        2,
        (2, 3),
        stride=(2, 1),
        padding=(1, 0),
        output_padding=(1, 0),
        dilation=(1, 2),
        inputs=args(randn(2, 2, 4, 3)),
    ),
    twin(
        "conv_transpose2d-groups2-stride2",
        "ConvTranspose2d",
        4,
        6,
        3,
        stride=2,
        groups=2,
        inputs=args(randn(2, 4, 3, 3)),
    ),
    twin("conv_transpose2d-depthwise", "ConvTranspose2d", 3, 3, 3, groups=3, padding=1, inputs=args(randn(2, 3, 4, 4))),
    twin("conv_transpose2d-unbatched", "ConvTranspose2d", 2, 3, 3, stride=2, padding=1, inputs=args(randn(2, 3, 4))),
    wrapped(
        "conv_transpose2d-output_size",
        with_output_size([8, 7]),
        "ConvTranspose2d",
        2,
        3,
        3,
        stride=2,
        padding=1,
        inputs=args(randn(2, 2, 4, 4)),
    ),
    # ConvTranspose3d
    twin("conv_transpose3d-k2", "ConvTranspose3d", 2, 3, 2, inputs=args(randn(2, 2, 3, 3, 3))),
    twin(
        "conv_transpose3d-nobias-stride2-pad1-output_padding1",
        "ConvTranspose3d",
        2,
        2,
        3,
        stride=2,
        padding=1,
        output_padding=1,
        bias=False,
        inputs=args(randn(2, 2, 2, 3, 2)),
    ),
    twin(
        "conv_transpose3d-rect_kernel-dilation-groups2",
        "ConvTranspose3d",
        4,
        2,
        (1, 2, 2),
        stride=(1, 2, 1),
        padding=(0, 1, 0),
        dilation=(2, 1, 1),
        groups=2,
        inputs=args(randn(2, 4, 2, 3, 2)),
    ),
    twin("conv_transpose3d-unbatched", "ConvTranspose3d", 2, 2, 2, stride=2, inputs=args(randn(2, 2, 2, 3))),
    wrapped(
        "conv_transpose3d-output_size",
        with_output_size([2, 2, 4, 5, 5]),
        "ConvTranspose3d",
        2,
        2,
        2,
        stride=2,
        inputs=args(randn(2, 2, 2, 2, 2)),
    ),
]
