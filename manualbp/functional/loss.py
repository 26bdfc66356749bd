"""Losses with hand-written backward passes: cross entropy, negative log-likelihood, mean squared error.

Cross entropy and NLL share one form. For every sample i (a batch element, or a batch element at one
spatial position of the (N, C, d1, ...) layout) a coefficient vector a_i over the C classes is built:

    class targets t_i:        a_ic = [t_i ≠ ignore_index] · ((1-ε) w_{t_i} [c = t_i] + ε/C · w_c)
    probability targets q_i:  a_ic = w_c · ((1-ε) q_ic + ε/C)

with class weights w (all ones by default) and label smoothing ε. Then

    nll_loss:       ℓ_i = -Σ_c a_ic x_ic             dℓ_i/dx_ic = -a_ic
    cross_entropy:  ℓ_i = -Σ_c a_ic log p_ic,  p_i = softmax(x_i)
                    dℓ_i/dx_ic = p_ic Σ_k a_ik - a_ic

and reduction "mean" divides Σ_i ℓ_i by D = Σ_i Σ_c [class targets: ε-free] a_ic, which is
Σ_i [t_i ≠ ignore_index] w_{t_i} for class targets (torch's normalisation) and the number of samples
for probability targets.

Forward mode. ℓ is linear in a, and a is linear in the probability target q: ȧ_ic = (1-ε) w_c q̇_ic
(class indices have no tangent); D has no tangent (class weights are constants). With
d log p_ic = ẋ_ic - Σ_k p_ik ẋ_ik:

    nll_loss:       ℓ̇_i = -Σ_c a_ic ẋ_ic
    cross_entropy:  ℓ̇_i = Σ_c (p_ic Σ_k a_ik - a_ic) ẋ_ic - (1-ε) Σ_c w_c q̇_ic log p_ic

reduced like ℓ (ẏ = ℓ̇, Σ_i ℓ̇_i, or Σ_i ℓ̇_i / D).
"""

from __future__ import annotations

import warnings

import torch

from manualbp.functional._autocast import autocast_inputs
from manualbp.functional._dispatch import apply, capturing_graph, function
from manualbp.functional._reduction import REDUCTION
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    DtypeError,
    InputError,
    check_floating,
    check_int,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_unit_interval,
    resolve_reduction,
    shape_str,
)


def _class_dim(x: torch.Tensor) -> int:
    return 1 if x.dim() >= 2 else 0


