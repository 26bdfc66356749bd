"""Normalisation layers (batch, instance, group, layer and RMS norm): the torch.nn twins with hand-written backward
passes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_dim, check_int, check_non_negative, check_unit_interval
from manualbp.functional.normalization import normalized_shape_tuple
from manualbp.nn._base import ManualModule, layer_name


def _batch_norm_forward(module: torch.nn.modules.batchnorm._BatchNorm, input: torch.Tensor) -> torch.Tensor:
    """``torch.nn.modules.batchnorm._BatchNorm.forward`` with ``manualbp.functional.batch_norm``.

    In training with running statistics, ``num_batches_tracked`` counts the batch and the momentum is
    ``momentum``, or 1/num_batches_tracked (a cumulative moving average) when ``momentum`` is None.
    Batch statistics normalise in training, and in eval mode when there are no running statistics.
    """
    module._check_input_dim(input)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:  # a tensor, not float(...): no .item(), so vmap can batch the count
            assert module.running_mean is not None, "tracked with num_batches_tracked (torch's _BatchNorm)"
            factor = torch.reciprocal(module.num_batches_tracked.to(module.running_mean.dtype))
        else:
            factor = module.momentum
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    tracked = not module.training or module.track_running_stats
    return MF.batch_norm(
        input,
        module.running_mean if tracked else None,
        module.running_var if tracked else None,
        module.weight,
        module.bias,
        use_batch_stats,
        factor,
        module.eps,
    )


def _check_num_features(module: torch.nn.Module, arguments: Mapping[str, Any]) -> None:
    """A batch- or instance-norm layer's ``num_features``, before torch's constructor sizes its buffers with it."""
    check_int(layer_name(module), "num_features", arguments["num_features"], 0)


def _check_batch_norm(module: torch.nn.modules.batchnorm._BatchNorm) -> None:
    """A batch- or instance-norm layer's eps (>= 0) and momentum (in [0, 1], or None for a cumulative average)."""
    check_non_negative(layer_name(module), "eps", module.eps)
    if module.momentum is not None:
        check_unit_interval(layer_name(module), "momentum", module.momentum)


if TYPE_CHECKING:
    _Mixin = torch.nn.modules.batchnorm._BatchNorm  # mixed into torch's batch-norm layers: one, to the type checker
else:
    _Mixin = object


class _ManualBatchNorm(_Mixin):
    """What the batch-norm layers share: argument checks, the input check and the forward."""

    input_dims: tuple[int, ...]
    check_arguments = _check_num_features
    check_supported = _check_batch_norm

    def _check_input_dim(self, input: torch.Tensor) -> None:
        check_dim(layer_name(self), "input", input, self.input_dims)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


class BatchNorm1d(_ManualBatchNorm, ManualModule, torch.nn.BatchNorm1d):
    """Batch normalisation of (N, C) or (N, C, L) as ``torch.nn.BatchNorm1d`` (eps, momentum or None,
    affine, bias, track_running_stats; same buffers and running-statistics updates).
    Backward in ``manualbp.functional.BatchNormFunction``."""

    input_dims = (2, 3)


class BatchNorm2d(_ManualBatchNorm, ManualModule, torch.nn.BatchNorm2d):
    """Batch normalisation of (N, C, H, W) as ``torch.nn.BatchNorm2d`` (eps, momentum or None,
    affine, bias, track_running_stats; same buffers and running-statistics updates).
    Backward in ``manualbp.functional.BatchNormFunction``."""

    input_dims = (4,)


class BatchNorm3d(_ManualBatchNorm, ManualModule, torch.nn.BatchNorm3d):
    """Batch normalisation of (N, C, D, H, W) as ``torch.nn.BatchNorm3d`` (eps, momentum or None,
    affine, bias, track_running_stats; same buffers and running-statistics updates).
    Backward in ``manualbp.functional.BatchNormFunction``."""

    input_dims = (5,)


