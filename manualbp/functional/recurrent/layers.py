"""The entry points: ``rnn``, ``lstm``, ``gru`` (layers stacked, directions joined, dropout between layers,
packed sequences) and the cells, with their checks and autocast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import torch
from torch.nn.utils.rnn import PackedSequence

from manualbp.functional._autocast import ELIGIBLE, autocast_dtype
from manualbp.functional._dispatch import apply
from manualbp.functional._validation import (
    DtypeError,
    InputDtypeError,
    InputError,
    check_choice,
    check_floating,
    check_same_device,
    check_same_dtype,
    check_unit_interval,
    shape_str,
)
from manualbp.functional.dropout import DropoutFunction, dropout_mask
from manualbp.functional.recurrent._steps import _as_input
from manualbp.functional.recurrent.gru import GRUFunction
from manualbp.functional.recurrent.lstm import LSTMFunction
from manualbp.functional.recurrent.packing import (
    ConcatFunction,
    PackFunction,
    UnpackFunction,
    _length_values,
    _packed_batch,
    _packed_mask,
    _packed_rows,
    _scatter_rows,
)
from manualbp.functional.recurrent.rnn import RNNFunction

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_FUNCTIONS = {"rnn": RNNFunction, "lstm": LSTMFunction, "gru": GRUFunction}
_Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def rnn(
    input: torch.Tensor | PackedSequence,
    hx: torch.Tensor | None,
    weights: Sequence[torch.Tensor],
    nonlinearity: str = "tanh",
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    """Hand-differentiated multi-layer Elman RNN: what ``torch.nn.RNN`` computes (``RNNFunction`` per layer and
    direction).

    input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a ``PackedSequence``
    hx: h0, (num_layers·D, B, H) ((num_layers·D, H) unbatched), D = 2 if ``bidirectional`` else 1; None: zeros
    weights: W_ih, W_hh[, b_ih, b_hh] of each layer and direction in torch's order (``RNNBase._flat_weights``)
    dropout: applied (``training``) to the outputs of every layer but the last, as torch's
    lengths: for a batched padded input, the length of each sequence (B ints, at most T): each runs (and the
    reverse direction starts) at its own last step, and the output is zero beyond it
    Returns (output, h_n): output like input with D·H features (a ``PackedSequence`` for one), h_n like hx.
    """
    check_choice("rnn", "nonlinearity", nonlinearity, ("tanh", "relu"))
    relu = nonlinearity == "relu"
    options = (bias, num_layers, dropout, training, bidirectional, batch_first, lengths)
    return _stack("rnn", input, hx, weights, *options, relu)


def lstm(
    input: torch.Tensor | PackedSequence,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weights: Sequence[torch.Tensor],
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
    """Hand-differentiated multi-layer LSTM: what ``torch.nn.LSTM`` computes (``LSTMFunction`` per layer and
    direction). Arguments as ``rnn``'s; hx is (h0, c0), h0 with P = proj_size (or H) features, c0 with H;
    each layer's weights end with W_hr when the layer projects. Returns (output, (h_n, c_n))."""
    return _stack("lstm", input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths)


