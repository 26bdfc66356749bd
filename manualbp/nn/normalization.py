"""Normalisation layers: the torch.nn twins with hand-written backward passes."""

from __future__ import annotations

import torch

from manualbp import functional as MF
from manualbp.functional._validation import check_dim
from manualbp.nn._base import ManualModule


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


class BatchNorm1d(ManualModule, torch.nn.BatchNorm1d):
    """Batch normalisation of (N, C) or (N, C, L) as ``torch.nn.BatchNorm1d`` (eps, momentum or None,
    affine, bias, track_running_stats; same buffers and running-statistics updates).
    Backward in ``manualbp.functional.BatchNormFunction``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        check_dim("manualbp.nn.BatchNorm1d", "input", input, (2, 3))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


class BatchNorm2d(ManualModule, torch.nn.BatchNorm2d):
    """Batch normalisation of (N, C, H, W) as ``torch.nn.BatchNorm2d`` (eps, momentum or None,
    affine, bias, track_running_stats; same buffers and running-statistics updates).
    Backward in ``manualbp.functional.BatchNormFunction``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        check_dim("manualbp.nn.BatchNorm2d", "input", input, (4,))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


class LayerNorm(ManualModule, torch.nn.LayerNorm):
    """Normalisation over the trailing ``normalized_shape`` dims as ``torch.nn.LayerNorm`` (eps,
    elementwise_affine, bias). Backward in ``manualbp.functional.LayerNormFunction``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
