"""Pooling layers: the torch.nn twins with hand-written backward passes."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.functional.pooling import adaptive_output_size, check_divisor_override, pool_window
from manualbp.nn._base import ManualModule, layer_name


class MaxPool2d(ManualModule, torch.nn.MaxPool2d):
    """Max over windows as ``torch.nn.MaxPool2d`` (kernel_size, stride, padding, dilation, ceil_mode,
    return_indices); backward in ``manualbp.functional.MaxPool2dFunction``."""

    def check_supported(self) -> None:
        pool_window(layer_name(self), self.kernel_size, self.stride, self.padding, self.dilation)

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return MF.max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


class AvgPool2d(ManualModule, torch.nn.AvgPool2d):
    """Mean over windows as ``torch.nn.AvgPool2d`` (kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override); backward in ``manualbp.functional.AvgPool2dFunction``."""

    def check_supported(self) -> None:
        pool_window(layer_name(self), self.kernel_size, self.stride, self.padding)
        check_divisor_override(layer_name(self), self.divisor_override)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(ManualModule, torch.nn.AdaptiveAvgPool2d):
    """Mean over windows sized to give ``output_size`` as ``torch.nn.AdaptiveAvgPool2d`` (None keeps a
    dimension); backward in ``manualbp.functional.AdaptiveAvgPool2dFunction``."""

    def check_supported(self) -> None:
        adaptive_output_size(layer_name(self), self.output_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.adaptive_avg_pool2d(input, self.output_size)
