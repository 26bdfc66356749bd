"""manualbp.nn.RNN, LSTM, GRU and their cells beyond the registry battery: clear errors for bad input, state
moving both ways, convert, PackedSequence outputs (dropout included) equal to torch's, torch's dtypes under
autocast, and the shape of the backward graph (one manual node per layer and direction)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.testing import assert_close
from torch.utils._pytree import tree_leaves

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.functional._validation import DtypeError, InputError
from manualbp.verify import seeded
from tests.functional.test_hand_written import _AtenOpLog

F64 = torch.float64
LAYERS = ["RNN", "LSTM", "GRU"]
CELLS = ["RNNCell", "LSTMCell", "GRUCell"]


def _pair(name: str, *args, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The manual layer and its torch twin with the manual one's weights, in float64."""
    manual = getattr(mnn, name)(*args, **kwargs).to(F64)
    reference = getattr(torch.nn, name)(*args, **kwargs).to(F64)
    reference.load_state_dict(manual.state_dict())
    return manual, reference


def _tensors(result) -> list[torch.Tensor]:
    """The tensors of a layer's result, however nested (a PackedSequence's data, batch_sizes and indices too)."""
    return [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]


def _assert_same_results_and_grads(manual, reference, inputs: list[torch.Tensor], call) -> None:
    """call(layer, *inputs) equal on both layers: every output tensor, and the gradients of the inputs and
    weights under one random dL/dy."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out_m, out_r = _tensors(seeded(call)(manual, *leaves)), _tensors(seeded(call)(reference, *leaves))
    assert len(out_m) == len(out_r)
    for m, r in zip(out_m, out_r):
        assert m.dtype == r.dtype and m.shape == r.shape
        assert_close(m, r, rtol=1e-10, atol=1e-12)
    floating = [(m, r) for m, r in zip(out_m, out_r) if m.is_floating_point() and m.requires_grad]
    grads_out = [torch.randn_like(r) for _, r in floating]
    wrt_m, wrt_r = leaves + list(manual.parameters()), leaves + list(reference.parameters())
    grads_m = torch.autograd.grad([m for m, _ in floating], wrt_m, grads_out, allow_unused=True, materialize_grads=True)
    grads_r = torch.autograd.grad([r for _, r in floating], wrt_r, grads_out, allow_unused=True, materialize_grads=True)
    assert_close(grads_m, grads_r, rtol=1e-10, atol=1e-12)


# Bad input: manualbp's errors name the op and the shapes.


def _lstm_weights(layer: torch.nn.LSTM) -> list[torch.Tensor]:
    return [getattr(layer, name) for name in layer._flat_weights_names]


BAD_CALLS = [
    # (id, call, exception, message pattern)
    (
        "input-size",
        lambda: mnn.LSTM(3, 4)(torch.randn(5, 2, 7)),
        InputError,
        r"lstm: input of shape \(5, 2, 7\) has 7 features, but weight_ih_l0 of shape \(16, 3\) expects input_size=3",
    ),
    (
        "input-size-packed",
        lambda: mnn.GRU(3, 4)(pack_padded_sequence(torch.randn(5, 2, 2), [5, 3])),
        InputError,
        r"gru: input of shape \(8, 2\) has 2 features, but weight_ih_l0 of shape \(12, 3\) expects input_size=3",
    ),
    (
        "input-dims",
        lambda: mnn.RNN(3, 4)(torch.randn(2, 5, 2, 3)),
        InputError,
        r"rnn: expected input of 2 \(unbatched\) or 3 dimensions, got shape \(2, 5, 2, 3\)",
    ),
    (
        "h0-shape",
        lambda: mnn.GRU(3, 4, 2)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)),
        InputError,
        r"gru: h0 of shape \(1, 2, 4\) does not match the input of shape \(5, 2, 3\): expected \(2, 2, 4\) "
        r"\(num_layers · num_directions, batch, hidden_size\)",
    ),
    (
        "h0-batch_first",
        lambda: mnn.RNN(3, 4, batch_first=True)(torch.randn(2, 5, 3), torch.zeros(1, 5, 4)),
        InputError,
        r"rnn: h0 of shape \(1, 5, 4\) does not match the input of shape \(2, 5, 3\): expected \(1, 2, 4\)",
    ),
    (
        "h0-unbatched",
        lambda: mnn.RNN(3, 4)(torch.randn(5, 3), torch.zeros(1, 1, 4)),
        InputError,
        r"rnn: h0 of shape \(1, 1, 4\) does not match the input of shape \(5, 3\): expected \(1, 4\) "
        r"\(num_layers · num_directions, hidden_size\)",
    ),
    (
        "c0-shape",
        lambda: mnn.LSTM(3, 4, proj_size=2)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))),
        InputError,
        r"lstm: c0 of shape \(1, 2, 2\) does not match the input of shape \(5, 2, 3\): expected \(1, 2, 4\)",
    ),
    (
        "hx-not-a-pair",
        lambda: mnn.LSTM(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)),
        TypeError,
        r"lstm: hx must be a pair \(h0, c0\), got Tensor",
    ),
    (
        "lengths-longer",
        lambda: MF.lstm(torch.randn(5, 2, 3), None, _lstm_weights(mnn.LSTM(3, 4)), lengths=[5, 7]),
        InputError,
        r"lstm: lengths \[5, 7\] are longer than the sequence of 5 steps \(input of shape \(5, 2, 3\)\)",
    ),
    (
        "lengths-count",
        lambda: MF.lstm(torch.randn(5, 2, 3), None, _lstm_weights(mnn.LSTM(3, 4)), lengths=[5]),
        InputError,
        r"lstm: expected 2 integer lengths, one per sequence of the input of shape \(5, 2, 3\), got \[5\]",
    ),
    (
        "lengths-unbatched",
        lambda: MF.lstm(torch.randn(5, 3), None, _lstm_weights(mnn.LSTM(3, 4)), lengths=[5]),
        InputError,
        r"lstm: lengths need a batched input of 3 dimensions, got input of shape \(5, 3\)",
    ),
    (
        "lengths-float-tensor",
        lambda: MF.lstm(torch.randn(5, 2, 3), None, _lstm_weights(mnn.LSTM(3, 4)), lengths=torch.ones(2)),
        DtypeError,
        r"lstm: lengths must be a 1-D integer tensor or a sequence of ints",
    ),
    (
        "integer-input",
        lambda: mnn.LSTM(3, 4)(torch.ones(5, 2, 3, dtype=torch.long)),
        DtypeError,
        r"lstm: expected a floating-point input, got dtype torch.int64 with shape \(5, 2, 3\); convert it with .float\(\)",
    ),
    (
        "no-steps",
        lambda: mnn.GRU(3, 4)(torch.randn(0, 2, 3)),
        InputError,
        r"gru: expected a sequence of at least one step, got input of shape \(0, 2, 3\)",
    ),
    (
        "mixed-dtypes",
        lambda: mnn.GRU(3, 4)(torch.randn(5, 2, 3, dtype=F64)),
        DtypeError,
        r"gru: expected all tensors to have the same dtype, got input torch.float64, h0 torch.float64, weights\[0\] torch.float32",
    ),
    (
        "weights-count",
        lambda: MF.gru(torch.randn(5, 2, 3), None, [torch.randn(12, 3)]),
        InputError,
        r"gru: expected 4 weights \(W_ih, W_hh, b_ih, b_hh for each of 1 layer\(s\) and 1 direction\(s\)\), got 1",
    ),
    (
        "weights-shape",
        lambda: MF.rnn(
            torch.randn(5, 2, 3), None, [torch.randn(4, 3), torch.randn(4, 4), torch.randn(5), torch.randn(4)]
        ),
        InputError,
        r"rnn: b_ih of layer 0 has shape \(5,\), expected \(4,\)",
    ),
    (
        "nonlinearity",
        lambda: MF.rnn(torch.randn(5, 2, 3), None, [torch.randn(4, 3), torch.randn(4, 4)], "sigmoid", bias=False),
        InputError,
        r"rnn: nonlinearity must be one of \('tanh', 'relu'\), got 'sigmoid'",
    ),
    (
        "cell-input-size",
        lambda: mnn.GRUCell(3, 4)(torch.randn(2, 5)),
        InputError,
        r"gru_cell: input of shape \(2, 5\) has 5 features, but weight_ih of shape \(12, 3\) expects input_size=3",
    ),
    (
        "cell-hx-shape",
        lambda: mnn.RNNCell(3, 4)(torch.randn(2, 3), torch.zeros(3, 4)),
        InputError,
        r"rnn_cell: hx of shape \(3, 4\) does not match the input of shape \(2, 3\): expected \(2, 4\)",
    ),
    (
        "cell-c-shape",
        lambda: mnn.LSTMCell(3, 4)(torch.randn(3), (torch.zeros(4), torch.zeros(1, 4))),
        InputError,
        r"lstm_cell: hx\[1\] of shape \(1, 4\) does not match the input of shape \(3,\): expected \(4,\)",
    ),
    (
        "cell-integer-input",
        lambda: mnn.LSTMCell(3, 4)(torch.ones(2, 3, dtype=torch.int32)),
        DtypeError,
        r"lstm_cell: expected a floating-point input, got dtype torch.int32",
    ),
    (
        "pack-unsorted",
        lambda: MF.pack_padded_sequence(torch.randn(5, 2, 3), [3, 5]),
        InputError,
        r"pack_padded_sequence: lengths \[3, 5\] are not in decreasing order, as enforce_sorted=True requires",
    ),
    (
        "pack-zero-length",
        lambda: MF.pack_padded_sequence(torch.randn(5, 2, 3), [5, 0]),
        InputError,
        r"pack_padded_sequence: lengths must be at least 1, got \[5, 0\]",
    ),
    (
        "pack-longer",
        lambda: MF.pack_padded_sequence(torch.randn(2, 5, 3), [6, 1], batch_first=True),
        InputError,
        r"pack_padded_sequence: lengths \[6, 1\] are longer than the sequence of 5 steps",
    ),
    (
        "pad-total_length",
        lambda: MF.pad_packed_sequence(pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), total_length=4),
        InputError,
        r"pad_packed_sequence: total_length=4 is shorter than the longest sequence \(5 steps\)",
    ),
    (
        "lengths-with-packed",
        lambda: MF.gru(
            pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), None, _lstm_weights(mnn.GRU(3, 4)), lengths=[5, 3]
        ),
        InputError,
        r"gru: a PackedSequence carries its lengths; pass lengths only with a padded input",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input_gets_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_an_unknown_cell_nonlinearity_fails_at_construction():
    """torch.nn.RNNCell accepts any string and fails at its first forward; the manual cell fails where it is built."""
    with pytest.raises(
        ValueError, match=r"manualbp.nn.RNNCell: nonlinearity must be one of \('tanh', 'relu'\), got 'gelu'"
    ):
        mnn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        mnn.RNNCell.from_torch(torch.nn.RNNCell(3, 4, nonlinearity="gelu"))


# State: the same parameters, moving both ways.


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False)),
        ("LSTM", dict(num_layers=2, proj_size=2, bidirectional=True)),
        ("GRU", dict(bidirectional=True)),
        ("RNNCell", {}),
        ("LSTMCell", dict(bias=False)),
        ("GRUCell", {}),
    ],
)
def test_state_dicts_move_both_ways_and_give_torchs_results(name, kwargs):
    torch.manual_seed(0)
    manual = getattr(mnn, name)(3, 4, **kwargs)
    torch.manual_seed(0)
    reference = getattr(torch.nn, name)(3, 4, **kwargs)
    assert list(manual.state_dict()) == list(reference.state_dict())
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)  # same init from the same seed
    assert repr(manual) == "manualbp." + repr(reference)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p))
    manual.load_state_dict(reference.state_dict())
    fresh = getattr(torch.nn, name)(3, 4, **kwargs)
    fresh.load_state_dict(manual.state_dict())
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    for a, b in zip(_tensors(manual(x)), _tensors(fresh(x))):
        assert_close(a, b)


def test_from_torch_shares_parameters_but_not_the_flat_weight_list():
    """torch.nn.LSTM keeps ``_flat_weights``, a list it writes a weight set by name into: after ``from_torch`` and
    ``to_torch`` the two layers share Parameters, and replacing one layer's weight leaves the other's forward as it was."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 4, 2).to(F64)
    manual = mnn.LSTM.from_torch(reference)
    assert type(manual) is mnn.LSTM and manual.weight_hh_l1 is reference.weight_hh_l1
    assert manual._flat_weights is not reference._flat_weights
    x = torch.randn(5, 2, 3, dtype=F64)
    before = reference(x)[0]
    assert_close(manual(x)[0], before)
    manual.weight_ih_l0 = torch.nn.Parameter(torch.zeros_like(manual.weight_ih_l0))
    assert_close(reference(x)[0], before)
    twin = manual.to_torch()
    assert type(twin) is torch.nn.LSTM and twin.weight_ih_l0 is manual.weight_ih_l0
    assert twin._flat_weights is not manual._flat_weights
    assert_close(twin(x)[0], manual(x)[0])
    twin.weight_hh_l0 = torch.nn.Parameter(torch.zeros_like(twin.weight_hh_l0))
    assert not torch.equal(twin(x)[0], manual(x)[0])


