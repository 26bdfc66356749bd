"""What makes a module a manualbp module: a torch.nn twin it mirrors, and a way to become one."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

_T = TypeVar("_T", bound="ManualModule")

_TWINS: dict[type[torch.nn.Module], type[ManualModule]] = {}

if TYPE_CHECKING:
    _Mixin = torch.nn.Module  # a ManualModule is always mixed into its torch.nn twin: a Module, to the type checker
else:
    _Mixin = object


class ManualModule(_Mixin):
    """Mixin for ``manualbp.nn`` layers.

    A manual layer subclasses its ``torch.nn`` twin, so the constructor, parameter and buffer names,
    default initialisation and ``extra_repr`` are the twin's own; it overrides ``forward`` to call
    ``manualbp.functional``, whose Functions carry the hand-written backward passes.

    A layer is checked where it is built, so a bad hyper-parameter fails there, naming the layer and
    the value, rather than at the first forward or never. Two hooks:

    * ``check_arguments`` runs before the twin's constructor, on the bound constructor arguments, for
      values that constructor would crash on with an unclear message (a negative size reaching
      ``torch.empty``, a ``p`` it cannot compare);
    * ``check_supported`` runs at the end of construction and in ``from_torch``, on the attributes:
      ``ValueError``/``TypeError`` for an invalid hyper-parameter (a zero kernel, a negative eps),
      ``NotImplementedError`` for a configuration of the twin the manual forward cannot honour.
    """

    torch_twin: ClassVar[type[torch.nn.Module]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        twin = next(
            (b for b in cls.__mro__[1:] if issubclass(b, torch.nn.Module) and not issubclass(b, ManualModule)), None
        )
        if twin is None:  # a mixin for a kind of twin (``ManualComposite``), not a layer
            return
        cls.torch_twin = twin
        if cls.__module__.startswith("manualbp.nn."):  # users' subclasses and parametrized layers are no twins
            _TWINS[cls.torch_twin] = cls
        if "__init__" not in cls.__dict__:
            cls.__init__ = _construct_then_check(cls.torch_twin.__init__)  # type: ignore[method-assign]  # on purpose

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        """Raise ``ValueError``/``TypeError`` for a constructor argument (by name, defaults filled in) that
        the twin's constructor would reject unclearly; runs before that constructor."""

    def check_supported(self) -> None:
        """Raise ``ValueError``/``TypeError`` for an invalid hyper-parameter and ``NotImplementedError`` for
        any configuration the manual forward cannot honour."""

    def _get_name(self) -> str:
        return "manualbp." + type(self).__name__

    @classmethod
    def from_torch(cls: type[_T], module: torch.nn.Module) -> _T:
        """A manual layer sharing ``module``'s Parameters, buffers, hooks and mode (nothing is copied)."""
        if type(module) is not cls.torch_twin:
            raise TypeError(
                f"{cls.__name__}.from_torch expects a {cls.torch_twin.__name__}, got {type(module).__name__}"
            )
        manual = share_state(module, cls)
        manual.check_supported()
        return manual

    def to_torch(self) -> torch.nn.Module:
        """The ``torch_twin`` layer sharing this layer's Parameters, buffers, hooks and mode (nothing is copied).

        The inverse of ``from_torch``: the same configuration, computed by torch's own forward (autograd's backward).
        """
        return share_state(self, self.torch_twin)


_Layer = TypeVar("_Layer", bound=torch.nn.Module)


def share_state(module: torch.nn.Module, cls: type[_Layer]) -> _Layer:
    """An instance of ``cls`` made from ``module``'s attributes, without calling a constructor: the same
    configuration and the same Parameter and buffer objects, hooks and train/eval mode (the registries
    are copied dicts of the same objects, so adding a hook to one later does not affect the other)."""
    layer = cls.__new__(cls)
    layer.__dict__.update(
        {key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()}
    )
    return layer


def _construct_then_check(torch_init: Callable[..., None]) -> Callable[..., None]:
    """The twin's constructor (signature and docs kept) between ``check_arguments`` and ``check_supported``."""
    signature = inspect.signature(torch_init)

    @functools.wraps(torch_init)
    def __init__(self: ManualModule, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # a wrong call: the twin's constructor reports it in torch's words
            pass
        else:
            bound.apply_defaults()
            self.check_arguments(bound.arguments)
        torch_init(self, *args, **kwargs)
        self.check_supported()

    return __init__


#: Modules of twins loaded on first need (they import a library ``import manualbp`` does not), by the module
#: prefix of the classes they mirror.
_TWIN_MODULES = {
    "torchvision.": (
        "manualbp.nn.vision_transformer",
        "manualbp.nn.torchvision_ops",
        "manualbp.nn.convnext",
        "manualbp.nn.window_attention",
    )
}


def manual_twin(torch_class: type[torch.nn.Module]) -> type[ManualModule] | None:
    """The manualbp layer class mirroring ``torch_class`` exactly (subclasses are not matched), or None."""
    for prefix, modules in _TWIN_MODULES.items():
        if torch_class.__module__.startswith(prefix):
            for module in modules:
                importlib.import_module(module)
    return _TWINS.get(torch_class)


def layer_name(module: torch.nn.Module) -> str:
    """How error messages name a layer: ``manualbp.nn.Conv2d``."""
    return f"manualbp.nn.{type(module).__name__}"
