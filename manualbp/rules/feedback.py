"""The seam of the learning rules: a parametrised layer whose error goes back through a matrix M, not W.

A parametrised layer's backward does two separate things with G = dL/dy:

* **feedback**: dL/dx = G · W, the error sent to the layer below;
* **reduction**: dL/dW = Σ_n G_nᵀ x_n, the weight gradient (and dL/db = Σ_n G_n).

A learning rule changes only the feedback: W is replaced by a matrix M of W's shape (a fixed random B for
feedback alignment, sign(W) for sign symmetry, W plus noise for a user's rule...). The layers' own
backward code already keeps the two apart: ``linear_grads`` (Linear, LinearReLU) and ``conv_grads``
(Conv1d, Conv2d, Conv3d) read the weight *only* to send the error back, and the reduction reads nothing of it but its
shape. So the Function of a layer under a rule is the layer's Function with M saved where W was: the
same gradient code computes dL/dx = G · M and the unchanged dL/dW, with no second copy of any formula.
One Function per layer kind, here, for every rule; a rule is written once, as the choice of M
(``Rule.feedback_matrix``), and applies to Linear, LinearReLU and the convolutions alike (a recurrent layer joins
by taking one M per weight it sends the error back through). M = None sends no error back at all while
the layer still reduces its own G (direct feedback alignment's layers, whose error comes from the output).

The plain layers (``LinearFunction``, ``LinearReLUFunction``, ``ConvFunction``) are untouched: a layer
with no rule, or with backprop, runs exactly the code it ran before rules existed.

Forward mode follows the rule's pseudo-Jacobian, the transpose of what backward applies (ẏ = ẋ Mᵀ + x Ẇᵀ
+ ḃ), so that ``jvp`` and ``vjp`` of a layer describe the same linear map, as they do for backprop (with
M = W it is the true derivative). No gradient flows to M: it is a constant of the step (a buffer, or a
function of W's values computed outside the graph).

These Functions live here rather than in ``manualbp.functional`` because they exist for the rules; they
are decorated with ``@function`` like every op (jvp-less twin under ``torch.compile``, eager twin).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import InputError, check_floating, check_same_device, check_same_dtype, shape_str
from manualbp.functional.conv import _conv, conv_arguments, conv_grads, conv_memory_format, conv_tangent
from manualbp.functional.linear import check_linear_args, linear_grads, linear_tangent


class _Needs(NamedTuple):
    """The part of a ctx that ``linear_grads`` and ``conv_grads`` read, with dL/dx not asked for: how a
    Function with no feedback (M = None) reduces without sending the error back. ``autograd_node`` is the
    real ctx, the graph node whose inputs the reduction seam follows to the parameters (``graph_node``)."""

    needs_input_grad: tuple[bool, ...]
    has_bias: bool
    geometry: tuple | None = None
    layout: torch.memory_format | None = None
    autograd_node: object = None


def _grads_ctx(ctx):
    """``ctx`` itself when the Function sends the error back, else ``_Needs`` with dL/dx not asked for."""
    if ctx.sends_feedback:
        return ctx
    return _Needs(
        (False, *ctx.needs_input_grad[1:]),
        ctx.has_bias,
        getattr(ctx, "geometry", None),
        getattr(ctx, "layout", None),
        ctx,
    )


def _matrix(weight, feedback):
    """The tensor saved in W's place: M, or W itself when there is no feedback (only its shape is then read)."""
    return weight if feedback is None else feedback


