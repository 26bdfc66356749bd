"""Affine map y = x W^T + b with its hand-written backward (its reduction through ``functional._reduction``)."""

from __future__ import annotations

import math

import torch

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, capturing_graph, function
from manualbp.functional._reduction import REDUCTION, OuterTerms
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError, check_floating, check_same_device, check_same_dtype, shape_str


@function
class LinearFunction(torch.autograd.Function):
    """y = x W^T + b.     x: (*, in)   W: (out, in)   b: (out,) or None   y: (*, out)

    With G = dL/dy flattened to (M, out) and X = x flattened to (M, in), M = prod(*):

        dL/dx = dL/dy · W          (*, out) @ (out, in) -> (*, in)
        dL/dW = G^T · X            summed over every leading dim
        dL/db = Σ_M G

    Forward mode (tangents ẋ, Ẇ, ḃ; an absent one is zero):

        ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return affine(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return linear_grads(ctx, grad_out, x, weight)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot):
        # Unlike the other Functions with several tensor inputs, this one keeps torch's default
        # materialisation (an absent tangent arrives as zeros), so that backward needs no None check for
        # grad_out; the None branches of linear_tangent cost nothing.
        x, weight = ctx.saved_tensors
        return linear_tangent(x, weight, x_dot, weight_dot, bias_dot)


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)`` as a tensor of its own, for a Function's forward to return.

    For x of 3+ dims with a bias, torch's linear is one addmm on x folded to 2-D and returns a view of its result.
    Autograd forbids writing in place into a view made inside a Function's forward ("Output 0 of LinearFunction
    is a view and is being modified inplace"), where torch's own Linear output may be written
    (``ReLU(inplace=True)`` after a Linear on a sequence, as in swin_v2's position-bias MLP); ``_unsafe_view``
    gives the same memory and shape without the view relation (what torch's matmul returns itself). While a graph
    is captured always (Dynamo cannot trace ``_is_view``; a no-op for the compiler otherwise)."""
    y = torch.nn.functional.linear(x, weight, bias)
    return torch.ops.aten._unsafe_view(y, y.shape) if capturing_graph() or y._is_view() else y