def test_convert_swaps_an_lstm_in_a_torch_model_sharing_its_parameters():
    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True)
            self.out = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.out(self.lstm(x)[0])

    torch.manual_seed(0)
    model, reference = Tagger().to(F64), Tagger().to(F64)
    reference.load_state_dict(model.state_dict())
    weight = model.lstm.weight_ih_l1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manualbp.convert(model)
    assert type(model.lstm) is mnn.LSTM and type(model.out) is mnn.Linear
    assert model.lstm.weight_ih_l1 is weight
    x = torch.randn(2, 5, 3, dtype=F64)
    loss, ref_loss = model(x).square().sum(), reference(x).square().sum()
    assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, msg=name)
    assert manualbp.convert.__module__ and type(manualbp.to_torch(model).lstm) is torch.nn.LSTM


# PackedSequence: torch's packed input and output, dropout between layers included.


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_output_and_final_state_equal_torchs(name, enforce_sorted):
    manual, reference = _pair(name, 3, 4, 3, dropout=0.4, bidirectional=True)
    lengths = [5, 4, 4, 2] if enforce_sorted else [2, 5, 4, 1]
    x = torch.randn(5, 4, 3, dtype=F64)
    states = 2 if name == "LSTM" else 1
    hx = [torch.randn(6, 4, 4, dtype=F64) for _ in range(states)]

    def call(layer, x, *hx):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        return layer(packed, tuple(hx) if name == "LSTM" else hx[0])

    _assert_same_results_and_grads(manual, reference, [x, *hx], call)
    output, _ = call(manual, x, *hx)
    assert isinstance(output, torch.nn.utils.rnn.PackedSequence)


