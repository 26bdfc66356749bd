"""Transposed convolutions over 1, 2 or 3 spatial dims, one implementation for every rank, with a hand-written backward.

Index conventions, stated once. r spatial dims; a position is a multi-index (one entry per spatial dim) and
every product or sum of positions below is taken dim by dim. x: (N, C, *L), W: (C, O/G, *k), b: (O,),
y: (N, O, *Lo); G groups, stride s, padding p, output_padding a, dilation d. Input channel γ·C/G + c and
output channel γ·O/G + o belong to group γ.

    Lo = (L − 1)·s − 2·p + d·(k − 1) + a + 1

    y[n, γ·O/G + o, t] = b[γ·O/G + o] + Σ_{c, u, i : i·s + u·d − p = t} x[n, γ·C/G + c, i] · W[γ·C/G + c, o, u]

Every x[n, c, i] is scattered through the kernel into the output: y = convT(x, W) is the adjoint (transpose)
of the convolution x̃ ↦ conv(x̃, W) with the same s, p, d and G (whose output channels are W's dim 0). So its
input gradient is that convolution, its weight gradient a correlation of dL/dy with x, both forward
primitives of torch (see ``ConvTransposeFunction``); a (N, C, *L) input of rank r runs torch's
``conv_transpose{r}d``, its gradients ``conv{r}d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

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
    shape_str,
)

Sizes = tuple[int, ...]
#: A transposed convolution's (stride, padding, output_padding, groups, dilation), as ``ctx.geometry`` holds it.
Geometry = tuple[Sizes, Sizes, Sizes, int, Sizes]

_CONV_TRANSPOSE: dict[int, Callable[..., torch.Tensor]] = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}
_CONV: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

#: The autocast list conv_transpose1d/2d/3d are on: the lower-precision one, beside conv2d, on CPU and CUDA (torch's
#: ``AT_FORALL_LOWER_PRECISION_FP``); ``manualbp.functional._autocast.POLICY`` names that list by conv2d.
_AUTOCAST_AS = "conv2d"


@function
class ConvTransposeFunction(torch.autograd.Function):
    """y = conv_transpose(x, W) + b over r = 1, 2 or 3 spatial dims (the length of ``stride``).
    x: (N, C, *L) or (C, *L)   W: (C, O/G, *k)   b: (O,) or None   y: (N, O, *Lo) or (O, *Lo)

    y[n, γ·O/G + o, t] = b[γ·O/G + o] + Σ_{c, u, i : i·s + u·d − p = t} x[n, γ·C/G + c, i] · W[γ·C/G + c, o, u]

    dL/dx[n, γ·C/G + c, i] = Σ_{o, u} dL/dy[n, γ·O/G + o, i·s + u·d − p] · W[γ·C/G + c, o, u]
        (a term whose position falls outside dL/dy is 0): the convolution of dL/dy with the same W, stride,
        padding, dilation and groups, ``conv{r}d(dL/dy, W, stride=s, padding=p, dilation=d, groups=G)``. It
        has L + ⌊a/s⌋ positions per dim (a ≥ s only where a < d, which torch allows): cropped to L.

    dL/dW[γ·C/G + c, o, u] = Σ_{n, i} x[n, γ·C/G + c, i] · dL/dy[n, γ·O/G + o, u·d + i·s − p]
        the correlation of dL/dy with x: a conv{r}d whose batch is dL/dy's channels of a group and whose
        channels are its batch, with x (batch and channels swapped) as the kernel, stride d, dilation s,
        padding p, one group per convolution group; the result (O/G, C, *(k + ⌊a/d⌋)) is cropped to k and
        transposed.

    dL/db[o] = Σ_{n, t} dL/dy[n, o, t]

    Forward mode (tangents ẋ, Ẇ, ḃ; an absent one is zero), y being bilinear in (x, W):
        ẏ = convT(ẋ, W) + convT(x, Ẇ) + ḃ      (same stride, padding, output_padding, groups, dilation)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
        return _CONV_TRANSPOSE[len(stride)](x, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, groups, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, output_padding, groups, dilation)
        ctx.output_shape = output.shape
        ctx.layout = conv_transpose_memory_format(x, weight, output)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return (*conv_transpose_grads(ctx, grad_out, x, weight), None, None, None, None, None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, *_):
        x, weight = ctx.saved_tensors
        return conv_transpose_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot)


