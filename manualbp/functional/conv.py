"""2-D convolution (cross-correlation, as in torch) with a hand-written backward.

Index conventions, stated once. x: (N, C, H, W), W: (O, C/G, kh, kw), b: (O,), y: (N, O, Ho, Wo);
G groups, stride s, dilation d, zero padding p_top/p_bottom, p_left/p_right (the two sides differ only
for padding="same" with an even effective kernel, where torch puts the extra row/column at the
bottom/right). x̄ is x zero-padded. For output channel o in group γ = o // (O/G):

    y[n, o, i, j] = b[o] + Σ_{c, u, v} W[o, c, u, v] · x̄[n, γ·C/G + c, i·s + u·d, j·s + v·d]

The backward is two forward primitives, measured faster on the CPU than im2col (unfold + matmul, fold)
in ``experiments/conv_backward_timing.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, function
from manualbp.functional._layout import memory_format_of
from manualbp.functional._reduction import REDUCTION, OuterTerms
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    InputError,
    check_dim,
    check_floating,
    check_same_device,
    check_same_dtype,
    int_pair,
    shape_str,
)

Pair = tuple[int, int]
#: A convolution's (stride, ((top, bottom), (left, right)) padding, dilation, groups), as ``ctx.geometry`` holds it.
Geometry = tuple[Pair, tuple[Pair, Pair], Pair, int]


def _pad_far_side(x: torch.Tensor, padding: tuple[Pair, Pair]) -> torch.Tensor:
    """x with the excess of the bottom/right padding over the top/left one added (zeros).

    Convolving the result with the symmetric padding (top, left) is the asymmetric convolution.
    """
    (top, bottom), (left, right) = padding
    if bottom == top and right == left:
        return x
    return F.pad(x, (0, right - left, 0, bottom - top))


@function
class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, W) + b.   x: (N, C, H, W) or (C, H, W)   W: (O, C/G, kh, kw)   b: (O,) or None
    y: (N, O, Ho, Wo) or (O, Ho, Wo);   padding = ((top, bottom), (left, right)).

    y[n, o, i, j] = b[o] + Σ_{c, u, v} W[o, c, u, v] · x̄[n, γ(o)·C/G + c, i·s + u·d, j·s + v·d]

    dL/dx̄[n, γ·C/G + c, a, e] = Σ_{o ∈ γ} Σ_{u, v, i, j : i·s + u·d = a, j·s + v·d = e} dL/dy[n, o, i, j] W[o, c, u, v]
        the transposed convolution of dL/dy with the same W (stride s, dilation d, groups G), and
        dL/dx is dL/dx̄ without its padding: ``conv_transpose2d(dL/dy, W, stride=s, padding=(top, left),
        output_padding=op, groups=G, dilation=d)``, where op adds back the rows/columns that the
        stride's floor left out of every window (and the far-side excess of "same"), cropped to (H, W).

    dL/dW[o, c, u, v] = Σ_{n, i, j} dL/dy[n, o, i, j] · x̄[n, γ(o)·C/G + c, u·d + i·s, v·d + j·s]
        the correlation of x with dL/dy: a conv2d whose batch is x's channels and whose channels are
        x's batch, with dL/dy (batch and channels swapped) as the kernel, stride and dilation swapped,
        one group per convolution group; the result (C/G, O, ≥kh, ≥kw) is cropped to (kh, kw) and
        transposed.

    dL/db[o] = Σ_{n, i, j} dL/dy[n, o, i, j]

    Forward mode (tangents ẋ, Ẇ, ḃ; an absent one is zero), conv being bilinear in (x, W):
        ẏ = conv2d(ẋ, W) + conv2d(x, Ẇ) + ḃ      (same stride, padding, dilation, groups)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return _conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.output_shape = output.shape
        ctx.layout = conv_memory_format(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return (*conv2d_grads(ctx, grad_out, x, weight), None, None, None, None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, *_):
        x, weight = ctx.saved_tensors
        return conv2d_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot)


def conv2d_grads(ctx, grad_out, x, weight, input_layout=None):
    """dL/dx, dL/dW, dL/db of y = conv2d(x, W) + b from G = dL/dy (None when no gradient reached y), each only
    if ``ctx.needs_input_grad`` asks for it; ``ctx`` holds ``has_bias``, ``geometry`` and ``layout`` (the
    gradients' memory format; ``input_layout``, when given, dL/dx's).

    ``weight`` is read only to send the error back (dL/dx, the transposed convolution of G with it); dL/dW
    reads its shape alone. So a Function that saves another tensor of W's shape in its place sends the
    error back through that one instead (``manualbp.rules``: learning rules), and reduces as this one does.
    """
    if grad_out is None:
        return None, None, None
    x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # autocast: same precision as the forward
    unbatched = x.dim() == 3
    if unbatched:
        x, grad_out = x.unsqueeze(0), grad_out.unsqueeze(0)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        empty = x.numel() == 0  # no products to differentiate (an empty batch or no input channels)
        grad_x = torch.zeros_like(x) if empty else _input_grad(x, weight, grad_out, *ctx.geometry)
        grad_x = grad_x.contiguous(memory_format=ctx.layout if input_layout is None else input_layout)
        grad_x = grad_x.squeeze(0) if unbatched else grad_x
    needs = (ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    if REDUCTION.mode is not None and any(needs):  # per-sample gradients or clipping (manualbp.per_sample)
        terms = Conv2dTerms(grad_out, x, weight, ctx.geometry, ctx.layout, needs, batched=not unbatched)
        grad_w, grad_b = REDUCTION.mode.reduce(ctx, terms)
    elif any(needs):
        grad_w, grad_b = conv2d_reduction(grad_out, x, weight, ctx.geometry, ctx.layout, *needs)
    return grad_x, grad_w, grad_b


def conv2d_reduction(grad_out, x, weight, geometry, layout, needs_weight, needs_bias):
    """dL/dW (x correlated with G; in ``layout``) and dL/db = Σ_{n, i, j} G, None where not asked for; x and
    G batched. ``weight`` gives dL/dW's shape (and dtype) only."""
    grad_w = grad_b = None
    if needs_weight:
        empty = x.numel() == 0  # no products to differentiate (an empty batch or no input channels)
        grad_w = torch.zeros_like(weight) if empty else _weight_grad(x, weight, grad_out, *geometry)
        grad_w = grad_w.contiguous(memory_format=layout)
    if needs_bias:
        grad_b = grad_out.sum((0, 2, 3))
    return grad_w, grad_b


