"""Pooling over 1, 2 or 3 spatial dims with hand-written backward passes: max, average, adaptive average,
adaptive max. One Function per kind serves every rank r (the length of its kernel or output size).

Index conventions, stated once. x: (N, C, *S) or (C, *S) with S = (S_1, ..., S_r) the r spatial sizes, y: (N, C,
*So) or (C, *So); every (n, c) plane is pooled on its own, and "plane position" means the index into the
flattened S_1·...·S_r plane (a·W + e in 2-d, what torch's pools return as indices). Along each axis k, window
i of a pool with kernel k_k, stride s_k, padding p_k and dilation d_k covers the positions i·s_k - p_k + u·d_k
(u < k_k), of which those outside [0, S_k) are padding; the window is the product of its axes' ranges. With
ceil_mode the last window along an axis may start inside the input (or the left padding) and hang past the
right padding. An adaptive pool's window i along axis k covers [⌊i·S_k/So_k⌋, ⌈(i+1)·S_k/So_k⌉).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, capturing_graph, function
from manualbp.functional._layout import memory_format_of
from manualbp.functional._validation import InputError, check_dim, check_floating, shape_str
from manualbp.functional.conv import int_tuple

Sizes = tuple[int, ...]
#: An int or one per spatial dim, as torch's pools take kernel_size, stride, padding, dilation.
IntOrSizes = int | Sequence[int]
#: An adaptive pool's output_size: an int, None (keep that dim) or one of them per spatial dim.
OutputSize = int | None | Sequence[int | None]

_MAX_POOL: dict[int, Callable[..., Any]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ADAPTIVE_MAX_POOL: dict[int, Callable[..., Any]] = {
    1: F.adaptive_max_pool1d,
    2: F.adaptive_max_pool2d,
    3: F.adaptive_max_pool3d,
}
_ADAPTIVE_AVG_POOL: dict[int, Callable[..., Any]] = {
    1: F.adaptive_avg_pool1d,
    2: F.adaptive_avg_pool2d,
    3: F.adaptive_avg_pool3d,
}
_CONV_TRANSPOSE: dict[int, Callable[..., Any]] = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def pool_memory_format(x: torch.Tensor, rank: int, keeps_channels_last_3d: bool = False) -> torch.memory_format:
    """The memory format torch's CPU pools give their output and dL/dx for an input x pooled over ``rank`` dims:
    x's own for the 2-d pools (``memory_format_of``: channels_last for a batched channels_last x), channels_last_3d
    for a batched channels_last_3d x where the pool ``keeps_channels_last_3d`` (torch's max_pool3d does; its
    avg_pool3d and adaptive 3-d pools return contiguous tensors), the standard format otherwise (1-d pools, and an
    unbatched (C, D, H, W) x even when its strides read as channels_last)."""
    if rank == 2:
        return memory_format_of(x)
    batched = x.dim() == 5 and not torch._C._functorch.is_batchedtensor(x)
    if keeps_channels_last_3d and batched and suggest_memory_format(x) == torch.channels_last_3d:
        return torch.channels_last_3d
    return torch.contiguous_format


def _argmax_grad(
    grad_out: torch.Tensor,
    indices: torch.Tensor,
    x_shape: torch.Size,
    layout: torch.memory_format,
    rank: int,
    live: torch.Tensor | None,
) -> torch.Tensor:
    """dL/dx of a max pool: dL/dy scattered (added) onto the plane positions ``indices`` of each (n, c) plane;
    windows outside the ``live`` mask (those holding padding only) send nothing."""
    flat_indices, flat_grad = planes(indices, rank), planes(grad_out, rank)
    if live is not None:
        flat_indices = torch.where(live, flat_indices, 0)
        flat_grad = torch.where(live, flat_grad, 0.0)
    return scatter_into_planes(flat_grad, flat_indices, x_shape, layout)


def _argmax_tangent(x_dot: torch.Tensor, indices: torch.Tensor, rank: int, live: torch.Tensor | None) -> torch.Tensor:
    """ẏ of a max pool: ẋ gathered at the plane positions ``indices`` (zero outside the ``live`` mask)."""
    flat_indices = planes(indices, rank)
    if live is not None:
        flat_indices = torch.where(live, flat_indices, 0)
    y_dot = planes(x_dot, rank).gather(-1, flat_indices)
    if live is not None:
        y_dot = torch.where(live, y_dot, 0.0)
    return y_dot.reshape(indices.shape)


@function
class MaxPoolFunction(torch.autograd.Function):
    """(y, idx) = max_pool{r}d(x), r = len(kernel_size) in (1, 2, 3).   x: (N, C, *S) or (C, *S)
    y, idx: (N, C, *So) or (C, *So)

    y[n, c, i] = max over window i of x[n, c]   (i a multi-index over So; padding never wins: it counts as -inf)
    idx[n, c, i] = the plane position of that max (returned as a second, non-differentiable output, so
        backward needs no recomputation)

    dL/dx[n, c, q] = Σ_{i : idx[n, c, i] = q} dL/dy[n, c, i]
        a scatter_add of dL/dy onto the argmax positions of each flattened plane (windows that overlap may
        send several gradients to one position)

    Forward mode: ẏ[n, c, i] = ẋ[n, c] flattened, at idx[n, c, i]    (a gather; no tangent for idx)

    With dilation a window of a small input can hold padding only: torch gives y = -inf there, a constant,
    and an index that points at no input element; such windows pass no gradient and get a zero tangent.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, dilation, ceil_mode):
        rank = len(kernel_size)
        source = pool_layout(x) if rank == 2 else x
        y, indices = _MAX_POOL[rank](
            source, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
        )
        layout = pool_memory_format(x, rank, keeps_channels_last_3d=True)
        return y.contiguous(memory_format=layout), indices.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, _ = inputs
        _, indices = output
        rank = len(kernel_size)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices, shape_of(x))
        ctx.save_for_forward(indices, shape_of(x))
        ctx.rank = rank
        ctx.layout = pool_memory_format(x, rank, keeps_channels_last_3d=True)
        ctx.live_windows = None
        if any(d != 1 for d in dilation):
            axes = zip(x.shape[-rank:], indices.shape[-rank:], kernel_size, stride, padding, dilation)
            live = [
                [any(0 <= i * s - p + u * d < size for u in range(k)) for i in range(out)]
                for size, out, k, s, p, d in axes
            ]
            if not all(all(axis) for axis in live):
                ctx.live_windows = live  # per axis: does window i reach the input at all

    @staticmethod
    def backward(ctx, grad_out, grad_indices):
        indices, x_shape = ctx.saved_tensors
        live = _live_windows(ctx.live_windows, indices.device)
        grad_x = _argmax_grad(grad_out, indices, x_shape.shape, ctx.layout, ctx.rank, live)
        return grad_x, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        indices, _ = ctx.saved_tensors
        return _argmax_tangent(x_dot, indices, ctx.rank, _live_windows(ctx.live_windows, indices.device)), None


