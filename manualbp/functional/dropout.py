"""Inverted dropout: the random mask is drawn outside the Function, which is then deterministic.

``inplace=True`` applies ``DropoutInplaceFunction``, which writes y into x (see
``manualbp.functional._inplace``); the backward needs only the mask, as out of place.

The mask broadcasts against x, so one Function serves every kind of dropout: elementwise (``dropout``, m of x's
shape), channel-wise (``dropout1d``/``2d``/``3d``, m of shape (N, C, 1, ...): a whole feature map kept or zeroed)
and per sample (``stochastic_depth``, torchvision's, m of shape (N, 1, ...) or one value for the whole batch).
Each mask is drawn as torch (or torchvision) draws it, so with one seed both zero the same elements.
"""

from __future__ import annotations

import warnings

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._inplace import vmap_in_place
from manualbp.functional._validation import check_floating, check_inplace_target, check_unit_interval


@function
class DropoutFunction(torch.autograd.Function):
    """y = x ⊙ m.   x, y: same shape; m broadcastable to it; m holds 0 (dropped) or 1/(1-p) (kept).

    dL/dx = dL/dy ⊙ m          (m is a constant: no gradient flows to it)
    ẏ = ẋ ⊙ m                  (nor does a tangent flow from it)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, mask):
        return x * mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None

    @staticmethod
    def jvp(ctx, x_dot, _):
        (mask,) = ctx.saved_tensors
        return x_dot * mask


@function
class DropoutInplaceFunction(torch.autograd.Function):
    """y = x ⊙ m written into x (``dropout(x, p, inplace=True)``).   x, y: same shape; m broadcastable to it.

    dL/dx = dL/dy ⊙ m          ẏ = ẋ ⊙ m  (written into ẋ)

    The mask alone is saved, as out of place.
    """

    generate_vmap_rule = False

    @staticmethod
    def forward(x, mask):
        x.mul_(mask)
        return x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None

    @staticmethod
    def jvp(ctx, x_dot, _):
        (mask,) = ctx.saved_tensors
        return x_dot.mul_(mask)

    @staticmethod
    def vmap(info, in_dims, x, mask):
        return vmap_in_place(DropoutInplaceFunction, in_dims, x, mask)


def dropout_mask(input: torch.Tensor, p: float) -> torch.Tensor:
    """A mask like ``input`` with 1/(1-p) where kept (probability 1-p) and 0 where dropped.

    Drawn as torch's own dropout draws it, so that with the same seed both drop the same elements:
    on the CPU ``empty_like(input).bernoulli_(1 - p)``; on an accelerator, where torch's dropout is the
    fused ``native_dropout`` kernel, the keep-mask that kernel returns.
    """
    if p == 1.0:
        return torch.zeros_like(input)
    if input.device.type == "cpu":
        return torch.empty_like(input).bernoulli_(1.0 - p).div_(1.0 - p)
    _, keep = torch.native_dropout(input.detach(), p, True)
    return keep.to(input.dtype).div_(1.0 - p)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.dropout``; identity when not ``training`` or p == 0;
    ``inplace=True`` overwrites and returns ``input``."""
    check_floating("dropout", input=input)
    check_unit_interval("dropout", "probability", p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        check_inplace_target("dropout", input)
    return apply(DropoutInplaceFunction if inplace else DropoutFunction, input, dropout_mask(input, p))


def _feature_mask(input: torch.Tensor, p: float) -> torch.Tensor:
    """The mask of channel-wise dropout of ``input`` (N, C, *) as torch's ``feature_dropout`` draws it: (N, C, 1, ...),
    1/(1-p) where a channel is kept (probability 1-p), 0 where dropped; all zeros, drawn from nothing, when p == 1."""
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    shape = (*input.shape[:2], *(1,) * (input.dim() - 2))
    if p == 1.0:
        return input.new_zeros(shape)
    return input.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)


def _channel_dropout(op: str, input: torch.Tensor, p: float, training: bool, inplace: bool, batched: bool):
    """Channel-wise dropout of ``input``, (N, C, *) or, not ``batched``, (C, *) (one sample)."""
    check_floating(op, input=input)
    check_unit_interval(op, "probability", p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        check_inplace_target(op, input)
    mask = _feature_mask(input if batched else input.unsqueeze(0), p)
    mask = mask if batched else mask.squeeze(0)
    return apply(DropoutInplaceFunction if inplace else DropoutFunction, input, mask)


def dropout1d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.dropout1d``: each channel of (N, C, L) or (C, L) zeroed with
    probability p, the rest scaled by 1/(1-p); dL/dx = dL/dy ⊙ m."""
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. Note that dropout1d exists to "
            "provide channel-wise dropout on inputs with 1 spatial dimension, a channel dimension, and an optional "
            "batch dimension (i.e. 2D or 3D inputs)."
        )
    return _channel_dropout("dropout1d", input, p, training, inplace, batched=input.dim() == 3)


def dropout2d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.dropout2d``: each channel of (N, C, H, W) zeroed with probability p.
    As torch, a 3-D input is taken as (N, C, L), with torch's warnings."""
    if input.dim() not in (3, 4):
        warnings.warn(
            f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated and will result in an "
            "error in a future release. To retain the behavior and silence this warning, please use dropout "
            "instead. Note that dropout2d exists to provide channel-wise dropout on inputs with 2 spatial "
            "dimensions, a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).",
            stacklevel=2,
        )
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
            "desired - input is interpreted as shape (N, C, L), where C is the channel dim. This behavior will "
            "change in a future release to interpret the input as one without a batch dimension, i.e. shape "
            "(C, H, W). To maintain the 1D channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=2,
        )
    return _channel_dropout("dropout2d", input, p, training, inplace, batched=True)


def dropout3d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.dropout3d``: each channel of (N, C, D, H, W) or (C, D, H, W)
    zeroed with probability p."""
    if input.dim() not in (4, 5):
        warnings.warn(
            f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is deprecated and will result in an "
            "error in a future release. To retain the behavior and silence this warning, please use dropout "
            "instead. Note that dropout3d exists to provide channel-wise dropout on inputs with 3 spatial "
            "dimensions, a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs).",
            stacklevel=2,
        )
    return _channel_dropout("dropout3d", input, p, training, inplace, batched=input.dim() == 5)


STOCHASTIC_DEPTH_MODES = ("batch", "row")


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """Hand-differentiated ``torchvision.ops.stochastic_depth``: a residual branch dropped whole with probability
    p, per sample (``mode="row"``: m of shape (N, 1, ...)) or for the whole batch (``"batch"``: one value), the kept
    ones scaled by 1/(1-p); y = x ⊙ m, dL/dx = dL/dy ⊙ m. The mask is drawn as torchvision draws it."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in STOCHASTIC_DEPTH_MODES:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    check_floating("stochastic_depth", input=input)
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    shape = [input.shape[0]] + [1] * (input.dim() - 1) if mode == "row" else [1] * input.dim()
    mask = torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        mask.div_(survival_rate)
    return apply(DropoutFunction, input, mask)
