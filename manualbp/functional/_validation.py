"""Input checks shared by the functional entry points.

Every message starts with the op's name and states the offending shapes or dtypes,
so a user sees which layer rejected which tensor.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def shape_str(t: torch.Tensor) -> str:
    """A shape as a Python tuple reads: (2, 3), (4,), ()."""
    return str(tuple(t.shape))


def check_floating(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise TypeError unless every given tensor has a floating dtype."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{op}: expected a floating-point {name}, got dtype {t.dtype} with shape "
                f"{shape_str(t)}; convert it with .float()"
            )


def check_same_dtype(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise TypeError unless all given tensors share one dtype."""
    given = {name: t for name, t in tensors.items() if t is not None}
    dtypes = {t.dtype for t in given.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{name} {t.dtype}" for name, t in given.items())
        raise TypeError(f"{op}: expected all tensors to have the same dtype, got {listing}")


def check_dim(op: str, name: str, t: torch.Tensor, allowed: tuple[int, ...] | range) -> None:
    """Raise ValueError unless ``t.dim()`` is in ``allowed``."""
    if t.dim() not in allowed:
        wanted = (
            f"{allowed.start} or more" if isinstance(allowed, range) and allowed.stop > 64
            else " or ".join(str(d) for d in allowed)
        )
        raise ValueError(
            f"{op}: expected {name} with {wanted} dimensions, got {t.dim()}-D {name} of shape "
            f"{shape_str(t)}"
        )


def resolve_reduction(op: str, size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """The reduction string, with torch's legacy ``size_average``/``reduce`` pair (and its warning) honoured."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reject_inplace(op: str, inplace: bool) -> None:
    if inplace:
        raise NotImplementedError(
            f"{op}: inplace=True is not supported; the hand-written backward keeps its input, "
            "so the op always returns a new tensor"
        )


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    """Wrap a possibly negative ``dim`` into ``[0, ndim)``; a 0-d tensor accepts 0 and -1."""
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise IndexError(
            f"{op}: dimension out of range (expected to be in range of [{-size}, {size - 1}], but got {dim})"
        )
    return dim % size


def int_pair(op: str, name: str, value: int | tuple[int, ...], minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (torch's ``_pair`` arguments: kernel_size, stride, ...) as a pair,
    each at least ``minimum``."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be at least {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]