def _live_windows(live_windows: list[list[bool]] | None, device: torch.device) -> torch.Tensor | None:
    """The flattened (So_1·...·So_r,) mask of the windows that reach the input (the product of the axes'
    masks), or None when all do."""
    if live_windows is None:
        return None
    axes = [torch.tensor(axis, device=device) for axis in live_windows]
    mask = axes[0]
    for axis in axes[1:]:
        mask = mask[..., None] & axis
    return mask.reshape(-1)


@function
class AdaptiveMaxPoolFunction(torch.autograd.Function):
    """(y, idx) = adaptive_max_pool{r}d(x), r = len(output_size) in (1, 2, 3).   x: (N, C, *S) or (C, *S)
    y, idx: (N, C, *So) or (C, *So), So = output_size

    y[n, c, i] = max of x[n, c] over the adaptive window i (along axis k: [⌊i_k·S_k/So_k⌋, ⌈(i_k+1)·S_k/So_k⌉))
    idx[n, c, i] = the plane position of that max (a second, non-differentiable output)

    dL/dx[n, c, q] = Σ_{i : idx[n, c, i] = q} dL/dy[n, c, i]    (scatter_add onto the argmax positions)

    Forward mode: ẏ[n, c, i] = ẋ[n, c] flattened, at idx[n, c, i]    (a gather; no tangent for idx)

    Every adaptive window holds at least one input element, so every window passes its gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, output_size):
        rank = len(output_size)
        y, indices = _ADAPTIVE_MAX_POOL[rank](x, output_size, return_indices=True)
        layout = pool_memory_format(x, rank)
        return y.contiguous(memory_format=layout), indices.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, output_size = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices, shape_of(x))
        ctx.save_for_forward(indices)
        ctx.rank = len(output_size)
        ctx.layout = pool_memory_format(x, ctx.rank)

    @staticmethod
    def backward(ctx, grad_out, grad_indices):
        indices, x_shape = ctx.saved_tensors
        return _argmax_grad(grad_out, indices, x_shape.shape, ctx.layout, ctx.rank, None), None

    @staticmethod
    def jvp(ctx, x_dot, _):
        (indices,) = ctx.saved_tensors
        return _argmax_tangent(x_dot, indices, ctx.rank, None), None


def _avg_pool(
    x: torch.Tensor,
    kernel_size: Sizes,
    stride: Sizes,
    padding: Sizes,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """torch's avg_pool{r}d, r = len(kernel_size); its avg_pool1d takes no divisor_override (nor does ours)."""
    if len(kernel_size) == 1:
        return F.avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    pool = F.avg_pool2d if len(kernel_size) == 2 else F.avg_pool3d
    return pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_pool_divisor(
    input_size: Sizes,
    output_size: Sizes,
    kernel_size: Sizes,
    stride: Sizes,
    padding: Sizes,
    count_include_pad: bool,
    divisor_override: int | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """The (*So) divisors of avg_pool{r}d, computed as torch does.

    Along each axis window i spans [i·s - p, min(i·s - p + k, size + p)): the part of the padded input it
    covers (a ceil_mode window is cut at the far padding). count_include_pad divides by the product over the
    axes of those lengths; otherwise by the product of the lengths inside [0, size). divisor_override replaces
    both.
    """
    if divisor_override is not None:
        return torch.full(output_size, float(divisor_override), dtype=like.dtype, device=like.device)
    divisor = None
    for size, out, k, s, p in zip(input_size, output_size, kernel_size, stride, padding):
        start = torch.arange(out, device=like.device) * s - p
        end = torch.clamp(start + k, max=size + p)
        if not count_include_pad:
            start, end = start.clamp(min=0), end.clamp(max=size)
        length = (end - start).to(like.dtype)
        divisor = length if divisor is None else divisor[..., None] * length
    assert divisor is not None  # a pool has at least one spatial dim
    return divisor


@function
class AvgPoolFunction(torch.autograd.Function):
    """y = avg_pool{r}d(x), r = len(kernel_size) in (1, 2, 3).   x: (N, C, *S) or (C, *S)   y: (N, C, *So) or
    (C, *So)

    y[n, c, i] = (1 / D[i]) Σ_{q in window i, inside the input} x[n, c, q]
        D[i]: the window's volume within the padded input (count_include_pad), or within the input
        (count_include_pad=False), or divisor_override

    The map is linear, so dL/dx is its adjoint applied to dL/dy:

    dL/dx[n, c, q] = Σ_{windows i ∋ q} dL/dy[n, c, i] / D[i]
        a transposed convolution (conv_transpose{r}d) of dL/dy / D with a kernel of ones and stride s, per
        plane, which lands in padded coordinates; the padding (and the part of a ceil_mode window past it)
        is cropped off, and positions no window reached are zero-filled.

    Forward mode: the map itself,  ẏ = avg_pool{r}d(ẋ)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *pool_args = inputs
        ctx.input_shape = x.shape
        ctx.pool_args = tuple(pool_args)
        ctx.layout = pool_memory_format(x, len(pool_args[0]))

    @staticmethod
    def backward(ctx, grad_out):
        kernel_size, stride, padding, _, count_include_pad, divisor_override = ctx.pool_args
        rank, shape = len(kernel_size), ctx.input_shape
        size, out = shape[-rank:], grad_out.shape[-rank:]
        divisor = _avg_pool_divisor(
            size, out, kernel_size, stride, padding, count_include_pad, divisor_override, grad_out
        )
        ones = grad_out.new_ones((1, 1, *kernel_size))
        spread = _CONV_TRANSPOSE[rank]((grad_out / divisor).reshape(-1, 1, *out), ones, stride=stride)
        crop: list[int] = []  # F.pad's order: the last axis first; negative amounts crop
        for length, p, full in reversed(list(zip(size, padding, spread.shape[-rank:]))):
            crop += [-p, length + p - full]
        grad_x = F.pad(spread, crop)
        return grad_x.reshape(shape).contiguous(memory_format=ctx.layout), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        return _avg_pool(x_dot, *ctx.pool_args)


def _adaptive_average_matrix(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """A (out, size) with A[i, a] = 1 / (end_i - start_i) on start_i ≤ a < end_i, else 0;
    start_i = ⌊i·size/out⌋, end_i = ⌈(i+1)·size/out⌉."""
    i = torch.arange(out, device=like.device)
    start = (i * size) // out
    end = ((i + 1) * size + out - 1) // out
    a = torch.arange(size, device=like.device)
    inside = (a[None, :] >= start[:, None]) & (a[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


@function
class AdaptiveAvgPoolFunction(torch.autograd.Function):
    """y = adaptive_avg_pool{r}d(x), r = len(output_size) in (1, 2, 3).   x: (N, C, *S) or (C, *S)
    y: (N, C, *So) or (C, *So)

    The adaptive windows are products of per-axis ranges, so the average separates into the axes: y is x
    multiplied along each axis k by A_k: (So_k, S_k), A_k[i, a] = 1 / (window i's length) inside window i and 0
    elsewhere (in 2-d, y = A_H · x · A_Wᵀ per plane).

    dL/dx = dL/dy multiplied along each axis k by A_kᵀ  (in 2-d: A_Hᵀ · dL/dy · A_W)
    ẏ = adaptive_avg_pool{r}d(ẋ)  (the map itself)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, output_size):
        return _ADAPTIVE_AVG_POOL[len(output_size)](x, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, output_size = inputs
        rank = len(output_size)
        ctx.input_shape = x.shape
        ctx.output_size = output_size
        # torch averages to 1 x 1 with mean(), whose gradient is contiguous whatever the input's layout
        global_average = all(o == 1 for o in output.shape[-rank:])
        ctx.layout = torch.contiguous_format if global_average else pool_memory_format(x, rank)

    @staticmethod
    def backward(ctx, grad_out):
        rank = len(ctx.output_size)
        grad = grad_out
        for dim, size, out in zip(range(-rank, 0), ctx.input_shape[-rank:], grad_out.shape[-rank:]):
            a = _adaptive_average_matrix(size, out, grad_out)
            # the last axis: dL/dy · A; any other: A_kᵀ · dL/dy with the axis moved to -2 (in 2-d it is there)
            grad = grad.matmul(a) if dim == -1 else a.t().matmul(grad.movedim(dim, -2)).movedim(-2, dim)
        return grad.contiguous(memory_format=ctx.layout), None

    @staticmethod
    def jvp(ctx, x_dot, _):
        return _ADAPTIVE_AVG_POOL[len(ctx.output_size)](x_dot, ctx.output_size)


#: Inputs from this size on are max-pooled in channels_last on the CPU (see ``pool_layout``).
CHANNELS_LAST_MIN_ELEMENTS = 1 << 15


def shape_of(x: torch.Tensor) -> torch.Tensor:
    """A tensor of x's shape holding one element (a stride-0 view): saved for backward in place of ``x.shape``,
    so that under ``torch.compile(dynamic=True)`` backward reads a symbolic size from a saved tensor rather
    than from ``ctx``, which Dynamo cannot lift into the backward graph."""
    return x.new_empty((1,) * x.dim()).expand(x.shape)


def planes(t: torch.Tensor, rank: int = 2) -> torch.Tensor:
    """(N, C, *S) or (C, *S), S the last ``rank`` dims, as (N, C, S_1·...·S_r) or (C, S_1·...·S_r) planes."""
    return t.flatten(-rank)  # not reshape(..., -1): the batch may be empty


def scatter_into_planes(
    flat_grad: torch.Tensor, flat_indices: torch.Tensor, shape: torch.Size, layout: torch.memory_format
) -> torch.Tensor:
    """dL/dx of a max pool, ``shape`` in memory format ``layout``: ``flat_grad`` (N, C, prod(So)) added at the
    plane positions ``flat_indices`` of each (n, c) plane, windows that share a max adding up. In place into
    fresh zeros: the out-of-place scatter_add would copy the zeros first."""
    return zero_planes(flat_grad, shape, layout).scatter_add_(-1, flat_indices, flat_grad).view(shape)


def zero_planes(like: torch.Tensor, shape: torch.Size, layout: torch.memory_format) -> torch.Tensor:
    """Zeros of ``shape`` (an input's (N, C, *S) or (C, *S)) as (N, C, prod(S)) or (C, prod(S)) planes, ``like``
    being such planes: a view of a tensor in memory format ``layout``, the gradient that the max pools' backward
    scatters into, in the layout of the input it belongs to. ``like.new_zeros``, so vmap batches it."""
    rank = len(shape) - like.dim() + 1
    if layout in (torch.channels_last, torch.channels_last_3d):
        n, c, *spatial = shape
        return like.new_zeros((n, *spatial, c)).movedim(-1, 1).flatten(-rank)
    return like.new_zeros((*shape[:-rank], math.prod(shape[-rank:])))


def pool_layout(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """x (with ``relu``: max(x, 0), a new tensor) laid out for torch's fastest 2-d max pool: channels_last for
    a batched CPU input, as it is.

    torch's CPU max_pool2d is several times slower on NCHW than on channels_last for few channels; the
    results, indices included (positions in each H·W plane), are the same. Measured (torch 2.14.1, 2
    threads, 2x2 pool with indices, relu included): (128, 6, 28, 28) 1.70 ms NCHW, 1.26 ms channels_last
    counting the copy; (128, 16, 10, 10) 0.57 vs 0.15 ms; (512, 6, 28, 28) 6.9 vs 5.1 ms. Below about 32k
    elements the copies cost more than they save ((128, 3, 8, 8): 0.05 vs 0.11 ms), so small inputs stay.
    """
    if capturing_graph():  # the compiler chooses layouts itself, and a size test would tie the graph to the batch size
        return torch.relu(x) if relu else x
    large = x.numel() >= CHANNELS_LAST_MIN_ELEMENTS
    if large and x.dim() == 4 and x.device.type == "cpu" and not torch._C._functorch.is_batchedtensor(x):
        if relu:
            return x.to(memory_format=torch.channels_last, copy=True).relu_()
        return x.contiguous(memory_format=torch.channels_last)
    return torch.relu(x) if relu else x


#: How an adaptive pool's output_size may be given, by rank (None keeps a dim; not in 1-d, as in torch).
_OUTPUT_SIZES = {
    1: "an int or a tuple of one int",
    2: "an int, None or a pair of them",
    3: "an int, None or a tuple of three of them",
}


def pool_window(
    op: str,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None,
    padding: IntOrSizes,
    dilation: IntOrSizes = 1,
    rank: int = 2,
) -> tuple[Sizes, Sizes, Sizes, Sizes]:
    """Checked (kernel, stride, padding, dilation) ``rank``-tuples of a pooling window, as torch's pools require
    them; stride None (or empty) means kernel_size. Shared by the functional pools and the pool layers'
    constructors."""
    kernel = int_tuple(op, "kernel_size", kernel_size, 1, rank)
    stride = kernel if stride is None or stride in ((), []) else int_tuple(op, "stride", stride, 1, rank)
    pad = int_tuple(op, "padding", padding, 0, rank)
    dil = int_tuple(op, "dilation", dilation, 1, rank)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise InputError(f"{op}: padding {pad} must be at most half of kernel_size {kernel}")
    return kernel, stride, pad, dil


def _pool_geometry(
    op: str,
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None,
    padding: IntOrSizes,
    dilation: IntOrSizes = 1,
    rank: int = 2,
) -> tuple[Sizes, Sizes, Sizes, Sizes]:
    """The checked ``pool_window`` of a pool over the last ``rank`` dims of ``input``, whose (padded) planes must
    hold a window."""
    check_floating(op, input=input)
    check_dim(op, "input", input, (rank + 1, rank + 2))
    kernel, stride, pad, dil = pool_window(op, kernel_size, stride, padding, dilation, rank)
    size = tuple(input.shape[-rank:])
    padded = tuple(s + 2 * p for s, p in zip(size, pad))
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dil, kernel))
    if any(e > p for e, p in zip(effective, padded)):
        dilated = f" (dilated to {effective})" if any(d != 1 for d in dil) else ""
        raise InputError(
            f"{op}: kernel of size {kernel}{dilated} is larger than the padded input of size {padded} "
            f"(input of shape {shape_str(input)}, padding {pad})"
        )
    return kernel, stride, pad, dil


def check_divisor_override(op: str, divisor_override: int | None) -> None:
    """Raise InputError (a ValueError and a RuntimeError) unless ``divisor_override`` (avg_pool2d's and
    avg_pool3d's) is None or a non-zero int."""
    if divisor_override is not None and (
        not isinstance(divisor_override, int) or isinstance(divisor_override, bool) or divisor_override == 0
    ):
        raise InputError(f"{op}: divisor_override must be a non-zero int or None, got {divisor_override!r}")


def adaptive_output_size(op: str, output_size: OutputSize, rank: int = 2) -> tuple[int | None, ...]:
    """An adaptive pool's ``output_size`` as a checked ``rank``-tuple of positive ints or None (keep that
    dimension; not in 1-d, as in torch)."""
    if output_size is None or isinstance(output_size, int):
        sizes: tuple[int | None, ...] = (output_size,) * rank
    elif isinstance(output_size, (tuple, list)) and len(output_size) == rank:
        sizes = tuple(output_size)
    else:
        raise InputError(f"{op}: output_size must be {_OUTPUT_SIZES[rank]}, got {output_size!r}")
    keeps = rank > 1  # torch's 1-d adaptive pools take no None
    if not all((o is None and keeps) or (isinstance(o, int) and not isinstance(o, bool) and o >= 1) for o in sizes):
        keep = " or None" if rank > 1 else ""
        raise InputError(f"{op}: output_size must hold positive ints{keep}, got {output_size!r}")
    return sizes


def _adaptive_geometry(op: str, input: torch.Tensor, output_size: OutputSize, rank: int) -> Sizes:
    """The output size of an adaptive pool over the last ``rank`` dims of ``input``, a None entry resolved to
    that input dim."""
    check_floating(op, input=input)
    check_dim(op, "input", input, (rank + 1, rank + 2))
    sizes = adaptive_output_size(op, output_size, rank)
    if min(input.shape[-rank:]) < 1:
        raise InputError(f"{op}: input of shape {shape_str(input)} has an empty spatial dimension")
    return tuple(s if o is None else o for s, o in zip(input.shape[-rank:], sizes))


def _autocast(op: str, input: torch.Tensor, rank: int) -> torch.Tensor:
    """``input`` as ``op`` takes it under autocast: torch's CPU autocast runs the 3-d pools in float32; the 1-d and
    2-d ones are on no list (they run in the input's dtype), so they skip the check."""
    return autocast_inputs(op, input)[0] if rank == 3 else input


def max_pool_nd(
    rank: int,
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    dilation: IntOrSizes = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``max_pool{rank}d``: the one implementation behind ``max_pool1d``, ``max_pool2d`` and ``max_pool3d``."""
    op = f"max_pool{rank}d"
    geometry = _pool_geometry(op, input, kernel_size, stride, padding, dilation, rank)
    if not return_indices:  # torch's max_pool3d_with_indices is on no autocast list, its max_pool3d is
        input = _autocast(op, input, rank)
    values, indices = apply(MaxPoolFunction, input, *geometry, bool(ceil_mode))
    return (values, indices) if return_indices else values


def avg_pool_nd(
    rank: int,
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """``avg_pool{rank}d``: the one implementation behind ``avg_pool1d``, ``avg_pool2d`` and ``avg_pool3d``."""
    op = f"avg_pool{rank}d"
    kernel, stride, pad, _ = _pool_geometry(op, input, kernel_size, stride, padding, rank=rank)
    check_divisor_override(op, divisor_override)
    input = _autocast(op, input, rank)
    return apply(
        AvgPoolFunction, input, kernel, stride, pad, bool(ceil_mode), bool(count_include_pad), divisor_override
    )


def adaptive_avg_pool_nd(rank: int, input: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
    """``adaptive_avg_pool{rank}d``: the one implementation behind its 1-, 2- and 3-d entry points."""
    op = f"adaptive_avg_pool{rank}d"
    sizes = _adaptive_geometry(op, input, output_size, rank)
    return apply(AdaptiveAvgPoolFunction, _autocast(op, input, rank), sizes)


def adaptive_max_pool_nd(
    rank: int, input: torch.Tensor, output_size: OutputSize, return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``adaptive_max_pool{rank}d``: the one implementation behind its 1-, 2- and 3-d entry points."""
    op = f"adaptive_max_pool{rank}d"
    sizes = _adaptive_geometry(op, input, output_size, rank)
    values, indices = apply(AdaptiveMaxPoolFunction, _autocast(op, input, rank), sizes)
    return (values, indices) if return_indices else values


def max_pool1d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    dilation: IntOrSizes = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.max_pool1d`` (input (N, C, L) or (C, L)); with
    ``return_indices`` also the argmax positions along L, as torch returns them."""
    return max_pool_nd(1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    dilation: IntOrSizes = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.max_pool2d``; with ``return_indices`` also the argmax
    positions in each flattened H·W plane, as torch returns them."""
    return max_pool_nd(2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    dilation: IntOrSizes = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.max_pool3d`` (input (N, C, D, H, W) or (C, D, H, W)); with
    ``return_indices`` also the argmax positions in each flattened D·H·W volume, as torch returns them."""
    return max_pool_nd(3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.avg_pool1d`` (input (N, C, L) or (C, L); no divisor_override,
    as in torch)."""
    return avg_pool_nd(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.avg_pool2d``."""
    return avg_pool_nd(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool3d(
    input: torch.Tensor,
    kernel_size: IntOrSizes,
    stride: IntOrSizes | None = None,
    padding: IntOrSizes = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.avg_pool3d`` (input (N, C, D, H, W) or (C, D, H, W))."""
    return avg_pool_nd(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool1d(input: torch.Tensor, output_size: int | Sequence[int]) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.adaptive_avg_pool1d`` (input (N, C, L) or (C, L))."""
    return adaptive_avg_pool_nd(1, input, output_size)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.adaptive_avg_pool2d``; a None entry of ``output_size`` keeps
    that input dimension."""
    return adaptive_avg_pool_nd(2, input, output_size)


def adaptive_avg_pool3d(input: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.adaptive_avg_pool3d`` (input (N, C, D, H, W) or (C, D, H, W));
    a None entry of ``output_size`` keeps that input dimension."""
    return adaptive_avg_pool_nd(3, input, output_size)


def adaptive_max_pool1d(
    input: torch.Tensor, output_size: int | Sequence[int], return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.adaptive_max_pool1d`` (input (N, C, L) or (C, L)); with
    ``return_indices`` also the argmax positions along L."""
    return adaptive_max_pool_nd(1, input, output_size, return_indices)


def adaptive_max_pool2d(
    input: torch.Tensor, output_size: OutputSize, return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.adaptive_max_pool2d``; a None entry of ``output_size`` keeps
    that input dimension; with ``return_indices`` also the argmax positions in each flattened H·W plane."""
    return adaptive_max_pool_nd(2, input, output_size, return_indices)


def adaptive_max_pool3d(
    input: torch.Tensor, output_size: OutputSize, return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.adaptive_max_pool3d`` (input (N, C, D, H, W) or (C, D, H, W));
    a None entry of ``output_size`` keeps that input dimension; with ``return_indices`` also the argmax
    positions in each flattened D·H·W volume."""
    return adaptive_max_pool_nd(3, input, output_size, return_indices)