if TYPE_CHECKING:
    _InstanceMixin = torch.nn.modules.instancenorm._InstanceNorm  # mixed into torch's instance-norm layers
else:
    _InstanceMixin = object


class _ManualInstanceNorm(_InstanceMixin):
    """What the instance-norm layers share: argument checks and the normalisation. ``forward`` is torch's
    ``_InstanceNorm.forward``: its input-dim check, num_features check (an error with affine parameters, a
    warning without) and unbatched inputs (a batch of one) run as in torch, and call ``_apply_instance_norm``."""

    check_arguments = _check_num_features
    check_supported = _check_batch_norm

    def _apply_instance_norm(self, input: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """``manualbp.functional.instance_norm`` with the arguments torch's layer passes: statistics of the input
        in training or without running statistics, the running statistics (updated with ``momentum``, 0 for
        None) otherwise."""
        return MF.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            batched=batched,
        )

    def _handle_no_batch_input(self, input: torch.Tensor) -> torch.Tensor:
        """One sample (C, *): as torch's batch of one, its output straight from the Function (no squeeze node)."""
        return self._apply_instance_norm(input, batched=False)


class InstanceNorm1d(_ManualInstanceNorm, ManualModule, torch.nn.InstanceNorm1d):
    """Instance normalisation of (N, C, L) or unbatched (C, L) as ``torch.nn.InstanceNorm1d`` (eps, momentum,
    affine, bias, track_running_stats). Backward in ``manualbp.functional.ChannelNormFunction`` (statistics of
    the input) or ``BatchNormFunction`` (running statistics)."""


class InstanceNorm2d(_ManualInstanceNorm, ManualModule, torch.nn.InstanceNorm2d):
    """Instance normalisation of (N, C, H, W) or unbatched (C, H, W) as ``torch.nn.InstanceNorm2d`` (eps,
    momentum, affine, bias, track_running_stats). Backward in ``manualbp.functional.ChannelNormFunction``
    (statistics of the input) or ``BatchNormFunction`` (running statistics)."""


class InstanceNorm3d(_ManualInstanceNorm, ManualModule, torch.nn.InstanceNorm3d):
    """Instance normalisation of (N, C, D, H, W) or unbatched (C, D, H, W) as ``torch.nn.InstanceNorm3d`` (eps,
    momentum, affine, bias, track_running_stats). Backward in ``manualbp.functional.ChannelNormFunction``
    (statistics of the input) or ``BatchNormFunction`` (running statistics)."""


class GroupNorm(ManualModule, torch.nn.GroupNorm):
    """Group normalisation of (N, C, *) as ``torch.nn.GroupNorm`` (num_groups, eps, affine, bias). Backward in
    ``manualbp.functional.ChannelNormFunction``."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        check_int(layer_name(self), "num_groups", arguments["num_groups"], 1)
        check_int(layer_name(self), "num_channels", arguments["num_channels"], 0)

    def check_supported(self) -> None:
        check_non_negative(layer_name(self), "eps", self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(ManualModule, torch.nn.LayerNorm):
    """Normalisation over the trailing ``normalized_shape`` dims as ``torch.nn.LayerNorm`` (eps,
    elementwise_affine, bias). Backward in ``manualbp.functional.LayerNormFunction``."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        normalized_shape_tuple(layer_name(self), arguments["normalized_shape"])

    def check_supported(self) -> None:
        check_non_negative(layer_name(self), "eps", self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(ManualModule, torch.nn.RMSNorm):
    """Root-mean-square normalisation over the trailing ``normalized_shape`` dims as ``torch.nn.RMSNorm`` (eps or
    None for the dtype's machine epsilon, elementwise_affine: a weight, no bias). Backward in
    ``manualbp.functional.RMSNormFunction``."""

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        normalized_shape_tuple(layer_name(self), arguments["normalized_shape"])

    def check_supported(self) -> None:
        if self.eps is not None:
            check_non_negative(layer_name(self), "eps", self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.rms_norm(input, self.normalized_shape, self.weight, self.eps)
