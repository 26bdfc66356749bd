"""Swap the layers of a torch.nn model for their manualbp twins, sharing Parameters and buffers (``convert``),
and back: an autograd copy of a manual model (``to_torch``)."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch

import manualbp.nn as mnn
from manualbp.nn._base import ManualModule, manual_twin
from manualbp.nn.fused import LinearReLU, ReLUMaxPool2d
from manualbp.rules import Rule, apply_rule, detach_rule

# Manual layers without a torch.nn twin of their own: ``to_torch`` swaps each for its ``to_torch()`` composition.
_FUSED = (LinearReLU, ReLUMaxPool2d)

# Layers that compute nothing, so they need no twin.
_PASS_THROUGH = (torch.nn.Identity,)

#: Layers that only move data (a permutation of dims, a reshape into windows and back): autograd's backward of a
#: view or a copy is the same move reversed, so they stay torch's and are not reported as left to torch.nn.
MOVES_DATA = frozenset(
    {
        "torchvision.ops.misc.Permute",
        "torchvision.models.maxvit.SwapAxes",
        "torchvision.models.maxvit.WindowPartition",
        "torchvision.models.maxvit.WindowDepartition",
        "torch.nn.modules.flatten.Unflatten",
        "torch.nn.modules.channelshuffle.ChannelShuffle",
    }
)
_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def computes_nothing(module: torch.nn.Module) -> bool:
    """Whether ``module`` needs no twin: an ``Identity``, a container owning no parameter or buffer itself (an empty
    Sequential is the identity), or a layer that only moves data (``MOVES_DATA``)."""
    cls = type(module)
    if isinstance(module, _CONTAINERS):
        return not _owns_state(module)
    return isinstance(module, _PASS_THROUGH) or f"{cls.__module__}.{cls.__qualname__}" in MOVES_DATA


def _owns_state(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


# A child of a container, by position: (id(container), name of the child in it).
Position = tuple[int, str]


def convert(
    model: torch.nn.Module,
    strict: bool = False,
    fuse: bool = False,
    rule: str | Rule | None = "backprop",
    example_input: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Replace, recursively and in place, every layer of ``model`` that has a ``manualbp.nn`` twin, and give
    its Linear, LinearReLU, Conv2d and MultiheadAttention layers the learning rule ``rule``.

    Every layer keeps its type's role: a Linear stays a (manual) Linear. Only when asked, with ``fuse=True``,
    two consecutive children of a ``torch.nn.Sequential`` (where the order of the children is the order of
    computation) that form a pattern with a fused manual layer become that layer and an ``Identity`` in the
    other place, so every parameter keeps its name (a fused layer is none of its parts: a forward hook on it
    sees the fused output, and ``isinstance(m, torch.nn.Linear)`` is false for ``LinearReLU``):

    * Linear then ReLU -> ``manualbp.nn.LinearReLU`` (sharing the Linear's Parameters), ``Identity``
    * ReLU then MaxPool2d -> ``Identity``, ``manualbp.nn.ReLUMaxPool2d`` (when the pool has dilation 1
      and no ``return_indices``)

    ``ReLU(inplace=True)`` fuses too (the fused layer's output is a new tensor, which no one else reads).
    A pair is left unfused when either layer carries hooks (they would no longer see their layer's own
    input or output) or appears more than once in the model (a shared layer stays one shared layer).

    The new layers share the old ones' Parameter and buffer objects (an optimizer built on the model
    keeps working), their hooks and train/eval mode. A layer is swapped only when its type is exactly a
    torch.nn type with a twin (a user's subclass may override ``forward``) and its configuration is
    supported.

    Layers left as torch.nn are named in one ``UserWarning``, one line per type and reason with the count
    (``Hardswish x3 (no manualbp twin)``); with ``strict=True`` a ``NotImplementedError`` with the same
    lines is raised instead and ``model`` is left unchanged.
    A layer counts when it has no children or owns parameters or buffers itself; plain containers
    (Sequential, ModuleList, a user's Module) are walked, not reported, and so are the layers that only move data
    (``MOVES_DATA``: torchvision's ``Permute``, MaxViT's window partition and ``SwapAxes``).

    ``rule`` (``manualbp.rules``) decides what carries the error backward through every manual Linear,
    LinearReLU, Conv2d and MultiheadAttention (its input projections) of the result (those swapped now and those that were manual already):
    ``"backprop"`` (the default: the true gradient, the plain layers, any other rule removed),
    ``"feedback_alignment"``, ``"sign_symmetry"``, ``"direct_feedback_alignment"``, a
    ``manualbp.rules.Rule`` object (a built-in one with options, or your own), or None: every layer keeps the
    rule it has, with its ``feedback_weight`` (those swapped now have none, so backprop). Rules with fixed random
    matrices give each layer a ``feedback_weight`` buffer, drawn from the rule's seed (0 for a name).
    ``example_input``, a batch of inputs, is needed only by direct feedback alignment through a Conv2d
    (the sizes of the layers' inputs depend on the image size): one no-grad forward pass in eval mode
    measures them.

    Returns ``model``, or the twin of ``model`` when ``model`` itself is a layer with a twin.
    """
    converted = _convert_layers(model, strict, fuse)
    if rule is not None:
        apply_rule(converted, rule, example_input)
    return converted


