"""The ``autocast_chain`` check: an op inside a network under CPU bfloat16 autocast (bfloat16 inputs,
float32 parameters) must give the dtypes, values and gradients of its torch twin there."""

from __future__ import annotations

import torch

import manualbp
from manualbp.verify import CPU_CHECKS, verify, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES


def test_autocast_chain_is_a_default_check():
    assert "autocast_chain" in CPU_CHECKS


def test_every_builtin_op_passes_the_autocast_chain_check():
    report = verify_cases(BUILTIN_CASES, ["autocast_chain"])
    assert len(report.rows) == len(BUILTIN_CASES)
    assert [row for row in report.rows if row.status != "pass"] == []


@manualbp.function
class _Float32Linear(torch.autograd.Function):
    """y = x Wᵀ computed in float32 whatever autocast says: dL/dx = G W, dL/dW = Gᵀ x."""

    @staticmethod
    def forward(x, weight):
        with torch.autocast("cpu", enabled=False):
            return x.float() @ weight.float().t()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (grad @ weight.float()).to(x.dtype), (grad.t() @ x.float()).to(weight.dtype)


class _Float32LinearModule(torch.nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _Float32Linear.call(input, self.weight)


def test_a_users_function_that_ignores_autocast_fails_the_check_on_the_output_dtype():
    x = torch.randn(3, 5)
    report = verify(
        _Float32LinearModule(5, 4, bias=False), torch.nn.Linear(5, 4, bias=False), [(x,)], checks=["autocast_chain"]
    )
    (row,) = report.rows
    assert row.status == "fail"
    assert "dtype torch.float32 != reference torch.bfloat16" in row.detail


def test_a_manual_layer_passes_the_check_through_verify():
    x = torch.randn(3, 5)
    report = verify(manualbp.nn.Linear(5, 4), torch.nn.Linear(5, 4), [(x,)], checks=["autocast_chain"])
    assert report.passed
