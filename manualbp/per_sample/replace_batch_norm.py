"""Replace a model's batch normalisation by group normalisation, as Opacus's ``ModuleValidator.fix`` does.

Batch statistics mix the samples of a batch, so a model with BatchNorm in training mode has no per-sample
gradients (``clip_per_sample`` and ``per_sample_grads`` raise ``PerSampleError`` naming the layer). Opacus's
default fixer replaces each ``BatchNorm{1,2,3}d`` and ``SyncBatchNorm`` of C features by a new
``torch.nn.GroupNorm(gcd(32, C), C, affine=<the BatchNorm's>)``. Two ways to the same model here:

* a torch model: ``manualbp.convert(ModuleValidator.fix(model), strict=True)``, Opacus's fix first, works
  (every layer of a GroupNorm resnet18 has a manual twin, ``manualbp.nn.GroupNorm`` included);
* a model converted already: Opacus's fix looks fixers up by the *exact* type (``type(m) in FIXERS``), so it
  leaves ``manualbp.nn.BatchNorm2d`` (a subclass of torch's) where it is, and ``ModuleValidator.validate``
  reports no error for it. ``batch_norm_to_group_norm`` below replaces every subclass of torch's batch norm,
  manual twins by ``manualbp.nn.GroupNorm`` (the model stays manual), torch's by ``torch.nn.GroupNorm``.
"""

from __future__ import annotations

import math

import torch

from manualbp.nn import GroupNorm as ManualGroupNorm
from manualbp.nn._base import ManualModule

__all__ = ["batch_norm_to_group_norm"]


def _group_norm_for(bn: torch.nn.modules.batchnorm._BatchNorm, groups: int, name: str) -> torch.nn.GroupNorm:
    """The GroupNorm that replaces ``bn``: gcd(groups, C) groups of its C channels, its affine, a fresh
    (weight 1, bias 0) initialisation as Opacus's, on its device and dtype, in its train/eval mode."""
    if isinstance(bn, torch.nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params():
        raise ValueError(f"batch_norm_to_group_norm: {name or 'the model'} is a lazy BatchNorm not yet initialised")
    channels = bn.num_features
    cls = ManualGroupNorm if isinstance(bn, ManualModule) else torch.nn.GroupNorm
    tensor = bn.weight if bn.weight is not None else bn.running_mean
    device = None if tensor is None else tensor.device
    dtype = None if tensor is None else tensor.dtype
    new = cls(math.gcd(groups, channels), channels, affine=bn.affine, device=device, dtype=dtype)
    return new.train(bn.training)


def batch_norm_to_group_norm(model: torch.nn.Module, groups: int = 32) -> torch.nn.Module:
    """Replace, in place, every batch-norm layer of ``model`` (any subclass of torch's ``_BatchNorm``:
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, and manualbp's twins) of C features by a GroupNorm of
    ``gcd(groups, C)`` groups, ``affine`` as the BatchNorm's: what Opacus's ``ModuleValidator.fix`` does with
    its default ``num_groups`` (gcd(32, C)), for converted models too, where Opacus's fix changes nothing.

    A manual BatchNorm (``manualbp.nn.BatchNorm2d``, ...) becomes ``manualbp.nn.GroupNorm``, so a model from
    ``manualbp.convert(..., strict=True)`` stays fully manual; a ``torch.nn`` one becomes ``torch.nn.GroupNorm``
    (``manualbp.convert`` turns it manual later). As Opacus's fix, the new layer's weight and bias are fresh
    (1 and 0), its eps the default (1e-5), the BatchNorm's parameters, buffers and hooks are dropped; the new
    layer is on the BatchNorm's device and dtype and in its train/eval mode. A BatchNorm that appears at
    several places is replaced by one shared GroupNorm. An optimizer built on the model before still holds
    the old parameters: build it after.

    Returns ``model``, or the new layer when ``model`` is itself a BatchNorm.

    >>> import torchvision, manualbp
    >>> net = manualbp.convert(torchvision.models.resnet18(num_classes=10), strict=True)
    >>> net = manualbp.per_sample.batch_norm_to_group_norm(net)  # now clip_per_sample(net, ...) works
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"batch_norm_to_group_norm: groups must be a positive int, got {groups!r}")
    batch_norm = torch.nn.modules.batchnorm._BatchNorm
    if isinstance(model, batch_norm):
        return _group_norm_for(model, groups, "")
    replaced: dict[int, torch.nn.GroupNorm] = {}
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, batch_norm):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if id(child) not in replaced:
                    replaced[id(child)] = _group_norm_for(child, groups, name)
                parent._modules[child_name] = replaced[id(child)]
    return model