class Conv2dTerms(OuterTerms):
    """The reduction of y = conv2d(x, W) + b, for the reduction seam (``manualbp.functional._reduction.REDUCTION``).

    Per sample n and group γ, with P_nt the patch of x̄ that output position t = (i, j) reads (its C/G channels
    of group γ by kh by kw, flattened as W[o] is: ``unfold``) and G_nt = dL/dy[n, group γ's channels, i, j]:

        dL/dW_n[γ's rows] = Σ_t G_ntᵀ P_nt     (O/G, C/G·kh·kw)        dL/db_n[o] = Σ_{i, j} dL/dy[n, o, i, j]

    a sum of outer products over T = Ho·Wo positions, one block per group (``factors``, for the ghost norm).
    Materialised, all samples at once, it is ``_weight_grad``'s correlation with one group per sample and
    group (``_weight_grad(..., per_sample=True)``): measured 2x faster than unfold + matmul on LeNet-5's convolutions.
    ``plain`` is ``conv2d_reduction``.
    """

    def __init__(
        self,
        grad_out: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        geometry: Geometry,
        layout: torch.memory_format,
        needs: tuple[bool, ...],
        batched: bool,
    ) -> None:
        self.grad_out, self.x, self.weight, self.geometry, self.layout = grad_out, x, weight, geometry, layout
        self.needs, self.batched, self.batch = needs, batched, x.shape[0]
        self.weight_shape = weight.shape
        out_channels, per_group, kh, kw = weight.shape
        groups = geometry[3]
        self.positions = grad_out.shape[2] * grad_out.shape[3]
        self.block = (out_channels // groups, per_group * kh * kw)

    def factors(self, g):
        stride, padding, dilation, groups = self.geometry
        (top, _), (left, _) = padding
        n, channels = self.x.shape[:2]
        kh, kw = self.weight_shape[2:]
        if self.x.numel() == 0:
            patches = self.x.new_zeros(n, channels * kh * kw, self.positions)
        else:
            patches = F.unfold(_pad_far_side(self.x, padding), (kh, kw), dilation, (top, left), stride)
        patches = patches.reshape(n, groups, self.block[1], self.positions).transpose(-1, -2)
        return g.reshape(n, groups, self.block[0], self.positions).transpose(-1, -2), patches

    def weight_per_sample(self, g, out=None):  # small: into new memory
        if self.x.numel() == 0:
            return self.x.new_zeros(self.batch, *self.weight_shape)
        return _weight_grad(self.x, self.weight, g, *self.geometry, per_sample=True)

    def bias_per_sample(self, g):
        return g.sum((2, 3))

    def weight_layout(self, grad_w):
        return grad_w.contiguous(memory_format=self.layout)

    def plain(self, g):
        return conv2d_reduction(g, self.x, self.weight, self.geometry, self.layout, *self.needs)


def conv2d_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot):
    """ẏ = conv2d(ẋ, W) + conv2d(x, Ẇ) + ḃ (None for an absent tangent; None if all are absent); ``ctx`` holds
    ``geometry`` and ``output_shape``. Like ``conv2d_grads``, ``weight`` is the map ẋ goes through."""
    y_dot = tangent_sum(
        None if x_dot is None else _conv2d(x_dot, weight, None, *ctx.geometry),
        None if weight_dot is None else _conv2d(x, weight_dot, None, *ctx.geometry),
    )
    if bias_dot is None:
        return y_dot
    bias_dot = bias_dot.reshape(-1, 1, 1)
    # a fresh tensor, not an expanded view: a tangent must have the output's own layout
    return bias_dot.expand(ctx.output_shape).contiguous() if y_dot is None else y_dot + bias_dot


