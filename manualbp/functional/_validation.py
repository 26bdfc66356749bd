"""Input checks shared by the functional entry points and the layers' constructors.

Every message starts with the op's (or layer's) name and states the offending shapes, dtypes, devices
or values, so a user sees which layer rejected which argument. The checks read Python attributes only
(shape, dtype, device, numbers): no tensor operation and no host sync, so they cost well under a
microsecond per call; a hyper-parameter given as a tensor is type-checked but its value is not read.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeGuard

import torch

from manualbp.functional._autocast import ELIGIBLE, autocast_dtype

REDUCTIONS = ("none", "mean", "sum")


class InputError(ValueError, RuntimeError):
    """A bad shape or value given to an op. torch's own ops raise ``RuntimeError`` for most of these faults
    (Python's convention is ``ValueError``): catchable as either, so ``except RuntimeError`` written for
    torch catches manualbp's too."""


class DtypeError(TypeError, RuntimeError):
    """A tensor of a dtype the op does not take, where torch raises ``RuntimeError``: catchable as either."""


class InputDtypeError(DtypeError, ValueError):
    """An input whose dtype is not the weights' where torch raises ``ValueError`` (``torch.nn.RNN``, ``LSTM`` and
    ``GRU`` check it first, outside autocast: ``RNNBase.check_input``): catchable as ValueError, TypeError or
    RuntimeError, as either torch's error or another ``DtypeError``."""


def shape_str(t: torch.Tensor) -> str:
    """A shape as a Python tuple reads: (2, 3), (4,), ()."""
    return str(tuple(t.shape))


def _not_a_tensor(op: str, name: str, value: object) -> TypeError:
    return TypeError(f"{op}: {name} must be a Tensor, got {type(value).__name__}")


def check_tensor(op: str, name: str, value: object) -> None:
    """Raise TypeError unless ``value`` is a Tensor (a list or a number passed as a tensor argument)."""
    if not isinstance(value, torch.Tensor):
        raise _not_a_tensor(op, name, value)


def check_floating(op: str, *, error: type[DtypeError] = DtypeError, **tensors: torch.Tensor | None) -> None:
    """Raise ``error`` (``DtypeError``: a TypeError and torch's RuntimeError) unless every given tensor has a
    floating dtype."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise _not_a_tensor(op, name, t)
        if not t.is_floating_point():
            raise error(
                f"{op}: expected a floating-point {name}, got dtype {t.dtype} with shape "
                f"{shape_str(t)}; convert it with .float()"
            )


def _differ(tensors: dict[str, torch.Tensor | None], attribute: str) -> bool:
    """Whether the given tensors (None entries skipped) disagree on ``attribute``: attribute reads only."""
    first = None
    for t in tensors.values():
        if t is not None:
            value = getattr(t, attribute)
            if first is None:
                first = value
            elif value != first:
                return True
    return False


def check_same_dtype(op: str, *, error: type[DtypeError] = DtypeError, **tensors: torch.Tensor | None) -> None:
    """Raise ``error`` (``DtypeError``: a TypeError and torch's RuntimeError) unless all given tensors share one
    dtype, or would after the casts ``torch.autocast`` makes for ``op`` (``manualbp.functional._autocast``): under
    autocast, float16, bfloat16 and float32 tensors all become ``autocast_dtype(op, ...)``."""
    if _differ(tensors, "dtype") and not _autocast_unifies(op, tensors):
        listing = ", ".join(f"{name} {t.dtype}" for name, t in tensors.items() if t is not None)
        raise error(f"{op}: expected all tensors to have the same dtype, got {listing}")


def _autocast_unifies(op: str, tensors: dict[str, torch.Tensor | None]) -> bool:
    """Whether autocast is on for ``op`` and casts every given tensor to one dtype (all are eligible)."""
    given = [t for t in tensors.values() if t is not None]
    return all(t.dtype in ELIGIBLE for t in given) and autocast_dtype(op, *given) is not None


def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise RuntimeError (torch's type for this error) unless all given tensors are on one device.

    Compares the ``device`` attributes only, so it costs no transfer and no sync; without it a mixed
    call fails deep inside the forward with a message that names neither the op nor the tensors.
    """
    if _differ(tensors, "device"):
        listing = ", ".join(f"{name} on {t.device}" for name, t in tensors.items() if t is not None)
        raise RuntimeError(
            f"{op}: expected all tensors to be on the same device, got {listing}; move them with .to(device)"
        )


def check_dim(op: str, name: str, t: torch.Tensor, allowed: tuple[int, ...] | range) -> None:
    """Raise InputError (a ValueError and a RuntimeError) unless ``t.dim()`` is in ``allowed``."""
    if t.dim() not in allowed:
        wanted = (
            f"{allowed.start} or more"
            if isinstance(allowed, range) and allowed.stop > 64
            else " or ".join(str(d) for d in allowed)
        )
        raise InputError(
            f"{op}: expected {name} with {wanted} dimensions, got {t.dim()}-D {name} of shape {shape_str(t)}"
        )


def check_real(op: str, name: str, value: object) -> None:
    """Raise TypeError unless ``value`` is a real number (a Python or NumPy number, or a Tensor)."""
    if not isinstance(value, (float, int)) and not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")


def check_unit_interval(op: str, name: str, value: float | torch.Tensor) -> None:
    """Raise unless ``value`` is a real number in [0, 1] (a probability, a momentum); a Tensor's value
    is not read (that would be a host sync)."""
    check_real(op, name, value)
    if not isinstance(value, torch.Tensor) and not 0.0 <= value <= 1.0:
        raise InputError(f"{op}: {name} has to be between 0 and 1, but got {value}")


def check_non_negative(op: str, name: str, value: float | torch.Tensor) -> None:
    """Raise unless ``value`` is a real number >= 0 (an eps); a Tensor's value is not read."""
    check_real(op, name, value)
    if not isinstance(value, torch.Tensor) and not value >= 0:
        raise InputError(f"{op}: {name} must be non-negative, got {value}")


def is_int(value: object) -> TypeGuard[int | numbers.Integral]:
    """Whether ``value`` is an int or another integral number (a NumPy integer), and not a bool."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def check_int(op: str, name: str, value: object, minimum: int | None = None) -> None:
    """Raise TypeError unless ``value`` is an integer (not a bool), InputError (a ValueError) if it is below ``minimum``."""
    if not is_int(value):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{op}: {name} must be at least {minimum}, got {value}")


def resolve_reduction(op: str, size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """The reduction string, with torch's legacy ``size_average``/``reduce`` pair (and its warning) honoured."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    check_choice(op, "reduction", reduction, REDUCTIONS)
    return reduction


def check_choice(op: str, name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise InputError (a ValueError and a RuntimeError) unless ``value`` is one of ``choices`` (a reduction, an approximation, ...)."""
    if value not in choices:
        raise InputError(f"{op}: {name} must be one of {choices}, got {value!r}")


def check_inplace_target(op: str, input: torch.Tensor) -> None:
    """Raise RuntimeError with torch's message for an in-place call on a leaf that requires grad, or on a view
    of one, in grad mode: torch refuses before writing, whereas an in-place Function would overwrite the
    leaf first and be refused only after its forward."""
    if not (input.requires_grad and torch.is_grad_enabled()):
        return
    if input.is_leaf:
        raise RuntimeError(f"{op}: a leaf Variable that requires grad is being used in an in-place operation.")
    if input._base is not None and input._base.is_leaf and input._base.requires_grad:
        raise RuntimeError(
            f"{op}: a view of a leaf Variable that requires grad is being used in an in-place operation."
        )


def check_inplace_sign(op: str, name: str, value: float, input: torch.Tensor) -> None:
    """Raise RuntimeError (torch's type) for an in-place call with a negative ``name`` whose gradient is
    wanted: the output then no longer tells the sign of the input it overwrote, which the backward needs.

    Torch runs such a call and raises in its backward; this raises at the call, naming it. Without a
    gradient (no grad mode, or an input that does not require grad) the call is fine.
    """
    if value < 0 and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: inplace=True with a negative {name} ({value}) has no gradient: the output does not tell "
            "the sign of the input it overwrote; use inplace=False"
        )


def normalize_dim(op: str, dim: int, ndim: int, name: str = "dim") -> int:
    """Wrap a possibly negative ``dim`` into ``[0, ndim)``; a 0-d tensor accepts 0 and -1."""
    if type(dim) is not int:
        check_int(op, name, dim)
        dim = int(dim)
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise IndexError(
            f"{op}: dimension out of range (expected to be in range of [{-size}, {size - 1}], but got {dim})"
        )
    return dim % size


def int_pair(op: str, name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (torch's ``_pair`` arguments: kernel_size, stride, ...) as a pair,
    each at least ``minimum``. TypeError for something other than ints, InputError (a ValueError) for a wrong length
    or a value below ``minimum``."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if len(pair) != 2:
        raise InputError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise InputError(f"{op}: {name} must be at least {minimum}, got {value!r}")
    return pair