@pytest.mark.parametrize("name", LAYERS)
def test_padded_input_with_lengths_equals_torchs_packed_path(name):
    """manualbp.functional.<layer>(padded, lengths=...): the output zero beyond each end, h_n at each end."""
    manual, reference = _pair(name, 3, 4, 2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([3, 5, 1])
    x = torch.randn(3, 5, 3, dtype=F64)
    functional = getattr(MF, name.lower())
    out, state = functional(
        x, None, manual._weights(), num_layers=2, bidirectional=True, batch_first=True, lengths=lengths
    )
    packed_out, ref_state = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    ref_out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=5)
    assert_close(out, ref_out)
    assert_close(state, ref_state)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_pack_and_pad_equal_torchs_with_hand_written_gradients(batch_first, enforce_sorted):
    lengths = [4, 4, 2, 1] if enforce_sorted else [2, 4, 1, 4]  # ties: the order of torch's sort is kept
    x = torch.randn(4, 4, 2, 3, dtype=F64, requires_grad=True)
    mine = MF.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    theirs = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    for a, b in zip(mine, theirs):
        assert (a is None and b is None) or torch.equal(a, b)
    assert mine.data.grad_fn.name() == "PackFunctionBackward"
    padded, sizes = MF.pad_packed_sequence(mine, batch_first=batch_first, padding_value=-1.0, total_length=6)
    ref_padded, ref_sizes = pad_packed_sequence(theirs, batch_first=batch_first, padding_value=-1.0, total_length=6)
    assert torch.equal(padded, ref_padded) and torch.equal(sizes, ref_sizes) and sizes.dtype == ref_sizes.dtype
    grad = torch.randn_like(padded)
    assert_close(torch.autograd.grad(padded, x, grad)[0], torch.autograd.grad(ref_padded, x, grad)[0])