def _convert_layers(model: torch.nn.Module, strict: bool, fuse: bool) -> torch.nn.Module:
    replacements: dict[int, torch.nn.Module] = {}
    fused = _fusions(model) if fuse else {}
    left_as_torch: Counter[tuple[str, str]] = Counter()
    _plan(model, replacements, fused, left_as_torch, seen=set())
    if left_as_torch:
        lines = [f"  {kind} x{count} ({why})" for (kind, why), count in left_as_torch.items()]
        message = (
            f"manualbp.convert: {left_as_torch.total()} layer(s) stay torch.nn (their backward is autograd's):\n"
            + "\n".join(lines)
        )
        if strict:
            raise NotImplementedError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    if id(model) in replacements:
        return replacements[id(model)]
    _apply(model, replacements, fused, seen=set())
    return model


def to_torch(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which every ``manualbp.nn`` layer is its ``torch.nn`` twin: the autograd twin.

    A fused layer becomes its autograd counterpart (``to_torch()``): ``manualbp.nn.ReLUMaxPool2d`` the
    ``torch.nn.Sequential`` of the ReLU and MaxPool2d it fuses (it has no parameters or buffers),
    ``manualbp.nn.LinearReLU`` an ``AutogradLinearReLU`` (a torch.nn.Linear followed by torch.relu), so the
    parameter and buffer names stay the same. A learning rule (``manualbp.rules``) is not carried: the copy
    computes the true gradient, and has no ``feedback_weight`` buffers.

    The copy carries the same configuration, Parameter and buffer values (copied, not shared), hooks and
    train/eval mode; layers that are not manualbp layers are copied as they are. A layer shared between
    several places of ``model`` stays one shared layer in the copy. ``model`` itself is left untouched.
    Returns the copy, or the twin of the copy when ``model`` itself is a manualbp layer.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        detach_rule(module)
    replacements: dict[int, torch.nn.Module] = {
        id(module): module.to_torch() for module in model.modules() if isinstance(module, (ManualModule, *_FUSED))
    }
    if id(model) in replacements:
        return replacements[id(model)]
    _apply(model, replacements, {}, seen=set())
    return model


def _fusions(model: torch.nn.Module) -> dict[Position, torch.nn.Module]:
    """The replacement of each child of a Sequential in ``model`` that is part of a fusible pair."""
    occurrences = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
    plan: dict[Position, torch.nn.Module] = {}
    for parent in model.modules():
        if not isinstance(parent, torch.nn.Sequential):
            continue
        names = [name for name, child in parent._modules.items() if child is not None]
        i = 0
        while i + 1 < len(names):
            first, second = parent._modules[names[i]], parent._modules[names[i + 1]]
            alone = all(occurrences[id(m)] == 1 and not _has_hooks(m) for m in (first, second))
            pair = _fuse_pair(first, second) if alone else None
            if pair is None:
                i += 1
                continue
            plan[(id(parent), names[i])], plan[(id(parent), names[i + 1])] = pair
            i += 2
    return plan


def _fuse_pair(first: torch.nn.Module, second: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The two layers that replace ``first`` then ``second``, or None when they form no fusible pattern."""
    relu = (torch.nn.ReLU, mnn.ReLU)
    if type(first) in (torch.nn.Linear, mnn.Linear) and isinstance(first, torch.nn.Linear) and type(second) in relu:
        return LinearReLU.from_linear(first), torch.nn.Identity()
    if (
        type(first) in relu
        and type(second) in (torch.nn.MaxPool2d, mnn.MaxPool2d)
        and isinstance(second, torch.nn.MaxPool2d)
    ):
        try:
            pool = ReLUMaxPool2d(
                second.kernel_size,
                second.stride,
                second.padding,
                second.dilation,
                second.return_indices,
                second.ceil_mode,
            )
        except NotImplementedError:
            return None
        return torch.nn.Identity(), pool.train(second.training)
    return None


def _has_hooks(module: torch.nn.Module) -> bool:
    return any(
        getattr(module, registry)
        for registry in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def _plan(
    module: torch.nn.Module,
    replacements: dict[int, torch.nn.Module],
    fused: dict[Position, torch.nn.Module],
    left_as_torch: Counter[tuple[str, str]],
    seen: set[int],
) -> None:
    """Build each twin (once per module object) and count the layers that stay torch.nn by (type, reason);
    the children at ``fused`` positions are replaced by fused layers instead."""
    if id(module) in seen:
        return
    seen.add(id(module))
    if isinstance(module, (ManualModule, *_FUSED, *_PASS_THROUGH)):
        return
    if computes_nothing(module):
        for child in module.children():
            _plan(child, replacements, fused, left_as_torch, seen)
        return
    kind = type(module).__name__
    twin = manual_twin(type(module))
    if twin is not None:
        try:
            replacements[id(module)] = twin.from_torch(module)
        except NotImplementedError as why:
            left_as_torch[(kind, str(why))] += 1
        return
    owns_state = _owns_state(module)
    children = list(module.named_children())
    if owns_state or not children:
        left_as_torch[(kind, "no manualbp twin")] += 1
    for child_name, child in children:
        if (id(module), child_name) not in fused:
            _plan(child, replacements, fused, left_as_torch, seen)


def _apply(
    module: torch.nn.Module,
    replacements: dict[int, torch.nn.Module],
    fused: dict[Position, torch.nn.Module],
    seen: set[int],
) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    for child_name, child in list(module._modules.items()):
        if child is None:
            continue
        if (id(module), child_name) in fused:
            module._modules[child_name] = fused[(id(module), child_name)]
        elif id(child) in replacements:
            module._modules[child_name] = replacements[id(child)]
        else:
            _apply(child, replacements, fused, seen)


def layer_summary(model: torch.nn.Module) -> dict[str, Counter[str]]:
    """How many layers of each type in ``model`` run a hand-written backward (``"manual"``) and how many
    stay torch.nn with autograd's backward (``"torch"``); what computes nothing (``computes_nothing``: containers,
    ``Identity``, the layers that only move data) is not counted."""
    summary: dict[str, Counter[str]] = {"manual": Counter(), "torch": Counter()}
    for module in model.modules():
        if isinstance(module, (ManualModule, *_FUSED)):
            summary["manual"][type(module).__name__] += 1
        elif not computes_nothing(module) and (_owns_state(module) or not any(True for _ in module.children())):
            summary["torch"][type(module).__name__] += 1
    return summary