def conv_transpose_grads(ctx, grad_out, x, weight):
    """dL/dx, dL/dW, dL/db of y = convT(x, W) + b from G = dL/dy (None when no gradient reached y), each only if
    ``ctx.needs_input_grad`` asks for it; ``ctx`` holds ``has_bias``, ``geometry`` and ``layout`` (the
    gradients' memory format).

    ``weight`` is read only to send the error back (dL/dx, the convolution of G with it); dL/dW reads its shape
    alone. A Function that saves another tensor of W's shape in its place sends the error back through that one
    instead (a learning rule's feedback matrix), and reduces as this one does.
    """
    if grad_out is None:
        return None, None, None
    x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # autocast: same precision as the forward
    rank = weight.dim() - 2
    unbatched = x.dim() == rank + 1
    if unbatched:
        x, grad_out = x.unsqueeze(0), grad_out.unsqueeze(0)
    stride, padding, _, groups, dilation = ctx.geometry
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        if _no_products(x, grad_out):
            grad_x = torch.zeros_like(x)
        else:
            grad_x = _CONV[rank](grad_out, weight, None, stride, padding, dilation, groups)
            grad_x = _crop(grad_x, x.shape[2:])
        grad_x = grad_x.contiguous(memory_format=ctx.layout)
        grad_x = grad_x.squeeze(0) if unbatched else grad_x
    needs = (ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
    if REDUCTION.mode is not None and any(needs):  # per-sample gradients or clipping (manualbp.per_sample)
        terms = ConvTransposeTerms(grad_out, x, weight, ctx.geometry, ctx.layout, needs, batched=not unbatched)
        grad_w, grad_b = REDUCTION.mode.reduce(ctx, terms)
    elif any(needs):
        grad_w, grad_b = conv_transpose_reduction(grad_out, x, weight, ctx.geometry, ctx.layout, *needs)
    return grad_x, grad_w, grad_b


def conv_transpose_reduction(grad_out, x, weight, geometry, layout, needs_weight, needs_bias):
    """dL/dW (G correlated with x; in ``layout``) and dL/db = Σ_{n, t} G, None where not asked for; x and G
    batched. ``weight`` gives dL/dW's shape (and dtype) only."""
    grad_w = grad_b = None
    if needs_weight:
        grad_w = torch.zeros_like(weight) if _no_products(x, grad_out) else _weight_grad(x, weight, grad_out, geometry)
        grad_w = grad_w.contiguous(memory_format=layout)
    if needs_bias:
        grad_b = grad_out.sum((0, *range(2, grad_out.dim())))
    return grad_w, grad_b


class ConvTransposeTerms(OuterTerms):
    """The reduction of y = convT(x, W) + b, for the reduction seam (``manualbp.functional._reduction.REDUCTION``).

    Per sample n and group γ, with x_ni = x[n, group γ's C/G channels, i] at input position i and Q_ni the
    patch of dL/dy (zero-padded by p) that x[n, :, i] was scattered into (group γ's O/G channels by k positions
    i·s + u·d − p, flattened as W[c] is: ``_patches``):

        dL/dW_n[γ's rows] = Σ_i x_niᵀ Q_ni     (C/G, O/G·Πk)        dL/db_n[o] = Σ_t dL/dy[n, o, t]

    a sum of outer products over T = ΠL input positions, one block per group (``factors``, for the ghost norm).
    Materialised, all samples at once, it is ``_weight_grad``'s correlation with one group per sample and group
    (``_weight_grad(..., per_sample=True)``). ``plain`` is ``conv_transpose_reduction``.
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
        in_channels, per_group, *kernel = weight.shape
        groups = geometry[3]
        self.positions = math.prod(x.shape[2:])
        self.block = (in_channels // groups, per_group * math.prod(kernel))

    def factors(self, g):
        n, groups = self.batch, self.geometry[3]
        x = self.x.reshape(n, groups, self.block[0], self.positions).transpose(-1, -2)
        return x, _patches(g, self.weight_shape[2:], self.x.shape[2:], self.geometry)

    def weight_per_sample(self, g, out=None):  # small: into new memory
        if _no_products(self.x, g):
            return self.x.new_zeros(self.batch, *self.weight_shape)
        return _weight_grad(self.x, self.weight, g, self.geometry, per_sample=True)

    def bias_per_sample(self, g):
        return g.sum(tuple(range(2, g.dim())))

    def weight_layout(self, grad_w):
        return grad_w.contiguous(memory_format=self.layout)

    def plain(self, g):
        return conv_transpose_reduction(g, self.x, self.weight, self.geometry, self.layout, *self.needs)


def conv_transpose_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot):
    """ẏ = convT(ẋ, W) + convT(x, Ẇ) + ḃ (None for an absent tangent; None if all are absent); ``ctx`` holds
    ``geometry`` and ``output_shape``. Like ``conv_transpose_grads``, ``weight`` is the map ẋ goes through."""
    transposed = _CONV_TRANSPOSE[weight.dim() - 2]
    y_dot = tangent_sum(
        None if x_dot is None else transposed(x_dot, weight, None, *ctx.geometry),
        None if weight_dot is None else transposed(x, weight_dot, None, *ctx.geometry),
    )
    if bias_dot is None:
        return y_dot
    bias_dot = bias_dot.reshape(-1, *[1] * (weight.dim() - 2))
    # a fresh tensor, not an expanded view: a tangent must have the output's own layout
    return bias_dot.expand(ctx.output_shape).contiguous() if y_dot is None else y_dot + bias_dot


def conv_transpose_memory_format(x: torch.Tensor, weight: torch.Tensor, output: torch.Tensor) -> torch.memory_format:
    """torch's layout for a transposed convolution's output and all its gradients: channels_last (channels_last_3d)
    when the batched input or the weight is, and torch's kernel kept it for the output; contiguous otherwise.

    Whether torch keeps it depends on the kernel torch picks, which the output shows: on the CPU, in float64 a 3-D
    one returns a contiguous output (and gradients) from channels_last_3d tensors, in float32 a channels_last_3d one.
    """
    rank = weight.dim() - 2
    if x.dim() == rank + 1:
        x, output = x.unsqueeze(0), output.unsqueeze(0)
    candidates = {_memory_format(x), _memory_format(weight)} - {torch.contiguous_format}
    for candidate in candidates:
        if output.is_contiguous(memory_format=candidate):
            return candidate
    return torch.contiguous_format


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D ``t`` laid out so (``memory_format_of``), channels_last_3d for a 5-D one, else
    contiguous (always for a per-sample tensor under vmap)."""
    if t.dim() == 5 and not torch._C._functorch.is_batchedtensor(t):
        return suggest_memory_format(t)
    return memory_format_of(t)


def _no_products(x: torch.Tensor, grad_out: torch.Tensor) -> bool:
    """Whether there is nothing to sum (an empty batch, no input or no output channels): torch's convolutions
    refuse some of these shapes, and every gradient is zero."""
    return x.numel() == 0 or grad_out.numel() == 0


def _crop(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``t``'s spatial dims (dims 2, ...) cut to their first ``sizes`` positions."""
    if tuple(t.shape[2:]) == tuple(sizes):
        return t
    index = (slice(None), slice(None), *(slice(0, size) for size in sizes))
    return t[index]


def _weight_grad(x, weight, grad_out, geometry, per_sample=False):
    """dL/dW of a batched transposed convolution: dL/dy correlated with x, batch and channels swapped (see
    ``ConvTransposeFunction``).

    With ``per_sample``, each sample's dL/dW, (N, C, O/G, *k): the same correlation with the batch folded into the
    groups, one per (sample, group): dL/dy as (O/G, N·G, *Lo), x as N·C kernels of one channel."""
    stride, padding, _, groups, dilation = geometry
    n, channels = x.shape[:2]
    kernel = weight.shape[2:]
    out_per_group = grad_out.shape[1] // groups
    conv = _CONV[len(kernel)]
    if per_sample:
        gg = grad_out.reshape(n * groups, out_per_group, *grad_out.shape[2:]).transpose(0, 1)
        xx = x.reshape(n * channels, 1, *x.shape[2:])  # kernel n·C + c: group n·G + c // (C/G), as conv pairs them
        grad_w = _crop(conv(gg, xx, None, dilation, padding, stride, n * groups), kernel)
        return grad_w.reshape(out_per_group, n, channels, *kernel).movedim(0, 2)
    # batch <-> channels, group-major, so that the convolution's groups pair dL/dy's and x's groups
    gg = grad_out.reshape(n, groups, out_per_group, *grad_out.shape[2:]).transpose(0, 2)
    gg = gg.reshape(out_per_group, groups * n, *grad_out.shape[2:])
    xx = x.reshape(n, groups, channels // groups, *x.shape[2:]).movedim(0, 2).reshape(channels, n, *x.shape[2:])
    return _crop(conv(gg, xx, None, dilation, padding, stride, groups), kernel).transpose(0, 1)


def _patches(grad_out, kernel, sizes, geometry):
    """Q: the patches of dL/dy (N, O, *Lo), zero-padded by p, that each input position i was scattered into,
    positions i·s + u·d (u < k), as (N, G, ΠL, O/G·Πk), a row per input position ordered as W[c] is flattened.
    The stride's floor can give L + ⌊a/s⌋ windows per dim: cut to L."""
    stride, padding, _, groups, dilation = geometry
    n, out_channels = grad_out.shape[:2]
    rank = len(kernel)
    padded = F.pad(grad_out, [side for p in reversed(padding) for side in (p, p)])
    for dim in range(rank):  # each spatial dim becomes (windows, span); the spans gather at the end
        padded = padded.unfold(2 + dim, dilation[dim] * (kernel[dim] - 1) + 1, stride[dim])
    spans = (slice(None), slice(None), *(slice(0, size) for size in sizes), *(slice(None, None, d) for d in dilation))
    patches = padded[spans]  # (N, O, *L, *k)
    patches = patches.reshape(n, groups, out_channels // groups, math.prod(sizes), math.prod(kernel))
    return patches.transpose(2, 3).reshape(n, groups, math.prod(sizes), -1)


def int_tuple(op: str, name: str, value: int | Sequence[int], rank: int, minimum: int) -> Sizes:
    """An int or ``rank`` ints (torch's ``_single``/``_pair``/``_triple`` arguments) as ``rank`` ints, each at least
    ``minimum``. TypeError for something other than ints, InputError (a ValueError) for a wrong length or a value
    below ``minimum``. Symbolic ints (torch.compile with dynamic shapes) pass as they are."""
    ints = (int, torch.SymInt)
    values = (value,) * rank if isinstance(value, ints) else tuple(value) if isinstance(value, (tuple, list)) else None
    if values is None or not all(isinstance(v, ints) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{op}: {name} must be an int or a tuple of {rank} ints, got {value!r}")
    if len(values) != rank:
        raise InputError(f"{op}: {name} must be an int or a tuple of {rank} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise InputError(f"{op}: {name} must be at least {minimum}, got {value!r}")
    return values


def conv_transpose_arguments(
    op: str,
    rank: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int],
    groups: int,
    dilation: int | Sequence[int],
) -> tuple:
    """A rank-``rank`` transposed convolution's arguments checked (errors name ``op``), cast under autocast, and
    resolved as ``ConvTransposeFunction`` takes them: (input, weight, bias, stride, padding, output_padding,
    groups, dilation), each size a tuple of ``rank`` ints."""
    check_floating(op, input=input, weight=weight, bias=bias)
    input, weight, bias = autocast_inputs(_AUTOCAST_AS, input, weight, bias)
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    check_same_device(op, input=input, weight=weight, bias=bias)
    check_dim(op, "input", input, (rank + 1, rank + 2))
    check_dim(op, "weight", weight, (rank + 2,))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InputError(f"{op}: groups must be a positive int, got {groups!r}")
    in_channels, per_group, *kernel = weight.shape
    if min(kernel) < 1:
        raise InputError(
            f"{op}: weight of shape {shape_str(weight)} has an empty kernel of size {tuple(kernel)}; "
            "kernel_size must be at least 1"
        )
    if in_channels % groups != 0:
        raise InputError(
            f"{op}: groups={groups} does not divide the {in_channels} input channels of weight of shape "
            f"{shape_str(weight)} (a transposed convolution's weight is (in_channels, out_channels / groups, *kernel))"
        )
    channels = input.shape[-rank - 1]
    if channels != in_channels:
        raise InputError(
            f"{op}: input of shape {shape_str(input)} has {channels} channels but weight of shape "
            f"{shape_str(weight)} expects {in_channels} (a transposed convolution's weight is "
            "(in_channels, out_channels / groups, *kernel))"
        )
    if bias is not None and bias.shape != (per_group * groups,):
        raise InputError(
            f"{op}: bias of shape {shape_str(bias)} does not match weight of shape {shape_str(weight)} and "
            f"groups={groups}: expected ({per_group * groups},)"
        )
    stride = int_tuple(op, "stride", stride, rank, 1)
    padding = int_tuple(op, "padding", padding, rank, 0)
    output_padding = int_tuple(op, "output_padding", output_padding, rank, 0)
    dilation = int_tuple(op, "dilation", dilation, rank, 1)
    if any(a >= s and a >= d for a, s, d in zip(output_padding, stride, dilation)):
        raise InputError(
            f"{op}: output_padding {output_padding} must be smaller than either stride {stride} or dilation "
            f"{dilation} in every dim"
        )
    sizes = input.shape[-rank:]
    out = tuple(
        (size - 1) * s - 2 * p + d * (k - 1) + a + 1
        for size, s, p, d, k, a in zip(sizes, stride, padding, dilation, kernel, output_padding)
    )
    if min(out) < 1:
        raise InputError(
            f"{op}: input of shape {shape_str(input)} gives an output of size {out} (stride {stride}, padding "
            f"{padding}, output_padding {output_padding}, dilation {dilation}, kernel {tuple(kernel)}); "
            "every size must be at least 1"
        )
    return input, weight, bias, stride, padding, output_padding, groups, dilation


def _conv_transpose(
    rank: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int],
    groups: int,
    dilation: int | Sequence[int],
) -> torch.Tensor:
    op = f"conv_transpose{rank}d"
    arguments = conv_transpose_arguments(
        op, rank, input, weight, bias, stride, padding, output_padding, groups, dilation
    )
    return apply(ConvTransposeFunction, *arguments)


def conv_transpose1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv_transpose1d`` (``ConvTransposeFunction``).

    input: (N, C, L) or (C, L)   weight: (C, O/groups, k)   bias: (O,)   -> (N, O, Lo) or (O, Lo),
    Lo = (L − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1.
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return _conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv_transpose2d`` (``ConvTransposeFunction``).

    input: (N, C, H, W) or (C, H, W)   weight: (C, O/groups, kh, kw)   bias: (O,)   -> (N, O, Ho, Wo) or
    (O, Ho, Wo), each size (L − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1.
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return _conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv_transpose3d`` (``ConvTransposeFunction``).

    input: (N, C, D, H, W) or (C, D, H, W)   weight: (C, O/groups, kd, kh, kw)   bias: (O,)   -> (N, O, Do, Ho, Wo)
    or (O, Do, Ho, Wo), each size (L − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1.
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return _conv_transpose(3, input, weight, bias, stride, padding, output_padding, groups, dilation)
