"""The network a callback watches: ``pl_module.net``, as every callback here reads it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """``pl_module.net`` (``ClassifierModule``'s, or any LightningModule's with a ``net`` submodule), as a Module:
    ``torch.nn.Module.__getattr__``, through which a submodule is read, is typed to give a Tensor or a Module."""
    net = pl_module.net
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"{type(pl_module).__name__}.net must be a torch.nn.Module, got {type(net).__name__}")
    return net
