"""ReLU then 2-D max pooling as one Function, keeping the pooling indices and its own output for backward.

Index conventions as in ``manualbp.functional.pooling``: x: (N, C, H, W) or (C, H, W), y: (N, C, Ho, Wo) or
(C, Ho, Wo); window (i, j) of a pool with kernel (kh, kw), stride (sh, sw) and padding (ph, pw) covers the rows
i·sh - ph + u (u < kh) and the columns j·sw - pw + v (v < kw) of x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manualbp.functional._dispatch import apply, function
from manualbp.functional._layout import memory_format_of
from manualbp.functional.activation import relu_grad
from manualbp.functional.pooling import _pool_geometry, planes, pool_layout, scatter_into_planes, shape_of


@function
class ReLUMaxPool2dFunction(torch.autograd.Function):
    """(y, idx) = max_pool2d(relu(x)) and its pooling indices.   x: (N, C, H, W) or (C, H, W)
    y, idx: (N, C, Ho, Wo) or (C, Ho, Wo);  dilation 1, padding at most half the kernel.

    ReLU is monotone, so it commutes with the max:  y = max_pool2d(relu(x)) = relu(max_pool2d(x)). The
    forward computes the left side, as torch's Sequential(ReLU(), MaxPool2d()) does (the relu'd input is a
    temporary, not kept).

    idx[n, c, i, j] = a·W + e, the position in the flattened H·W plane where window (i, j)'s max sits
        (torch's, returned as a second, non-differentiable output).

    dL/dx[n, c, a, e] = Σ_{i, j : idx[n, c, i, j] = a·W + e} dL/dy[n, c, i, j] · [y[n, c, i, j] > 0]
        a scatter_add of dL/dy ⊙ [y > 0] onto the argmax positions of each flattened plane (overlapping
        windows may send several gradients to one position). The mask is ReLU's derivative, read from
        the output y (as sign(y), y ≥ 0), applied as a product: a non-finite dL/dy on a dead window gives
        nan rather than 0, as in ``ReLUFunction``.

    Backward keeps idx (int64) and y, which the next layer saves as its input anyway: apart, the two layers
    keep the ReLU's output (the whole activation) and the indices. An earlier version kept a one-byte
    window code per output instead of idx (a quarter of autograd's bytes on LeNet-5, against about half
    now); encoding and decoding it took 15-18% of a LeNet-5 training step on 2 CPU threads.

    Forward mode: ẏ[n, c, i, j] = ẋ at window (i, j)'s argmax ⊙ [y > 0]    (a gather; no tangent for idx)

    The second derivative is zero almost everywhere (the map is piecewise linear), so double backward
    is backward's own derivative in dL/dy: the same scatter, differentiated by autograd (a gather).
    Ties: the argmax is torch's max_pool2d's (the first maximal position in the window's row-major scan
    order), so the gradient goes where torch's Sequential(ReLU(), MaxPool2d()) sends it; a window whose
    max is 0 or negative gets no gradient, as ReLU's derivative at 0 is torch's 0. Padding never wins
    (it counts as -inf) and every window holds at least one input element.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kernel_size, stride, padding, ceil_mode):
        y, indices = F.max_pool2d(
            pool_layout(x, relu=True), kernel_size, stride, padding, 1, ceil_mode=ceil_mode, return_indices=True
        )
        layout = memory_format_of(x)
        return y.contiguous(memory_format=layout), indices.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *_ = inputs
        y, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices, y, shape_of(x))
        ctx.save_for_forward(indices, y)
        ctx.layout = memory_format_of(x)

    @staticmethod
    def backward(ctx, grad_out, grad_indices):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        indices, y, x_shape = ctx.saved_tensors
        flat_grad = planes(relu_grad(grad_out, y))
        return scatter_into_planes(flat_grad, planes(indices), x_shape.shape, ctx.layout), None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        indices, y = ctx.saved_tensors
        y_dot = planes(x_dot).gather(-1, planes(indices)).reshape(indices.shape)
        return y_dot * y.sign(), None


def relu_max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``max_pool2d(relu(input), ...)`` in one hand-differentiated Function that keeps for backward the
    pooling indices and its output, not the ReLU's output (see ``ReLUMaxPool2dFunction``). Dilation 1."""
    op = "relu_max_pool2d"
    if torch.onnx.is_in_onnx_export() and not torch.compiler.is_exporting():
        raise NotImplementedError(
            f"{op} (manualbp.nn.ReLUMaxPool2d): the TorchScript ONNX exporter (torch.onnx.export(..., "
            "dynamo=False)) cannot export this Function; export manualbp.to_torch(model) instead, or use "
            "torch.export / torch.onnx.export(..., dynamo=True)"
        )
    kernel, stride, pad, _ = _pool_geometry(op, input, kernel_size, stride, padding)
    y, _ = apply(ReLUMaxPool2dFunction, input, kernel, stride, pad, bool(ceil_mode))
    return y
