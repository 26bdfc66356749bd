"""Convolution (cross-correlation, as in torch) over k = 1, 2 or 3 spatial dims, with a hand-written backward.

Index conventions, stated once. x: (N, C, *S), W: (O, C/G, *K), b: (O,), y: (N, O, *So), where S, K and So are
k-tuples: (L,) in 1-d, (H, W) in 2-d, (D, H, W) in 3-d. G groups; per spatial dim a stride s, a dilation d and
zero padding: ``low`` zeros before and ``high`` after (they differ only for padding="same" with an even effective
kernel, where torch puts the extra one at the far end: bottom/right). i (an output position) and u (a kernel
offset) are multi-indices, and i·s + u·d is taken dim by dim. x̄ is x zero-padded. For output channel o in
group γ = o // (O/G):

    y[n, o, i] = b[o] + Σ_{c, u} W[o, c, u] · x̄[n, γ·C/G + c, i·s + u·d]

One Function, ``ConvFunction``, serves every k: its forward and the two primitives of its backward are torch's
``conv{k}d`` and ``conv_transpose{k}d``, picked by the weight's rank. The backward is those two forward
primitives, measured faster on the CPU than im2col (unfold + matmul, fold) in
``experiments/conv_backward_timing.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
#: A convolution's zero padding: (low, high), the zeros before and after each spatial dim ((top, left) and
#: (bottom, right) in 2-d).
Padding = tuple[Sizes, Sizes]
#: A convolution's (stride, padding, dilation, groups), as ``ctx.geometry`` holds it.
Geometry = tuple[Sizes, Padding, Sizes, int]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
#: The channels-last memory format of a batched input of k spatial dims (none in 1-d), by its number of dims.
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _pad_far_side(x: torch.Tensor, low: Sizes, high: Sizes) -> torch.Tensor:
    """x with the excess of the far-side (high) padding over the near-side (low) one added (zeros).

    Convolving the result with the symmetric padding ``low`` is the asymmetric convolution.
    """
    if low == high:
        return x
    return F.pad(x, [pad for lo, hi in zip(reversed(low), reversed(high)) for pad in (0, hi - lo)])


@function
class ConvFunction(torch.autograd.Function):
    """y = conv{k}d(x, W) + b, k = 1, 2, 3.   x: (N, C, *S) or (C, *S)   W: (O, C/G, *K)   b: (O,) or None
    y: (N, O, *So) or (O, *So);   padding = (low, high), each a k-tuple.

    y[n, o, i] = b[o] + Σ_{c, u} W[o, c, u] · x̄[n, γ(o)·C/G + c, i·s + u·d]

    dL/dx̄[n, γ·C/G + c, a] = Σ_{o ∈ γ} Σ_{u, i : i·s + u·d = a} dL/dy[n, o, i] W[o, c, u]
        the transposed convolution of dL/dy with the same W (stride s, dilation d, groups G), and
        dL/dx is dL/dx̄ without its padding: ``conv_transpose{k}d(dL/dy, W, stride=s, padding=low,
        output_padding=op, groups=G, dilation=d)``, where op adds back what the stride's floor left out of
        every window (and the far-side excess of "same"), cropped to S.

    dL/dW[o, c, u] = Σ_{n, i} dL/dy[n, o, i] · x̄[n, γ(o)·C/G + c, u·d + i·s]
        the correlation of x with dL/dy: a conv{k}d whose batch is x's channels and whose channels are
        x's batch, with dL/dy (batch and channels swapped) as the kernel, stride and dilation swapped,
        one group per convolution group; the result (C/G, O, ≥K) is cropped to K and transposed.

    dL/db[o] = Σ_{n, i} dL/dy[n, o, i]

    Forward mode (tangents ẋ, Ẇ, ḃ; an absent one is zero), conv being bilinear in (x, W):
        ẏ = conv(ẋ, W) + conv(x, Ẇ) + ḃ      (same stride, padding, dilation, groups)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return _conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.output_shape = output.shape
        ctx.layout = conv_memory_format(x, weight, output)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return (*conv_grads(ctx, grad_out, x, weight), None, None, None, None)

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, *_):
        x, weight = ctx.saved_tensors
        return conv_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot)


