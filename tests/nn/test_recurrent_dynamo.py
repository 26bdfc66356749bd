"""``import manualbp`` leaves ``torch._dynamo.config.allow_rnn`` alone: Dynamo still refuses a user's own
``torch.nn.LSTM`` (graph break "Attempted to wrap RNN, GRU, or LSTM") while it traces manualbp's recurrent
layers, which subclass torch's, with ``fullgraph=True``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
import torch._dynamo.config
from torch.testing import assert_close

import manualbp.nn as mnn


def test_the_flag_and_a_torch_lstm_are_left_as_torch_has_them():
    assert torch._dynamo.config.allow_rnn is False
    torch._dynamo.reset()
    x = torch.randn(5, 2, 3)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="Attempted to wrap RNN, GRU, or LSTM"):
        torch.compile(torch.nn.LSTM(3, 4), backend="eager", fullgraph=True)(x)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), mnn.LSTM(3, 4))  # the manual layer inside a user's model
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_close(compiled(x)[0], model(x)[0])
    assert torch._dynamo.config.allow_rnn is False
    torch._dynamo.reset()


def test_the_same_when_dynamo_was_loaded_before_manualbp():
    """Lightning loads Dynamo before ``manualbp`` is imported by the ``manualbp`` command: the other order."""
    script = textwrap.dedent(
        """
        import torch, torch._dynamo, torch._dynamo.config as config
        import manualbp
        assert config.allow_rnn is False
        x = torch.randn(5, 2, 3)
        try:
            torch.compile(torch.nn.GRU(3, 4), backend="eager", fullgraph=True)(x)
        except torch._dynamo.exc.Unsupported as error:
            assert "Attempted to wrap RNN, GRU, or LSTM" in str(error)
        else:
            raise AssertionError("Dynamo traced a torch.nn.GRU without allow_rnn")
        layer = manualbp.nn.GRU(3, 4)
        torch.testing.assert_close(torch.compile(layer, backend="eager", fullgraph=True)(x)[0], layer(x)[0])
        assert config.allow_rnn is False
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
