"""Which Function class a functional entry point applies: the Function itself under ``torch.func``
transforms, its jvp-less twin while ``torch.compile`` traces, and its combined-style twin in plain eager
mode.

Every Function in ``manualbp.functional`` defines ``jvp`` (forward-mode AD). Dynamo (torch 2.14)
refuses to trace an ``autograd.Function`` subclass that defines ``jvp``: the call becomes a graph
break ("Unsupported custom jvp"), so ``torch.compile(..., fullgraph=True)`` fails on any model built
from our layers. The same class with ``jvp`` reset to ``torch.autograd.Function.jvp`` compiles
(forward, ``setup_context`` including ``save_for_forward``, and backward are traced as usual).

So ``@function`` gives each Function, once, at import time, a subclass that differs only in
having no ``jvp``, stored as ``Function.compile_twin``; and ``apply(Function, *args)`` applies the
twin while Dynamo traces (``torch.compiler.is_compiling()``) and the Function itself otherwise. The
Function classes stay the public, readable objects; the twin is an implementation detail, and
forward-mode AD through a compiled region is not available (as for any Function Dynamo traces).

Dynamo cannot read an arbitrary attribute of an ``autograd.Function`` class (``Function.compile_twin``
is an "unsupported python_type() call"), but it can call the class's staticmethods; so the decorator
also attaches ``Function.apply_compile_twin``, a staticmethod whose closure holds the twin, and that
is what ``apply`` calls while tracing.

The decorator also caches the signature of ``forward`` as ``forward.__signature__``. For a Function
with ``setup_context``, torch 2.14's ``Function.apply`` binds the call's arguments to ``forward``'s
signature on every call (``torch.autograd.function._bind_default_args``, which calls
``inspect.signature``); ``inspect.signature`` returns a function's ``__signature__`` when it has one,
instead of rebuilding it. Measured on 2 CPU threads: ``linear`` on tiny tensors 29 -> 20 µs per call,
``cross_entropy`` 118 -> 97 µs. The cached signature is the one ``inspect`` would compute, so binding
behaves as before.

The eager twin (``Function.eager_twin``) is for speed. Every Function is written in the
``forward`` + ``setup_context`` style, the one ``torch.func`` transforms require; for that style torch
2.14's ``Function.apply`` binds the arguments to ``forward``'s signature in Python and calls
``setup_context`` separately, which costs more than the forward of a small layer. The combined style,
``forward(ctx, *args)``, skips both. The eager twin is the Function with a combined-style ``forward`` that
calls the Function's ``forward`` and then its ``setup_context`` on the same ctx; backward and jvp
(forward-mode AD with dual tensors works in both styles) are inherited. ``apply`` uses it unless a
``torch.func`` transform is active (``torch._C._are_functorch_transforms_active()``, the test
``Function.apply`` itself makes), where the Function itself is required. Measured on 2 CPU threads,
``linear_relu`` on a (2, 3) input: 19.7 µs per call through ``Function.apply``, 8.8 µs through the eager
twin, 12.7 µs for the whole ``manualbp.functional.linear_relu`` call with its checks (torch's
``relu(linear(...))``: 7.2 µs). A graph node's ``_forward_cls`` is the eager twin, a subclass of the
Function with the same name (so ``grad_fn`` prints as ``LinearReLUFunctionBackward``).

The decorator is also the one place that gives every Function the opt-in non-finite gradient check
(``manualbp.detect_nonfinite``): it wraps ``backward`` before the twin is made, so the twin inherits
the checked backward (``manualbp.functional._nonfinite``).

The twin is created eagerly rather than on first use so that Dynamo never has to trace the class
creation, and it belongs to the decorated class only: a subclass of a decorated Function must be
decorated itself to get its own twin.

The decorator is public as ``manualbp.function``, for users' own Functions. Their entry point is
``Function.call``, a staticmethod the decorator attaches, which does what ``apply`` does for the
functional wrappers; ``Function.apply`` itself keeps torch's meaning (Dynamo handles a call to it
before any override could dispatch, so ``apply`` cannot be the dispatching entry). A Function written
in the combined style, ``forward(ctx, *args)`` without ``setup_context``, is its own eager twin.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar, cast

import torch

from manualbp.functional._nonfinite import check_backward

FunctionType = TypeVar("FunctionType", bound=type[torch.autograd.Function])


def function(cls: FunctionType) -> FunctionType:
    """Class decorator giving an ``autograd.Function`` manualbp's machinery; returns ``cls`` itself.

    ``cls.call(*args)`` applies it the way every manualbp op is applied: a twin without ``jvp`` while
    ``torch.compile`` traces (so ``fullgraph=True`` compiles a Function that defines ``jvp``), a faster
    twin in the combined ``forward(ctx, ...)`` style in eager mode, and ``cls`` itself under
    ``torch.func`` transforms. Arguments are positional. ``cls.backward`` gains the opt-in
    ``manualbp.detect_nonfinite`` check, whose error names ``cls``. ``cls.apply`` is left as torch
    defines it. The twins are ``cls.compile_twin`` and ``cls.eager_twin``; a subclass of a decorated
    Function must be decorated itself to get its own (see ``manualbp.functional._dispatch``).
    """
    # What the decorator attaches (the cached signature, the twins, ``call``) is not part of the class's static type
    # (a class decorator cannot add to it), so it is set through ``decorated``.
    decorated: Any = cls
    decorated.forward.__signature__ = inspect.signature(cls.forward)  # see the module docstring
    check_backward(cls)
    twin = cast(
        FunctionType,  # a subclass of cls
        type(
            cls.__name__,
            (cls,),
            {
                "jvp": torch.autograd.Function.jvp,
                "__module__": cls.__module__,
                "__qualname__": f"{cls.__qualname__}.compile_twin",
                "__doc__": f"{cls.__name__} without jvp, for tracing by torch.compile (see manualbp.functional._dispatch).",
            },
        ),
    )

    def apply_compile_twin(*args: Any) -> Any:
        return twin.apply(*args)

    apply_compile_twin.__doc__ = (
        f"Apply {cls.__name__}'s jvp-less twin (what ``call`` does while torch.compile traces)."
    )

    def call(*args: Any) -> Any:
        return apply(cls, *args)

    call.__doc__ = f"Apply {cls.__name__} to positional ``args`` (see manualbp.function)."
    decorated.compile_twin = twin
    decorated.apply_compile_twin = staticmethod(apply_compile_twin)
    decorated.eager_twin = cls if cls.setup_context is _COMBINED_STYLE else _eager_twin(cls)
    decorated.call = staticmethod(call)
    return cls


def _eager_twin(cls: FunctionType) -> FunctionType:
    """``cls`` in the combined style, ``forward(ctx, *args)``: the same forward and setup_context, called
    one after the other, and everything else (backward, jvp) inherited."""

    def forward(ctx: Any, *args: Any) -> Any:
        output = cls.forward(*args)
        cls.setup_context(ctx, args, output)
        return output

    return cast(
        FunctionType,  # a subclass of cls
        type(
            cls.__name__,
            (cls,),
            {
                "forward": staticmethod(forward),
                "setup_context": _COMBINED_STYLE,
                "__module__": cls.__module__,
                "__qualname__": f"{cls.__qualname__}.eager_twin",
                "__doc__": f"{cls.__name__} in the combined forward(ctx, ...) style, applied in eager mode "
                "(see manualbp.functional._dispatch).",
            },
        ),
    )


#: What ``setup_context`` is on a Function that does not define one (torch's marker of the combined style).
_COMBINED_STYLE = torch.autograd.function._SingleLevelFunction.setup_context


def capturing_graph() -> bool:
    """Whether torch.compile or torch.export is tracing the call: a choice made on a tensor's size (a faster
    layout from some size on) would then tie the graph to that size, and the compiler picks layouts itself."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def apply(function_cls: type[torch.autograd.Function], *args: Any) -> Any:
    """Apply ``function_cls`` to ``args`` through the twin that suits the moment: the jvp-less twin while
    torch.compile traces, the Function itself under torch.func transforms (vmap, grad, jvp), and the
    combined-style eager twin otherwise (see the module docstring)."""
    decorated: Any = function_cls  # the twins are attached by @function, outside the class's static type
    if torch.compiler.is_compiling():
        return decorated.apply_compile_twin(*args)
    if torch._C._are_functorch_transforms_active():
        return function_cls.apply(*args)
    return decorated.eager_twin.apply(*args)
