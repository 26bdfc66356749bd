"""The long tail of elementwise activations, each written as its formula and its derivative.

For y = f(x) applied elementwise the chain rule is one product, whatever f is:

    dL/dx = dL/dy ⊙ f'(x)          ẏ = f'(x) ⊙ ẋ   (forward mode)

so an activation here is an ``Elementwise``: torch's own forward op and f'(x) written with differentiable torch
operations (double backward differentiates f' itself). ``elementwise_function`` turns one into an
``autograd.Function`` with exactly that backward and jvp; ReLU, Sigmoid, Tanh, GELU and SiLU stay written out in
full in ``activation.py``, as the teaching examples. The input is saved (each f' below is a function of x).

In place (``inplace=True``, where torch has it), y = f(x) is written into x and the backward reads what
survives the overwrite. SELU and CELU (α > 0), like ELU, have f' as a function of the output,
f' = λ (y > 0), y + λα (SELU) and f' = 1 (y > 0), y/α + 1 (CELU), so y alone is saved, as torch does.
Hardswish, Hardsigmoid and Mish do not (y does not give back x), so, as torch's in-place SiLU does, a copy x₀ of x
is taken first (``CopyFunction``), y = f(x₀) is written into x, and the backward reads x₀:

    dL/dx₀ = dL/dy ⊙ f'(x₀)        dL/dx = 0  (y depends on x through x₀ only)

f'(x) of each activation (parameters as torch names them):

    hardswish     y = x · min(max(x + 3, 0), 6) / 6     f' = 0 (x < -3), 1 (x > 3), x/3 + 1/2 between
    hardsigmoid   y = min(max(x + 3, 0), 6) / 6         f' = 1/6 on (-3, 3), 0 elsewhere
    mish          y = x · tanh(s),  s = softplus(x)     f' = tanh(s) + x σ(x) (1 - tanh²(s))
    softplus      y = log(1 + e^{βx}) / β  (x where βx > threshold)      f' = σ(βx)  (1 where βx > threshold)
    selu          y = λ x (x > 0), λ α (e^x - 1)        f' = λ (x > 0), λ α e^x
    celu          y = x (x > 0), α (e^{x/α} - 1)        f' = 1 (x > 0), e^{x/α}
    logsigmoid    y = log σ(x)                          f' = σ(-x)
    softsign      y = x / (1 + |x|)                     f' = 1 / (1 + |x|)²

torch's own float64 Hardsigmoid backward multiplies by 1/6 rounded to float32 (0.16666667163..., a relative error
of 3.0e-8); the slope here is the float64 1/6.

Where a branch is not taken its exponential is evaluated at a clamped x, so that it cannot overflow into an inf
that double backward would turn into nan. Constants in the derivatives are literals (see ``_gelu_slope``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from manualbp.functional._dispatch import apply, function
from manualbp.functional._inplace import CopyFunction, vmap_in_place
from manualbp.functional._validation import check_floating, check_inplace_sign, check_inplace_target, check_real

Params = tuple[float, ...]


@dataclass(frozen=True)
class Elementwise:
    """y = f(x, *params) elementwise: ``forward`` is torch's op, ``slope`` is f'(x) in differentiable torch ops."""

    name: str
    forward: Callable[[torch.Tensor, Params], torch.Tensor]
    slope: Callable[[torch.Tensor, Params], torch.Tensor]
    #: f' as a function of y = f(x), where it is one (the in-place op then saves y alone)
    output_slope: Callable[[torch.Tensor, Params], torch.Tensor] | None = None


def _hardswish_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    return torch.where(x < -3, 0.0, torch.where(x <= 3, x / 3 + 0.5, 1.0))


def _hardsigmoid_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    return ((x > -3) & (x < 3)).to(x.dtype) / 6


def _mish_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * torch.sigmoid(x) * (1 - t * t)


def _softplus_slope(x: torch.Tensor, params: Params) -> torch.Tensor:
    beta, threshold = params
    scaled = x * beta
    return torch.where(scaled > threshold, 1.0, torch.sigmoid(scaled))


def _selu_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    # λ = 1.0507009873554805, λα = 1.0507009873554805 · 1.6732632423543772
    return torch.where(x > 0, 1.0507009873554805, 1.7580993408473766 * torch.exp(x.clamp(max=0)))


def _selu_output_slope(y: torch.Tensor, _: Params) -> torch.Tensor:
    return torch.where(y > 0, 1.0507009873554805, y + 1.7580993408473766)


def _celu_slope(x: torch.Tensor, params: Params) -> torch.Tensor:
    (alpha,) = params
    return torch.where(x > 0, 1.0, torch.exp(x.clamp(max=0) / alpha))


def _celu_output_slope(y: torch.Tensor, params: Params) -> torch.Tensor:
    (alpha,) = params
    return torch.where(y > 0, 1.0, y / alpha + 1)


def _logsigmoid_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    return torch.sigmoid(-x)


def _softsign_slope(x: torch.Tensor, _: Params) -> torch.Tensor:
    return (1 + x.abs()).square().reciprocal()


HARDSWISH = Elementwise("Hardswish", lambda x, _: F.hardswish(x), _hardswish_slope)
HARDSIGMOID = Elementwise("Hardsigmoid", lambda x, _: F.hardsigmoid(x), _hardsigmoid_slope)
MISH = Elementwise("Mish", lambda x, _: F.mish(x), _mish_slope)
SOFTPLUS = Elementwise("Softplus", lambda x, p: F.softplus(x, p[0], p[1]), _softplus_slope)
SELU = Elementwise("SELU", lambda x, _: F.selu(x), _selu_slope, _selu_output_slope)
CELU = Elementwise("CELU", lambda x, p: F.celu(x, p[0]), _celu_slope, _celu_output_slope)
LOGSIGMOID = Elementwise("LogSigmoid", lambda x, _: F.logsigmoid(x), _logsigmoid_slope)
SOFTSIGN = Elementwise("Softsign", lambda x, _: F.softsign(x), _softsign_slope)


def elementwise_function(op: Elementwise) -> type[torch.autograd.Function]:
    """The Function of y = f(x): forward torch's op, backward dL/dx = dL/dy ⊙ f'(x), jvp ẏ = f'(x) ⊙ ẋ."""
    forward, slope = op.forward, op.slope

    class ElementwiseFunction(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, params):
            """y = f(x), torch's own op (``params``: its constants, such as Softplus's beta and threshold)."""
            return forward(x, params)

        @staticmethod
        def setup_context(ctx, inputs, output):
            """Keeps x, which f'(x) reads, and the constants."""
            ctx.save_for_backward(inputs[0])
            ctx.save_for_forward(inputs[0])
            ctx.params = inputs[1]

        @staticmethod
        def backward(ctx, grad_out):
            """dL/dx = dL/dy ⊙ f'(x)."""
            (x,) = ctx.saved_tensors
            return grad_out * slope(x, ctx.params), None

        @staticmethod
        def jvp(ctx, x_dot, _):
            """ẏ = f'(x) ⊙ ẋ."""
            (x,) = ctx.saved_tensors
            return x_dot * slope(x, ctx.params)

    return _named(ElementwiseFunction, op, f"{op.name}Function", "dL/dx = dL/dy ⊙ f'(x)")