@function
class LinearFeedbackFunction(torch.autograd.Function):
    """y = x Wᵀ + b, with the error sent back through M instead of W.
    x: (*, in)   W, M: (out, in)   b: (out,) or None   y: (*, out)

    With G = dL/dy flattened to (rows, out) and X = x flattened to (rows, in):

        dL/dx = dL/dy · M          (*, out) @ (out, in) -> (*, in);  M = None: no error sent back (None)
        dL/dW = Gᵀ · X             summed over every leading dim (the reduction of ``LinearFunction``)
        dL/db = Σ_rows G           dL/dM: none (M is a constant of the step)

    ``linear_grads`` with M in W's place: it reads the weight only for dL/dx. Forward mode:
    ẏ = ẋ Mᵀ + x Ẇᵀ + ḃ (no ẋ term when M is None).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, feedback):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback = inputs
        ctx.save_for_backward(x, _matrix(weight, feedback))
        ctx.save_for_forward(x, _matrix(weight, feedback))
        ctx.has_bias = bias is not None
        ctx.sends_feedback = feedback is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, matrix = ctx.saved_tensors
        return (*linear_grads(_grads_ctx(ctx), grad_out, x, matrix), None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, feedback_dot):
        x, matrix = ctx.saved_tensors
        return linear_tangent(x, matrix, x_dot if ctx.sends_feedback else None, weight_dot, bias_dot)


@function
class LinearReLUFeedbackFunction(torch.autograd.Function):
    """y = max(x Wᵀ + b, 0), with the error sent back through M instead of W.
    x: (*, in)   W, M: (out, in)   b: (out,) or None   y: (*, out)

    With the mask [y > 0] and G = dL/dy ⊙ [y > 0] (as in ``LinearReLUFunction``):

        dL/dx = G · M  (M = None: none)     dL/dW = Gᵀ · X  (summed over every leading dim)     dL/db = Σ G

    Forward mode:  ẏ = (ẋ Mᵀ + x Ẇᵀ + ḃ) ⊙ [y > 0]  (no ẋ term when M is None)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, feedback):
        return F.linear(x, weight, bias).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback = inputs
        ctx.save_for_backward(x, _matrix(weight, feedback), output)
        ctx.save_for_forward(x, _matrix(weight, feedback), output)
        ctx.has_bias = bias is not None
        ctx.sends_feedback = feedback is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, matrix, y = ctx.saved_tensors
        return (*linear_grads(_grads_ctx(ctx), grad_out * y.sign(), x, matrix), None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, feedback_dot):
        x, matrix, y = ctx.saved_tensors
        x_dot = x_dot if ctx.sends_feedback else None
        return linear_tangent(x, matrix, x_dot, weight_dot, bias_dot) * y.sign()


