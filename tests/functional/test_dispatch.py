"""manualbp.functional._dispatch: each Function's jvp-less twin, applied only while torch.compile traces."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch
from torch.testing import assert_close

from manualbp import functional as MF


def function_classes() -> list[type[torch.autograd.Function]]:
    """Every Function class defined in a module of manualbp.functional (exported or not), without twins."""
    found = []
    for info in pkgutil.walk_packages(MF.__path__, prefix=f"{MF.__name__}."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_function_is_exported():
    exported = {name for name in MF.__all__ if name.endswith("Function")}
    assert {cls.__name__ for cls in function_classes()} == exported
    assert {"LinearFunction", "ReLUMaxPool2dFunction", "CrossEntropyFunction"} <= exported


def test_compiled_function_uses_the_jvp_less_twin():
    """The twin differs from the Function only by its jvp."""
    for cls in function_classes():
        twin = cls.compile_twin
        assert issubclass(twin, cls) and twin.jvp is torch.autograd.Function.jvp
        assert cls.jvp is not torch.autograd.Function.jvp
        assert twin.backward is cls.backward and twin.setup_context is cls.setup_context


def test_eager_calls_use_the_combined_style_twin_and_transforms_the_function_itself():
    """The eager twin only moves setup_context into forward(ctx, ...); backward and jvp are the Function's."""
    for cls in function_classes():
        twin = cls.eager_twin
        assert issubclass(twin, cls) and twin.__name__ == cls.__name__
        assert twin.backward is cls.backward and twin.jvp is cls.jvp
        assert not torch.autograd.function._is_setup_context_defined(twin.setup_context)
    x = torch.randn(3, requires_grad=True)
    assert MF.relu(x).grad_fn._forward_cls is MF.ReLUFunction.eager_twin
    assert type(MF.relu(x).grad_fn).__name__ == "ReLUFunctionBackward"
    seen = []
    monkey = torch.func.grad(lambda t: (seen.append(torch._C._are_functorch_transforms_active()), MF.relu(t).sum())[1])
    assert_close(monkey(x.detach()), (x.detach() > 0).to(x.dtype))
    assert seen == [True]  # under torch.func the Function itself (setup_context style) is applied