def elementwise_inplace_function(op: Elementwise) -> type[torch.autograd.Function]:
    """The Function of y = f(x₀) written into x, x₀ a copy of x: dL/dx₀ = dL/dy ⊙ f'(x₀), dL/dx = 0."""
    forward, slope = op.forward, op.slope

    class ElementwiseInplaceFunction(torch.autograd.Function):
        generate_vmap_rule = False

        @staticmethod
        def forward(x, x_before, params):
            """y = f(x₀) written into x (x₀ = ``x_before``, a copy of x)."""
            x.copy_(forward(x_before, params))
            return x  # x itself, not copy_'s result, for Dynamo to see the dirty input returned

        @staticmethod
        def setup_context(ctx, inputs, output):
            """Marks x overwritten; keeps x₀, which f'(x₀) reads, and the constants."""
            ctx.mark_dirty(inputs[0])
            ctx.save_for_backward(inputs[1])
            ctx.save_for_forward(inputs[1])
            ctx.params = inputs[2]

        @staticmethod
        def backward(ctx, grad_out):
            """dL/dx₀ = dL/dy ⊙ f'(x₀); dL/dx = 0 (x's old value is gone, y replaced it)."""
            (x_before,) = ctx.saved_tensors
            # dL/dx = 0 as a tensor, not None: when x is a view, CopySlices passes the rest of its base's gradient on
            return torch.zeros_like(grad_out), grad_out * slope(x_before, ctx.params), None

        @staticmethod
        def jvp(ctx, x_dot, x_before_dot, _):
            """ẏ = f'(x₀) ⊙ ẋ₀, written into ẋ when x carries a tangent."""
            (x_before,) = ctx.saved_tensors
            y_dot = x_before_dot * slope(x_before, ctx.params)  # x₀ carries x's tangent: it is copy(x)
            return y_dot if x_dot is None else x_dot.copy_(y_dot)

        @staticmethod
        def vmap(info, in_dims, x, x_before, params):
            """Under ``vmap``: the op on the batched tensors, refused where a batched y would go into an unbatched x."""
            return vmap_in_place(cls, in_dims, x, x_before, params)

    cls = _named(ElementwiseInplaceFunction, op, f"{op.name}InplaceFunction", "written into x (a copy x₀ kept)")
    return cls