def conv_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """torch's layout for a convolution's output and all its gradients: channels_last when the (batched)
    input or the weight is channels_last, contiguous otherwise."""
    batched = x.unsqueeze(0) if x.dim() == 3 else x
    return (
        torch.channels_last
        if torch.channels_last in (memory_format_of(batched), memory_format_of(weight))
        else torch.contiguous_format
    )


def _input_grad(x, weight, grad_out, stride, padding, dilation, groups):
    """dL/dx of a batched conv: the transposed convolution of dL/dy (see Conv2dFunction)."""
    (top, bottom), (left, right) = padding
    h, w = x.shape[2:]
    kh, kw = weight.shape[2:]
    ho, wo = grad_out.shape[2:]
    # Rows (columns) of the padded input past the last window: (out - 1)·s + d·(k - 1) + 1 is
    # what conv_transpose2d covers, so output_padding makes up the rest of H + bottom - top.
    output_padding = tuple(
        size + hi - lo - ((out - 1) * s - 2 * lo + d * (k - 1) + 1)
        for size, (lo, hi), s, d, k, out in zip((h, w), padding, stride, dilation, (kh, kw), (ho, wo))
    )
    grad_x = F.conv_transpose2d(grad_out, weight, None, stride, (top, left), output_padding, groups, dilation)
    return grad_x[..., :h, :w] if bottom != top or right != left else grad_x


