"""What makes a module a manualbp module: a torch.nn twin it mirrors, and a way to become one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

_T = TypeVar("_T", bound="ManualModule")

_TWINS: dict[type[torch.nn.Module], type[ManualModule]] = {}


class ManualModule:
    """Mixin for ``manualbp.nn`` layers.

    A manual layer subclasses its ``torch.nn`` twin, so the constructor, parameter and buffer names,
    default initialisation and ``extra_repr`` are the twin's own; it overrides ``forward`` to call
    ``manualbp.functional``, whose Functions carry the hand-written backward passes.
    Arguments of the twin that the manual layer cannot honour are rejected in
    ``check_supported`` with ``NotImplementedError``; it runs at the end of construction (the twin's
    constructor, wrapped) and in ``from_torch``.
    """

    torch_twin: ClassVar[type[torch.nn.Module]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.torch_twin = next(
            base for base in cls.__mro__[1:]
            if issubclass(base, torch.nn.Module) and not issubclass(base, ManualModule)
        )
        _TWINS[cls.torch_twin] = cls
        if "__init__" not in cls.__dict__:
            cls.__init__ = _construct_then_check(cls.torch_twin.__init__)

    def check_supported(self) -> None:
        """Raise ``NotImplementedError`` naming any configuration the manual forward cannot honour."""

    def _get_name(self) -> str:
        return "manualbp." + type(self).__name__

    @classmethod
    def from_torch(cls: type[_T], module: torch.nn.Module) -> _T:
        """A manual layer sharing ``module``'s Parameters, buffers, hooks and mode (nothing is copied)."""
        if type(module) is not cls.torch_twin:
            raise TypeError(f"{cls.__name__}.from_torch expects a {cls.torch_twin.__name__}, got {type(module).__name__}")
        manual = cls.__new__(cls)
        manual.__dict__.update(
            {key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()}
        )
        manual.check_supported()
        return manual

    def to_torch(self) -> torch.nn.Module:
        """The ``torch_twin`` layer sharing this layer's Parameters, buffers, hooks and mode (nothing is copied).

        The inverse of ``from_torch``: the same configuration, computed by torch's own forward (autograd's backward).
        """
        twin = self.torch_twin.__new__(self.torch_twin)
        twin.__dict__.update(
            {key: value.copy() if isinstance(value, dict) else value for key, value in self.__dict__.items()}
        )
        return twin


def _construct_then_check(torch_init: Callable[..., None]) -> Callable[..., None]:
    """The twin's constructor (signature and docs kept) followed by ``check_supported``."""

    @functools.wraps(torch_init)
    def __init__(self: ManualModule, *args: Any, **kwargs: Any) -> None:
        torch_init(self, *args, **kwargs)
        self.check_supported()

    return __init__


def manual_twin(torch_class: type[torch.nn.Module]) -> type[ManualModule] | None:
    """The manualbp layer class mirroring ``torch_class`` exactly (subclasses are not matched), or None."""
    return _TWINS.get(torch_class)


def reject_inplace(module: torch.nn.Module) -> None:
    if getattr(module, "inplace", False):
        raise NotImplementedError(
            f"manualbp.nn.{type(module).__name__}: inplace=True is not supported; the hand-written backward "
            "keeps its input, so the layer always returns a new tensor"
        )