def linear_grads(ctx, grad_out, x, weight):
    """dL/dx, dL/dW, dL/db of y = x W^T + b from G = dL/dy, each only if ``ctx.needs_input_grad`` asks for it.

    Shared by every Function whose last step is this affine map (``LinearFunction``, and
    ``LinearReLUFunction`` with G = dL/dy ⊙ [y > 0]); ``ctx.has_bias`` says whether b exists.
    dL/dW and dL/db are the reduction: ``linear_reduction``, or the per-sample mode in ``REDUCTION``.
    """
    x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # autocast: same precision as the forward
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _in_input_layout(grad_out.matmul(weight), x)
    needs = (ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    if not any(needs):
        return grad_x, None, None
    if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
        return (grad_x, *REDUCTION.mode.reduce(ctx, LinearTerms(grad_out, x, needs)))
    return (grad_x, *linear_reduction(grad_out, x, *needs))


def linear_reduction(grad_out, x, needs_weight, needs_bias):
    """dL/dW = Gᵀ · X and dL/db = Σ G over every leading dim (None where not asked for); G: (*, out), x: (*, in)."""
    if grad_out.dim() == 2 and x.dim() == 2:
        g2d, x2d = grad_out, x
    else:
        rows = math.prod(grad_out.shape[:-1])  # not -1: a size-0 dim would make it ambiguous
        g2d, x2d = grad_out.reshape(rows, grad_out.shape[-1]), x.reshape(rows, x.shape[-1])
    grad_w = g2d.t().matmul(x2d) if needs_weight else None
    grad_b = g2d.sum(0) if needs_bias else None
    return grad_w, grad_b


class LinearTerms(OuterTerms):
    """The reduction of y = x Wᵀ + b, for ``REDUCTION.mode``. G: (N, *, out), x: (N, *, in), T = prod(*):

    dL/dW_n = Σ_t G_ntᵀ x_nt  (out, in)          dL/db_n = Σ_t G_nt
    """

    def __init__(self, grad_out: torch.Tensor, x: torch.Tensor, needs: tuple[bool, ...]) -> None:
        self.grad_out, self.x, self.needs = grad_out, x, needs
        self.batched = x.dim() >= 2
        self.batch = x.shape[0] if self.batched else 1
        self.weight_shape = torch.Size((grad_out.shape[-1], x.shape[-1]))
        self.positions = math.prod(x.shape[1:-1])  # not -1: N or T may be 0
        self.block = (grad_out.shape[-1], x.shape[-1])
        self.leading = tuple(x.shape[:2]) if x.dim() >= 3 else None

    def time_major(self) -> LinearTerms:
        """The same terms with dim 1 of G and x as the batch: a time-major sequence (T, N, *, features)."""
        terms = LinearTerms(self.grad_out.movedim(1, 0), self.x.movedim(1, 0), self.needs)
        terms.leading = self.leading
        return terms

    def factors(self, g):
        n, t, (out_features, in_features) = self.batch, self.positions, self.weight_shape
        return g.reshape(n, 1, t, out_features), self.x.reshape(n, 1, t, in_features)

    def bias_per_sample(self, g):
        return g.reshape(self.batch, self.positions, self.weight_shape[0]).sum(1)

    def plain(self, g):
        return linear_reduction(g, self.x, *self.needs)


def _in_input_layout(grad_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dx (row-major) laid out as torch's matmul gives it: column-major when x is a column-major matrix or
    folds into one without a copy (a transposed input; a channels_last one with a single position), row-major
    otherwise. A copy only in the column-major case."""
    rows = math.prod(x.shape[:-1])
    if x.dim() < 2 or x.is_contiguous() or rows < 2 or torch._C._functorch.is_batchedtensor(x):
        return grad_x
    try:
        folded = x.view(rows, x.shape[-1])
    except RuntimeError:  # no 2-D view: torch folds a copy, row-major
        return grad_x
    if folded.stride(0) != 1:
        return grad_x
    return grad_x.reshape(rows, -1).t().contiguous().t().view(x.shape)


def linear_tangent(x, weight, x_dot, weight_dot, bias_dot):
    """ẋ Wᵀ + x Ẇᵀ + ḃ, with None for an absent tangent (None if all are absent)."""
    y_dot = tangent_sum(
        None if x_dot is None else x_dot.matmul(weight.t()),
        None if weight_dot is None else x.matmul(weight_dot.t()),
    )
    if bias_dot is None:
        return y_dot
    if y_dot is None:  # only the bias moves: ḃ on every row
        return bias_dot.expand(x.shape[:-1] + bias_dot.shape)
    return y_dot + bias_dot


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.linear``: ``input @ weight.T + bias``.

    input: (*, in_features)   weight: (out_features, in_features)   bias: (out_features,)
    Under ``torch.autocast`` all three are cast to the autocast dtype first (``_autocast``).
    """
    input, weight, bias = autocast_inputs("linear", input, weight, bias)
    check_linear_args("linear", input, weight, bias)
    return apply(LinearFunction, input, weight, bias)


def check_linear_args(op: str, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The checks of ``linear``'s arguments, shared with the fused ops that start with a linear map. The common
    case (floating tensors of one dtype and device, matching shapes) is recognised first, in one expression: each
    check below would pass."""
    if (
        isinstance(input, torch.Tensor)
        and isinstance(weight, torch.Tensor)
        and input.is_floating_point()
        and weight.dtype == input.dtype
        and weight.device == input.device
        and weight.dim() == 2
        and input.dim() > 0
        and input.shape[-1] == weight.shape[1]
        and (
            bias is None
            or (
                isinstance(bias, torch.Tensor)
                and bias.dtype == input.dtype
                and bias.device == input.device
                and bias.shape == (weight.shape[0],)
            )
        )
    ):
        return
    check_floating(op, input=input, weight=weight, bias=bias)
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    check_same_device(op, input=input, weight=weight, bias=bias)
    if weight.dim() != 2:
        raise InputError(f"{op}: expected a 2-D weight (out_features, in_features), got shape {shape_str(weight)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise InputError(
            f"{op}: input of shape {shape_str(input)} does not match weight of shape {shape_str(weight)}: "
            f"the last dimension of input must be in_features={weight.shape[1]}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise InputError(
            f"{op}: bias of shape {shape_str(bias)} does not match weight of shape {shape_str(weight)}: "
            f"expected ({weight.shape[0]},)"
        )
