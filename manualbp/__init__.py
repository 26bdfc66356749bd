"""manualbp: backpropagation you can read, check and change.

``manualbp.functional`` holds ``torch.autograd.Function`` classes with hand-written backward passes,
``manualbp.nn`` the ``torch.nn``-compatible layers built on them, and ``manualbp.convert`` swaps the
layers of an existing torch model for manual ones (``manualbp.to_torch``, a copy back to torch.nn).
``manualbp.trace(model)`` records each layer's activation, error signal ∂L/∂y and parameter gradients
during a forward and backward. ``manualbp.detect_nonfinite()`` makes every manual backward raise
``NonFiniteGradientError`` at the first gradient holding nan or inf, naming the op and the input.

``manualbp.per_sample_grads(model)`` and ``manualbp.clip_per_sample(model, max_grad_norm)`` (context managers
around a backward) compute per-sample gradients and clip them per sample, DP-SGD's step, inside the
hand-written backward (``manualbp.per_sample``). ``manualbp.curvature(model, "diag_ggn_exact", "kfac", ...)`` leaves
BackPACK's quantities beyond the gradient on each parameter, from the same backward (``manualbp.second_order``).

``manualbp.models``, ``manualbp.verify``, ``manualbp.per_sample``, ``manualbp.second_order``, ``manualbp.data``, ``manualbp.lightning``
and ``manualbp.callbacks`` are attributes too, imported on first use: the last three bring in Lightning,
which takes seconds to import.
"""

import importlib

from manualbp import (
    _requirements,  # noqa: F401 (first: on an older torch, import fails here with the fix)
    functional,
    nn,
)
from manualbp.convert import convert, to_torch
from manualbp.functional._dispatch import function
from manualbp.functional._nonfinite import NonFiniteGradientError, detect_nonfinite, is_nonfinite_detection_enabled
from manualbp.trace import trace

__all__ = [
    "NonFiniteGradientError",
    "clip_per_sample",
    "convert",
    "curvature",
    "detect_nonfinite",
    "function",
    "functional",
    "is_nonfinite_detection_enabled",
    "nn",
    "per_sample_grads",
    "to_torch",
    "trace",
]
__version__ = "0.2.0"

# Submodules imported when first read as attributes of the package (PEP 562), so that ``import manualbp``
# does not pay for Lightning, torchvision and matplotlib.
_LAZY_SUBMODULES = ("callbacks", "data", "lightning", "models", "per_sample", "second_order", "verify")

# Functions read from a submodule on first use, by the same rule: attribute name -> submodule.
_LAZY_FUNCTIONS = {"clip_per_sample": "per_sample", "curvature": "second_order", "per_sample_grads": "per_sample"}


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"manualbp.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"manualbp.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'manualbp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES, *_LAZY_FUNCTIONS})