@function
class ConvFeedbackFunction(torch.autograd.Function):
    """y = conv{k}d(x, W) + b (k = 1, 2, 3), with the error sent back through M instead of W (M: W's shape
    (O, C/G, *K)). Index conventions, padding and geometry are ``ConvFunction``'s.

        dL/dx = conv_transpose{k}d(dL/dy, M)   (same stride, padding, dilation, groups; cropped to x's size;
                                                M = None: no error sent back)
        dL/dW[o, c, u] = Σ_{n, i} dL/dy[n, o, i] · x̄[n, γ(o)·C/G + c, u·d + i·s]
        dL/db[o] = Σ_{n, i} dL/dy[n, o, i]          dL/dM: none (M is a constant of the step)

    ``conv_grads`` with M in W's place: it reads the weight only for dL/dx. Gradients are in the layout
    torch gives a convolution's: dL/dW by x and W, dL/dx by x and M (the kernel it goes back through).
    Forward mode: ẏ = conv(ẋ, M) + conv(x, Ẇ) + ḃ (no ẋ term when M is None).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, feedback, stride, padding, dilation, groups):
        return _conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, _matrix(weight, feedback))
        ctx.save_for_forward(x, _matrix(weight, feedback))
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.has_bias = bias is not None
        ctx.sends_feedback = feedback is not None
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.output_shape = output.shape
        ctx.layout = conv_memory_format(x, weight, output)
        ctx.input_layout = conv_memory_format(x, _matrix(weight, feedback), output)

    @staticmethod
    def backward(ctx, grad_out):
        x, matrix = ctx.saved_tensors
        grads = conv_grads(_grads_ctx(ctx), grad_out, x, matrix, input_layout=ctx.input_layout)
        return (*grads, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, *_):
        x, matrix = ctx.saved_tensors
        if not ctx.sends_feedback and x_dot is not None:  # ẋ contributes nothing, but ẏ must exist: a zero one
            x_dot = torch.zeros_like(x_dot)
        return conv_tangent(ctx, x, matrix, x_dot, weight_dot, bias_dot)


def _check_feedback(op: str, weight: torch.Tensor, feedback: torch.Tensor | None) -> None:
    if feedback is None:
        return
    if not isinstance(feedback, torch.Tensor):
        raise TypeError(f"{op}: feedback must be a Tensor of weight's shape, got {type(feedback).__name__}")
    check_floating(op, feedback=feedback)
    if feedback.shape != weight.shape:
        raise InputError(
            f"{op}: feedback of shape {shape_str(feedback)} does not match weight of shape {shape_str(weight)}: "
            "the error goes back through a matrix of the weight's shape"
        )


def _apply_affine_feedback(op, function_cls, input, weight, bias, feedback) -> torch.Tensor:
    """Autocast, check and apply ``function_cls`` (an affine map's Function with a feedback matrix)."""
    input, weight, bias, feedback = autocast_inputs("linear", input, weight, bias, feedback)
    check_linear_args(op, input, weight, bias)
    _check_feedback(op, weight, feedback)
    check_same_dtype(op, weight=weight, feedback=feedback)
    check_same_device(op, weight=weight, feedback=feedback)
    return apply(function_cls, input, weight, bias, feedback)


def linear_feedback(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, feedback: torch.Tensor | None
) -> torch.Tensor:
    """``linear(input, weight, bias)`` whose backward sends the error back through ``feedback`` (weight's
    shape) instead of ``weight``: dL/dx = dL/dy · feedback (None: no error sent back); dL/dW, dL/db as
    ``linear``'s."""
    return _apply_affine_feedback("linear_feedback", LinearFeedbackFunction, input, weight, bias, feedback)


def linear_relu_feedback(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, feedback: torch.Tensor | None
) -> torch.Tensor:
    """``linear_relu(input, weight, bias)`` whose backward sends the error back through ``feedback`` (None:
    no error sent back)."""
    return _apply_affine_feedback("linear_relu_feedback", LinearReLUFeedbackFunction, input, weight, bias, feedback)


def _conv_feedback(
    op: str,
    rank: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    feedback: torch.Tensor | None,
    stride: int | tuple[int, ...],
    padding: str | int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """Check, autocast and apply ``ConvFeedbackFunction`` over ``rank`` spatial dims (errors name ``op``)."""
    input, weight, bias, stride, pad, dilation, groups = conv_arguments(
        op, rank, input, weight, bias, stride, padding, dilation, groups
    )
    _check_feedback(op, weight, feedback)
    (feedback,) = autocast_inputs("conv2d", feedback)  # conv1d, conv2d and conv3d: the same autocast lists
    check_same_dtype(op, weight=weight, feedback=feedback)
    check_same_device(op, weight=weight, feedback=feedback)
    return apply(ConvFeedbackFunction, input, weight, bias, feedback, stride, pad, dilation, groups)


def conv1d_feedback(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    feedback: torch.Tensor | None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``conv1d(input, weight, bias, ...)`` whose backward sends the error back through ``feedback`` (weight's
    shape) instead of ``weight``: dL/dx = conv_transpose1d(dL/dy, feedback) (None: no error sent back);
    dL/dW, dL/db as ``conv1d``'s."""
    return _conv_feedback("conv1d_feedback", 1, input, weight, bias, feedback, stride, padding, dilation, groups)


def conv2d_feedback(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    feedback: torch.Tensor | None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``conv2d(input, weight, bias, ...)`` whose backward sends the error back through ``feedback`` (weight's
    shape) instead of ``weight``: dL/dx = conv_transpose2d(dL/dy, feedback) (None: no error sent back);
    dL/dW, dL/db as ``conv2d``'s."""
    return _conv_feedback("conv2d_feedback", 2, input, weight, bias, feedback, stride, padding, dilation, groups)


def conv3d_feedback(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    feedback: torch.Tensor | None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``conv3d(input, weight, bias, ...)`` whose backward sends the error back through ``feedback`` (weight's
    shape) instead of ``weight``: dL/dx = conv_transpose3d(dL/dy, feedback) (None: no error sent back);
    dL/dW, dL/db as ``conv3d``'s."""
    return _conv_feedback("conv3d_feedback", 3, input, weight, bias, feedback, stride, padding, dilation, groups)


__all__ = [
    "ConvFeedbackFunction",
    "LinearFeedbackFunction",
    "LinearReLUFeedbackFunction",
    "conv1d_feedback",
    "conv2d_feedback",
    "conv3d_feedback",
    "linear_feedback",
    "linear_relu_feedback",
]