def _broadcast_weight(weight: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Class weights shaped to broadcast against x along the class dim; ones when weight is None."""
    cd = _class_dim(x)
    if weight is None:
        weight = torch.ones(x.shape[cd], dtype=x.dtype, device=x.device)
    shape = [1] * x.dim()
    shape[cd] = -1
    return weight.reshape(shape)


def _coefficients(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficient tensor a (shape of x) of the module docstring, and the mean denominator D (0-d)."""
    cd = _class_dim(x)
    num_classes = x.shape[cd]
    w = _broadcast_weight(weight, x)
    if target.is_floating_point():
        a = w * ((1 - label_smoothing) * target + label_smoothing / num_classes)
        denom = torch.tensor(x.numel() // num_classes, dtype=x.dtype, device=x.device)
        return a, denom
    valid = (target != ignore_index).unsqueeze(cd).to(x.dtype)
    safe_target = target.masked_fill(target == ignore_index, 0).unsqueeze(cd)
    one_hot = torch.zeros_like(x).scatter(cd, safe_target, 1.0)
    w_target = (one_hot * w).sum(cd, keepdim=True)
    a = valid * ((1 - label_smoothing) * w_target * one_hot + (label_smoothing / num_classes) * w)
    denom = (valid * w_target).sum()
    return a, denom


def _reduce(per_sample: torch.Tensor, reduction: str, denom: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / denom


def _per_sample_grad_scale(grad_out: torch.Tensor, reduction: str, denom: torch.Tensor, cd: int) -> torch.Tensor:
    """dL/dℓ_i, shaped to broadcast against x: dL/dy itself ('none'), or its scalar spread over i."""
    if reduction == "none":
        return grad_out.unsqueeze(cd)
    if reduction == "sum":
        return grad_out
    return grad_out / _nonzero(denom)


def _nonzero(denom: torch.Tensor) -> torch.Tensor:
    """The mean's denominator D, with 1 in place of 0. D = 0 means no sample counts (every target ignored,
    or no samples): then every coefficient D divides is 0 and the loss is 0/0 = nan, as in torch, while
    the gradient is 0, as torch's is, instead of 0 · (1/0) = nan."""
    return denom.masked_fill(denom == 0, 1)


#: From this many rows on, (N, C) logits are normalised along dim 0 of their transpose (see class_softmax).
TRANSPOSED_SOFTMAX_MIN_ROWS = 128


def class_softmax(x: torch.Tensor, cd: int, log: bool = False) -> torch.Tensor:
    """softmax (``log``: log_softmax) of x along the class dim ``cd``.

    For (N, C) logits on the CPU with few classes, torch's kernel along dim 1 works row by row over C values;
    along dim 0 of the transpose the same numbers come out several times faster (measured on 2 threads,
    (512, 10): softmax 50 -> 18 µs, log_softmax 41 -> 20 µs; (128, 10): 14 -> 7 µs; no gain below about
    128 rows). The result is a transposed view, which the callers only read. Not while a graph is captured.
    """
    normalise = torch.log_softmax if log else torch.softmax
    if x.dim() == 2 and x.device.type == "cpu" and not capturing_graph() and x.shape[0] >= TRANSPOSED_SOFTMAX_MIN_ROWS:
        return normalise(x.t(), 0).t()
    return normalise(x, cd)


def _is_plain_class_target(target: torch.Tensor, weight: torch.Tensor | None, label_smoothing: float) -> bool:
    """Class-index targets without class weights or label smoothing: the case a classifier trains with."""
    return not target.is_floating_point() and weight is None and label_smoothing == 0.0


def _plain_class_target_grad(
    x: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str, grad_out: torch.Tensor
) -> torch.Tensor:
    """dL/dx of cross entropy for plain class targets, without building the coefficient tensor a.

    With a_i = v_i e_{t_i} (v_i = [t_i ≠ ignore_index], e_t the one-hot vector of class t), Σ_c a_ic = v_i
    and D = Σ_i v_i, so

        dL/dx_i = s_i v_i (softmax(x_i) - e_{t_i}),   s_i = dL/dℓ_i

    computed as softmax(x) scaled by s v, with s_i v_i scatter-subtracted at each target class: a few
    kernels on (N, C) or (N,), against about twenty for the general form with its one-hot coefficients.
    An ignored target is clamped into [0, C) only to be a valid index: its s_i v_i is 0.
    """
    cd = _class_dim(x)
    valid = target != ignore_index
    if reduction == "mean":
        grad_out = grad_out / valid.sum().clamp(min=1)  # D = 0: no counted sample, gradient 0 (see _nonzero)
    per_sample = (grad_out * valid).unsqueeze(cd)
    safe_target = target.clamp(0, x.shape[cd] - 1).unsqueeze(cd)
    return (class_softmax(x, cd) * per_sample).scatter_add(cd, safe_target, -per_sample)


def _all_counted_grad(x: torch.Tensor, target: torch.Tensor, reduction: str, grad_out: torch.Tensor) -> torch.Tensor:
    """``_plain_class_target_grad`` when every target counts (v_i = 1, D = the number of targets), which the
    forward's range check established: dL/dx_i = s_i (softmax(x_i) - e_{t_i}) in five kernels (s, the
    softmax, its scaling, -s, the scatter-subtraction in place) against ten, which count the valid targets."""
    cd = _class_dim(x)
    index = target.unsqueeze(cd)
    if reduction == "none":
        scale = grad_out.unsqueeze(cd)
    else:
        scale = grad_out / target.numel() if reduction == "mean" else grad_out
    grad = class_softmax(x, cd) * scale
    return grad.scatter_add_(cd, index, (-scale).expand(index.shape))


@function
class CrossEntropyFunction(torch.autograd.Function):
    """Cross entropy of logits x against class indices or class probabilities.

    x: (N, C, d1, ...) or (C,)   target: (N, d1, ...) / () class indices, or x's shape for probabilities
    y: (N, d1, ...) for reduction="none", else ()

        ℓ_i = -Σ_c a_ic log softmax(x_i)_c
        dL/dx_i = dL/dℓ_i · (softmax(x_i) Σ_c a_ic - a_i)
        dL/dq_ic = -dL/dℓ_i · (1-ε) w_c log softmax(x_i)_c        (probability targets only)
        ℓ̇_i = Σ_c (softmax(x_i)_c Σ_k a_ik - a_ic) ẋ_ic - (1-ε) Σ_c w_c q̇_ic log softmax(x_i)_c

    (a and the mean denominator D are defined in this module's docstring; for "mean", dL/dℓ_i = dL/dy / D.)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, target, weight, ignore_index, reduction, label_smoothing, all_counted=False):
        # The value is torch's (log-softmax and NLL); the derivatives below are ours.
        if _is_plain_class_target(target, weight, label_smoothing):
            log_p = class_softmax(x, _class_dim(x), log=True)
            return torch.nn.functional.nll_loss(log_p, target, ignore_index=ignore_index, reduction=reduction)
        return torch.nn.functional.cross_entropy(
            x, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, weight, ignore_index, reduction, label_smoothing, *all_counted = inputs
        ctx.save_for_backward(x, target, weight)
        ctx.save_for_forward(x, target, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.ignore_index, ctx.reduction, ctx.label_smoothing = ignore_index, reduction, label_smoothing
        ctx.all_counted = bool(all_counted and all_counted[0])

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None, None, None, None
        if REDUCTION.mode is not None:  # manualbp.curvature: the loss Hessian's factor starts here
            REDUCTION.mode.loss(ctx, "cross_entropy", grad_out)
        x, target, weight = ctx.saved_tensors
        cd = _class_dim(x)
        if _is_plain_class_target(target, weight, ctx.label_smoothing):
            grad_x = None
            if ctx.needs_input_grad[0] and ctx.all_counted:
                grad_x = _all_counted_grad(x, target, ctx.reduction, grad_out)
            elif ctx.needs_input_grad[0]:
                grad_x = _plain_class_target_grad(x, target, ctx.ignore_index, ctx.reduction, grad_out)
            return grad_x, None, None, None, None, None, None
        a, denom = _coefficients(x, target, weight, ctx.ignore_index, ctx.label_smoothing)
        scale = _per_sample_grad_scale(grad_out, ctx.reduction, denom, cd)
        grad_x = grad_target = None
        if ctx.needs_input_grad[0]:
            p = class_softmax(x, cd)
            grad_x = scale * (p * a.sum(cd, keepdim=True) - a)
        if ctx.needs_input_grad[1]:
            w = _broadcast_weight(weight, x)
            grad_target = -scale * (1 - ctx.label_smoothing) * w * torch.log_softmax(x, cd)
        return grad_x, grad_target, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, target_dot, *_):
        x, target, weight = ctx.saved_tensors
        cd = _class_dim(x)
        a, denom = _coefficients(x, target, weight, ctx.ignore_index, ctx.label_smoothing)
        from_x = from_target = None
        if x_dot is not None:
            from_x = ((torch.softmax(x, cd) * a.sum(cd, keepdim=True) - a) * x_dot).sum(cd)
        if target_dot is not None:
            w = _broadcast_weight(weight, x)
            from_target = -(1 - ctx.label_smoothing) * (w * target_dot * torch.log_softmax(x, cd)).sum(cd)
        per_sample = tangent_sum(from_x, from_target)
        return None if per_sample is None else _reduce(per_sample, ctx.reduction, denom)


@function
class NLLLossFunction(torch.autograd.Function):
    """Negative log-likelihood of log-probabilities x at class indices t.

    x: (N, C, d1, ...) or (C,)   target: (N, d1, ...) or ()   y: (N, d1, ...) for reduction="none", else ()

        ℓ_i = -[t_i ≠ ignore_index] w_{t_i} x_{i, t_i}
        dL/dx_ic = -dL/dℓ_i · [t_i ≠ ignore_index] w_{t_i} [c = t_i]

    (for "mean", dL/dℓ_i = dL/dy / Σ_i [t_i ≠ ignore_index] w_{t_i}.)

    Forward mode: the loss is linear in x, so ẏ is the loss of ẋ:  ℓ̇_i = -[t_i ≠ ignore_index] w_{t_i} ẋ_{i, t_i}
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, target, weight, ignore_index, reduction):
        a, denom = _coefficients(x, target, weight, ignore_index, 0.0)
        return _reduce(-(a * x).sum(_class_dim(x)), reduction, denom)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, weight, ignore_index, reduction = inputs
        ctx.save_for_backward(target, weight)
        ctx.save_for_forward(target, weight)
        ctx.x_shape, ctx.x_dtype, ctx.x_device = x.shape, x.dtype, x.device
        ctx.ignore_index, ctx.reduction = ignore_index, reduction

    @staticmethod
    def backward(ctx, grad_out):
        target, weight = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        # The gradient does not depend on x's values, only on its shape: nll is linear in x.
        x_like = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=ctx.x_device)
        a, denom = _coefficients(x_like, target, weight, ctx.ignore_index, 0.0)
        scale = _per_sample_grad_scale(grad_out, ctx.reduction, denom, _class_dim(x_like))
        return -scale * a, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, *_):
        target, weight = ctx.saved_tensors
        a, denom = _coefficients(x_dot, target, weight, ctx.ignore_index, 0.0)
        return _reduce(-(a * x_dot).sum(_class_dim(x_dot)), ctx.reduction, denom)


