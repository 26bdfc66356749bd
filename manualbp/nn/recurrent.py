"""manualbp.nn.RNN, LSTM, GRU and their cells: torch.nn's recurrent layers with backpropagation through time
written by hand (``manualbp.functional.recurrent``)."""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, overload

import torch
from torch.nn.utils.rnn import PackedSequence

from manualbp import functional as MF
from manualbp.functional._validation import check_choice
from manualbp.nn._base import ManualModule, layer_name

NONLINEARITIES = ("tanh", "relu")

#: The Dynamo module whose ``VariableBuilder.wrap_module`` refuses torch's RNN, GRU and LSTM unless ``allow_rnn``.
_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def _let_dynamo_trace_these_layers() -> None:
    """Let torch.compile trace the manual RNN, LSTM and GRU, and only them.

    Dynamo refuses every instance of ``torch.nn.RNN``, ``GRU`` and ``LSTM`` (graph break "Attempted to wrap RNN,
    GRU, or LSTM") unless ``torch._dynamo.config.allow_rnn`` is set; the layers here are such instances (they
    subclass their twins), with a forward of Python and Functions that Dynamo traces like any other. Setting the
    flag for the process would change what Dynamo does with a user's own ``torch.nn.LSTM`` too, so it stays as it
    is: Dynamo's ``VariableBuilder.wrap_module``, the one place that reads it (torch 2.12 to 2.14), sees it set
    while it wraps one of these layers (``config.patch``, restored when the layer is wrapped; Dynamo traces one
    frame at a time, under its compile lock). Done now if Dynamo's builder is loaded, else the moment it loads:
    importing it here would add seconds to ``import manualbp``. Without that method (another torch) nothing is
    changed, and compiling these layers graph-breaks with Dynamo's own message.
    """
    builder = sys.modules.get(_DYNAMO_BUILDER)
    if builder is not None:
        _patch_wrap_module(builder)
    else:
        sys.meta_path.insert(0, _WhenDynamoLoads())


def _patch_wrap_module(builder: ModuleType) -> None:
    """Wrap ``builder.VariableBuilder.wrap_module`` so that ``allow_rnn`` is on while it wraps a layer of this module."""
    wrap = getattr(getattr(builder, "VariableBuilder", None), "wrap_module", None)
    if wrap is None or getattr(wrap, "_manualbp", False):
        return
    config = importlib.import_module("torch._dynamo.config")

    @functools.wraps(wrap)
    def wrap_module(self: object, value: torch.nn.Module) -> object:
        if not isinstance(value, (RNN, LSTM, GRU)):
            return wrap(self, value)
        with config.patch(allow_rnn=True):
            return wrap(self, value)

    wrap_module._manualbp = True  # type: ignore[attr-defined]  # our marker on Dynamo's wrapped method
    builder.VariableBuilder.wrap_module = wrap_module


class _WhenDynamoLoads(importlib.abc.MetaPathFinder):
    """Patches Dynamo's ``wrap_module`` right after ``torch._dynamo.variables.builder`` is first executed, then
    leaves ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _DYNAMO_BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:  # not there to patch: the import goes on as it would
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _patch_wrap_module(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this loader instance's, on purpose
        return spec


if TYPE_CHECKING:
    from typing_extensions import Self

    class _Mixin(ManualModule, torch.nn.RNNBase):  # mixed into a ManualModule of torch's RNN, LSTM or GRU
        pass

else:
    _Mixin = object


class _FlatWeights(_Mixin):
    """The twin's ``_flat_weights`` list kept apart.

    ``torch.nn.RNNBase`` lists its weights in ``_flat_weights`` and writes a weight set by name into that list,
    in place; ``share_state`` copies dicts but would hand both layers the same list, so setting a weight on one
    would change what the other computes with. The new layer gets a list of its own, as torch builds one after
    ``.to()``.
    """

    @classmethod
    def from_torch(cls, module: torch.nn.Module) -> Self:
        manual = super().from_torch(module)
        manual._init_flat_weights()
        return manual

    def to_torch(self) -> torch.nn.Module:
        twin = super().to_torch()
        assert isinstance(twin, torch.nn.RNNBase), "the twin of an RNN, LSTM or GRU"
        twin._init_flat_weights()
        return twin

    def _weights(self) -> list[torch.Tensor]:
        """The weights by name, in torch's order (read afresh: ``functional_call`` may have swapped them)."""
        return [getattr(self, name) for name in self._flat_weights_names]


class RNN(_FlatWeights, ManualModule, torch.nn.RNN):
    """Elman RNN (tanh or relu), as ``torch.nn.RNN`` (same arguments, parameters, init, repr; batched, unbatched
    and ``PackedSequence`` input). input: (T, B, I) or (B, T, I) with batch_first, (T, I), or packed; returns
    (output, h_n). Backward: ``manualbp.functional.RNNFunction`` per layer and direction."""

    @overload
    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def forward(self, input: PackedSequence, hx: torch.Tensor | None = None) -> tuple[PackedSequence, torch.Tensor]: ...
    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        return MF.rnn(
            input,
            hx,
            self._weights(),
            self.nonlinearity,
            self.bias,
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
            self.batch_first,
        )


class LSTM(_FlatWeights, ManualModule, torch.nn.LSTM):
    """LSTM, as ``torch.nn.LSTM`` (proj_size included); returns (output, (h_n, c_n)). Backward:
    ``manualbp.functional.LSTMFunction`` per layer and direction."""

    @overload
    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...
    @overload
    def forward(
        self, input: PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]: ...
    def forward(
        self, input: torch.Tensor | PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        return MF.lstm(
            input,
            hx,
            self._weights(),
            self.bias,
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
            self.batch_first,
        )


class GRU(_FlatWeights, ManualModule, torch.nn.GRU):
    """GRU, as ``torch.nn.GRU``; returns (output, h_n). Backward: ``manualbp.functional.GRUFunction`` per layer
    and direction."""

    @overload
    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def forward(self, input: PackedSequence, hx: torch.Tensor | None = None) -> tuple[PackedSequence, torch.Tensor]: ...
    def forward(
        self, input: torch.Tensor | PackedSequence, hx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
        return MF.gru(
            input,
            hx,
            self._weights(),
            self.bias,
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
            self.batch_first,
        )


class RNNCell(ManualModule, torch.nn.RNNCell):
    """One Elman RNN step, as ``torch.nn.RNNCell``: input (B, I) or (I,), hx (B, H) or (H,) or None -> h'."""

    def check_supported(self) -> None:
        # torch builds a cell with any string and fails at its first forward
        check_choice(layer_name(self), "nonlinearity", self.nonlinearity, NONLINEARITIES)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return MF.rnn_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)


class LSTMCell(ManualModule, torch.nn.LSTMCell):
    """One LSTM step, as ``torch.nn.LSTMCell``: input (B, I) or (I,), hx = (h, c) or None -> (h', c')."""

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return MF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(ManualModule, torch.nn.GRUCell):
    """One GRU step, as ``torch.nn.GRUCell``: input (B, I) or (I,), hx (B, H) or (H,) or None -> h'."""

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return MF.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


_let_dynamo_trace_these_layers()