def _weight_grad(x, weight, grad_out, stride, padding, dilation, groups, per_sample=False):
    """dL/dW of a batched conv: x correlated with dL/dy, batch and channels swapped (see Conv2dFunction).

    With ``per_sample``, each sample's dL/dW, (N, O, C/G, kh, kw): the same correlation with the batch folded
    into the groups, one per (sample, group): x as (C/G, N·G, H, W), dL/dy as N·O kernels of one channel."""
    (top, _), (left, _) = padding
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    ho, wo = grad_out.shape[2:]
    xp = _pad_far_side(x, padding)
    hp, wp = xp.shape[2:]
    if per_sample:
        xg = xp.reshape(n * groups, cg, hp, wp).transpose(0, 1)  # channel n·G + γ holds sample n's group γ
        gg = grad_out.reshape(n * o, 1, ho, wo)  # kernel n·O + o: group n·G + o // (O/G), as conv2d pairs them
        grad_w = F.conv2d(xg, gg, None, dilation, (top, left), stride, n * groups)
        return grad_w[..., :kh, :kw].reshape(cg, n, o, kh, kw).permute(1, 2, 0, 3, 4)
    # batch <-> channels, group-major, so that conv2d's groups pair x's and dL/dy's groups
    xg = xp.reshape(n, groups, cg, hp, wp).permute(2, 1, 0, 3, 4).reshape(cg, groups * n, hp, wp)
    gg = grad_out.reshape(n, groups, o // groups, ho, wo).permute(1, 2, 0, 3, 4).reshape(o, n, ho, wo)
    grad_w = F.conv2d(xg, gg, None, dilation, (top, left), stride, groups)
    return grad_w[..., :kh, :kw].transpose(0, 1)


def _conv2d(x, weight, bias, stride, padding, dilation, groups):
    """torch's conv2d with padding ((top, bottom), (left, right)), possibly asymmetric."""
    (top, _), (left, _) = padding
    return F.conv2d(_pad_far_side(x, padding), weight, bias, stride, (top, left), dilation, groups)


def _resolve_padding(
    padding: str | int | tuple[int, ...], kernel: Pair, stride: Pair, dilation: Pair
) -> tuple[Pair, Pair]:
    """((top, bottom), (left, right)) from an int, a pair, "valid" or "same" (torch's split: the odd
    extra row/column of "same" goes to the bottom/right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise InputError(f"conv2d: padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
        if stride != (1, 1):
            raise InputError(f"conv2d: padding='same' is not supported for strided convolutions (stride={stride})")
        rows, cols = (d * (k - 1) for d, k in zip(dilation, kernel))
        return (rows // 2, rows - rows // 2), (cols // 2, cols - cols // 2)
    ph, pw = int_pair("conv2d", "padding", padding, 0)
    return (ph, ph), (pw, pw)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv2d`` (zero padding).

    input: (N, C, H, W) or (C, H, W)   weight: (O, C/groups, kh, kw)   bias: (O,)
    padding: an int, a pair, "valid" or "same" (stride 1 only).
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return apply(Conv2dFunction, *conv2d_arguments("conv2d", input, weight, bias, stride, padding, dilation, groups))


def conv2d_arguments(
    op: str,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, ...],
    padding: str | int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    groups: int,
) -> tuple:
    """``conv2d``'s arguments checked (errors name ``op``), cast under autocast, and resolved as
    ``Conv2dFunction`` takes them: (input, weight, bias, stride pair, ((top, bottom), (left, right)),
    dilation pair, groups). Shared with the convolution of the learning rules (``manualbp.rules``)."""
    check_floating(op, input=input, weight=weight, bias=bias)
    input, weight, bias = autocast_inputs("conv2d", input, weight, bias)
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    check_same_device(op, input=input, weight=weight, bias=bias)
    check_dim(op, "input", input, (3, 4))
    check_dim(op, "weight", weight, (4,))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InputError(f"{op}: groups must be a positive int, got {groups!r}")
    out_channels, per_group, kh, kw = weight.shape
    if kh < 1 or kw < 1:
        raise InputError(
            f"{op}: weight of shape {shape_str(weight)} has an empty kernel of size {(kh, kw)}; "
            "kernel_size must be at least 1"
        )
    if out_channels % groups != 0:
        raise InputError(
            f"{op}: groups={groups} does not divide the {out_channels} output channels of weight of shape "
            f"{shape_str(weight)}"
        )
    channels = input.shape[-3]
    if channels % groups != 0:
        raise InputError(
            f"{op}: groups={groups} does not divide the {channels} channels of input of shape {shape_str(input)}"
        )
    if channels != per_group * groups:
        raise InputError(
            f"{op}: input of shape {shape_str(input)} has {channels} channels but weight of shape "
            f"{shape_str(weight)} expects {per_group * groups} (in_channels / groups = {per_group} per group "
            f"× {groups} groups)"
        )
    if bias is not None and bias.shape != (out_channels,):
        raise InputError(
            f"{op}: bias of shape {shape_str(bias)} does not match weight of shape {shape_str(weight)}: "
            f"expected ({out_channels},)"
        )
    stride = int_pair(op, "stride", stride, 1)
    dilation = int_pair(op, "dilation", dilation, 1)
    pad = _resolve_padding(padding, (kh, kw), stride, dilation)
    size = input.shape[-2:]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pad))
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dilation, (kh, kw)))
    if any(e > p for e, p in zip(effective, padded)):
        raise InputError(
            f"{op}: kernel of size {(kh, kw)} (dilated to {effective}) is larger than the padded input of size "
            f"{padded} (input of shape {shape_str(input)}, padding {pad})"
        )
    return input, weight, bias, stride, pad, dilation, groups
