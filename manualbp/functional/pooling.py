"""2-D pooling with hand-written backward passes: max, average, adaptive average.

Index conventions, stated once. x: (N, C, H, W) or (C, H, W), y: (N, C, Ho, Wo) or (C, Ho, Wo); every
(n, c) plane is pooled on its own. Window (i, j) of a pool with kernel k, stride s, padding p and
dilation d covers the rows i·s - p + u·d (u < kh) and the columns j·s - p + v·d (v < kw) of x, of which
those outside [0, H) × [0, W) are padding. With ceil_mode the last window may start inside the input
(or the left padding) and hang past the right padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manualbp.functional._dispatch import apply, capturing_graph, function
from manualbp.functional._layout import memory_format_of
from manualbp.functional._validation import InputError, check_dim, check_floating, int_pair, shape_str

Pair = tuple[int, int]


@function
class MaxPool2dFunction(torch.autograd.Function):
    """(y, idx) = max_pool2d(x).   x: (N, C, H, W) or (C, H, W)   y, idx: (N, C, Ho, Wo) or (C, Ho, Wo)

    y[n, c, i, j] = max over window (i, j) of x[n, c]   (padding never wins: it counts as -inf)
    idx[n, c, i, j] = a·W + e, the position in the flattened H·W plane where that max sits
        (returned as a second, non-differentiable output, so backward needs no recomputation)

    dL/dx[n, c, a, e] = Σ_{i, j : idx[n, c, i, j] = a·W + e} dL/dy[n, c, i, j]
        a scatter_add of dL/dy onto the argmax positions of each flattened plane (windows that
        overlap may send several gradients to one position)

    Forward mode: ẏ[n, c, i, j] = ẋ[n, c] flattened, at idx[n, c, i, j]    (a gather; no tangent for idx)

    With dilation a window of a small input can hold padding only: torch gives y = -inf there, a
    constant, and an index that points at no input element; such windows pass no gradient and get a
    zero tangent.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, dilation, ceil_mode):
        y, indices = F.max_pool2d(
            pool_layout(x), kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
        )
        layout = memory_format_of(x)
        return y.contiguous(memory_format=layout), indices.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, _ = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices, shape_of(x))
        ctx.save_for_forward(indices, shape_of(x))
        ctx.layout = memory_format_of(x)
        ctx.live_windows = None
        if dilation != (1, 1):
            axes = zip(x.shape[-2:], indices.shape[-2:], kernel_size, stride, padding, dilation)
            live = [
                [any(0 <= i * s - p + u * d < size for u in range(k)) for i in range(out)]
                for size, out, k, s, p, d in axes
            ]
            if not all(all(axis) for axis in live):
                ctx.live_windows = live  # per axis: does window i reach the input at all

    @staticmethod
    def backward(ctx, grad_out, grad_indices):
        indices, x_shape = ctx.saved_tensors
        flat_indices, flat_grad = planes(indices), planes(grad_out)
        live = _live_windows(ctx.live_windows, indices.device)
        if live is not None:
            flat_indices = torch.where(live, flat_indices, 0)
            flat_grad = torch.where(live, flat_grad, 0.0)
        return scatter_into_planes(flat_grad, flat_indices, x_shape.shape, ctx.layout), None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        indices, _ = ctx.saved_tensors
        flat_indices = planes(indices)
        live = _live_windows(ctx.live_windows, indices.device)
        if live is not None:
            flat_indices = torch.where(live, flat_indices, 0)
        y_dot = planes(x_dot).gather(-1, flat_indices)
        if live is not None:
            y_dot = torch.where(live, y_dot, 0.0)
        return y_dot.reshape(indices.shape), None


def _live_windows(live_windows: list[list[bool]] | None, device: torch.device) -> torch.Tensor | None:
    """The flattened (Ho·Wo,) mask of the windows that reach the input, or None when all do."""
    if live_windows is None:
        return None
    rows, cols = (torch.tensor(axis, device=device) for axis in live_windows)
    return (rows[:, None] & cols[None, :]).reshape(-1)


