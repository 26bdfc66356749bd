"""manualbp.nn.Conv1d, Conv2d, Conv3d: torch.nn's convolutions with a hand-written backward.

The three share one base, ``ManualConv``, as their backward shares one Function (``manualbp.functional.ConvFunction``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_int
from manualbp.functional.conv import int_tuple
from manualbp.nn._base import ManualModule, layer_name
from manualbp.rules.feedback import conv1d_feedback, conv2d_feedback, conv3d_feedback

if TYPE_CHECKING:
    from manualbp.rules.rule import Rule


class ManualConv(ManualModule):
    """What Conv1d, Conv2d and Conv3d share: their checks, the forward through ``conv`` (``manualbp.functional``'s
    conv1d/2d/3d) and, under a learning rule, through ``feedback_conv`` (``manualbp.rules.feedback``).

    ``rule``: the learning rule sending the error back (``manualbp.convert(model, rule=...)``, see
    ``manualbp.rules``); None, the default, is backprop through the plain Function.
    """

    rule: Rule | None = None
    rank: ClassVar[int]  # the number of spatial dims
    conv: ClassVar[Callable[..., torch.Tensor]]
    feedback_conv: ClassVar[Callable[..., torch.Tensor]]

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        """Sizes, window and groups, checked before torch's constructor, which accepts a zero kernel or stride
        silently and crashes on a negative size with a message naming neither the layer nor the argument."""
        op = layer_name(self)
        check_int(op, "in_channels", arguments["in_channels"], 0)
        check_int(op, "out_channels", arguments["out_channels"], 0)
        for name in ("kernel_size", "stride", "dilation"):
            int_tuple(op, name, arguments[name], 1, self.rank)
        if not isinstance(arguments["padding"], str):  # "valid" and "same" are checked by torch's constructor
            int_tuple(op, "padding", arguments["padding"], 0, self.rank)
        groups = arguments["groups"]
        check_int(op, "groups", groups, 1)
        if arguments["in_channels"] % groups or arguments["out_channels"] % groups:
            raise ValueError(
                f"{op}: groups={groups} must divide both in_channels={arguments['in_channels']} and "
                f"out_channels={arguments['out_channels']}"
            )

    def check_supported(self) -> None:
        if self.padding_mode != "zeros":
            raise NotImplementedError(
                f"{layer_name(self)}: padding_mode={self.padding_mode!r} is not supported; only 'zeros' is"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.rule is None or not torch.is_grad_enabled():  # no rule, or no backward to change
            return self.conv(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.rule.forward(self, input)

    def forward_feedback(self, input: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
        """The convolution, with the error sent back through ``feedback`` (W's shape) instead of W
        (``manualbp.rules.ConvFeedbackFunction``); None: no error sent back (dL/dx = None)."""
        return self.feedback_conv(
            input, self.weight, self.bias, feedback, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.rule is None else f", rule={self.rule!r}")


class Conv1d(ManualConv, torch.nn.Conv1d):
    """1-D convolution as ``torch.nn.Conv1d`` (same arguments, ``weight``/``bias``, init, repr).

    x: (N, C_in, L) or (C_in, L) -> y: (N, C_out, Lo) or (C_out, Lo). Only ``padding_mode="zeros"``.
    """

    rank = 1
    conv = staticmethod(MF.conv1d)
    feedback_conv = staticmethod(conv1d_feedback)


class Conv2d(ManualConv, torch.nn.Conv2d):
    """2-D convolution as ``torch.nn.Conv2d`` (same arguments, ``weight``/``bias``, init, repr).

    x: (N, C_in, H, W) or (C_in, H, W) -> y: (N, C_out, Ho, Wo) or (C_out, Ho, Wo). Only ``padding_mode="zeros"``.
    """

    rank = 2
    conv = staticmethod(MF.conv2d)
    feedback_conv = staticmethod(conv2d_feedback)


class Conv3d(ManualConv, torch.nn.Conv3d):
    """3-D convolution as ``torch.nn.Conv3d`` (same arguments, ``weight``/``bias``, init, repr).

    x: (N, C_in, D, H, W) or (C_in, D, H, W) -> y: (N, C_out, Do, Ho, Wo) or (C_out, Do, Ho, Wo). Only
    ``padding_mode="zeros"``.
    """

    rank = 3
    conv = staticmethod(MF.conv3d)
    feedback_conv = staticmethod(conv3d_feedback)
