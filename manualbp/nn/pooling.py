"""Pooling layers: the torch.nn twins with hand-written backward passes, over 1, 2 or 3 spatial dims.

Each kind of pool is one class here (``_MaxPool``, ``_AvgPool``, ``_AdaptiveAvgPool``, ``_AdaptiveMaxPool``,
with the rank as a class attribute) mixed into torch's 1-d, 2-d and 3-d classes, whose constructors, attributes
and ``extra_repr`` the twins keep.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from manualbp.functional.pooling import (
    adaptive_avg_pool_nd,
    adaptive_max_pool_nd,
    adaptive_output_size,
    avg_pool_nd,
    check_divisor_override,
    max_pool_nd,
    pool_window,
)
from manualbp.nn._base import ManualModule, layer_name


class _MaxPool(ManualModule):
    """Max over windows as ``torch.nn.MaxPool{rank}d`` (kernel_size, stride, padding, dilation, return_indices,
    ceil_mode); backward in ``manualbp.functional.MaxPoolFunction``."""

    rank: ClassVar[int]
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    ceil_mode: bool
    return_indices: bool

    def check_supported(self) -> None:
        pool_window(layer_name(self), self.kernel_size, self.stride, self.padding, self.dilation, self.rank)

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return max_pool_nd(
            self.rank,
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


class MaxPool1d(_MaxPool, torch.nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` with a hand-written backward (``manualbp.functional.MaxPoolFunction``)."""

    rank = 1


class MaxPool2d(_MaxPool, torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` with a hand-written backward (``manualbp.functional.MaxPoolFunction``)."""

    rank = 2


class MaxPool3d(_MaxPool, torch.nn.MaxPool3d):
    """``torch.nn.MaxPool3d`` with a hand-written backward (``manualbp.functional.MaxPoolFunction``)."""

    rank = 3


class _AvgPool(ManualModule):
    """Mean over windows as ``torch.nn.AvgPool{rank}d`` (kernel_size, stride, padding, ceil_mode,
    count_include_pad, and divisor_override but in 1-d); backward in ``manualbp.functional.AvgPoolFunction``."""

    rank: ClassVar[int]
    kernel_size: Any
    stride: Any
    padding: Any
    ceil_mode: bool
    count_include_pad: bool

    def check_supported(self) -> None:
        pool_window(layer_name(self), self.kernel_size, self.stride, self.padding, rank=self.rank)
        check_divisor_override(layer_name(self), self._divisor_override())

    def _divisor_override(self) -> int | None:
        return getattr(self, "divisor_override", None)  # torch.nn.AvgPool1d has none

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool_nd(
            self.rank,
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self._divisor_override(),
        )


class AvgPool1d(_AvgPool, torch.nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` with a hand-written backward (``manualbp.functional.AvgPoolFunction``)."""

    rank = 1


class AvgPool2d(_AvgPool, torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` with a hand-written backward (``manualbp.functional.AvgPoolFunction``)."""

    rank = 2


class AvgPool3d(_AvgPool, torch.nn.AvgPool3d):
    """``torch.nn.AvgPool3d`` with a hand-written backward (``manualbp.functional.AvgPoolFunction``)."""

    rank = 3


class _AdaptiveAvgPool(ManualModule):
    """Mean over windows sized to give ``output_size`` as ``torch.nn.AdaptiveAvgPool{rank}d`` (None keeps a
    dimension, from 2-d on); backward in ``manualbp.functional.AdaptiveAvgPoolFunction``."""

    rank: ClassVar[int]
    output_size: Any

    def check_supported(self) -> None:
        adaptive_output_size(layer_name(self), self.output_size, self.rank)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool_nd(self.rank, input, self.output_size)


class AdaptiveAvgPool1d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool1d):
    """``torch.nn.AdaptiveAvgPool1d`` with a hand-written backward (``manualbp.functional.AdaptiveAvgPoolFunction``)."""

    rank = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` with a hand-written backward (``manualbp.functional.AdaptiveAvgPoolFunction``)."""

    rank = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPool, torch.nn.AdaptiveAvgPool3d):
    """``torch.nn.AdaptiveAvgPool3d`` with a hand-written backward (``manualbp.functional.AdaptiveAvgPoolFunction``)."""

    rank = 3


class _AdaptiveMaxPool(ManualModule):
    """Max over windows sized to give ``output_size`` as ``torch.nn.AdaptiveMaxPool{rank}d`` (None keeps a
    dimension, from 2-d on; return_indices); backward in ``manualbp.functional.AdaptiveMaxPoolFunction``."""

    rank: ClassVar[int]
    output_size: Any
    return_indices: bool

    def check_supported(self) -> None:
        adaptive_output_size(layer_name(self), self.output_size, self.rank)

    def forward(self, input: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return adaptive_max_pool_nd(self.rank, input, self.output_size, self.return_indices)


class AdaptiveMaxPool1d(_AdaptiveMaxPool, torch.nn.AdaptiveMaxPool1d):
    """``torch.nn.AdaptiveMaxPool1d`` with a hand-written backward (``manualbp.functional.AdaptiveMaxPoolFunction``)."""

    rank = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPool, torch.nn.AdaptiveMaxPool2d):
    """``torch.nn.AdaptiveMaxPool2d`` with a hand-written backward (``manualbp.functional.AdaptiveMaxPoolFunction``)."""

    rank = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPool, torch.nn.AdaptiveMaxPool3d):
    """``torch.nn.AdaptiveMaxPool3d`` with a hand-written backward (``manualbp.functional.AdaptiveMaxPoolFunction``)."""

    rank = 3
