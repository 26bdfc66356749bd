"""manualbp.function: a user's own autograd.Function gets manualbp's twins and checks."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp
from manualbp.verify import CPU_CHECKS, verify


@manualbp.function
class Swish(torch.autograd.Function):
    """y = x·σ(x),  dL/dx = dL/dy · (σ(x) + x σ(x)(1 − σ(x))),  ẏ = (σ(x) + x σ(x)(1 − σ(x))) ẋ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s + x * s * (1 - s))

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return tangent * (s + x * s * (1 - s))


@manualbp.function
class CombinedSquare(torch.autograd.Function):
    """y = x², written in the combined forward(ctx, x) style."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def _input() -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)


def test_a_decorated_function_compiles_with_fullgraph_and_matches_eager():
    x = _input()
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: Swish.call(t).sum(), backend="aot_eager", fullgraph=True)
    (grad_compiled,) = torch.autograd.grad(compiled(x), x)
    (grad_eager,) = torch.autograd.grad(torch.nn.functional.silu(x).sum(), x)
    assert_close(grad_compiled, grad_eager)
    torch._dynamo.reset()


def test_eager_calls_use_the_eager_twin_and_transforms_the_function_itself():
    x = _input()
    assert Swish.call(x).grad_fn._forward_cls is Swish.eager_twin
    assert Swish.apply(x).grad_fn._forward_cls is Swish  # apply keeps torch's meaning
    silu, x = torch.nn.functional.silu, x.detach()
    assert_close(torch.func.grad(lambda t: Swish.call(t).sum())(x), torch.func.grad(lambda t: silu(t).sum())(x))
    tangent = torch.ones_like(x)
    assert_close(torch.func.jvp(Swish.call, (x,), (tangent,))[1], torch.func.jvp(silu, (x,), (tangent,))[1])


def test_a_combined_style_function_is_its_own_eager_twin():
    x = _input()
    assert CombinedSquare.eager_twin is CombinedSquare
    (grad,) = torch.autograd.grad(CombinedSquare.call(x).sum(), x)
    assert_close(grad, 2 * x.detach())


def test_detect_nonfinite_names_the_users_function():
    x = torch.tensor([1.0, float("inf")], requires_grad=True)  # dL/dx at inf: 1 + inf·1·0 = nan
    with manualbp.detect_nonfinite(), pytest.raises(manualbp.NonFiniteGradientError, match=r"Swish\.backward .* 'x'"):
        Swish.call(x).sum().backward()


def test_verify_passes_the_decorated_function_and_compiles_it_through_its_twin():
    report = verify(Swish.apply, torch.nn.functional.silu, [(_input().detach(),)], name="swish")
    assert report.passed and {row.status for row in report.rows} == {"pass"}, str(report)
    assert {row.check for row in report.rows} >= set(CPU_CHECKS)
