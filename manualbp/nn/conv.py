"""manualbp.nn.Conv2d: torch.nn.Conv2d with a hand-written backward."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int, int_pair
from manualbp.nn._base import ManualModule
from manualbp.rules.feedback import conv2d_feedback

if TYPE_CHECKING:
    from manualbp.rules.rule import Rule

_OP = "manualbp.nn.Conv2d"


def _check_arguments(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: str | int | tuple[int, int],
    dilation: int | tuple[int, int],
    groups: int,
) -> None:
    """Sizes, window and groups of a Conv2d, checked before torch's constructor, which accepts a zero
    kernel or stride silently and crashes on a negative size with a message naming neither the layer
    nor the argument."""
    check_int(_OP, "in_channels", in_channels, 0)
    check_int(_OP, "out_channels", out_channels, 0)
    int_pair(_OP, "kernel_size", kernel_size, 1)
    int_pair(_OP, "stride", stride, 1)
    int_pair(_OP, "dilation", dilation, 1)
    if not isinstance(padding, str):  # "valid" and "same" are checked by torch's constructor
        int_pair(_OP, "padding", padding, 0)
    check_int(_OP, "groups", groups, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{_OP}: groups={groups} must divide both in_channels={in_channels} and out_channels={out_channels}"
        )


class Conv2d(ManualModule, torch.nn.Conv2d):
    """2-D convolution as ``torch.nn.Conv2d`` (same arguments, ``weight``/``bias``, init, repr).

    x: (N, C_in, H, W) or (C_in, H, W) -> y: (N, C_out, Ho, Wo) or (C_out, Ho, Wo); backward in
    ``manualbp.functional.Conv2dFunction``. Only ``padding_mode="zeros"`` is supported.

    ``rule``: the learning rule sending the error back (``manualbp.convert(model, rule=...)``, see
    ``manualbp.rules``); None, the default, is backprop through the plain Function.
    """

    rule: Rule | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_arguments(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self.check_supported()

    def check_supported(self) -> None:
        if self.padding_mode != "zeros":
            raise NotImplementedError(f"{_OP}: padding_mode={self.padding_mode!r} is not supported; only 'zeros' is")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.rule is None or not torch.is_grad_enabled():  # no rule, or no backward to change
            return MF.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.rule.forward(self, input)

    def forward_feedback(self, input: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
        """The convolution, with the error sent back through ``feedback`` (W's shape) instead of W
        (``manualbp.rules.Conv2dFeedbackFunction``); None: no error sent back (dL/dx = None)."""
        return conv2d_feedback(
            input, self.weight, self.bias, feedback, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.rule is None else f", rule={self.rule!r}")