# Autocast: torch's dtypes (CPU).


def _autocast_dtypes(layer, *args) -> list[torch.dtype]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return [t.dtype for t in _tensors(layer(*args)) if t.is_floating_point()]


_DTYPES = [
    (torch.float32, None),
    (torch.bfloat16, None),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
]
_PACKED_DTYPES = [(torch.float32, None), (torch.bfloat16, torch.float32)]


@pytest.mark.parametrize(
    "name, x_dtype, h_dtype, packed",
    [(name, x, h, False) for name in LAYERS + CELLS for x, h in _DTYPES]
    + [(name, x, h, True) for name in LAYERS for x, h in _PACKED_DTYPES],  # cells take no PackedSequence
)
def test_output_dtypes_under_cpu_autocast_are_torchs(name, x_dtype, h_dtype, packed):
    """torch's recurrent layers differ here: the fused LSTM and the RNNs return bfloat16, the GRU, the packed LSTM
    and LSTMCell the dtype of the state they carry (``manualbp.functional.recurrent.layers._CARRIED``)."""
    manual, reference = (m.float() for m in _pair(name, 3, 4))
    cell = name.endswith("Cell")
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    x = x.to(x_dtype)
    if packed:
        x = pack_padded_sequence(x, [5, 3])
    h = None if h_dtype is None else torch.randn((2, 4) if cell else (1, 2, 4), dtype=h_dtype)
    hx = None if h is None else ((h, h.clone()) if "LSTM" in name else h)
    try:
        expected = _autocast_dtypes(reference, x, hx)
    except RuntimeError as error:  # torch's oneDNN LSTM has no bfloat16 kernel on CPUs without AVX-512
        if "primitive descriptor" not in str(error):
            raise
        pytest.skip(f"torch's own {name} cannot run under bfloat16 autocast on this CPU: {str(error)[:80]}")
    assert _autocast_dtypes(manual, x, hx) == expected


