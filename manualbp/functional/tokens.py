"""Parameters that a model gives every sample as they are: a learned token put in front of (or after) each
sequence, a learned position embedding added to each, with hand-written backward passes.

A vision transformer prepends a class token c to each sample's sequence of patches and adds a position
embedding P to every sample; attention's ``add_bias_kv`` appends a learned key and value. In torch these
are a ``torch.cat`` of the expanded parameter and a broadcasting ``+``, whose backward is autograd's. Here they
are Functions, so their gradient (and each sample's) passes through the reduction seam like any layer's:

    prepend/append:  y_n = [c ; x_n] or [x_n ; c]     dL/dx_n = the rows of dL/dy_n at x's positions
                                                       dL/dc = Σ_n dL/dy_n[position of c]
    add:             y_n = x_n + P                     dL/dx = dL/dy      dL/dP = Σ_n dL/dy_n

Each sample's gradient of c or P is its own term of those sums: no vmap over the model is needed to get it.
"""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import InputError, check_floating, check_same_device, shape_str


class SampleParameterTerms:
    """The reduction of one parameter that each sample uses as it is (a token, a position embedding, a bias
    added to every position), for the reduction seam (``manualbp.functional._reduction.REDUCTION``), from its
    per-sample gradients ``samples`` (N, *parameter shape), each sample's own rows of G = dL/dy (a slice or a
    sum of them): they are the parameter's size per sample, so they are always materialised."""

    ordinals: tuple[int, ...] = (1,)  # the parameter follows x among the Function's tensor inputs
    leading = None
    kept: tuple[torch.Tensor] | None = None

    def __init__(self, samples: torch.Tensor, ordinal: int = 1) -> None:
        self.samples, self.ordinals, self.needs = samples, (ordinal,), (True,)
        self.batched = True
        self.batch = samples.shape[0]

    def per_sample(self, scale=None, out=None):
        return (self.samples if scale is None else self.samples * scale,)

    def sq_norms(self):
        self.kept = (self.samples,)
        return self.samples.square().flatten(1).sum(1)

    def reduce(self, scale=None):
        return (self.samples.sum(0) if scale is None else self.weighted(scale)[0],)

    def weighted(self, scale):
        return (torch.tensordot(scale.to(self.samples.dtype), self.samples, dims=1),)

    def total(self, samples, scale=None):
        factor = 1 if scale is None else 1 / scale
        return (samples[0].sum(0) * factor,)


def _parameter_grad(ctx, grad_out, take, ordinal: int = 1):
    """dL/dp = Σ_n take(G)[n] (``take``: G -> each sample's gradient of p, (N, *p.shape)), or what the
    per-sample mode makes of it; None when not asked for."""
    if not ctx.needs_input_grad[ordinal]:
        return None
    if REDUCTION.mode is not None:  # per-sample gradients or clipping (manualbp.per_sample)
        return REDUCTION.mode.reduce(ctx, SampleParameterTerms(take(grad_out), ordinal))[0]
    return take(grad_out).sum(0)


@function
class TokenFunction(torch.autograd.Function):
    """A learned token c put before (``first``) or after every sample's sequence.

    x: (N, T, D)   c: D values, any shape (torchvision's class token is (1, 1, D))   y: (N, T + 1, D)

        y_n = [c ; x_n]  (first)   or   [x_n ; c]
        dL/dx_n = dL/dy_n without the token's row          dL/dc = Σ_n dL/dy_n[token row]
        dL/dc_n = dL/dy_n[token row]   (sample n's own gradient of c)

    Forward mode: ẏ_n = [ċ ; ẋ_n] (or [ẋ_n ; ċ]).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, token, first):
        row = token.reshape(1, 1, -1).expand(x.shape[0], 1, x.shape[2])
        return torch.cat((row, x) if first else (x, row), dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, token, first = inputs
        ctx.set_materialize_grads(False)
        ctx.first, ctx.token_shape, ctx.x_shape = first, token.shape, x.shape

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None
        index = 0 if ctx.first else grad_out.shape[1] - 1
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out[:, 1:] if ctx.first else grad_out[:, :-1]

        def take(g):
            return g[:, index].reshape(g.shape[0], *ctx.token_shape)

        return grad_x, _parameter_grad(ctx, grad_out, take), None

    @staticmethod
    def jvp(ctx, x_dot, token_dot, _):
        if x_dot is None and token_dot is None:
            return None
        if x_dot is None:
            x_dot = token_dot.new_zeros(ctx.x_shape)
        if token_dot is None:
            token_dot = x_dot.new_zeros(ctx.token_shape)
        return TokenFunction.forward(x_dot, token_dot, ctx.first)


@function
class AddParameterFunction(torch.autograd.Function):
    """A learned tensor P added to every sample: y = x + P, P broadcast over the batch (and any dim where
    P has size 1), as torchvision's position embedding (1, T, D) is added to (N, T, D).

        dL/dx = dL/dy          dL/dP = Σ dL/dy over the broadcast dims      dL/dP_n = that sum for sample n alone

    Forward mode: ẏ = ẋ + Ṗ.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, parameter):
        return x + parameter

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, parameter = inputs
        ctx.set_materialize_grads(False)
        ctx.parameter_shape = parameter.shape

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None
        shape = ctx.parameter_shape

        def take(g):  # (N, *P.shape): sample n's rows summed where P broadcasts
            aligned = (1,) * (g.dim() - len(shape)) + tuple(shape)
            return g.sum_to_size(g.shape[0], *aligned[1:]).reshape(g.shape[0], *shape)

        return (grad_out if ctx.needs_input_grad[0] else None), _parameter_grad(ctx, grad_out, take)

    @staticmethod
    def jvp(ctx, x_dot, parameter_dot):
        return tangent_sum(x_dot, None if parameter_dot is None else parameter_dot.expand_as(x_dot))