def _avg_pool_divisor(
    input_size: Pair,
    output_size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    count_include_pad: bool,
    divisor_override: int | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """The (Ho, Wo) divisors of avg_pool2d, computed as torch does.

    Along each axis window i spans [i·s - p, min(i·s - p + k, size + p)): the part of the padded input
    it covers (a ceil_mode window is cut at the far padding). count_include_pad divides by the product
    of those lengths; otherwise by the product of the lengths inside [0, size). divisor_override
    replaces both.
    """
    if divisor_override is not None:
        return torch.full(output_size, float(divisor_override), dtype=like.dtype, device=like.device)
    lengths = []
    for size, out, k, s, p in zip(input_size, output_size, kernel_size, stride, padding):
        start = torch.arange(out, device=like.device) * s - p
        end = torch.clamp(start + k, max=size + p)
        if not count_include_pad:
            start, end = start.clamp(min=0), end.clamp(max=size)
        lengths.append((end - start).to(like.dtype))
    return lengths[0][:, None] * lengths[1][None, :]


@function
class AvgPool2dFunction(torch.autograd.Function):
    """y = avg_pool2d(x).   x: (N, C, H, W) or (C, H, W)   y: (N, C, Ho, Wo) or (C, Ho, Wo)

    y[n, c, i, j] = (1 / D[i, j]) Σ_{(a, e) in window (i, j), inside the input} x[n, c, a, e]
        D[i, j]: the window's area within the padded input (count_include_pad), or within the input
        (count_include_pad=False), or divisor_override

    The map is linear, so dL/dx is its adjoint applied to dL/dy:

    dL/dx[n, c, a, e] = Σ_{windows (i, j) ∋ (a, e)} dL/dy[n, c, i, j] / D[i, j]
        a transposed convolution of dL/dy / D with a kh×kw kernel of ones and stride s, per plane,
        which lands in padded coordinates; the padding (and the part of a ceil_mode window past it)
        is cropped off, and rows/columns no window reached are zero-filled.

    Forward mode: the map itself,  ẏ = avg_pool2d(ẋ)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *pool_args = inputs
        ctx.input_shape = x.shape
        ctx.pool_args = tuple(pool_args)
        ctx.layout = memory_format_of(x)

    @staticmethod
    def backward(ctx, grad_out):
        kernel_size, stride, padding, _, count_include_pad, divisor_override = ctx.pool_args
        shape = ctx.input_shape
        (h, w), (ho, wo) = shape[-2:], grad_out.shape[-2:]
        divisor = _avg_pool_divisor(
            (h, w), (ho, wo), kernel_size, stride, padding, count_include_pad, divisor_override, grad_out
        )
        ones = grad_out.new_ones((1, 1, *kernel_size))
        spread = F.conv_transpose2d((grad_out / divisor).reshape(-1, 1, ho, wo), ones, stride=stride)
        (ph, pw), (full_h, full_w) = padding, spread.shape[-2:]
        grad_x = F.pad(spread, (-pw, w + pw - full_w, -ph, h + ph - full_h))
        return grad_x.reshape(shape).contiguous(memory_format=ctx.layout), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        return F.avg_pool2d(x_dot, *ctx.pool_args)


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
class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    """y = adaptive_avg_pool2d(x).   x: (N, C, H, W) or (C, H, W)   y: (N, C, Ho, Wo) or (C, Ho, Wo)

    Window (i, j) covers rows [⌊i·H/Ho⌋, ⌈(i+1)·H/Ho⌉) and columns [⌊j·W/Wo⌋, ⌈(j+1)·W/Wo⌉), so the
    average separates into the two axes:  y = A_H · x · A_Wᵀ  per plane, A_H: (Ho, H), A_W: (Wo, W) with
    A[i, a] = 1 / (window i's length) inside window i and 0 elsewhere.

    dL/dx = A_Hᵀ · dL/dy · A_W          ẏ = A_H · ẋ · A_Wᵀ  (the map itself)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, output_size):
        return F.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.input_shape = inputs[0].shape
        ctx.output_size = inputs[1]
        # torch averages to 1 x 1 with mean(), whose gradient is contiguous whatever the input's layout
        ctx.layout = torch.contiguous_format if output.shape[-2:] == (1, 1) else memory_format_of(inputs[0])

    @staticmethod
    def backward(ctx, grad_out):
        (h, w), (ho, wo) = ctx.input_shape[-2:], grad_out.shape[-2:]
        a_h = _adaptive_average_matrix(h, ho, grad_out)
        a_w = _adaptive_average_matrix(w, wo, grad_out)
        return a_h.t().matmul(grad_out).matmul(a_w).contiguous(memory_format=ctx.layout), None

    @staticmethod
    def jvp(ctx, x_dot, _):
        return F.adaptive_avg_pool2d(x_dot, ctx.output_size)


#: Inputs from this size on are max-pooled in channels_last on the CPU (see ``pool_layout``).
CHANNELS_LAST_MIN_ELEMENTS = 1 << 15


def shape_of(x: torch.Tensor) -> torch.Tensor:
    """A tensor of x's shape holding one element (a stride-0 view): saved for backward in place of ``x.shape``,
    so that under ``torch.compile(dynamic=True)`` backward reads a symbolic size from a saved tensor rather
    than from ``ctx``, which Dynamo cannot lift into the backward graph."""
    return x.new_empty((1,) * x.dim()).expand(x.shape)


def planes(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (C, H, W) as (N, C, H·W) or (C, H·W) planes."""
    return t.reshape(*t.shape[:-2], t.shape[-2] * t.shape[-1])  # not -1: the batch may be empty


def scatter_into_planes(
    flat_grad: torch.Tensor, flat_indices: torch.Tensor, shape: torch.Size, layout: torch.memory_format
) -> torch.Tensor:
    """dL/dx of a max pool, ``shape`` in memory format ``layout``: ``flat_grad`` (N, C, Ho·Wo) added at the
    plane positions ``flat_indices`` (a·W + e) of each (n, c) plane, windows that share a max adding up. In
    place into fresh zeros: the out-of-place scatter_add would copy the zeros first."""
    return zero_planes(flat_grad, shape, layout).scatter_add_(-1, flat_indices, flat_grad).view(shape)


def zero_planes(like: torch.Tensor, shape: torch.Size, layout: torch.memory_format) -> torch.Tensor:
    """Zeros of ``shape`` (an input's (N, C, H, W) or (C, H, W)) as (N, C, H·W) or (C, H·W) planes, a view of
    a tensor in memory format ``layout``: the gradient that the max pools' backward scatters into, in the
    layout of the input it belongs to. ``like.new_zeros``, so vmap batches it."""
    if layout == torch.channels_last:
        n, c, h, w = shape
        return like.new_zeros((n, h, w, c)).permute(0, 3, 1, 2).flatten(-2)
    return like.new_zeros((*shape[:-2], shape[-2] * shape[-1]))


def pool_layout(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """x (with ``relu``: max(x, 0), a new tensor) laid out for torch's fastest max pool: channels_last for a
    batched CPU input, as it is.

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


def pool_window(
    op: str,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | tuple[()] | list[int] | None,
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
) -> tuple[Pair, Pair, Pair, Pair]:
    """Checked (kernel, stride, padding, dilation) pairs of a pooling window, as torch's pools require
    them; stride None (or empty) means kernel_size. Shared by the functional pools and the pool layers'
    constructors."""
    kernel = int_pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None or stride in ((), []) else int_pair(op, "stride", stride, 1)
    pad = int_pair(op, "padding", padding, 0)
    dil = int_pair(op, "dilation", dilation, 1)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise InputError(f"{op}: padding {pad} must be at most half of kernel_size {kernel}")
    return kernel, stride, pad, dil


def _pool_geometry(
    op: str,
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None,
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
) -> tuple[Pair, Pair, Pair, Pair]:
    """The checked ``pool_window`` of a pool over ``input``, whose (padded) planes must hold a window."""
    check_floating(op, input=input)
    check_dim(op, "input", input, (3, 4))
    kernel, stride, pad, dil = pool_window(op, kernel_size, stride, padding, dilation)
    size = tuple(input.shape[-2:])
    padded = tuple(s + 2 * p for s, p in zip(size, pad))
    effective = tuple(d * (k - 1) + 1 for d, k in zip(dil, kernel))
    if any(e > p for e, p in zip(effective, padded)):
        dilated = f" (dilated to {effective})" if dil != (1, 1) else ""
        raise InputError(
            f"{op}: kernel of size {kernel}{dilated} is larger than the padded input of size {padded} "
            f"(input of shape {shape_str(input)}, padding {pad})"
        )
    return kernel, stride, pad, dil


def check_divisor_override(op: str, divisor_override: int | None) -> None:
    """Raise InputError (a ValueError and a RuntimeError) unless ``divisor_override`` (avg_pool2d's) is None or a non-zero int."""
    if divisor_override is not None and (
        not isinstance(divisor_override, int) or isinstance(divisor_override, bool) or divisor_override == 0
    ):
        raise InputError(f"{op}: divisor_override must be a non-zero int or None, got {divisor_override!r}")


def adaptive_output_size(
    op: str, output_size: int | tuple[int | None, int | None] | None
) -> tuple[int | None, int | None]:
    """adaptive_avg_pool2d's ``output_size`` as a checked pair of positive ints or None (keep that dimension)."""
    if output_size is None or isinstance(output_size, int):
        sizes = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        sizes = (output_size[0], output_size[1])
    else:
        raise InputError(f"{op}: output_size must be an int, None or a pair of them, got {output_size!r}")
    if not all(o is None or (isinstance(o, int) and not isinstance(o, bool) and o >= 1) for o in sizes):
        raise InputError(f"{op}: output_size must hold positive ints or None, got {output_size!r}")
    return sizes


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.functional.max_pool2d``; with ``return_indices`` also the argmax
    positions in each flattened H·W plane, as torch returns them."""
    geometry = _pool_geometry("max_pool2d", input, kernel_size, stride, padding, dilation)
    values, indices = apply(MaxPool2dFunction, input, *geometry, bool(ceil_mode))
    return (values, indices) if return_indices else values


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.avg_pool2d``."""
    kernel, stride, pad, _ = _pool_geometry("avg_pool2d", input, kernel_size, stride, padding)
    check_divisor_override("avg_pool2d", divisor_override)
    return apply(
        AvgPool2dFunction, input, kernel, stride, pad, bool(ceil_mode), bool(count_include_pad), divisor_override
    )


def adaptive_avg_pool2d(input: torch.Tensor, output_size: int | tuple[int | None, int | None] | None) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.adaptive_avg_pool2d``; a None entry of
    ``output_size`` keeps that input dimension."""
    op = "adaptive_avg_pool2d"
    check_floating(op, input=input)
    check_dim(op, "input", input, (3, 4))
    sizes = adaptive_output_size(op, output_size)
    resolved = tuple(s if o is None else o for s, o in zip(input.shape[-2:], sizes))
    if min(input.shape[-2:]) < 1:
        raise InputError(f"{op}: input of shape {shape_str(input)} has an empty spatial dimension")
    return apply(AdaptiveAvgPool2dFunction, input, resolved)
