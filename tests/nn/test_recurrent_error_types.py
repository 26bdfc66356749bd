"""The manual recurrent layers and cells refuse a wrong dtype with an error of the type torch's twin raises:
``torch.nn.RNN``, ``LSTM`` and ``GRU`` raise ``ValueError`` for an input whose dtype is not the weights'
(``RNNBase.check_input``), their kernels ``RuntimeError`` for a state of another dtype and the cells
``RuntimeError`` for both. manualbp's error is an instance of torch's type (and a ``DtypeError``), so
``except ValueError`` written for torch catches it too."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import manualbp.nn as mnn
from manualbp.functional._validation import DtypeError

F64, I64 = torch.float64, torch.int64
LAYERS = ["RNN", "LSTM", "GRU"]
CELLS = ["RNNCell", "LSTMCell", "GRUCell"]


def _state(name: str, shape: tuple[int, ...], dtype: torch.dtype):
    state = torch.zeros(shape, dtype=dtype)
    return (state, state) if name.startswith("LSTM") else state


CALLS = {
    # name -> (input, hx) built for a layer of input_size 3, hidden_size 4
    "float64-input": lambda name: (
        torch.randn(5, 2, 3, dtype=F64) if name in LAYERS else torch.randn(2, 3, dtype=F64),
        None,
    ),
    "int64-input": lambda name: (
        torch.ones(5, 2, 3, dtype=I64) if name in LAYERS else torch.ones(2, 3, dtype=I64),
        None,
    ),
    "float64-packed-input": lambda name: (pack_padded_sequence(torch.randn(5, 2, 3, dtype=F64), [5, 3]), None),
    "float64-state": lambda name: (
        (torch.randn(5, 2, 3), _state(name, (1, 2, 4), F64))
        if name in LAYERS
        else (torch.randn(2, 3), _state(name, (2, 4), F64))
    ),
}
CASES = [
    pytest.param(name, call, id=f"{name}-{call}")
    for name in LAYERS + CELLS
    for call in CALLS
    if not (call == "float64-packed-input" and name in CELLS)
]


@pytest.mark.parametrize("name, call", CASES)
def test_a_wrong_dtype_raises_the_type_torch_raises(name, call):
    torch.manual_seed(0)
    twin = getattr(torch.nn, name)(3, 4)
    manual = getattr(mnn, name).from_torch(twin)
    input, hx = CALLS[call](name)
    with pytest.raises(Exception) as torch_error:
        twin(input, hx)
    expected = type(torch_error.value)
    assert expected in (ValueError, RuntimeError)
    with pytest.raises(expected) as manual_error:
        manual(input, hx)
    assert isinstance(manual_error.value, DtypeError)
    assert manual_error.value.args[0].startswith(name.lower().replace("cell", "_cell") + ":")


def test_the_layers_input_dtype_error_is_a_value_error_as_torchs():
    """The case of issue 24: float64 input to a float32 LSTM is torch's ValueError, and manualbp's."""
    with pytest.raises(ValueError, match=r"lstm: expected all tensors to have the same dtype, got input torch.float64"):
        mnn.LSTM(3, 4)(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"lstm: expected a floating-point input, got dtype torch.int64"):
        mnn.LSTM(3, 4)(torch.ones(5, 2, 3, dtype=I64))