@function
class AddPackedBiasFunction(torch.autograd.Function):
    """Three projections' biases from one packed parameter, as attention's ``in_proj_bias`` (3E,) with separate
    ``q/k/v_proj_weight``: (q + b_q, k + b_k, v + b_v), b = [b_q ; b_k ; b_v].

    q: (N, L, E)   k, v: (N, S, E)   b: (3E,)

        dL/dq = dL/dy_q (and so for k, v)      dL/db = [Σ dL/dy_q ; Σ dL/dy_k ; Σ dL/dy_v]   (sums over N and T)
        dL/db_n = the same sums over sample n's rows alone

    Forward mode: ẏ_q = q̇ + ḃ_q (and so for k, v).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, bias):
        b_q, b_k, b_v = bias.chunk(3)
        return q + b_q, k + b_k, v + b_v

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.shapes = tuple(y.shape for y in output)

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        grads = (grad_q, grad_k, grad_v)
        inputs = tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:3]))

        def take(_):  # (N, 3E): each sample's sums; an absent gradient is zeros
            like = next(g for g in grads if g is not None)
            width = like.shape[-1]
            return torch.cat([like.new_zeros(like.shape[0], width) if g is None else g.sum(1) for g in grads], dim=-1)

        if all(g is None for g in grads):
            return None, None, None, None
        return (*inputs, _parameter_grad(ctx, None, take, ordinal=3))

    @staticmethod
    def jvp(ctx, q_dot, k_dot, v_dot, bias_dot):
        # every output gets a tangent (forward AD takes no None among several outputs): zeros where none moves
        parts = (None, None, None) if bias_dot is None else bias_dot.chunk(3)
        like = next(t for t in (q_dot, k_dot, v_dot, bias_dot) if t is not None)
        return tuple(
            tangent_sum(x_dot, b_dot) if x_dot is not None else like.new_zeros(shape) + (0 if b_dot is None else b_dot)
            for x_dot, b_dot, shape in zip((q_dot, k_dot, v_dot), parts, ctx.shapes)
        )


def _check_sequence(op: str, input: torch.Tensor, parameter: torch.Tensor) -> None:
    check_floating(op, input=input, parameter=parameter)
    check_same_device(op, input=input, parameter=parameter)
    if input.dim() != 3:
        raise InputError(f"{op}: expected a batch of sequences (N, T, D), got input of shape {shape_str(input)}")


def cat_token(input: torch.Tensor, token: torch.Tensor, first: bool = True) -> torch.Tensor:
    """``torch.cat([token.expand(N, 1, D), input], dim=1)`` (``first``) or with the token last, with a
    hand-written backward (``TokenFunction``): the class token of a vision transformer, attention's
    ``bias_k``/``bias_v``.

    input: (N, T, D)   token: D values (e.g. (1, 1, D))   ->   (N, T + 1, D)
    """
    _check_sequence("cat_token", input, token)
    if token.numel() != input.shape[2]:
        raise InputError(
            f"cat_token: token of shape {shape_str(token)} does not match input of shape {shape_str(input)}: "
            f"expected {input.shape[2]} values, one per feature"
        )
    return apply(TokenFunction, input, token, bool(first))


def add_parameter(input: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """``input + parameter`` for a parameter shared by every sample (a position embedding), with a hand-written
    backward (``AddParameterFunction``) whose per-sample gradients are each sample's own rows of dL/dy.

    input: (N, *)   parameter: broadcastable to input without growing it, with size 1 (or no dim) at the batch dim
    """
    check_floating("add_parameter", input=input, parameter=parameter)
    check_same_device("add_parameter", input=input, parameter=parameter)
    if input.dim() == 0 or parameter.dim() > input.dim():
        raise InputError(
            f"add_parameter: parameter of shape {shape_str(parameter)} cannot be added to each sample of an input "
            f"of shape {shape_str(input)}"
        )
    aligned = (1,) * (input.dim() - parameter.dim()) + tuple(parameter.shape)
    if aligned[0] != 1 or any(p not in (1, x) for p, x in zip(aligned, input.shape)):
        raise InputError(
            f"add_parameter: parameter of shape {shape_str(parameter)} does not broadcast over the batch of an "
            f"input of shape {shape_str(input)}: each of its dims must be 1 or the input's, and 1 at the batch dim"
        )
    return apply(AddParameterFunction, input, parameter)


def add_packed_bias(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q + b_q, k + b_k, v + b_v) for a packed bias b = [b_q ; b_k ; b_v] (3E,), with a hand-written backward
    (``AddPackedBiasFunction``): attention's ``in_proj_bias`` beside separate projection weights.

    q: (N, L, E)   k, v: (N, S, E)   bias: (3E,)
    """
    check_floating("add_packed_bias", q=q, k=k, v=v, bias=bias)
    if bias.shape != (3 * q.shape[-1],) or not q.dim() == k.dim() == v.dim() == 3:
        raise InputError(
            f"add_packed_bias: expected (N, T, E) projections and a bias (3E,), got {shape_str(q)}, {shape_str(k)}, "
            f"{shape_str(v)} and {shape_str(bias)}"
        )
    return apply(AddPackedBiasFunction, q, k, v, bias)
