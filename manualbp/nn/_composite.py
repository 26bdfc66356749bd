"""Manual twins of torch.nn modules that are made of other layers (a transformer layer, a vision transformer):
the twin's own forward, and every layer inside it manual too."""

from __future__ import annotations

import torch

from manualbp.nn._base import ManualModule, manual_twin, share_state


class ManualComposite(ManualModule):
    """A twin whose children are layers. Built (or made ``from_torch``), every child with a ``manualbp.nn`` twin
    is swapped for it, sharing its Parameters, recursively through plain containers (a ``ModuleList`` of
    layers); a child that stays torch.nn raises ``NotImplementedError`` naming it, so ``manualbp.convert``
    reports the composite as left torch.nn rather than half manual. ``to_torch`` turns them back. The containers
    on the way are new ones (sharing the layers' state), so neither the torch module nor the manual one changes."""

    def check_supported(self) -> None:
        """Swap every child layer for its manual twin (see the class), then the composite's own checks."""
        _make_children_manual(self, type(self).__name__)

    def to_torch(self) -> torch.nn.Module:
        twin = super().to_torch()
        _make_children_torch(twin)
        return twin


def _make_children_manual(module: torch.nn.Module, path: str) -> None:
    for name, child in list(module._modules.items()):
        if child is None or isinstance(child, (ManualModule, torch.nn.Identity)):  # Identity computes nothing
            continue
        twin = manual_twin(type(child))
        if twin is not None:
            module._modules[name] = twin.from_torch(child)
        elif any(True for _ in child.parameters(recurse=False)) or not child._modules:
            raise NotImplementedError(f"{path}.{name} ({type(child).__name__}) has no manualbp twin")
        else:  # a container: a new one, whose children are swapped
            container = share_state(child, type(child))
            _make_children_manual(container, f"{path}.{name}")
            module._modules[name] = container


def _make_children_torch(module: torch.nn.Module) -> None:
    for name, child in list(module._modules.items()):
        if isinstance(child, ManualModule):
            module._modules[name] = child.to_torch()
        elif child is not None:  # a container: a new one, as in _make_children_manual
            container = share_state(child, type(child))
            _make_children_torch(container)
            module._modules[name] = container