def elementwise_output_inplace_function(op: Elementwise) -> type[torch.autograd.Function]:
    """The Function of y = f(x) written into x, f' read from y: dL/dx = dL/dy ⊙ f'(y) (``op.output_slope``)."""
    if op.output_slope is None:
        raise ValueError(f"{op.name}: f' is not a function of the output")
    forward, output_slope = op.forward, op.output_slope

    class ElementwiseOutputInplaceFunction(torch.autograd.Function):
        generate_vmap_rule = False

        @staticmethod
        def forward(x, params):
            """y = f(x) written into x."""
            x.copy_(forward(x, params))
            return x

        @staticmethod
        def setup_context(ctx, inputs, output):
            """Marks x overwritten; keeps y, which f' is read from, and the constants."""
            ctx.mark_dirty(inputs[0])
            ctx.save_for_backward(output)
            ctx.save_for_forward(output)
            ctx.params = inputs[1]

        @staticmethod
        def backward(ctx, grad_out):
            """dL/dx = dL/dy ⊙ f'(x), f'(x) written as a function of y."""
            (y,) = ctx.saved_tensors
            return grad_out * output_slope(y, ctx.params), None

        @staticmethod
        def jvp(ctx, x_dot, _):
            """ẏ = f'(x) ⊙ ẋ, written into ẋ."""
            (y,) = ctx.saved_tensors
            return x_dot.copy_(x_dot * output_slope(y, ctx.params))

        @staticmethod
        def vmap(info, in_dims, x, params):
            """Under ``vmap``: the op on the batched tensor, refused where a batched y would go into an unbatched x."""
            return vmap_in_place(cls, in_dims, x, params)

    cls = _named(ElementwiseOutputInplaceFunction, op, f"{op.name}InplaceFunction", "written into x (y kept)")
    return cls


def _named(cls: type, op: Elementwise, name: str, what: str) -> type[torch.autograd.Function]:
    cls.__name__ = cls.__qualname__ = name
    cls.__doc__ = f"{op.name}, elementwise, {what}; f'(x) is ``{op.slope.__name__}`` (see the module docstring)."
    return function(cls)


HardswishFunction = elementwise_function(HARDSWISH)
HardswishInplaceFunction = elementwise_inplace_function(HARDSWISH)
HardsigmoidFunction = elementwise_function(HARDSIGMOID)
HardsigmoidInplaceFunction = elementwise_inplace_function(HARDSIGMOID)
MishFunction = elementwise_function(MISH)
MishInplaceFunction = elementwise_inplace_function(MISH)
SoftplusFunction = elementwise_function(SOFTPLUS)
SELUFunction = elementwise_function(SELU)
SELUInplaceFunction = elementwise_output_inplace_function(SELU)
CELUFunction = elementwise_function(CELU)
CELUInplaceFunction = elementwise_output_inplace_function(CELU)
LogSigmoidFunction = elementwise_function(LOGSIGMOID)
SoftsignFunction = elementwise_function(SOFTSIGN)


def _apply(
    op: str,
    function_cls: type[torch.autograd.Function],
    inplace_cls: type[torch.autograd.Function] | None,
    input: torch.Tensor,
    params: Params = (),
    inplace: bool = False,
    reads_output: bool = False,
) -> torch.Tensor:
    """``function_cls`` applied to ``input``, or with ``inplace`` ``inplace_cls``: to ``input`` alone where it
    ``reads_output`` (``elementwise_output_inplace_function``), else to ``input`` and a copy of it."""
    check_floating(op, input=input)
    if inplace and inplace_cls is not None:
        check_inplace_target(op, input)
        if reads_output:
            return apply(inplace_cls, input, params)
        return apply(inplace_cls, input, apply(CopyFunction, input), params)
    return apply(function_cls, input, params)


def hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.hardswish``; ``inplace=True`` overwrites and returns ``input``."""
    return _apply("hardswish", HardswishFunction, HardswishInplaceFunction, input, inplace=inplace)


def hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.hardsigmoid``; ``inplace=True`` overwrites and returns ``input``."""
    return _apply("hardsigmoid", HardsigmoidFunction, HardsigmoidInplaceFunction, input, inplace=inplace)


def mish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.mish``; ``inplace=True`` overwrites and returns ``input``."""
    return _apply("mish", MishFunction, MishInplaceFunction, input, inplace=inplace)


def softplus(input: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.softplus``: log(1 + e^{βx}) / β, x where βx > threshold."""
    check_real("softplus", "beta", beta)
    check_real("softplus", "threshold", threshold)
    return _apply("softplus", SoftplusFunction, None, input, (float(beta), float(threshold)))


def selu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.selu``; ``inplace=True`` overwrites and returns ``input``."""
    return _apply("selu", SELUFunction, SELUInplaceFunction, input, inplace=inplace, reads_output=True)


def celu(input: torch.Tensor, alpha: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.celu``; ``inplace=True`` overwrites and returns ``input``."""
    check_real("celu", "alpha", alpha)
    if alpha == 0:
        raise ValueError("celu: alpha must not be 0 (ZeroDivisionError in torch.nn.CELU)")
    if inplace:
        check_inplace_sign("celu", "alpha", alpha, input)
    return _apply("celu", CELUFunction, CELUInplaceFunction, input, (float(alpha),), inplace, reads_output=True)


def logsigmoid(input: torch.Tensor) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.logsigmoid``."""
    return _apply("logsigmoid", LogSigmoidFunction, None, input)


def softsign(input: torch.Tensor) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.softsign``."""
    return _apply("softsign", SoftsignFunction, None, input)