def conv_grads(ctx, grad_out, x, weight, input_layout=None):
    """dL/dx, dL/dW, dL/db of y = conv(x, W) + b from G = dL/dy (None when no gradient reached y), each only
    if ``ctx.needs_input_grad`` asks for it; ``ctx`` holds ``has_bias``, ``geometry`` and ``layout`` (the
    gradients' memory format; ``input_layout``, when given, dL/dx's).

    ``weight`` is read only to send the error back (dL/dx, the transposed convolution of G with it); dL/dW
    reads its shape alone. So a Function that saves another tensor of W's shape in its place sends the
    error back through that one instead (``manualbp.rules``: learning rules), and reduces as this one does.
    """
    if grad_out is None:
        return None, None, None
    x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # autocast: same precision as the forward
    unbatched = x.dim() < weight.dim()
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
        terms = ConvTerms(grad_out, x, weight, ctx.geometry, ctx.layout, needs, batched=not unbatched)
        grad_w, grad_b = REDUCTION.mode.reduce(ctx, terms)
    elif any(needs):
        grad_w, grad_b = conv_reduction(grad_out, x, weight, ctx.geometry, ctx.layout, *needs)
    return grad_x, grad_w, grad_b


def conv_reduction(grad_out, x, weight, geometry, layout, needs_weight, needs_bias):
    """dL/dW (x correlated with G; in ``layout``) and dL/db = Σ_{n, i} G, None where not asked for; x and
    G batched. ``weight`` gives dL/dW's shape (and dtype) only."""
    grad_w = grad_b = None
    if needs_weight:
        empty = x.numel() == 0  # no products to differentiate (an empty batch or no input channels)
        grad_w = torch.zeros_like(weight) if empty else _weight_grad(x, weight, grad_out, *geometry)
        grad_w = grad_w.contiguous(memory_format=layout)
    if needs_bias:
        grad_b = grad_out.sum((0, *range(2, grad_out.dim())))
    return grad_w, grad_b


