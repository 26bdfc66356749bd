"""The Elman RNN (tanh or ReLU) over a whole sequence, one layer and direction: ``RNNFunction``."""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import function
from manualbp.functional._inplace import scratch_writable
from manualbp.functional._tangents import tangent_sum
from manualbp.functional.recurrent._steps import (
    _advance,
    _as_input,
    _as_state,
    _at,
    _batched,
    _final,
    _in_time_order,
    _parameter_grads,
    _plus,
    _pre_tangent,
    _previous,
    _project,
    _split,
    _Steps,
    _steps,
    _steps_of,
    _sum,
    _tensor_ordinals,
    _time_major,
    _via_sigmoid,
    _zeros_or,
)


@function
class RNNFunction(torch.autograd.Function):
    """One layer and direction of an Elman RNN over a whole sequence.

        a_t = x_t W_ihᵀ + b_ih + b_hh + h_{t-1} W_hhᵀ        h̃_t = φ(a_t),  φ = tanh or relu

    x: (T, B, I) (see the module docstring)   h0: (B, H)   W_ih: (H, I)   W_hh: (H, H)   b_ih, b_hh: (H,) or None
    mask: (T, B) bool or None   outputs: y (like x, H), h_n (like h0)

    BPTT, with φ'(a_t) read from the output (1 - y_t² for tanh, [y_t > 0] for relu), carrying δh = dL/dh_t
    backwards from dL/dh_n:

        dL/da_t = (δh + dL/dy_t) ⊙ φ'(a_t)          δh ← dL/da_t · W_hh
        dL/dx = dL/da · W_ih     dL/dW_ih = Σ_t dL/da_tᵀ x_t     dL/dW_hh = Σ_t dL/da_tᵀ h_{t-1}
        dL/db_ih = dL/db_hh = Σ_t dL/da_t           dL/dh0 = δh after the direction's first step

    Forward mode: ȧ_t = ẋ_t W_ihᵀ + x_t Ẇ_ihᵀ + ḃ_ih + ḃ_hh + ḣ_{t-1} W_hhᵀ + h_{t-1} Ẇ_hhᵀ,  ḣ̃_t = φ'(a_t) ⊙ ȧ_t
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, mask, reverse: bool, batch_first: bool, relu: bool):
        via_sigmoid = not relu and _via_sigmoid(x)
        scale = 2 if via_sigmoid else 1  # tanh(a) = 2σ(2a) - 1 (``_tanh``): the 2 goes into the weights
        bias = _sum(b_ih, b_hh)
        pre_x = _project(x, scale * w_ih, None if bias is None else scale * bias, batch_first).unbind(0)
        h, w_hh_t, in_place = _batched(h0), (scale * w_hh).t(), scratch_writable()
        outputs = _Steps(h, len(pre_x), h.shape[1], reverse, in_place)
        for t in _steps(len(pre_x), reverse):
            a = torch.addmm(pre_x[t], h, w_hh_t, out=outputs.out(t))
            h_new = a.relu_() if relu else a.sigmoid_().mul_(2.0).sub_(1.0) if via_sigmoid else a.tanh_()
            h, h_new = _advance(mask, t, h_new, h, in_place)
            outputs.keep(h_new)
        return _as_input(outputs.tensor(), x.dim(), batch_first), _final(h, h0, in_place)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, _, mask, ctx.reverse, ctx.batch_first, ctx.relu = inputs
        ctx.ordinals, ctx.batched, ctx.masked = _tensor_ordinals(inputs), x.dim() == 3, mask is not None
        ctx.set_materialize_grads(False)  # absent grads and tangents arrive as None (see _tangents)
        ctx.save_for_backward(x, h0, w_ih, w_hh, mask, output[0])
        ctx.save_for_forward(x, h0, w_ih, w_hh, mask, output[0])
        ctx.has_bias = b_ih is not None

    @staticmethod
    def backward(ctx, grad_y, grad_h_n):
        x, h0, w_ih, w_hh, mask, y = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        dphi = _rnn_derivative(ys, ctx.relu).unbind(0)
        grad_ys = _steps_of(grad_y, ctx.batch_first)
        dh = _zeros_or(grad_h_n, _batched(h0))
        d_pre = _Steps(dh, ys.shape[0], dh.shape[1], not ctx.reverse, scratch_writable())
        for t in reversed(_steps(ys.shape[0], ctx.reverse)):
            error, passed = _split(mask, t, _plus(dh, _at(grad_ys, t)), dh)
            step = torch.mul(error, dphi[t], out=d_pre.out(t))
            dh = _plus(step.mm(w_hh), passed)
            d_pre.keep(step)
        d_pre = d_pre.tensor()
        need = ctx.needs_input_grad
        grad_x = _as_input(d_pre.matmul(w_ih), x.dim(), ctx.batch_first) if need[0] else None
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        weights = _parameter_grads(
            ctx, [(2, d_pre, _time_major(x, ctx.batch_first)), (3, d_pre, h_prev), (4, d_pre, None), (5, d_pre, None)]
        )
        return (grad_x, _as_state(dh, h0) if need[1] else None, *weights, None, None, None, None)

    @staticmethod
    def jvp(ctx, x_t, h0_t, w_ih_t, w_hh_t, b_ih_t, b_hh_t, *_):
        x, h0, w_ih, w_hh, mask, y = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        dphi = _rnn_derivative(ys, ctx.relu)
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        base = _pre_tangent(x, w_ih, x_t, w_ih_t, tangent_sum(b_ih_t, b_hh_t), ctx.batch_first, h_prev, w_hh_t)
        hd, w_hh_t, outputs = _zeros_or(h0_t, _batched(h0)), w_hh.t(), []
        for t in _steps(ys.shape[0], ctx.reverse):
            hd, h_new = _advance(mask, t, dphi[t] * _plus(hd.mm(w_hh_t), _at(base, t)), hd)
            outputs.append(h_new)
        return _as_input(_in_time_order(outputs, ctx.reverse), x.dim(), ctx.batch_first), _as_state(hd, h0)


def _rnn_derivative(ys: torch.Tensor, relu: bool) -> torch.Tensor:
    """φ'(a) from y = φ(a): [y > 0] as sign(y) (y ≥ 0; see ``ReLUFunction``) for relu, 1 - y² for tanh."""
    return ys.sign() if relu else 1 - ys * ys