# The backward graph: manual nodes only, one per layer and direction.


def _node_names(root) -> list[str]:
    seen, stack, names = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(
            type(node).__name__ if not isinstance(node, torch.autograd.function.BackwardCFunction) else node.name()
        )
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize(
    "kwargs", [dict(num_layers=2, bidirectional=True, batch_first=True), dict(num_layers=3, dropout=0.5)]
)
def test_one_manual_node_per_layer_and_direction_and_no_native_node(name, kwargs):
    layer = getattr(mnn, name)(3, 4, **kwargs)
    out, state = layer(torch.randn(2, 5, 3))
    loss = out.sum() + sum(t.sum() for t in _tensors(state))
    names = _node_names(loss.grad_fn)
    native = {n for n in names if not n.endswith("FunctionBackward")} - {
        "AccumulateGrad",
        "SumBackward0",
        "AddBackward0",
    }
    assert native == set()
    directions = 2 if layer.bidirectional else 1
    assert names.count(f"{name}FunctionBackward") == layer.num_layers * directions
    for t in [out, *_tensors(state)]:
        assert isinstance(t.grad_fn, torch.autograd.function.BackwardCFunction)


@pytest.mark.parametrize("name", LAYERS + CELLS)
def test_backward_calls_no_pytorch_backward_kernel_and_saves_no_tensor_on_ctx(name):
    cell = name.endswith("Cell")
    layer = getattr(mnn, name)(3, 4) if cell else getattr(mnn, name)(3, 4, 2, bidirectional=True)
    x = torch.randn(2, 3, requires_grad=True) if cell else torch.randn(5, 2, 3, requires_grad=True)
    states = 2 if "LSTM" in name else 1
    h = [torch.randn((2, 4) if cell else (4, 2, 4), requires_grad=True) for _ in range(states)]
    outputs = _tensors(layer(x, tuple(h) if states == 2 else h[0]))
    for out in outputs:
        stray = [key for key, value in vars(out.grad_fn).items() if isinstance(value, torch.Tensor)]
        assert stray == []
    with _AtenOpLog() as log:
        torch.autograd.grad(outputs, [x, *h, *layer.parameters()], [torch.ones_like(o) for o in outputs])
    assert log.ops and sorted({op for op in log.ops if "backward" in op}) == []


def test_dynamo_may_trace_the_layers():
    """Dynamo refuses instances of torch.nn.RNN, GRU and LSTM unless allow_rnn is set; manualbp sets it only while
    Dynamo wraps one of its own layers (tests/nn/test_recurrent_dynamo.py), so a model of manual recurrent layers
    compiles with fullgraph=True."""
    torch._dynamo.reset()
    layer = mnn.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert_close(compiled(x)[0], layer(x)[0])
    torch._dynamo.reset()