class ConvTerms(OuterTerms):
    """The reduction of y = conv(x, W) + b, for the reduction seam (``manualbp.functional._reduction.REDUCTION``).

    Per sample n and group γ, with P_nt the patch of x̄ that output position t = i reads (its C/G channels
    of group γ by the kernel's K, flattened as W[o] is) and G_nt = dL/dy[n, group γ's channels, i]:

        dL/dW_n[γ's rows] = Σ_t G_ntᵀ P_nt     (O/G, C/G·∏K)        dL/db_n[o] = Σ_i dL/dy[n, o, i]

    a sum of outer products over T = ∏So positions, one block per group (``factors``, for the ghost norm; the
    patches are windows of x̄ taken with ``Tensor.unfold`` along each spatial dim, for every k: measured 1.5-2.5x
    faster than ``F.unfold``, which takes 2-d images only). Materialised, all samples at once, it is
    ``_weight_grad``'s correlation with one group per sample and group (``_weight_grad(..., per_sample=True)``):
    measured 2x faster than unfold + matmul on LeNet-5's convolutions. ``plain`` is ``conv_reduction``.
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
        groups = geometry[3]
        self.positions = math.prod(grad_out.shape[2:])
        self.block = (weight.shape[0] // groups, math.prod(weight.shape[1:]))

    def factors(self, g):
        stride, (low, high), dilation, groups = self.geometry
        n = self.x.shape[0]
        patches = _patches(self.x, self.weight_shape[2:], stride, low, high, dilation)
        patches = patches.reshape(n, groups, self.block[1], self.positions).transpose(-1, -2)
        return g.reshape(n, groups, self.block[0], self.positions).transpose(-1, -2), patches

    def weight_per_sample(self, g, out=None):  # small: into new memory
        if self.x.numel() == 0:
            return self.x.new_zeros(self.batch, *self.weight_shape)
        return _weight_grad(self.x, self.weight, g, *self.geometry, per_sample=True)

    def bias_per_sample(self, g):
        return g.sum(tuple(range(2, g.dim())))

    def weight_layout(self, grad_w):
        return grad_w.contiguous(memory_format=self.layout)

    def plain(self, g):
        return conv_reduction(g, self.x, self.weight, self.geometry, self.layout, *self.needs)


def _patches(x: torch.Tensor, kernel: Sequence[int], stride: Sizes, low: Sizes, high: Sizes, dilation: Sizes):
    """The patches of x̄ that the output positions read, (N, C·∏K, T), each flattened as W[o] is (channel,
    then the kernel's dims) and the T positions in y's order: ``F.unfold``'s layout, for any number of
    spatial dims. Windows of x̄ of the dilated kernel's extent d·(k - 1) + 1, every s along each dim
    (``Tensor.unfold``, a view), keep every d-th value."""
    padded = F.pad(x, [pad for lo, hi in zip(reversed(low), reversed(high)) for pad in (lo, hi)])
    rank = len(kernel)
    windows = padded
    for dim, (k, s, d) in enumerate(zip(kernel, stride, dilation), start=2):
        windows = windows.unfold(dim, d * (k - 1) + 1, s)
    every = tuple(slice(None, None, d) for d in dilation)
    windows = windows[(slice(None),) * (2 + rank) + every]  # (N, C, *So, *K)
    positions = math.prod(windows.shape[2 : 2 + rank])
    kernel_first = windows.permute(0, 1, *range(2 + rank, 2 + 2 * rank), *range(2, 2 + rank))
    return kernel_first.reshape(x.shape[0], x.shape[1] * math.prod(kernel), positions)


def conv_tangent(ctx, x, weight, x_dot, weight_dot, bias_dot):
    """ẏ = conv(ẋ, W) + conv(x, Ẇ) + ḃ (None for an absent tangent; None if all are absent); ``ctx`` holds
    ``geometry`` and ``output_shape``. Like ``conv_grads``, ``weight`` is the map ẋ goes through."""
    y_dot = tangent_sum(
        None if x_dot is None else _conv(x_dot, weight, None, *ctx.geometry),
        None if weight_dot is None else _conv(x, weight_dot, None, *ctx.geometry),
    )
    if bias_dot is None:
        return y_dot
    bias_dot = bias_dot.reshape(-1, *(1,) * len(ctx.geometry[0]))  # (O, 1, ..., 1): one 1 per spatial dim
    # a fresh tensor, not an expanded view: a tangent must have the output's own layout
    return bias_dot.expand(ctx.output_shape).contiguous() if y_dot is None else y_dot + bias_dot


def conv_memory_format(x: torch.Tensor, weight: torch.Tensor, output: torch.Tensor) -> torch.memory_format:
    """torch's layout for a convolution's output and all its gradients: channels-last (channels_last in 2-d,
    channels_last_3d in 3-d) when the (batched) input or the weight is and torch's forward kept it in its
    ``output``, contiguous otherwise. torch's backward runs the backend its forward ran, in the same layout; a
    3-d convolution has a channels-last kernel only on some backends and dtypes (on the CPU, float32 but not
    float64), so ``output`` tells."""
    channels_last = _CHANNELS_LAST.get(weight.dim())
    if channels_last is None:  # 1-d: no channels-last layout
        return torch.contiguous_format
    if x.dim() < weight.dim():
        x, output = x.unsqueeze(0), output.unsqueeze(0)
    if channels_last not in (_layout_of(x), _layout_of(weight)):
        return torch.contiguous_format
    return channels_last if output.is_contiguous(memory_format=channels_last) else torch.contiguous_format


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    """``memory_format_of`` (4-D), or for a 5-D tensor channels_last_3d where its strides are ordered so."""
    if t.dim() == 5 and not t.is_contiguous() and not torch._C._functorch.is_batchedtensor(t):
        return suggest_memory_format(t)
    return memory_format_of(t)


def _input_grad(x, weight, grad_out, stride, padding, dilation, groups):
    """dL/dx of a batched conv: the transposed convolution of dL/dy (see ConvFunction)."""
    low, high = padding
    size = x.shape[2:]
    # Rows (columns, ...) of the padded input past the last window: (out - 1)·s + d·(k - 1) + 1 is what
    # conv_transpose covers, so output_padding makes up the rest of S + high - low.
    output_padding = tuple(
        n + hi - lo - ((out - 1) * s - 2 * lo + d * (k - 1) + 1)
        for n, lo, hi, s, d, k, out in zip(size, low, high, stride, dilation, weight.shape[2:], grad_out.shape[2:])
    )
    grad_x = _CONV_TRANSPOSE[len(size)](grad_out, weight, None, stride, low, output_padding, groups, dilation)
    return grad_x if low == high else _crop(grad_x, size)


def _weight_grad(x, weight, grad_out, stride, padding, dilation, groups, per_sample=False):
    """dL/dW of a batched conv: x correlated with dL/dy, batch and channels swapped (see ConvFunction).

    With ``per_sample``, each sample's dL/dW, (N, O, C/G, *K): the same correlation with the batch folded
    into the groups, one per (sample, group): x as (C/G, N·G, *S), dL/dy as N·O kernels of one channel."""
    low, high = padding
    n = x.shape[0]
    o, cg, *kernel = weight.shape
    out = grad_out.shape[2:]
    xp = _pad_far_side(x, low, high)
    size = xp.shape[2:]
    conv = _CONV[len(size)]
    if per_sample:
        xg = xp.reshape(n * groups, cg, *size).transpose(0, 1)  # channel n·G + γ holds sample n's group γ
        gg = grad_out.reshape(n * o, 1, *out)  # kernel n·O + o: group n·G + o // (O/G), as conv pairs them
        grad_w = conv(xg, gg, None, dilation, low, stride, n * groups)
        return _crop(grad_w, kernel).reshape(cg, n, o, *kernel).movedim(0, 2)
    # batch <-> channels, group-major, so that conv's groups pair x's and dL/dy's groups
    spatial = range(3, 3 + len(size))
    xg = xp.reshape(n, groups, cg, *size).permute(2, 1, 0, *spatial).reshape(cg, groups * n, *size)
    gg = grad_out.reshape(n, groups, o // groups, *out).permute(1, 2, 0, *spatial).reshape(o, n, *out)
    grad_w = conv(xg, gg, None, dilation, low, stride, groups)
    return _crop(grad_w, kernel).transpose(0, 1)


def _crop(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``t``'s first sizes[j] values along each of its last len(sizes) dims (a view)."""
    return t[(slice(None),) * (t.dim() - len(sizes)) + tuple(slice(n) for n in sizes)]


def _conv(x, weight, bias, stride, padding, dilation, groups):
    """torch's conv{k}d with padding (low, high), possibly asymmetric."""
    low, high = padding
    return _CONV[len(stride)](_pad_far_side(x, low, high), weight, bias, stride, low, dilation, groups)


#: How an error message asks for k ints.
_INTS = {1: "an int or a tuple of one int", 2: "an int or a pair of ints", 3: "an int or a tuple of three ints"}


def int_tuple(op: str, name: str, value: int | Sequence[int], minimum: int, rank: int) -> Sizes:
    """An int or a tuple of ``rank`` ints (torch's ``_single``/``_pair``/``_triple`` arguments: kernel_size,
    stride, ...) as a tuple of ``rank`` ints, each at least ``minimum``. TypeError for something other than
    ints, InputError (a ValueError) for a wrong length or a value below ``minimum``."""
    sizes = (value,) * rank if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if sizes is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
        raise TypeError(f"{op}: {name} must be {_INTS[rank]}, got {value!r}")
    if len(sizes) != rank:
        raise InputError(f"{op}: {name} must be {_INTS[rank]}, got {value!r}")
    if min(sizes) < minimum:
        raise InputError(f"{op}: {name} must be at least {minimum}, got {value!r}")
    return sizes


def _resolve_padding(
    op: str, padding: str | int | Sequence[int], kernel: Sizes, stride: Sizes, dilation: Sizes
) -> Padding:
    """(low, high) from an int, a tuple of k ints, "valid" or "same" (torch's split: the odd extra zero of
    "same" goes to the far end, bottom/right)."""
    rank = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * rank, (0,) * rank
        if padding != "same":
            raise InputError(f"{op}: padding must be 'valid', 'same', {_INTS[rank]}, got {padding!r}")
        if any(s != 1 for s in stride):
            raise InputError(f"{op}: padding='same' is not supported for strided convolutions (stride={stride})")
        total = tuple(d * (k - 1) for d, k in zip(dilation, kernel))
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    low = int_tuple(op, "padding", padding, 0, rank)
    return low, low


def conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv1d`` (zero padding), through ``ConvFunction``.

    input: (N, C, L) or (C, L)   weight: (O, C/groups, k)   bias: (O,)
    padding: an int, a tuple of one int, "valid" or "same" (stride 1 only).
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return apply(ConvFunction, *conv_arguments("conv1d", 1, input, weight, bias, stride, padding, dilation, groups))


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv2d`` (zero padding), through ``ConvFunction``.

    input: (N, C, H, W) or (C, H, W)   weight: (O, C/groups, kh, kw)   bias: (O,)
    padding: an int, a pair, "valid" or "same" (stride 1 only).
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return apply(ConvFunction, *conv_arguments("conv2d", 2, input, weight, bias, stride, padding, dilation, groups))


def conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.conv3d`` (zero padding), through ``ConvFunction``.

    input: (N, C, D, H, W) or (C, D, H, W)   weight: (O, C/groups, kd, kh, kw)   bias: (O,)
    padding: an int, a tuple of three ints, "valid" or "same" (stride 1 only).
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype first (``_autocast``).
    """
    return apply(ConvFunction, *conv_arguments("conv3d", 3, input, weight, bias, stride, padding, dilation, groups))


def conv_arguments(
    op: str,
    rank: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | Sequence[int],
    padding: str | int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
) -> tuple:
    """A convolution's arguments over ``rank`` spatial dims checked (errors name ``op``), cast under autocast,
    and resolved as ``ConvFunction`` takes them: (input, weight, bias, stride, (low, high) padding, dilation,
    groups), each size a tuple of ``rank`` ints. Shared with the convolution of the learning rules
    (``manualbp.rules``)."""
    check_floating(op, input=input, weight=weight, bias=bias)
    # conv1d, conv2d and conv3d are on the same lists of torch's autocast (the lower-precision ones)
    input, weight, bias = autocast_inputs("conv2d", input, weight, bias)
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    check_same_device(op, input=input, weight=weight, bias=bias)
    check_dim(op, "input", input, (rank + 1, rank + 2))
    check_dim(op, "weight", weight, (rank + 2,))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise InputError(f"{op}: groups must be a positive int, got {groups!r}")
    out_channels, per_group, *sizes = weight.shape
    kernel = tuple(sizes)
    if min(kernel) < 1:
        raise InputError(
            f"{op}: weight of shape {shape_str(weight)} has an empty kernel of size {kernel}; "
            "kernel_size must be at least 1"
        )
    if out_channels % groups != 0:
        raise InputError(
            f"{op}: groups={groups} does not divide the {out_channels} output channels of weight of shape "
            f"{shape_str(weight)}"
        )
    channels = input.shape[-rank - 1]
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
    stride = int_tuple(op, "stride", stride, 1, rank)
    dilation = int_tuple(op, "dilation", dilation, 1, rank)
    low, high = pad = _resolve_padding(op, padding, kernel, stride, dilation)
    padded = tuple(n + lo + hi for n, lo, hi in zip(input.shape[-rank:], low, high))
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if any(e > p for e, p in zip(effective, padded)):
        raise InputError(
            f"{op}: kernel of size {kernel} (dilated to {effective}) is larger than the padded input of size "
            f"{padded} (input of shape {shape_str(input)}, padding {tuple(zip(low, high))})"
        )
    return input, weight, bias, stride, pad, dilation, groups
