"""Hypothesis strategies for the recurrent ops of ``manualbp.functional``: one valid call of each, beside torch's
layer (or packing function) computing the same, as ``FuzzCase``s of ``strategies.py`` whose outputs are flat
tuples of tensors, so ``assert_matches_torch`` compares values, first and second derivatives.

``RECURRENT_FAMILIES`` maps each op to its strategy. Drawn: every constructor option (layers, directions, bias,
batch_first, projection, nonlinearity), sizes from 1 (batch of one, one step, hidden size 1), unbatched input,
given initial states and, for a batched input, each sequence's length (torch's side packs the input, with
``enforce_sorted=False``). Weights are drawn too (N(0, 0.25)), so the layers' own initialisation plays no part.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils._pytree import tree_leaves

import manualbp.functional as MF
from tests.fuzz.strategies import FuzzCase, _generator, randn

_LAYERS = {
    "rnn": "RNN",
    "lstm": "LSTM",
    "gru": "GRU",
    "rnn_cell": "RNNCell",
    "lstm_cell": "LSTMCell",
    "gru_cell": "GRUCell",
}
sizes = st.integers(1, 3)
steps = st.integers(1, 4)


def _tensors(result: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a result, however nested (a PackedSequence's integer tensors included, its None left out)."""
    return tuple(t for t in tree_leaves(result) if isinstance(t, torch.Tensor))


def _hx(op: str, h0: torch.Tensor | None, c0: torch.Tensor | None) -> Any:
    if h0 is None:
        return None
    return (h0, c0) if op.startswith("lstm") else h0


def _manual_layer(op: str):
    """``manualbp.functional.<op>`` called with the weights in torch's order (the order they were drawn in)."""

    def call(input, config, lengths, h0=None, c0=None, **weights):
        extra = {"nonlinearity": config["nonlinearity"]} if op == "rnn" else {}
        return _tensors(
            getattr(MF, op)(
                input,
                _hx(op, h0, c0),
                list(weights.values()),
                bias=config["bias"],
                num_layers=config["num_layers"],
                bidirectional=config["bidirectional"],
                batch_first=config["batch_first"],
                lengths=lengths,
                **extra,
            )
        )

    return call


def _torch_layer(op: str):
    """torch's layer of the same configuration with the drawn weights; torch's packed path when lengths are given."""

    def call(input, config, lengths, h0=None, c0=None, **weights):
        layer = getattr(torch.nn, _LAYERS[op])(**config, dtype=torch.float64)
        if lengths is None:
            return _tensors(torch.func.functional_call(layer, weights, (input, _hx(op, h0, c0))))
        batch_first = config["batch_first"]
        packed = pack_padded_sequence(input, lengths, batch_first=batch_first, enforce_sorted=False)
        output, state = torch.func.functional_call(layer, weights, (packed, _hx(op, h0, c0)))
        total = input.shape[1 if batch_first else 0]
        return _tensors((pad_packed_sequence(output, batch_first=batch_first, total_length=total)[0], state))

    return call