@function
class MSELossFunction(torch.autograd.Function):
    """Mean squared error.   x, t: broadcastable shapes   w: optional elementwise weight of x's shape.

        e = x - t,   ℓ = w ⊙ e²   (w = 1 when absent)
        y = ℓ ("none"), Σ ℓ ("sum"), Σ ℓ / D ("mean", D = numel(e), or Σ w with a weight)

        dL/dx = Σ_broadcast  2 w ⊙ e ⊙ dL/dℓ          dL/dt = -dL/dx (summed to t's shape)
        dL/dw = e² ⊙ dL/dℓ  ("none", "sum")       dL/dw = (e² - y) dL/dy / D  ("mean")

    Forward mode (tangents ẋ, ṫ, ẇ; an absent one is zero):
        ℓ̇ = 2 w ⊙ e ⊙ (ẋ - ṫ) + ẇ ⊙ e²
        ẏ = ℓ̇ ("none"), Σ ℓ̇ ("sum"), Σ ℓ̇ / D ("mean"; with a weight, Σ (ℓ̇ - y ẇ) / D)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, target, weight, reduction):
        err = x - target
        loss = err * err if weight is None else weight * err * err
        if reduction == "mean":
            denom = loss.numel() if weight is None else weight.sum()
            return loss.sum() / denom
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, weight, reduction = inputs
        ctx.save_for_backward(x, target, weight)
        ctx.save_for_forward(x, target, weight)
        ctx.set_materialize_grads(False)  # absent tangents arrive as None (see _tangents)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None, None
        if REDUCTION.mode is not None:  # manualbp.curvature: the loss Hessian's factor starts here
            REDUCTION.mode.loss(ctx, "mse_loss", grad_out)
        x, target, weight = ctx.saved_tensors
        err = x - target
        # an empty mean: torch's loss is nan (0/0) but its gradient 0, hence max(numel, 1)
        denom = (max(err.numel(), 1) if weight is None else weight.sum()) if ctx.reduction == "mean" else 1
        grad_loss = grad_out / denom
        grad_x = grad_target = grad_weight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_err = 2 * err * grad_loss if weight is None else 2 * weight * err * grad_loss
            if ctx.needs_input_grad[0]:
                grad_x = grad_err.sum_to_size(x.shape)
            if ctx.needs_input_grad[1]:
                grad_target = -grad_err.sum_to_size(target.shape)
        if ctx.needs_input_grad[2]:
            sq = err * err
            if ctx.reduction == "mean":
                sq = sq - (weight * sq).sum() / denom
            grad_weight = (sq * grad_loss).sum_to_size(weight.shape)
        return grad_x, grad_target, grad_weight, None

    @staticmethod
    def jvp(ctx, x_dot, target_dot, weight_dot, _):
        x, target, weight = ctx.saved_tensors
        err = x - target
        err_dot = tangent_sum(x_dot, None if target_dot is None else -target_dot)
        loss_dot = None
        if err_dot is not None:
            loss_dot = 2 * err * err_dot if weight is None else 2 * weight * err * err_dot
        if weight_dot is not None:
            sq = err * err
            if ctx.reduction == "mean":  # D = Σ w moves too: d(Σ ℓ / D) = Σ (ℓ̇ - y ẇ) / D
                sq = sq - (weight * sq).sum() / weight.sum()
            loss_dot = tangent_sum(loss_dot, weight_dot * sq)
        if loss_dot is None or ctx.reduction == "none":
            return loss_dot
        if ctx.reduction == "sum":
            return loss_dot.sum()
        return loss_dot.sum() / (loss_dot.numel() if weight is None else weight.sum())


#: The dtypes torch takes for class-index targets (others: "expected target dtype to be Long or Byte").
_CLASS_TARGET_DTYPES = (torch.int64, torch.uint8)


def _check_class_target(op: str, input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> bool:
    """Shape, dtype and range of a class-index target. The range check reads values, so it runs only where
    they are at hand without waiting for a device: in eager mode on the CPU. It is skipped while tracing
    (torch.compile), under torch.func transforms (vmap, grad, ...) and on the meta device, where there are no
    values to read; on an accelerator it is an asynchronous device-side assertion, which does not stall
    the host (a bad target fails the next synchronising call, as in torch's own kernel).

    Returns whether the values read show that every target counts (none equals ``ignore_index``); False
    where they were not read."""
    cd = _class_dim(input)
    expected = (input.shape[0], *input.shape[2:]) if input.dim() >= 2 else ()
    if tuple(target.shape) != expected:
        raise InputError(
            f"{op}: expected target of shape {expected} for input of shape {shape_str(input)}, "
            f"got target of shape {shape_str(target)}"
        )
    if target.dtype not in _CLASS_TARGET_DTYPES:
        raise DtypeError(
            f"{op}: expected a class-index target of dtype torch.int64 (or torch.uint8), as torch does, "
            f"got dtype {target.dtype}"
        )
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or target.is_meta:
        return False
    num_classes = input.shape[cd]
    if target.numel() == 0:
        return False
    if target.device.type != "cpu":
        in_range = ((target >= 0) & (target < num_classes)) | (target == ignore_index)
        torch._assert_async(in_range.all(), f"{op}: a target is out of bounds for {num_classes} classes")
        return False
    lowest, highest = (int(v) for v in torch.aminmax(target))
    if lowest >= 0 and highest < num_classes:  # one reduction in the common case
        return not lowest <= ignore_index <= highest
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise IndexError(
            f"{op}: target {value} is out of bounds: input of shape {shape_str(input)} has {num_classes} "
            f"classes, so targets must lie in [0, {num_classes - 1}] (or equal ignore_index={ignore_index})"
        )
    return False


def _check_class_loss_args(
    op: str, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
) -> None:
    """Scores of shape (N, C, d1, ...) or (C,), a target tensor on their device, an optional constant
    weight of shape (C,), and an int ignore_index."""
    check_floating(op, input=input, weight=weight)
    check_tensor(op, "target", target)
    check_same_dtype(op, input=input, weight=weight)
    check_same_device(op, input=input, target=target, weight=weight)
    check_int(op, "ignore_index", ignore_index)
    if input.dim() == 0:
        raise InputError(f"{op}: expected input of shape (N, C, ...) or (C,), got a 0-D tensor")
    if weight is None:
        return
    num_classes = input.shape[_class_dim(input)]
    if tuple(weight.shape) != (num_classes,):
        raise InputError(
            f"{op}: expected weight of shape ({num_classes},), one per class of input {shape_str(input)}, "
            f"got {shape_str(weight)}"
        )
    if weight.requires_grad:
        raise NotImplementedError(
            f"{op}: a class weight that requires grad is not supported (torch has no such derivative either)"
        )


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.cross_entropy`` (log-softmax and NLL fused).

    input: (N, C, d1, ...) or (C,) logits.
    target: class indices of shape (N, d1, ...) or (), or class probabilities of input's shape.
    """
    op = "cross_entropy"
    all_counted = False
    reduction = resolve_reduction(op, size_average, reduce, reduction)
    _check_class_loss_args(op, input, target, weight, ignore_index)
    check_unit_interval(op, "label_smoothing", label_smoothing)
    if target.is_floating_point():
        check_same_dtype(op, input=input, target=target)
        if target.shape != input.shape:
            raise InputError(
                f"{op}: probability targets must have the input's shape {shape_str(input)}, got {shape_str(target)}"
            )
    else:
        all_counted = _check_class_target(op, input, target, ignore_index)
        target = target.long()
    input, target, weight = autocast_inputs(op, input, target, weight)
    args = (input, target, weight, ignore_index, reduction, float(label_smoothing))
    return apply(CrossEntropyFunction, *args, not target.is_floating_point() and all_counted)


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.nll_loss``.

    input: (N, C, d1, ...) or (C,) log-probabilities.   target: (N, d1, ...) or () class indices.
    """
    op = "nll_loss"
    reduction = resolve_reduction(op, size_average, reduce, reduction)
    _check_class_loss_args(op, input, target, weight, ignore_index)
    _check_class_target(op, input, target, ignore_index)
    input, weight = autocast_inputs(op, input, weight)
    return apply(NLLLossFunction, input, target.long(), weight, ignore_index, reduction)


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hand-differentiated ``torch.nn.functional.mse_loss``.

    input, target: broadcastable shapes (torch warns when they differ, and so does this)
    weight: optional, input's shape; "mean" then divides by Σ weight.
    """
    op = "mse_loss"
    reduction = resolve_reduction(op, size_average, reduce, reduction)
    check_floating(op, input=input, target=target, weight=weight)
    check_same_dtype(op, input=input, target=target, weight=weight)
    check_same_device(op, input=input, target=target, weight=weight)
    if target.shape != input.shape:
        try:
            torch.broadcast_shapes(input.shape, target.shape)
        except RuntimeError:
            raise InputError(
                f"{op}: input of shape {shape_str(input)} and target of shape {shape_str(target)} "
                "cannot be broadcast together"
            ) from None
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    if weight is not None and weight.shape != input.shape:
        raise InputError(f"{op}: weight of shape {shape_str(weight)} must have the input's shape {shape_str(input)}")
    input, target, weight = autocast_inputs(op, input, target, weight)
    return apply(MSELossFunction, input, target, weight, reduction)
