"""manualbp.nn.ConvTranspose1d, ConvTranspose2d, ConvTranspose3d: torch's transposed convolutions with a hand-written
backward, one implementation over the spatial rank (``manualbp.functional.ConvTransposeFunction``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.functional.conv_transpose import int_tuple
from manualbp.nn._base import ManualModule


class _ConvTransposeNd(ManualModule):
    """What the three twins share: the checks of their constructor arguments and the forward.

    x: (N, C_in, *L) or (C_in, *L) -> y: (N, C_out, *Lo) or (C_out, *Lo), the rank r = ``len(kernel_size)``;
    ``forward(input, output_size=None)`` as torch's: an ``output_size`` ((*Lo), or with the batch and channel
    dims) picks the output_padding that gives it, through torch's own ``_output_padding``. Only
    ``padding_mode="zeros"`` exists, as in torch (its constructor raises for any other).
    """

    #: The functional op of the twin's rank (``manualbp.functional.conv_transpose{r}d``).
    functional: ClassVar[Callable[..., torch.Tensor]]
    rank: ClassVar[int]

    if TYPE_CHECKING:  # torch's ``_ConvTransposeNd._output_padding``, which each twin inherits

        def _output_padding(
            self,
            input: torch.Tensor,
            output_size: list[int] | None,
            stride: Any,
            padding: Any,
            kernel_size: Any,
            num_spatial_dims: int,
            dilation: Any = None,
        ) -> list[int]: ...

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        """Sizes, window and groups, checked before torch's constructor, which accepts a zero kernel or stride
        silently and crashes on a negative size with a message naming neither the layer nor the argument."""
        op = f"manualbp.nn.{type(self).__name__}"
        check_int(op, "in_channels", arguments["in_channels"], 0)
        check_int(op, "out_channels", arguments["out_channels"], 0)
        for name, minimum in (
            ("kernel_size", 1),
            ("stride", 1),
            ("padding", 0),
            ("output_padding", 0),
            ("dilation", 1),
        ):
            int_tuple(op, name, arguments[name], self.rank, minimum)
        groups = arguments["groups"]
        check_int(op, "groups", groups, 1)
        if arguments["in_channels"] % groups or arguments["out_channels"] % groups:
            raise ValueError(
                f"{op}: groups={groups} must divide both in_channels={arguments['in_channels']} and "
                f"out_channels={arguments['out_channels']}"
            )

    def check_supported(self) -> None:
        if self.padding_mode != "zeros":  # torch's constructor refuses it; a layer from_torch may have been changed
            raise ValueError(f'Only "zeros" padding mode is supported for {type(self).__name__}')

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(  # torch's _ConvTransposeNd helper
            input, output_size, self.stride, self.padding, self.kernel_size, self.rank, self.dilation
        )
        return type(self).functional(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )


class ConvTranspose1d(_ConvTransposeNd, torch.nn.ConvTranspose1d):
    """1-D transposed convolution as ``torch.nn.ConvTranspose1d`` (same arguments, ``weight``/``bias``, init, repr):
    x: (N, C_in, L) or (C_in, L), weight (C_in, C_out/groups, k). See ``_ConvTransposeNd``."""

    functional = staticmethod(MF.conv_transpose1d)
    rank = 1


class ConvTranspose2d(_ConvTransposeNd, torch.nn.ConvTranspose2d):
    """2-D transposed convolution as ``torch.nn.ConvTranspose2d`` (same arguments, ``weight``/``bias``, init, repr):
    x: (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out/groups, kh, kw). See ``_ConvTransposeNd``."""

    functional = staticmethod(MF.conv_transpose2d)
    rank = 2


class ConvTranspose3d(_ConvTransposeNd, torch.nn.ConvTranspose3d):
    """3-D transposed convolution as ``torch.nn.ConvTranspose3d`` (same arguments, ``weight``/``bias``, init, repr):
    x: (N, C_in, D, H, W) or (C_in, D, H, W), weight (C_in, C_out/groups, kd, kh, kw). See ``_ConvTransposeNd``."""

    functional = staticmethod(MF.conv_transpose3d)
    rank = 3
