"""The GRU over a whole sequence, one layer and direction: ``GRUFunction``."""

from __future__ import annotations

import torch

from manualbp.functional._dispatch import function
from manualbp.functional._inplace import scratch_writable
from manualbp.functional._tangents import tangent_sum
from manualbp.functional.linear import linear_tangent
from manualbp.functional.recurrent._steps import (
    _advance,
    _as_input,
    _as_state,
    _at,
    _batched,
    _doubled,
    _final,
    _in_time_order,
    _masked,
    _parameter_grads,
    _plus,
    _previous,
    _project,
    _split,
    _Steps,
    _steps,
    _steps_of,
    _tensor_ordinals,
    _time_major,
    _via_sigmoid,
    _zeros_or,
)


@function
class GRUFunction(torch.autograd.Function):
    """One layer and direction of a GRU over a whole sequence (gate order r, z, n, as torch's).

        [p_r, p_z, p_n] = x_t W_ihᵀ + b_ih          [q_r, q_z, q_n] = h_{t-1} W_hhᵀ + b_hh
        r = σ(p_r + q_r)     z = σ(p_z + q_z)     n = tanh(a_n),  a_n = p_n + r ⊙ q_n  (b_hn inside the product)
        h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    x: (T, B, I) (see the module docstring)   h0: (B, H)   W_ih: (3H, I)   W_hh: (3H, H)   b_ih, b_hh: (3H,) or None
    mask: (T, B) bool or None   outputs: y (like x, H), h_n (like h0), gates (T, B, 4H) = [r, z, n, q_n]

    BPTT, carrying δh = dL/dh_t backwards from dL/dh_n; at step t, with e = δh + dL/dy_t:

        dL/da_n = e ⊙ (1-z) ⊙ (1-n²)          dL/da_z = e ⊙ (h_{t-1} - n) ⊙ z(1-z)     (a_z = p_z + q_z)
        dL/da_r = dL/da_n ⊙ q_n ⊙ r(1-r)      dL/dq_n = dL/da_n ⊙ r
        δh ← [dL/da_r, dL/da_z, dL/dq_n] · W_hh + e ⊙ z
        dL/dp = [dL/da_r, dL/da_z, dL/da_n]:  dL/dx = dL/dp · W_ih  dL/dW_ih = Σ_t dL/dp_tᵀ x_t  dL/db_ih = Σ_t dL/dp_t
        dL/dq = [dL/da_r, dL/da_z, dL/dq_n]:   dL/dW_hh = Σ_t dL/dq_tᵀ h_{t-1}   dL/db_hh = Σ_t dL/dq_t

    dL/dq and dL/da_n are e times factors formed for all steps before the loop, so a step is two products, one
    matmul and an addition. Gradients reaching the gates output (differentiating twice) add to them.

    Forward mode: ṗ = ẋ W_ihᵀ + x Ẇ_ihᵀ + ḃ_ih,  q̇ = ḣ_{t-1} W_hhᵀ + h_{t-1} Ẇ_hhᵀ + ḃ_hh,
    ṙ = r(1-r)(ṗ_r + q̇_r),  ż = z(1-z)(ṗ_z + q̇_z),  ṅ = (1-n²)(ṗ_n + ṙ q_n + r q̇_n),
    ḣ̃ = (1-z) ṅ + z ḣ_{t-1} + ż (h_{t-1} - n)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, mask, reverse: bool, batch_first: bool):
        # p_r, p_z with b_hr, b_hz added once; n = tanh(a_n) = 2σ(2a_n) - 1 (``_tanh``), the 2 in W_in and b_in
        # and in the product r ⊙ q_n; q keeps only b_hn, which sits inside that product
        size, via_sigmoid = w_hh.shape[1], _via_sigmoid(x)
        scale = 2 if via_sigmoid else 1
        bias = None if b_ih is None else torch.cat([b_ih[: 2 * size] + b_hh[: 2 * size], scale * b_ih[2 * size :]])
        pre_x = _project(x, _doubled(w_ih, 2 * size, 3 * size, via_sigmoid), bias, batch_first).unbind(0)
        q_bias = None if b_hh is None else torch.cat([torch.zeros_like(b_hh[: 2 * size]), b_hh[2 * size :]])
        h, w_hh_t, in_place = _batched(h0), w_hh.t(), scratch_writable()
        outputs = _Steps(h, len(pre_x), size, reverse, in_place)
        gates = _Steps(h, len(pre_x), 4 * size, reverse, in_place)
        for t in _steps(len(pre_x), reverse):
            q = h.mm(w_hh_t) if q_bias is None else torch.addmm(q_bias, h, w_hh_t)
            p_rz, p_n = pre_x[t].split([2 * size, size], 1)
            q_rz, q_n = q.split([2 * size, size], 1)
            rz = torch.add(p_rz, q_rz).sigmoid_()
            r, z = rz.chunk(2, 1)
            n = torch.addcmul(p_n, r, q_n, value=float(scale))
            n = n.sigmoid_().mul_(2.0).sub_(1.0) if via_sigmoid else n.tanh_()
            h, h_new = _advance(mask, t, torch.lerp(n, h, z, out=outputs.out(t)), h, in_place)
            act = torch.cat([rz, n, q_n], 1, out=gates.out(t))
            if mask is not None:
                act = torch.mul(act, mask[t].unsqueeze(-1), out=act if in_place else None)
            outputs.keep(h_new)
            gates.keep(act)
        return _as_input(outputs.tensor(), x.dim(), batch_first), _final(h, h0, in_place), gates.tensor()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, _, mask, ctx.reverse, ctx.batch_first = inputs
        ctx.ordinals, ctx.batched, ctx.masked = _tensor_ordinals(inputs), x.dim() == 3, mask is not None
        y, _, gates = output
        ctx.set_materialize_grads(False)  # absent grads and tangents arrive as None (see _tangents)
        ctx.save_for_backward(x, h0, w_ih, w_hh, mask, y, gates)
        ctx.save_for_forward(x, h0, w_ih, w_hh, mask, y, gates)
        ctx.has_bias = b_ih is not None

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_gates):
        x, h0, w_ih, w_hh, mask, y, gates = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        r, z, n, q_n = gates.chunk(4, -1)
        slope_r, slope_z = torch.addcmul(r, r, r, value=-1.0), torch.addcmul(z, z, z, value=-1.0)  # σ' = σ(1-σ)
        to_n = (1 - z) * torch.addcmul(torch.ones_like(n[0, 0, :1]), n, n, value=-1.0)  # (1-z)(1-n²)
        # per step: dL/dq = [dL/da_r, dL/da_z, dL/dq_n] = e ⊙ to_q (what goes back through W_hh), dL/da_n = e ⊙ to_n
        to_q = torch.stack([to_n * q_n * slope_r, (h_prev - n) * slope_z, to_n * r], 2).unbind(0)
        extra_q, extra_n = (None, None) if grad_gates is None else _gru_gates_grad(_masked(grad_gates, mask), gates)
        grad_ys, update, to_n = _steps_of(grad_y, ctx.batch_first), z.unbind(0), to_n.unbind(0)
        dh, in_place = _zeros_or(grad_h_n, _batched(h0)), scratch_writable()
        d_q = _Steps(dh, len(update), w_hh.shape[0], not ctx.reverse, in_place)
        d_n = _Steps(dh, len(update), dh.shape[1], not ctx.reverse, in_place)
        for t in reversed(_steps(len(update), ctx.reverse)):
            error, passed = _split(mask, t, _plus(dh, _at(grad_ys, t)), dh)
            out = d_q.out(t)
            step_q = torch.mul(to_q[t], error.unsqueeze(1), out=None if out is None else out.view_as(to_q[t]))
            step_q = step_q.flatten(1)
            step_n = torch.mul(to_n[t], error, out=d_n.out(t))
            if extra_q is not None and extra_n is not None:  # given together
                step_q, step_n = torch.add(step_q, extra_q[t], out=out), torch.add(step_n, extra_n[t], out=d_n.out(t))
            dh = _plus(torch.addmm(error * update[t], step_q, w_hh), passed)
            d_q.keep(step_q)
            d_n.keep(step_n)
        d_q, d_n = d_q.tensor(), d_n.tensor()
        d_r, d_z, _ = d_q.chunk(3, -1)
        d_p = torch.cat([d_r, d_z, d_n], -1)  # [dL/da_r, dL/da_z, dL/da_n]
        need = ctx.needs_input_grad
        grad_x = _as_input(d_p.matmul(w_ih), x.dim(), ctx.batch_first) if need[0] else None
        weights = _parameter_grads(
            ctx, [(2, d_p, _time_major(x, ctx.batch_first)), (3, d_q, h_prev), (4, d_p, None), (5, d_q, None)]
        )
        return (grad_x, _as_state(dh, h0) if need[1] else None, *weights, None, None, None)

    @staticmethod
    def jvp(ctx, x_t, h0_t, w_ih_t, w_hh_t, b_ih_t, b_hh_t, *_):
        x, h0, w_ih, w_hh, mask, y, gates = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        r, z, n, q_n = gates.chunk(4, -1)
        slope_r, slope_z, slope_n = r * (1 - r), z * (1 - z), 1 - n * n
        p_base = linear_tangent(x, w_ih, x_t, w_ih_t, b_ih_t)
        p_base = None if p_base is None else _time_major(p_base, ctx.batch_first).chunk(3, -1)
        q_base = tangent_sum(
            None if w_hh_t is None else h_prev.matmul(w_hh_t.t()),
            None if b_hh_t is None else b_hh_t.expand(*h_prev.shape[:2], -1),
        )
        hd, w_hh_t, outputs, gates_d = _zeros_or(h0_t, _batched(h0)), w_hh.t(), [], []
        for t in _steps(ys.shape[0], ctx.reverse):
            q_r, q_z, q_nd = _plus(hd.mm(w_hh_t), _at(q_base, t)).chunk(3, 1)
            p_r, p_z, p_n = (None, None, None) if p_base is None else (p_base[0][t], p_base[1][t], p_base[2][t])
            r_d, z_d = slope_r[t] * _plus(q_r, p_r), slope_z[t] * _plus(q_z, p_z)
            n_d = slope_n[t] * _plus(r_d * q_n[t] + r[t] * q_nd, p_n)
            h_new = torch.lerp(n_d, hd, z[t]) + z_d * (h_prev[t] - n[t])
            act_d = torch.cat([r_d, z_d, n_d, q_nd], 1)
            hd, h_new = _advance(mask, t, h_new, hd)
            outputs.append(h_new)
            gates_d.append(act_d if mask is None else act_d * mask[t].unsqueeze(-1))
        y_d = _as_input(_in_time_order(outputs, ctx.reverse), x.dim(), ctx.batch_first)
        return y_d, _as_state(hd, h0), _in_time_order(gates_d, ctx.reverse)


def _gru_gates_grad(
    grad_gates: torch.Tensor, gates: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """What a gradient reaching the gates output [r, z, n, q_n] adds to ([dL/da_r, dL/da_z, dL/dq_n], dL/da_n):
    dL/dn passes through n = tanh(a_n) to a_n, and from a_n = p_n + r ⊙ q_n on to r and q_n."""
    g_r, g_z, g_n, g_q = grad_gates.chunk(4, -1)
    r, z, n, q_n = gates.chunk(4, -1)
    e_n = g_n * (1 - n * n)
    return torch.cat([(g_r + e_n * q_n) * r * (1 - r), g_z * z * (1 - z), g_q + e_n * r], -1).unbind(0), e_n.unbind(0)