@st.composite
def sequence_layer(draw: DrawFn, op: str) -> FuzzCase:
    """``rnn``, ``lstm`` or ``gru`` (multi-layer, either direction) on a drawn sequence."""
    seed, g = _generator(draw)
    hidden = draw(sizes)
    config = dict(
        input_size=draw(sizes),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    if op == "lstm":
        config["proj_size"] = draw(st.integers(0, hidden - 1))
    if op == "rnn":
        config["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    length, batch = draw(steps), draw(st.none() | sizes)  # None: an unbatched sequence
    lengths = draw(st.none() | st.lists(st.integers(1, length), min_size=batch, max_size=batch)) if batch else None
    layer = getattr(torch.nn, _LAYERS[op])(**config)  # for the parameter names and shapes
    features = config["input_size"]
    if batch is None:
        shape = (length, features)
    else:
        shape = (batch, length, features) if config["batch_first"] else (length, batch, features)
    inputs = {"input": randn(g, shape)}
    if draw(st.booleans()):  # initial states given
        count = config["num_layers"] * (2 if config["bidirectional"] else 1)
        states = {"h0": config.get("proj_size") or hidden, "c0": hidden} if op == "lstm" else {"h0": hidden}
        for name, size in states.items():
            inputs[name] = randn(g, (count, size) if batch is None else (count, batch, size))
    inputs.update({name: randn(g, tuple(p.shape), 0.5) for name, p in layer.named_parameters()})
    return FuzzCase(op, _manual_layer(op), _torch_layer(op), inputs, {"config": config, "lengths": lengths}, seed)


@st.composite
def cell(draw: DrawFn, op: str) -> FuzzCase:
    """``rnn_cell``, ``lstm_cell`` or ``gru_cell``: one step, batched or not, with or without a given state."""
    seed, g = _generator(draw)
    input_size, hidden, batch = draw(sizes), draw(sizes), draw(st.none() | sizes)
    bias = draw(st.booleans())
    extra = {"nonlinearity": draw(st.sampled_from(["tanh", "relu"]))} if op == "rnn_cell" else {}
    layer = getattr(torch.nn, _LAYERS[op])(input_size, hidden, bias=bias, **extra)
    lead = () if batch is None else (batch,)
    inputs = {"input": randn(g, (*lead, input_size))}
    if draw(st.booleans()):
        inputs.update({name: randn(g, (*lead, hidden)) for name in (("h0", "c0") if op == "lstm_cell" else ("h0",))})
    inputs.update({name: randn(g, tuple(p.shape), 0.5) for name, p in layer.named_parameters()})
    config = dict(input_size=input_size, hidden_size=hidden, bias=bias, **extra)

    def manual(input, config, h0=None, c0=None, **weights):
        w = list(weights.values()) + [None, None] * (not config["bias"])
        nonlinearity = {"nonlinearity": config["nonlinearity"]} if "nonlinearity" in config else {}
        return _tensors(getattr(MF, op)(input, _hx(op, h0, c0), *w, **nonlinearity))

    def reference(input, config, h0=None, c0=None, **weights):
        layer = getattr(torch.nn, _LAYERS[op])(**config, dtype=torch.float64)
        return _tensors(torch.func.functional_call(layer, weights, (input, _hx(op, h0, c0))))

    return FuzzCase(op, manual, reference, inputs, {"config": config}, seed)


@st.composite
def _padded(draw: DrawFn) -> tuple[int, torch.Generator, torch.Tensor, list[int], bool, bool]:
    """A padded batch (T, B, *) or (B, T, *) and its lengths (decreasing when ``enforce_sorted``)."""
    seed, g = _generator(draw)
    length, batch, batch_first, enforce_sorted = draw(steps), draw(sizes), draw(st.booleans()), draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch))
    lengths[draw(st.integers(0, batch - 1))] = length  # the longest fills the padded length
    if enforce_sorted:
        lengths.sort(reverse=True)
    features = tuple(draw(st.lists(sizes, max_size=2)))
    padded = randn(g, ((batch, length) if batch_first else (length, batch)) + features)
    return seed, g, padded, lengths, batch_first, enforce_sorted


@st.composite
def pack(draw: DrawFn) -> FuzzCase:
    seed, _, padded, lengths, batch_first, enforce_sorted = draw(_padded())
    options = dict(lengths=lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    return FuzzCase(
        "pack_padded_sequence",
        lambda **kw: _tensors(MF.pack_padded_sequence(**kw)),
        lambda **kw: _tensors(pack_padded_sequence(**kw)),
        {"input": padded},
        options,
        seed,
    )


@st.composite
def pad(draw: DrawFn) -> FuzzCase:
    """``pad_packed_sequence`` of the data of a PackedSequence (made by torch), with drawn padding and length."""
    seed, _, padded, lengths, batch_first, enforce_sorted = draw(_padded())
    layout = pack_padded_sequence(padded, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    total = draw(st.none() | st.integers(max(lengths), max(lengths) + 2))
    options = dict(
        batch_sizes=layout.batch_sizes,
        sorted_indices=layout.sorted_indices,
        unsorted_indices=layout.unsorted_indices,
        batch_first=batch_first,
        padding_value=draw(st.sampled_from([0.0, -1.5])),
        total_length=total,
    )

    def call(unpack):
        def run(data, batch_sizes, sorted_indices, unsorted_indices, **kw):
            return _tensors(unpack(PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices), **kw))

        return run

    manual, reference = call(MF.pad_packed_sequence), call(pad_packed_sequence)
    return FuzzCase("pad_packed_sequence", manual, reference, {"data": layout.data}, options, seed)


RECURRENT_FAMILIES: dict[str, SearchStrategy[FuzzCase]] = {
    "rnn": sequence_layer("rnn"),
    "lstm": sequence_layer("lstm"),
    "gru": sequence_layer("gru"),
    "rnn_cell": cell("rnn_cell"),
    "lstm_cell": cell("lstm_cell"),
    "gru_cell": cell("gru_cell"),
    "pack_padded_sequence": pack(),
    "pad_packed_sequence": pad(),
}
