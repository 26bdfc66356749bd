"""manualbp.functional._dispatch: each Function's jvp-less twin, applied only while torch.compile traces."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch

from manualbp import functional as MF


def function_classes() -> list[type[torch.autograd.Function]]:
    """Every Function class defined in a module of manualbp.functional (exported or not), without twins."""
    found = []
    for info in pkgutil.iter_modules(MF.__path__):
        module = importlib.import_module(f"{MF.__name__}.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_function_is_exported():
    exported = {name for name in MF.__all__ if name.endswith("Function")}
    assert {cls.__name__ for cls in function_classes()} == exported
    assert {"LinearFunction", "ReLUMaxPool2dFunction", "CrossEntropyFunction"} <= exported


def test_compiled_function_uses_the_jvp_less_twin():
    """The twin differs from the Function only by its jvp, and eager calls use the Function itself."""
    for cls in function_classes():
        twin = cls.compile_twin
        assert issubclass(twin, cls) and twin.jvp is torch.autograd.Function.jvp
        assert cls.jvp is not torch.autograd.Function.jvp
        assert twin.backward is cls.backward and twin.setup_context is cls.setup_context
    x = torch.randn(3, requires_grad=True)
    assert MF.relu(x).grad_fn._forward_cls is MF.ReLUFunction