def gru(
    input: torch.Tensor | PackedSequence,
    hx: torch.Tensor | None,
    weights: Sequence[torch.Tensor],
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    """Hand-differentiated multi-layer GRU: what ``torch.nn.GRU`` computes (``GRUFunction`` per layer and
    direction). Arguments and result as ``rnn``'s."""
    return _stack("gru", input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths)


def rnn_cell(
    input: torch.Tensor,
    hx: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
) -> torch.Tensor:
    """One step of an Elman RNN, as ``torch.nn.RNNCell``: h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).
    input: (B, I) or (I,)   hx: (B, H) or (H,), None for zeros   returns h' like hx (``RNNFunction``, one step)."""
    check_choice("rnn_cell", "nonlinearity", nonlinearity, ("tanh", "relu"))
    x, (h0,), weights, out_dtype = _cell_args("rnn_cell", input, [hx], weight_ih, weight_hh, bias_ih, bias_hh)
    h = apply(RNNFunction, x, h0, *weights, None, False, False, nonlinearity == "relu")[1]
    return _cast(h, out_dtype)


def lstm_cell(
    input: torch.Tensor,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of an LSTM, as ``torch.nn.LSTMCell``: (h', c') from input (B, I) or (I,) and hx = (h, c), each
    (B, H) or (H,), None for zeros (``LSTMFunction``, one step)."""
    states = [None, None] if hx is None else _pair("lstm_cell", hx)
    x, (h0, c0), weights, out_dtype = _cell_args("lstm_cell", input, states, weight_ih, weight_hh, bias_ih, bias_hh)
    _, h, c, _, _ = apply(LSTMFunction, x, h0, c0, *weights, None, None, False, False)
    return _cast(h, out_dtype), _cast(c, out_dtype)


def gru_cell(
    input: torch.Tensor,
    hx: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of a GRU, as ``torch.nn.GRUCell``: h' from input (B, I) or (I,) and hx (B, H) or (H,), None for
    zeros (``GRUFunction``, one step)."""
    x, (h0,), weights, out_dtype = _cell_args("gru_cell", input, [hx], weight_ih, weight_hh, bias_ih, bias_hh)
    return _cast(apply(GRUFunction, x, h0, *weights, None, False, False)[1], out_dtype)


def _stack(
    op: str, input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths, relu=False
):
    """The layers and directions of ``rnn``/``lstm``/``gru``: checks, autocast, then one Function per layer and
    direction, the directions joined, dropout between layers; a PackedSequence is unpacked to a padded
    time-major sequence with a mask, and its output packed again."""
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    check_floating(op, error=InputDtypeError, input=data)  # torch's RNNBase.check_input: a ValueError
    check_unit_interval(op, "dropout", dropout)
    directions = 2 if bidirectional else 1
    groups = _weight_groups(op, weights, bias, num_layers, directions)
    if packed:
        if lengths is not None:
            raise InputError(f"{op}: a PackedSequence carries its lengths; pass lengths only with a padded input")
        if data.dim() != 2:
            raise InputError(
                f"{op}: expected PackedSequence data of 2 dimensions (steps, features), got {shape_str(data)}"
            )
        steps, batch, batch_first = input.batch_sizes.shape[0], _packed_batch(input), False
        rows = _packed_rows(input.batch_sizes, input.sorted_indices, data.shape[0], batch, steps, False).to(data.device)
        mask = _packed_mask(input.batch_sizes, input.unsorted_indices, batch).to(data.device)
    else:
        if data.dim() not in (2, 3):
            raise InputError(f"{op}: expected input of 2 (unbatched) or 3 dimensions, got shape {shape_str(data)}")
        steps = data.shape[1] if batch_first and data.dim() == 3 else data.shape[0]
        batch = 1 if data.dim() == 2 else data.shape[0] if batch_first else data.shape[1]
        rows, mask = None, _lengths_mask(op, lengths, data, steps, batch)
    _check_input_size(op, data, groups[0][0], "weight_ih_l0")
    if steps == 0:
        raise InputError(f"{op}: expected a sequence of at least one step, got input of shape {shape_str(data)}")
    states = _initial_states(op, hx, data, packed, batch, num_layers * directions, groups[0])
    _check_tensors(op, data, states, weights)
    compute, out_dtype = _autocast_dtypes(op, data, states, weights, variable_lengths=mask is not None)
    if compute is not None:
        data, states = _cast(data, compute), [_cast(s, compute) for s in states]
        groups = [
            (
                _cast(w_ih, compute),
                _cast(w_hh, compute),
                _cast(b_ih, compute),
                _cast(b_hh, compute),
                _cast(w_hr, compute),
            )
            for w_ih, w_hh, b_ih, b_hh, w_hr in groups
        ]
    states = [s.unbind(0) for s in states]  # one per layer and direction (unbind: no select_backward kernel)
    x = data if rows is None else apply(UnpackFunction, data, rows, steps, batch, 0.0)
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            if layer:
                _check_input_size(op, x, groups[k][0], f"weight_ih_l{layer}")
            extra = (relu,) if op == "rnn" else ()
            w_ih, w_hh, b_ih, b_hh, w_hr = groups[k]
            weight_args = (w_ih, w_hh, b_ih, b_hh, w_hr) if op == "lstm" else (w_ih, w_hh, b_ih, b_hh)
            initial = (s[k] for s in states)
            result = apply(_FUNCTIONS[op], x, *initial, *weight_args, mask, direction == 1, batch_first, *extra)
            outputs.append(result[0])
            for final, value in zip(finals, result[1 : 1 + len(states)]):
                final.append(value)
        x = outputs[0] if directions == 1 else apply(ConcatFunction, -1, False, batch_first and x.dim() == 3, *outputs)
        if training and dropout > 0 and layer < num_layers - 1:
            x = apply(DropoutFunction, x, _dropout_mask(x, dropout, rows, steps, batch, batch_first))
    if rows is not None:
        data = apply(PackFunction, x, rows)
        x = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    else:
        x = _cast(x, out_dtype)
    last = [_cast(apply(ConcatFunction, 0, True, False, *final), out_dtype) for final in finals]
    if isinstance(x, PackedSequence) and out_dtype is not None:  # packed: rows is not None
        x = PackedSequence(_cast(x.data, out_dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return x, (tuple(last) if op == "lstm" else last[0])


def _weight_groups(
    op: str, weights: Sequence[torch.Tensor], bias: bool, num_layers: int, directions: int
) -> list[_Weights]:
    """(W_ih, W_hh, b_ih, b_hh, W_hr) of each layer and direction from torch's flat list (None where absent)."""
    count, base = num_layers * directions, 2 + 2 * bool(bias)
    per = base + 1 if op == "lstm" and len(weights) == count * (base + 1) else base
    if count < 1 or len(weights) != count * per:
        listed = "W_ih, W_hh" + (", b_ih, b_hh" if bias else "")
        raise InputError(
            f"{op}: expected {count * base} weights ({listed} for each of {num_layers} layer(s) and {directions} "
            f"direction(s)), got {len(weights)}"
        )
    check_floating(op, error=DtypeError, **{f"weights[{i}]": w for i, w in enumerate(weights)})
    groups = []
    for k in range(count):
        w = list(weights[k * per : (k + 1) * per])
        groups.append((w[0], w[1], w[2] if bias else None, w[3] if bias else None, w[-1] if per > base else None))
    _check_weight_shapes(op, groups, directions)
    return groups


def _check_weight_shapes(op: str, groups: list[_Weights], directions: int) -> None:
    """Every layer and direction with the first one's sizes: W_ih (G·H, I or D·P), W_hh (G·H, P), biases (G·H,),
    W_hr (P, H). (Under torch.compile with dynamic shapes these checks also tell the compiler that the sizes
    agree.)"""
    gate_rows, real = groups[0][1].shape
    hidden = real if groups[0][4] is None else groups[0][4].shape[1]
    if gate_rows != _GATES[op] * hidden:
        raise InputError(
            f"{op}: W_hh of layer 0 has shape {shape_str(groups[0][1])}, expected {_GATES[op]} · hidden_size rows "
            f"(hidden_size {hidden}, {_GATES[op]} gate(s))"
        )
    for k, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(groups):
        inputs = groups[0][0].shape[1] if k < directions else directions * real
        expected = {"W_ih": (gate_rows, inputs), "W_hh": (gate_rows, real), "b_ih": (gate_rows,), "b_hh": (gate_rows,)}
        if w_hr is not None:
            expected["W_hr"] = (real, hidden)
        for name, weight in zip(("W_ih", "W_hh", "b_ih", "b_hh", "W_hr"), (w_ih, w_hh, b_ih, b_hh, w_hr)):
            if weight is not None and tuple(weight.shape) != expected[name]:
                raise InputError(
                    f"{op}: {name} of layer {k // directions}{' (reverse)' if k % directions else ''} has shape "
                    f"{shape_str(weight)}, expected {expected[name]} (hidden_size {hidden}, {_GATES[op]} gate(s))"
                )


def _check_input_size(op: str, x: torch.Tensor, w_ih: torch.Tensor, name: str) -> None:
    if x.shape[-1] != w_ih.shape[1]:
        raise InputError(
            f"{op}: input of shape {shape_str(x)} has {x.shape[-1]} features, but {name} of shape {shape_str(w_ih)} "
            f"expects input_size={w_ih.shape[1]}"
        )


def _check_tensors(op: str, data: torch.Tensor, states: list[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
    """One dtype and one device for the input, the initial states and the weights. An input of another dtype than
    the weights raises ``InputDtypeError``, a ValueError as torch's ``RNNBase.check_input`` raises (torch checks
    it first, outside autocast); states of another dtype raise ``DtypeError``, a RuntimeError as torch's kernels."""
    tensors = {"input": data, **dict(zip(("h0", "c0"), states)), **{f"weights[{i}]": w for i, w in enumerate(weights)}}
    check_same_dtype(op, error=InputDtypeError if data.dtype != weights[0].dtype else DtypeError, **tensors)
    check_same_device(op, **tensors)


def _initial_states(op, hx, data, packed, batch, count, group: _Weights) -> list[torch.Tensor]:
    """[h0] ([h0, c0] for the LSTM), (count, B, size) or (count, size) for an unbatched input: hx's, checked
    against the input, or zeros in the input's dtype."""
    w_hh = group[1]
    sizes = [("h0", w_hh.shape[1], "proj_size" if group[4] is not None else "hidden_size")]
    if op == "lstm":
        sizes.append(("c0", w_hh.shape[0] // 4, "hidden_size"))
    unbatched = not packed and data.dim() == 2
    given = [None] * len(sizes) if hx is None else _pair(op, hx) if op == "lstm" else [hx]
    states = []
    for (name, size, size_name), state in zip(sizes, given):
        expected = (count, size) if unbatched else (count, batch, size)
        if state is None:
            state = data.new_zeros(expected)
        else:
            check_floating(op, **{name: state})
            if tuple(state.shape) != expected:
                meaning = "num_layers · num_directions, " + ("" if unbatched else "batch, ") + size_name
                what = f"a PackedSequence of {batch} sequences" if packed else f"the input of shape {shape_str(data)}"
                raise InputError(
                    f"{op}: {name} of shape {shape_str(state)} does not match {what}: expected {expected} ({meaning})"
                )
        states.append(state)
    return states


def _pair(op: str, hx: object) -> list[torch.Tensor]:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{op}: hx must be a pair (h0, c0), got {type(hx).__name__}")
    return list(hx)


def _lengths_mask(op: str, lengths, data: torch.Tensor, steps: int, batch: int) -> torch.Tensor | None:
    """m: (T, B) bool, m[t, b] = t < lengths[b]; None without lengths."""
    if lengths is None:
        return None
    if data.dim() != 3:
        raise InputError(f"{op}: lengths need a batched input of 3 dimensions, got input of shape {shape_str(data)}")
    values = torch.tensor(_length_values(op, lengths, data, steps, batch, minimum=0), device=data.device)
    return torch.arange(steps, device=data.device).unsqueeze(1) < values


#: Under CPU autocast, the state whose dtype torch's result keeps (index into the initial states): torch's CPU
#: kernels cast the matmuls' operands to the autocast dtype, and a layer that adds the carried state to a
#: product (the GRU's h, the cell state c of the LSTM's packed path and of LSTMCell) promotes its result to
#: that state's dtype; the other paths (RNN, the LSTM's fused kernel) return the autocast dtype.
_CARRIED = {"gru": 0, "gru_cell": 0, "lstm_cell": 1}


def _autocast_dtypes(
    op: str,
    data: torch.Tensor,
    states: list[torch.Tensor],
    weights: Sequence[torch.Tensor | None],
    variable_lengths: bool,
) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(the dtype the op computes in, the dtype of its results) under autocast, (None, None) outside.

    The recurrent layers are products by W_ih and W_hh, so they compute in the dtype ``linear`` takes under
    autocast (``_autocast``); their results come in torch's dtypes (``_CARRIED``; on CUDA, cuDNN's: the
    autocast dtype). Measured with torch 2.14 on the CPU. torch's LSTM is oneDNN's fused kernel (results in the
    compute dtype) except on packed sequences and, in bfloat16, on a CPU where oneDNN has no bfloat16 kernels
    (no AVX-512): then its results carry c's dtype, as the packed LSTM's.
    """
    compute = autocast_dtype("linear", data, *states, *(w for w in weights if w is not None))
    if compute is None:
        return None, None
    unfused = variable_lengths or (compute == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported())
    carried = 1 if op == "lstm" and unfused else _CARRIED.get(op)
    if carried is None or data.device.type != "cpu":
        return compute, compute
    return compute, torch.promote_types(compute, states[carried].dtype)


@overload
def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor: ...
@overload
def _cast(t: None, dtype: torch.dtype | None) -> None: ...
@overload
def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None: ...
def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` when both are given and t is eligible for autocast (``Tensor.to``: recorded by autograd)."""
    if t is None or dtype is None or t.dtype == dtype or t.dtype not in ELIGIBLE:
        return t
    return t.to(dtype)


def _dropout_mask(
    x: torch.Tensor, p: float, rows: torch.Tensor | None, steps: int, batch: int, batch_first: bool
) -> torch.Tensor:
    """The dropout mask for a layer's output x, drawn as torch's RNNs draw it, so one seed drops the same
    entries: over the time-major (T, B, F) output, or over the packed data (N, F) of a PackedSequence."""
    features = x.shape[-1]
    if rows is not None:
        return _scatter_rows(dropout_mask(x.new_empty(rows.shape[0], features), p), rows, (steps, batch), 0.0)
    return _as_input(dropout_mask(x.new_empty(steps, batch, features), p), x.dim(), batch_first)


def _cell_args(op, input, states, w_ih, w_hh, b_ih, b_hh):
    """A cell's call as a sequence of one step: (x (1, B, I) or (1, I), initial states (zeros for None),
    weights, the result dtype under autocast), everything checked and cast for autocast."""
    check_floating(op, input=input, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh)
    if input.dim() not in (1, 2):
        raise InputError(f"{op}: expected input of 1 (unbatched) or 2 dimensions, got shape {shape_str(input)}")
    _check_input_size(op, input, w_ih, "weight_ih")
    gates, hidden = _GATES[op.removesuffix("_cell")], w_hh.shape[-1]
    if w_hh.shape != (gates * hidden, hidden) or w_ih.shape[0] != gates * hidden:
        raise InputError(
            f"{op}: weight_ih of shape {shape_str(w_ih)} and weight_hh of shape {shape_str(w_hh)} do not fit a cell of "
            f"{gates} gate(s): expected ({gates} · hidden_size, input_size) and ({gates} · hidden_size, hidden_size)"
        )
    expected = (input.shape[0], hidden) if input.dim() == 2 else (hidden,)
    names = ("hx",) if len(states) == 1 else ("hx[0]", "hx[1]")
    states = [input.new_zeros(expected) if s is None else s for s in states]
    for name, state in zip(names, states):
        check_floating(op, **{name: state})
        if tuple(state.shape) != expected:
            raise InputError(
                f"{op}: {name} of shape {shape_str(state)} does not match the input of shape {shape_str(input)}: "
                f"expected {expected}"
            )
    named = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
    tensors = {"input": input, **dict(zip(names, states)), **named}
    check_same_dtype(op, **tensors)
    check_same_device(op, **tensors)
    weights = (w_ih, w_hh, b_ih, b_hh)
    compute, out_dtype = _autocast_dtypes(op, input, states, weights, variable_lengths=False)
    x = _cast(input, compute).unsqueeze(0)
    return x, [_cast(s, compute) for s in states], tuple(_cast(w, compute) for w in weights), out_dtype
