"""The LSTM over a whole sequence, one layer and direction (projection too): ``LSTMFunction``."""

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
    _doubled,
    _final,
    _in_time_order,
    _masked,
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
    _tanh,
    _tensor_ordinals,
    _time_major,
    _via_sigmoid,
    _zeros_or,
)


@function
class LSTMFunction(torch.autograd.Function):
    """One layer and direction of an LSTM over a whole sequence (gate order i, f, g, o, as torch's).

        [a_i, a_f, a_g, a_o] = x_t W_ihᵀ + b_ih + b_hh + h_{t-1} W_hhᵀ
        i, f, o = σ(a_i), σ(a_f), σ(a_o)     g = tanh(a_g)
        c̃_t = f ⊙ c_{t-1} + i ⊙ g          ĥ_t = o ⊙ tanh(c̃_t)          h̃_t = ĥ_t, or ĥ_t W_hrᵀ (proj_size)

    x: (T, B, I) (see the module docstring)   h0: (B, P)   c0: (B, H)   W_ih: (4H, I)   W_hh: (4H, P)
    b_ih, b_hh: (4H,) or None   W_hr: (P, H) or None   mask: (T, B) bool or None
    outputs: y (like x, P), h_n (like h0), c_n (like c0), gates (T, B, 4H) = [i, f, g, o], cells (T, B, H) = c̃

    BPTT, carrying δh = dL/dh_t and δc = dL/dc_t backwards from (dL/dh_n, dL/dc_n); at step t:

        dL/dh̃ = δh + dL/dy_t      dL/dĥ = dL/dh̃ (· W_hr)      dL/dc̃ = δc + dL/dĥ ⊙ o ⊙ (1 - tanh²c̃)
        dL/da_i = dL/dc̃ ⊙ g ⊙ i(1-i)        dL/da_f = dL/dc̃ ⊙ c_{t-1} ⊙ f(1-f)
        dL/da_g = dL/dc̃ ⊙ i ⊙ (1-g²)        dL/da_o = dL/dĥ ⊙ tanh(c̃) ⊙ o(1-o)
        δh ← dL/da · W_hh                    δc ← dL/dc̃ ⊙ f
        dL/dx = dL/da · W_ih    dL/dW_ih = Σ_t dL/da_tᵀ x_t    dL/dW_hh = Σ_t dL/da_tᵀ h_{t-1}
        dL/db_ih = dL/db_hh = Σ_t dL/da_t    dL/dW_hr = Σ_t dL/dh̃_tᵀ ĥ_t    dL/dh0, dL/dc0 = δh, δc at the end

    The factors that do not involve the carried errors are formed for all steps before the loop,
    local = [g ⊙ i(1-i), c_{t-1} ⊙ f(1-f), i ⊙ (1-g²), tanh c̃ ⊙ o(1-o)] and o ⊙ (1 - tanh²c̃), so a step is
    dL/dc̃ (one addcmul), dL/da = local ⊙ [dL/dc̃, dL/dc̃, dL/dc̃, dL/dĥ] (two products written into one buffer,
    in place), one matmul and δc. Gradients reaching the gates and cells outputs (differentiating twice) add to
    dL/da and dL/dc̃. The forward loop (``_via_sigmoid``) carries C = 2c̃, so that tanh c̃ = 2σ(C) - 1 and
    C_t = f ⊙ C_{t-1} + 4 i ⊙ s - 2 i with s = σ(2a_g) = (1 + g)/2: one sigmoid for the gates, one for tanh c̃.

    Forward mode: ȧ_t = ẋ_t W_ihᵀ + x_t Ẇ_ihᵀ + ḃ_ih + ḃ_hh + ḣ_{t-1} W_hhᵀ + h_{t-1} Ẇ_hhᵀ;
    i̇ = i(1-i) ⊙ ȧ_i (f, o alike), ġ = (1-g²) ⊙ ȧ_g;   ċ̃ = ḟ c_{t-1} + f ċ_{t-1} + i̇ g + i ġ;
    ĥ̇ = ȯ tanh c̃ + o (1 - tanh²c̃) ċ̃;   ḣ̃ = ĥ̇ (or ĥ̇ W_hrᵀ + ĥ Ẇ_hrᵀ)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask, reverse: bool, batch_first: bool):
        # one sigmoid for the four gates: g = tanh(a_g) = 2σ(2a_g) - 1 (``_tanh``), the 2 in the g rows of the weights
        g_rows, via_sigmoid = (2 * c0.shape[-1], 3 * c0.shape[-1]), _via_sigmoid(x)
        # In place, the gates of step t are computed in the projection's rows for step t, which become the gates output.
        bias = _doubled(_sum(b_ih, b_hh), *g_rows, via_sigmoid)
        pre = _project(x, _doubled(w_ih, *g_rows, via_sigmoid), bias, batch_first)
        pre_x, in_place = pre.unbind(0), scratch_writable()
        # via_sigmoid, the cell state is carried doubled, C = 2c̃, so that tanh c̃ = 2σ(C) - 1 is one sigmoid, and
        # the g rows hold s = σ(2a_g) = (1 + g)/2 during the loop: C_t = f C_{t-1} + 2 i g = f C_{t-1} + 4 i s - 2 i
        scale = 2.0 if via_sigmoid else 1.0
        h, c, w_hh_t = _batched(h0), _batched(c0) * scale, _doubled(w_hh, *g_rows, via_sigmoid).t()
        outputs = _Steps(h, len(pre_x), h.shape[1], reverse, in_place)
        cells = _Steps(c, len(pre_x), c.shape[1], reverse, in_place)
        gates = []  # in place, the gates are in ``pre``
        # in place, the four gates' views of every step, made at once
        parts = [part.unbind(0) for part in pre.unflatten(-1, (4, -1)).unbind(2)] if in_place and via_sigmoid else None
        for t in _steps(len(pre_x), reverse):
            act = torch.addmm(pre_x[t], h, w_hh_t, out=pre_x[t] if in_place else None)
            if via_sigmoid:
                act.sigmoid_()
                i, f, s, o = act.chunk(4, 1) if parts is None else (part[t] for part in parts)
                c_new = torch.mul(f, c, out=cells.out(t)).addcmul_(i, s, value=4.0).sub_(i, alpha=2.0)
                h_new = torch.sigmoid(c_new)
                h_new = torch.mul(h_new, o, out=outputs.out(t) if w_hr is None else None).mul_(2.0).sub_(o)
            else:
                act[:, : g_rows[0]].sigmoid_()
                act[:, g_rows[0] : g_rows[1]].tanh_()
                act[:, g_rows[1] :].sigmoid_()
                i, f, g, o = act.chunk(4, 1)
                c_new = torch.addcmul(f * c, i, g, out=cells.out(t))
                h_new = torch.mul(torch.tanh(c_new), o, out=outputs.out(t) if w_hr is None else None)
            if w_hr is not None:
                h_new = torch.mm(h_new, w_hr.t(), out=outputs.out(t))
            h, h_new = _advance(mask, t, h_new, h, in_place)
            c, c_new = _advance(mask, t, c_new, c, in_place)
            outputs.keep(h_new)
            cells.keep(c_new)
            gates.append(act)
        y = _as_input(outputs.tensor(), x.dim(), batch_first)
        gates = pre if in_place else _in_time_order(gates, reverse)
        if via_sigmoid:  # g = 2s - 1, c̃ = C/2 (a new tensor each, or the buffers: written in place)
            gates[..., g_rows[0] : g_rows[1]].mul_(2.0).sub_(1.0)
            c = c * 0.5
        if mask is not None:  # the steps a sequence skips emit zero gates
            gates.mul_(mask.unsqueeze(-1))
        all_cells = cells.tensor()
        if via_sigmoid:
            all_cells.mul_(0.5)
        return (
            y,
            _final(h, h0, in_place),
            _as_state(c, c0) if via_sigmoid else _final(c, c0, in_place),
            gates,
            all_cells,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, w_ih, w_hh, b_ih, _, w_hr, mask, ctx.reverse, ctx.batch_first = inputs
        ctx.ordinals, ctx.batched, ctx.masked = _tensor_ordinals(inputs), x.dim() == 3, mask is not None
        y, _, _, gates, cells = output
        ctx.set_materialize_grads(False)  # absent grads and tangents arrive as None (see _tangents)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells)
        ctx.save_for_forward(x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells)
        ctx.has_bias = b_ih is not None

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_gates, grad_cells):
        x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells = ctx.saved_tensors
        ys, in_place = _time_major(y, ctx.batch_first), scratch_writable()
        tanh_c = _tanh(cells)
        c_prev = _previous(cells, _batched(c0), mask, ctx.reverse)
        # per step: dL/da = local ⊙ [dL/dc̃, dL/dc̃, dL/dc̃, dL/dĥ] (gate by gate), dL/dc̃ = δc + dL/dĥ ⊙ to_c
        local = _lstm_local_factors(gates, c_prev, tanh_c)
        o = gates.chunk(4, -1)[3]
        to_c = torch.addcmul(o, o * tanh_c, tanh_c, value=-1.0).unbind(0)  # o (1 - tanh²c̃)
        extra_pre = None if grad_gates is None else _masked(grad_gates * _lstm_gate_derivative(gates), mask)
        extra_c = None if grad_cells is None else _masked(grad_cells, mask)
        grad_ys, forget = _steps_of(grad_y, ctx.batch_first), gates.chunk(4, -1)[1].unbind(0)
        dh, dc = _zeros_or(grad_h_n, _batched(h0)), _zeros_or(grad_c_n, _batched(c0))
        errors, d_out = _GateErrors(local, not ctx.reverse, in_place), []
        for t in reversed(_steps(len(forget), ctx.reverse)):
            error_h, passed_h = _split(mask, t, _plus(dh, _at(grad_ys, t)), dh)
            error_c, passed_c = _split(mask, t, dc, dc)
            d_hat = error_h if w_hr is None else error_h.mm(w_hr)
            d_cell = _plus(torch.addcmul(error_c, d_hat, to_c[t]), _at(extra_c, t))
            step = errors.at(t, d_cell, d_hat, _at(extra_pre, t))
            dh, dc = _plus(step.mm(w_hh), passed_h), _plus(d_cell * forget[t], passed_c)
            d_out.append(error_h)
        d_pre = errors.tensor()
        need = ctx.needs_input_grad
        grad_x = _as_input(d_pre.matmul(w_ih), x.dim(), ctx.batch_first) if need[0] else None
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        d_hat = _in_time_order(d_out, not ctx.reverse) if w_hr is not None else None
        entries = [(3, d_pre, _time_major(x, ctx.batch_first)), (4, d_pre, h_prev), (5, d_pre, None), (6, d_pre, None)]
        hat = gates.chunk(4, -1)[3] * tanh_c if w_hr is not None else None  # ĥ
        weights = _parameter_grads(ctx, entries + ([(7, d_hat, hat)] if w_hr is not None else []))
        return (
            grad_x,
            _as_state(dh, h0) if need[1] else None,
            _as_state(dc, c0) if need[2] else None,
            *weights[:4],
            weights[4] if w_hr is not None else None,
            None,
            None,
            None,
        )

    @staticmethod
    def jvp(ctx, x_t, h0_t, c0_t, w_ih_t, w_hh_t, b_ih_t, b_hh_t, w_hr_t, *_):
        x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        i, f, g, o = gates.chunk(4, -1)
        dact = _lstm_gate_derivative(gates)
        tanh_c = _tanh(cells)
        to_c = o * (1 - tanh_c * tanh_c)
        c_prev = _previous(cells, _batched(c0), mask, ctx.reverse)
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        base = _pre_tangent(x, w_ih, x_t, w_ih_t, tangent_sum(b_ih_t, b_hh_t), ctx.batch_first, h_prev, w_hh_t)
        hd, cd, w_hh_t = _zeros_or(h0_t, _batched(h0)), _zeros_or(c0_t, _batched(c0)), w_hh.t()
        outputs, gates_d, cells_d = [], [], []
        for t in _steps(ys.shape[0], ctx.reverse):
            act_d = dact[t] * _plus(hd.mm(w_hh_t), _at(base, t))
            i_d, f_d, g_d, o_d = act_d.chunk(4, 1)
            c_new = f_d * c_prev[t] + f[t] * cd + i_d * g[t] + i[t] * g_d
            h_new = o_d * tanh_c[t] + to_c[t] * c_new
            if w_hr is not None:
                moved = None if w_hr_t is None else (o[t] * tanh_c[t]).mm(w_hr_t.t())
                h_new = _plus(h_new.mm(w_hr.t()), moved)
            hd, h_new = _advance(mask, t, h_new, hd)
            cd, c_new = _advance(mask, t, c_new, cd)
            outputs.append(h_new)
            gates_d.append(act_d if mask is None else act_d * mask[t].unsqueeze(-1))
            cells_d.append(c_new)
        return (
            _as_input(_in_time_order(outputs, ctx.reverse), x.dim(), ctx.batch_first),
            _as_state(hd, h0),
            _as_state(cd, c0),
            _in_time_order(gates_d, ctx.reverse),
            _in_time_order(cells_d, ctx.reverse),
        )


def _lstm_gate_derivative(gates: torch.Tensor) -> torch.Tensor:
    """d[i, f, g, o]/d[a_i, a_f, a_g, a_o] from the gates: [i(1-i), f(1-f), 1-g², o(1-o)], (T, B, 4H)."""
    i, f, g, o = gates.chunk(4, -1)
    return torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], -1)


def _lstm_local_factors(gates: torch.Tensor, c_prev: torch.Tensor, tanh_c: torch.Tensor) -> torch.Tensor:
    """The factors of dL/da that do not involve the carried errors, (T, B, 4H):
    [g ⊙ i(1-i), c_{t-1} ⊙ f(1-f), i ⊙ (1-g²), tanh c̃ ⊙ o(1-o)] (``_gate_errors`` multiplies them by the errors)."""
    i, _, g, _ = gates.chunk(4, -1)
    slope = torch.addcmul(gates, gates, gates, value=-1.0)  # σ' = σ(1-σ) (the g rows unused)
    slope_i, slope_f, _, slope_o = slope.chunk(4, -1)
    if not scratch_writable():
        return torch.cat([g * slope_i, c_prev * slope_f, torch.addcmul(i, i * g, g, value=-1.0), tanh_c * slope_o], -1)
    local = slope  # a fresh buffer: each gate's factor is written over its slope
    torch.mul(slope_i, g, out=local[..., : g.shape[-1]])
    torch.mul(slope_f, c_prev, out=local[..., g.shape[-1] : 2 * g.shape[-1]])
    torch.addcmul(i, i * g, g, value=-1.0, out=local[..., 2 * g.shape[-1] : 3 * g.shape[-1]])
    torch.mul(slope_o, tanh_c, out=local[..., 3 * g.shape[-1] :])
    return local


class _GateErrors:
    """dL/da of every step, (T, B, 4H): local ⊙ [dL/dc̃, dL/dc̃, dL/dc̃, dL/dĥ] gate by gate (``local`` from
    ``_lstm_local_factors``), plus the gradient reaching the gates output when there is one.

    In place (``scratch_writable()``), each step's two products are written into a preallocated buffer through views
    made once for all steps; otherwise each step concatenates its products and ``tensor`` stacks the steps."""

    def __init__(self, local: torch.Tensor, reverse: bool, in_place: bool) -> None:
        self.hidden, self.reverse = local.shape[-1] // 4, reverse
        self.local = local.unbind(0)
        self.listed: list[torch.Tensor] = []
        self.buffer = torch.empty_like(local) if in_place else None
        if self.buffer is not None:
            o_rows = slice(3 * self.hidden, None)
            self.rows = self.buffer.unbind(0)
            self.local_by_gate = local.unflatten(-1, (4, self.hidden)).unbind(0)
            self.out_by_gate = self.buffer.unflatten(-1, (4, self.hidden)).unbind(0)
            self.local_o, self.out_o = local[..., o_rows].unbind(0), self.buffer[..., o_rows].unbind(0)

    def at(self, t: int, d_cell: torch.Tensor, d_hat: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if self.buffer is None:
            local, rows, hidden = self.local[t], d_cell.shape[0], self.hidden
            ifg = (local[:, : 3 * hidden].reshape(rows, 3, hidden) * d_cell.unsqueeze(1)).flatten(1)
            step = _plus(torch.cat([ifg, local[:, 3 * hidden :] * d_hat], 1), extra)
            self.listed.append(step)
            return step
        torch.mul(self.local_by_gate[t], d_cell.unsqueeze(1), out=self.out_by_gate[t])  # the o rows overwritten:
        torch.mul(self.local_o[t], d_hat, out=self.out_o[t])
        return self.rows[t] if extra is None else self.rows[t].add_(extra)

    def tensor(self) -> torch.Tensor:
        return self.buffer if self.buffer is not None else _in_time_order(self.listed, self.reverse)
