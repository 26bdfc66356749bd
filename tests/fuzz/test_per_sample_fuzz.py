"""Fuzzing per-sample gradients and clipping (``manualbp.per_sample``) on drawn layer shapes, in float64.

The configurations are the ones ``tests/fuzz/strategies.py`` draws for ``linear``, ``linear_relu``,
``conv2d`` (groups, stride, dilation, every kind of padding), ``layer_norm``, ``rms_norm`` and ``batch_norm``,
with a batch of 1 to 4 samples in dim 0. The layer's parameters are a module's Parameters; each sample n is scored by its
own loss ℓ_n = Σ R_n ⊙ y_n + ½ Σ y_n², and the reference per-sample gradients ∇ℓ_n are torch.func's
vmap(grad) of torch's op. Both sides must agree on

  1. ``p.grad_sample`` (and ``p.grad``), with the drawn loss reduction;
  2. ``clip.norms`` and the clipped ``p.grad``, at a clipping norm that clips about half the samples.

A drawn input without a batch dim (a 1-D linear input, an unbatched convolution, a layer norm over the
whole input) and a batch norm with batch statistics must raise ``PerSampleError`` instead.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap
from torch.testing import assert_close

import manualbp
from manualbp.functional._reduction import REDUCTION
from manualbp.per_sample import PerSampleError
from tests.fuzz.strategies import FAMILIES, FuzzCase
from tests.per_sample.references import batch_loss, clipped_reference, sample_loss

TOL = dict(rtol=1e-10, atol=1e-10)  # inputs up to 1e3 make gradients up to ~1e6
FAMILY_NAMES = ["linear", "linear_relu", "conv2d", "layer_norm", "rms_norm", "batch_norm"]


class Holder(torch.nn.Module):
    """The drawn op as a layer: its differentiable inputs but the first are the module's Parameters."""

    def __init__(self, case: FuzzCase) -> None:
        super().__init__()
        self.case = case
        self.params = torch.nn.ParameterDict({k: v.clone() for k, v in case.inputs.items() if k != "input"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.case.manual(x, **dict(self.params), **_fresh(self.case.constants))


def _fresh(constants: dict) -> dict:
    """Each call its own copy of the tensor constants (a batch norm updates its running estimates)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in constants.items()}


def _is_refused(case: FuzzCase) -> bool:
    x = case.inputs["input"]
    if case.op in ("linear", "linear_relu"):
        return x.dim() < 2
    if case.op == "conv2d":
        return x.dim() == 3
    if case.op in ("layer_norm", "rms_norm"):
        return x.dim() == len(case.constants["normalized_shape"])
    return case.constants["training"]  # batch_norm


def _reference(case: FuzzCase, params: dict, x: torch.Tensor, r: torch.Tensor) -> dict:
    constants = _fresh(case.constants)

    def loss_n(p, x_n, r_n):
        return sample_loss(case.reference(x_n.unsqueeze(0), **p, **constants), r_n.unsqueeze(0))

    return vmap(grad(loss_n), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()}, x, r)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")  # torch's conv2d
@pytest.mark.parametrize("family", FAMILY_NAMES)
@settings(max_examples=100)
@given(data=st.data())
def test_per_sample_gradients_and_clipping_match_torch_func(family: str, data: st.DataObject) -> None:
    case: FuzzCase = data.draw(FAMILIES[family], label=family)
    loss_reduction = data.draw(st.sampled_from(["mean", "sum"]), label="loss_reduction")
    layer = Holder(case)
    x = case.inputs["input"]
    if not layer.params:
        return
    if _is_refused(case):
        with pytest.raises(PerSampleError):
            with manualbp.per_sample_grads(layer, loss_reduction):
                layer(x).sum().backward()
        assert REDUCTION.mode is None
        return
    with torch.no_grad():
        r = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(case.seed), dtype=x.dtype)
    params = dict(layer.params)
    expected = _reference(case, params, x, r)

    with manualbp.per_sample_grads(layer, loss_reduction):
        batch_loss(layer(x), r, loss_reduction).backward()
    plain = torch.autograd.grad(batch_loss(layer(x), r, loss_reduction), list(params.values()))
    for (name, p), grad_p in zip(params.items(), plain):
        assert_close(p.grad_sample, expected[name], **TOL, msg=lambda m, name=name: f"{case!r} {name}: {m}")
        assert_close(p.grad, grad_p, **TOL)

    norms, _ = clipped_reference(expected, 1.0, loss_reduction)
    max_grad_norm = max(norms.median().item(), 1e-3)
    norms, clipped = clipped_reference(expected, max_grad_norm, loss_reduction)
    layer.zero_grad(set_to_none=True)
    with manualbp.clip_per_sample(layer, max_grad_norm, loss_reduction) as clip:
        batch_loss(layer(x), r, loss_reduction).backward()
    assert_close(clip.norms, norms, **TOL, msg=lambda m: f"{case!r} norms: {m}")
    for name, p in params.items():
        assert_close(p.grad, clipped[name], **TOL, msg=lambda m, name=name: f"{case!r} clipped {name}: {m}")
