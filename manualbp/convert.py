"""Swap the layers of a torch.nn model for their manualbp twins, sharing Parameters and buffers (``convert``),
and back: an autograd copy of a manual model (``to_torch``)."""

from __future__ import annotations

import copy
import warnings

import torch

from manualbp.nn._base import ManualModule, manual_twin
from manualbp.nn.fused import ReLUMaxPool2d

# Manual layers without a torch.nn twin of their own: ``to_torch`` swaps each for its ``to_torch()`` composition.
_FUSED = (ReLUMaxPool2d,)

# Layers that compute nothing, so they need no twin.
_PASS_THROUGH = (torch.nn.Identity,)


def convert(model: torch.nn.Module, strict: bool = False) -> torch.nn.Module:
    """Replace, recursively and in place, every layer of ``model`` that has a ``manualbp.nn`` twin.

    The new layers share the old ones' Parameter and buffer objects (an optimizer built on the model
    keeps working), their hooks and train/eval mode. A layer is swapped only when its type is exactly a
    torch.nn type with a twin (a user's subclass may override ``forward``) and its configuration is
    supported (``ReLU(inplace=True)`` is not).

    Layers left as torch.nn are named in one ``UserWarning``; with ``strict=True`` a
    ``NotImplementedError`` naming them is raised instead and ``model`` is left unchanged.
    A layer counts when it has no children or owns parameters or buffers itself; plain containers
    (Sequential, ModuleList, a user's Module) are walked, not reported.

    Returns ``model``, or the twin of ``model`` when ``model`` itself is a layer with a twin.
    """
    replacements: dict[int, torch.nn.Module] = {}
    left_as_torch: list[str] = []
    _plan(model, "", replacements, left_as_torch, seen=set())
    if left_as_torch:
        message = (
            f"manualbp.convert: {len(left_as_torch)} layer(s) have no manualbp twin and stay torch.nn "
            f"(their backward is autograd's): {', '.join(left_as_torch)}"
        )
        if strict:
            raise NotImplementedError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    if id(model) in replacements:
        return replacements[id(model)]
    _apply(model, replacements, seen=set())
    return model


def to_torch(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which every ``manualbp.nn`` layer is its ``torch.nn`` twin: the autograd twin.

    A fused layer (``manualbp.nn.ReLUMaxPool2d``) becomes the ``torch.nn.Sequential`` of the layers it fuses;
    it has no parameters or buffers, so the parameter and buffer names stay the same.

    The copy carries the same configuration, Parameter and buffer values (copied, not shared), hooks and
    train/eval mode; layers that are not manualbp layers are copied as they are. A layer shared between
    several places of ``model`` stays one shared layer in the copy. ``model`` itself is left untouched.
    Returns the copy, or the twin of the copy when ``model`` itself is a manualbp layer.
    """
    model = copy.deepcopy(model)
    replacements: dict[int, torch.nn.Module] = {
        id(module): module.to_torch() for module in model.modules() if isinstance(module, (ManualModule, *_FUSED))
    }
    if id(model) in replacements:
        return replacements[id(model)]
    _apply(model, replacements, seen=set())
    return model


def _plan(
    module: torch.nn.Module,
    name: str,
    replacements: dict[int, torch.nn.Module],
    left_as_torch: list[str],
    seen: set[int],
) -> None:
    """Build each twin (once per module object) and collect the layers that stay torch.nn."""
    if id(module) in seen:
        return
    seen.add(id(module))
    label = name or type(module).__name__
    if isinstance(module, (ManualModule, *_FUSED)) or isinstance(module, _PASS_THROUGH):
        return
    twin = manual_twin(type(module))
    if twin is not None:
        try:
            replacements[id(module)] = twin.from_torch(module)
        except NotImplementedError as why:
            left_as_torch.append(f"{label} ({type(module).__name__}: {why})")
        return
    owns_state = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    children = list(module.named_children())
    if owns_state or not children:
        left_as_torch.append(f"{label} ({type(module).__name__})")
    for child_name, child in children:
        _plan(child, f"{name}.{child_name}" if name else child_name, replacements, left_as_torch, seen)


def _apply(module: torch.nn.Module, replacements: dict[int, torch.nn.Module], seen: set[int]) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    for child_name, child in list(module._modules.items()):
        if child is None:
            continue
        if id(child) in replacements:
            module._modules[child_name] = replacements[id(child)]
        else:
            _apply(child, replacements, seen)
