"""The LSTM's in-place path (preallocated buffers, the doubled cell state of ``_via_sigmoid``) against its general
path (new tensors per step, torch.tanh): same outputs, same gradients, masks, reverse, projection and the
gradients reaching the gates and cells outputs included."""

from __future__ import annotations

import importlib

import pytest
import torch

from manualbp.functional.recurrent.lstm import LSTMFunction

# the module (the package exports a function of the same name)
lstm_module = importlib.import_module("manualbp.functional.recurrent.lstm")

T, B, IN, H, P = 5, 3, 4, 6, 2


def _run(x, h0, c0, weights, mask, reverse, batch_first, seed):
    """The five outputs and the gradients of all inputs for random output gradients (gates and cells too)."""
    outputs = LSTMFunction.apply(x, h0, c0, *weights, mask, reverse, batch_first)
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outputs]
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    return [o.detach() for o in outputs], torch.autograd.grad(outputs, inputs, grads)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj", [False, True], ids=["plain", "proj"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_in_place_path_equals_general_path(monkeypatch, masked, reverse, proj, batch_first):
    torch.manual_seed(0)
    dtype = torch.float64
    real = P if proj else H
    x = torch.randn((B, T, IN) if batch_first else (T, B, IN), dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, real, dtype=dtype, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    shapes = [(4 * H, IN), (4 * H, real), (4 * H,), (4 * H,)] + ([(P, H)] if proj else [])
    weights = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    if not proj:
        weights.append(None)
    mask = torch.arange(T).unsqueeze(1) < torch.tensor([T, 2, 4]) if masked else None

    fast = _run(x, h0, c0, weights, mask, reverse, batch_first, seed=1)
    monkeypatch.setattr(lstm_module, "scratch_writable", lambda: False)
    monkeypatch.setattr(lstm_module, "_via_sigmoid", lambda t: False)
    general = _run(x, h0, c0, weights, mask, reverse, batch_first, seed=1)

    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells"], fast[0], general[0]):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"output {name}: {m}")
    for k, (a, b) in enumerate(zip(fast[1], general[1])):
        torch.testing.assert_close(a, b, msg=lambda m, k=k: f"gradient of input {k}: {m}")
