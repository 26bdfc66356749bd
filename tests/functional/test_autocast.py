"""Under torch.autocast each manual op computes as its torch twin does (manualbp.functional._autocast)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp.functional as MF
from manualbp.functional._validation import DtypeError
from manualbp.functional.fused import linear_relu


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).bfloat16().requires_grad_()


def _f32(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).requires_grad_()


def _labels() -> torch.Tensor:
    return torch.tensor([0, 2, 1])


# (manual op, torch twin, arguments: floating inputs in bfloat16, parameters in float32)
OPS: dict[str, tuple[Callable, Callable, Callable[[], tuple]]] = {
    "linear": (MF.linear, F.linear, lambda: (_bf16(3, 5), _f32(4, 5), _f32(4))),
    "linear_relu": (linear_relu, lambda x, w, b: F.relu(F.linear(x, w, b)), lambda: (_bf16(3, 5), _f32(4, 5), _f32(4))),
    "conv2d": (MF.conv2d, F.conv2d, lambda: (_bf16(2, 2, 5, 5), _f32(3, 2, 3, 3), _f32(3))),
    "cross_entropy": (MF.cross_entropy, F.cross_entropy, lambda: (_bf16(3, 4), _labels())),
    "nll_loss": (MF.nll_loss, F.nll_loss, lambda: (_bf16(3, 4), _labels())),
    "mse_loss": (MF.mse_loss, F.mse_loss, lambda: (_bf16(3, 4), _f32(3, 4))),
    "layer_norm": (MF.layer_norm, F.layer_norm, lambda: (_bf16(3, 4), (4,), _f32(4), _f32(4))),
    "batch_norm": (
        lambda x, w, b: MF.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        lambda: (_bf16(3, 4), _f32(4), _f32(4)),
    ),
    "softmax": (lambda x: MF.softmax(x, 1), lambda x: F.softmax(x, 1), lambda: (_bf16(3, 4),)),
}


def _run(fn: Callable, args: tuple) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    args = tuple(
        a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(*args)
    out.backward(torch.ones_like(out))
    return out, [a.grad for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


@pytest.mark.parametrize("op", list(OPS))
def test_op_under_cpu_autocast_matches_its_torch_twin(op):
    """Same output dtype (bfloat16 for linear and conv, float32 for the losses, the input's for the norms),
    close values, and each gradient in its input's dtype: float32 for the float32 parameters."""
    manual, twin, make = OPS[op]
    args = make()
    out, grads = _run(manual, args)
    ref_out, ref_grads = _run(twin, args)
    assert out.dtype == ref_out.dtype
    assert_close(out.float(), ref_out.float(), rtol=5e-2, atol=5e-2)
    for grad, ref, arg in zip(
        grads, ref_grads, [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    ):
        assert grad.dtype == ref.dtype == arg.dtype
        assert_close(grad.float(), ref.float(), rtol=5e-2, atol=5e-2)


def test_lower_precision_ops_compute_in_the_autocast_dtype_whatever_the_inputs():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert MF.linear(torch.randn(2, 3), torch.randn(4, 3).bfloat16()).dtype == torch.bfloat16
        assert MF.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 2)).dtype == torch.bfloat16


def test_float64_is_not_eligible_for_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (
            MF.linear(torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)).dtype
            == torch.float64
        )


@pytest.mark.parametrize("op", ["linear", "linear_relu", "conv2d", "mse_loss"])
def test_mixed_dtypes_outside_autocast_stay_an_error(op):
    manual, _, make = OPS[op]
    with pytest.raises(DtypeError, match="expected all tensors to have the same dtype"):
        manual(*make())
