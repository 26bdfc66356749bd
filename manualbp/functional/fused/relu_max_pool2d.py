"""ReLU then 2-D max pooling as one Function, keeping one byte per output for backward.

Index conventions as in ``manualbp.functional.pooling``: x: (N, C, H, W)
or (C, H, W), y: (N, C, Ho, Wo) or (C, Ho, Wo); window (i, j) of a pool with kernel (kh, kw), stride
(sh, sw) and padding (ph, pw) covers the rows i·sh - ph + u (u < kh) and the columns j·sw - pw + v
(v < kw) of x; position (u, v) of the window is numbered u·kw + v, in [0, kh·kw).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from manualbp.functional._dispatch import apply, function
from manualbp.functional._layout import memory_format_of
from manualbp.functional.pooling import _pool_geometry, pool_layout, shape_of, zero_planes

Pair = tuple[int, int]

#: The window code of a window whose max is ≤ 0 (or nan): ReLU zeroes its output and its gradient there.
#: A live window's code is 1 + u·kw + v, so kernels of up to 255 positions fit in one byte.
DEAD = 0
MAX_POSITIONS = 255


class _Tables(NamedTuple):
    """The constant index tensors of one pooling geometry (see ``_tables``)."""

    origin: torch.Tensor  # (Ho, Wo) int64: plane position (i·sh - ph)·W + (j·sw - pw) of window (i, j)'s (0, 0)
    code_origin: torch.Tensor  # (Ho, Wo) uint8: (origin - 1) mod 256
    row_starts: tuple[torch.Tensor, ...]  # (Ho, 1) int64 for k = 1 .. kh-1: (i·sh - ph + k)·W, where row u = k starts
    row_step: torch.Tensor  # () uint8: (W - kw) mod 256
    offsets: torch.Tensor  # (256,) int64: u·W + v for code 1 + u·kw + v; 0 for DEAD and unused codes


def _build_tables(
    input_size: Pair, output_size: Pair, kernel_size: Pair, stride: Pair, padding: Pair, device: torch.device
) -> _Tables:
    (_, w), (ho, wo), (kh, kw), (sh, sw), (ph, pw) = input_size, output_size, kernel_size, stride, padding
    rows = torch.arange(ho, device=device) * sh - ph
    cols = torch.arange(wo, device=device) * sw - pw
    origin = rows[:, None] * w + cols[None, :]
    position = torch.arange(-1, MAX_POSITIONS, device=device)  # code - 1, for each code 0 .. 255
    offsets = torch.where(position >= 0, position // kw * w + position % kw, 0)
    return _Tables(
        origin=origin,
        code_origin=(origin - 1).remainder(256).to(torch.uint8),
        row_starts=tuple((rows[:, None] + k) * w for k in range(1, kh)),
        row_step=torch.tensor((w - kw) % 256, dtype=torch.uint8, device=device),
        offsets=offsets,
    )


@functools.lru_cache(maxsize=128)
def _cached_tables(*geometry: Any) -> _Tables:
    with torch.inference_mode(False):  # plain tensors, usable outside inference mode too
        return _build_tables(*geometry)


def _tables(
    input_size: Pair, output_size: Pair, kernel_size: Pair, stride: Pair, padding: Pair, device: torch.device
) -> _Tables:
    """The index tensors of a geometry, built once per geometry and device: they are a dozen tiny ops,
    which cost more than the real work on small batches (measured on 2 CPU threads, lenet5 batch 32:
    ~0.15 ms per training step). Rebuilt on every call while torch.compile traces (Dynamo sees plain ops)."""
    geometry = (tuple(input_size), tuple(output_size), tuple(kernel_size), tuple(stride), tuple(padding), device)
    if torch.compiler.is_compiling():
        return _build_tables(*geometry)
    return _cached_tables(*geometry)


def _window_code(flat: torch.Tensor, positive: torch.Tensor, tables: _Tables) -> torch.Tensor:
    """uint8 window codes: 1 + u·kw + v where ``positive``, DEAD = 0 elsewhere, from torch's plane
    positions ``flat`` = a·W + e = origin + u·W + v:

        u·kw + v = flat - origin - u·(W - kw),   u = Σ_{k=1}^{kh-1} [flat ≥ (i·sh - ph + k)·W]

    computed in uint8, i.e. modulo 256: the result lies in [1, kh·kw] ⊂ [1, 255], so it is exact, and the
    arithmetic runs on one byte per output with no integer division and no ``where`` (both slow on the
    CPU, measured on 2 threads: each several times the cost of a uint8 subtraction).
    """
    code = flat.to(torch.uint8) - tables.code_origin  # 1 + (flat - origin), mod 256
    for row_start in tables.row_starts:
        code = code - (flat >= row_start) * tables.row_step
    return code * positive


def _argmax_positions(code: torch.Tensor, tables: _Tables, plane_size: int, padded: bool):
    """From the saved window codes: (flat, live), ``flat`` the int64 position a·W + e of each window's
    max in its flattened H·W plane, ``live`` the uint8 0/1 mask of the windows with max > 0.

    Position u·kw + v of window (i, j) is origin(i, j) + u·W + v; the offset u·W + v is looked up in a
    256-entry table indexed by the code (no integer division; an index, which vmap batches). A dead window is pointed at its origin,
    clamped into the plane where padding puts the origin outside it; ``live`` zeroes its gradient.
    """
    flat = tables.origin + tables.offsets[code.long()]  # indexing, not take: vmap has a batching rule for it
    if padded:
        flat = flat.clamp(0, plane_size - 1)
    return flat, code.clamp(max=1)


@function
class ReLUMaxPool2dFunction(torch.autograd.Function):
    """(y, c) = max_pool2d(relu(x)) and its window codes.   x: (N, C, H, W) or (C, H, W)
    y, c: (N, C, Ho, Wo) or (C, Ho, Wo);  dilation 1, padding at most half the kernel.

    ReLU is monotone, so it commutes with the max:  y = max_pool2d(relu(x)) = relu(max_pool2d(x)). The
    forward computes the left side, as torch's Sequential(ReLU(), MaxPool2d()) does (the relu'd input is a
    temporary, not kept): in lenet5 steps on 2 CPU threads that measured no slower than pooling x and
    applying ReLU to the kh·kw times smaller output (torch's CPU max_pool2d is the cost either way).

    c[n, c, i, j] = 1 + u·kw + v, with (u, v) the position WITHIN window (i, j) where the max sits, as
        uint8; DEAD = 0 where that max is ≤ 0 (or nan), i.e. where y = 0 and ReLU passes no gradient.
        Returned as a second, non-differentiable output, it is all backward keeps: 1 byte per output,
        against the ReLU output (the whole activation) and int64 pooling indices of the two layers apart.

    dL/dx[n, c, a, e] = Σ_{i, j : c[n, c, i, j] ≠ DEAD, window (i, j)'s max at (a, e)} dL/dy[n, c, i, j]
        a scatter_add of dL/dy ⊙ [y > 0] onto the argmax positions of each flattened plane (overlapping
        windows may send several gradients to one position)

    Forward mode: ẏ[n, c, i, j] = ẋ at window (i, j)'s argmax ⊙ [y > 0]    (a gather; no tangent for c)

    The second derivative is zero almost everywhere (the map is piecewise linear), so double backward
    is backward's own derivative in dL/dy: the same scatter, differentiated by autograd (a gather).

    Ties: the argmax is torch's max_pool2d's (the first maximal position in the window's row-major scan
    order), so the gradient goes where torch's Sequential(ReLU(), MaxPool2d()) sends it; a window whose
    max is 0 or negative gets no gradient, as ReLU's derivative at 0 is torch's 0. Padding never wins
    (it counts as -inf) and every window holds at least one input element. As in ReLUFunction, the mask
    is applied as a product: a non-finite dL/dy on a dead window gives nan rather than 0.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, ceil_mode):
        y, flat = F.max_pool2d(pool_layout(x, relu=True), kernel_size, stride, padding, 1, ceil_mode=ceil_mode, return_indices=True)
        tables = _tables(x.shape[-2:], flat.shape[-2:], kernel_size, stride, padding, x.device)
        # the code is computed in the pool's layout and copied to x's: 1 byte, not 8
        layout = memory_format_of(x)
        return y.contiguous(memory_format=layout), _window_code(flat, y > 0, tables).contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, _ = inputs
        _, code = output
        ctx.mark_non_differentiable(code)
        ctx.save_for_backward(code, shape_of(x))
        ctx.save_for_forward(code, shape_of(x))
        ctx.geometry = (kernel_size, stride, padding)
        ctx.layout = memory_format_of(x)

    @staticmethod
    def backward(ctx, grad_out, grad_code):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        code, x_shape = ctx.saved_tensors
        shape = x_shape.shape
        kernel_size, stride, padding = ctx.geometry
        tables = _tables(shape[-2:], code.shape[-2:], kernel_size, stride, padding, code.device)
        flat, live = _argmax_positions(code, tables, shape[-2] * shape[-1], padding != (0, 0))
        planes = code.shape[:-2] + (code.shape[-2] * code.shape[-1],)  # not -1: the batch may be empty
        grad = (grad_out * live).reshape(planes)
        # in place into a fresh zeros tensor: the out-of-place scatter_add would copy the zeros first
        grad_x = zero_planes(grad_out, shape, ctx.layout).scatter_add_(-1, flat.reshape(planes), grad)
        return grad_x.view(shape), None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        code, x_shape = ctx.saved_tensors
        kernel_size, stride, padding = ctx.geometry
        shape = x_shape.shape
        tables = _tables(shape[-2:], code.shape[-2:], kernel_size, stride, padding, code.device)
        flat, live = _argmax_positions(code, tables, shape[-2] * shape[-1], padding != (0, 0))
        planes = code.shape[:-2] + (code.shape[-2] * code.shape[-1],)
        x_planes = x_dot.reshape(x_dot.shape[:-2] + (shape[-2] * shape[-1],))
        y_dot = x_planes.gather(-1, flat.reshape(planes)).reshape(code.shape)
        return y_dot * live, None


def check_window_code_fits(op: str, kernel: tuple[int, int]) -> None:
    """Raise NotImplementedError unless a window of ``kernel`` has at most 255 positions (one byte of code)."""
    if kernel[0] * kernel[1] > MAX_POSITIONS:
        raise NotImplementedError(
            f"{op}: kernel_size {kernel} has {kernel[0] * kernel[1]} positions; the one-byte window code "
            f"holds at most {MAX_POSITIONS} (use relu followed by max_pool2d)"
        )


def relu_max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``max_pool2d(relu(input), ...)`` in one hand-differentiated Function that keeps for backward only
    a one-byte window code per output (see ``ReLUMaxPool2dFunction``). Dilation 1; kernels of at most
    255 positions."""
    op = "relu_max_pool2d"
    if torch.onnx.is_in_onnx_export() and not torch.compiler.is_exporting():
        raise NotImplementedError(
            f"{op} (manualbp.nn.ReLUMaxPool2d): the TorchScript ONNX exporter (torch.onnx.export(..., "
            "dynamo=False)) cannot export this Function; export manualbp.to_torch(model) instead, or use "
            "torch.export / torch.onnx.export(..., dynamo=True)"
        )
    kernel, stride, pad, _ = _pool_geometry(op, input, kernel_size, stride, padding)
    check_window_code_fits(op, kernel)
    y, _ = apply(ReLUMaxPool2dFunction, input, kernel, stride, pad, bool(ceil_mode))
    return y
