"""Recurrent layers over whole sequences: Elman RNN (tanh or ReLU), LSTM and GRU, with backpropagation
through time written by hand.

One Function per layer and direction covers the whole sequence: the input projection of every step is one
matmul, only the recurrence loops, and the backward runs the loop in reverse, carrying the error through h
(and c), then forms each weight gradient as one matmul over all steps. Index conventions, used throughout:

    T steps, B batch, I input size, H hidden size, P = H (or proj_size: LSTM with projection), G gate rows
    x: (T, B, I) time-major, (B, T, I) with batch_first, (T, I) unbatched; h0: (B, P) or (P,); y like x with P
    "step t" is time index t; the reverse direction processes t = T-1, ..., 0 and its "previous" step is t+1.

Variable lengths (``lengths``, or a ``PackedSequence``) enter the Functions as a boolean mask m: (T, B),
m[t, b] = t < length_b. A step where m is false leaves h (and c) as they are and emits zeros, so the forward
direction stops at each sequence's own end and the reverse direction starts at it, from h0:

    h_t = m_t ⊙ h̃_t + (1 - m_t) ⊙ h_{t-1}        y_t = m_t ⊙ h̃_t        (h̃_t: the step's new state)

and backward splits the error arriving at h_t the same way: m_t ⊙ (dL/dh_t + dL/dy_t) into the step,
(1 - m_t) ⊙ dL/dh_t straight to h_{t-1}.

Besides y, h_n (and c_n), each Function returns what its backward reads (gate activations, cell states) as
extra differentiable outputs, masked like y, and saves its outputs rather than recomputing them: a backward
that reads a saved output stays differentiable through the Function itself, so double backward is exact;
their incoming gradients are None except when differentiating twice. The state before each step, h_{t-1},
is y of the previous step (or h0 where a sequence starts), so it needs no output of its own.

Layers are stacked by the entry points (``rnn``, ``lstm``, ``gru``): the two directions' outputs joined by
``ConcatFunction``, dropout between layers by ``DropoutFunction``, a ``PackedSequence`` unpacked and packed
by ``UnpackFunction``/``PackFunction``, so every node between the loss and the weights is a manual one. Dropout
masks are drawn as torch's RNNs draw theirs (over the time-major output, or the packed data), so one seed drops
the same entries. The cells are the sequence Functions over one step.

Speed (the loops are Python, a step a handful of torch ops): in plain eager mode the steps write into
preallocated buffers (``_Steps``; the LSTM computes its gates inside the input projection's tensor) instead of
being stacked afterwards; tanh is computed as 2σ(2x) - 1 (``_tanh``); the per-step factors of the backward are
formed for all steps at once. Under autocast the layers compute in the dtype ``linear`` takes and return torch's
dtypes (``_autocast_dtypes``). torch.compile traces the loops unrolled, so it specializes on the sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import PackedSequence

from manualbp.functional._autocast import ELIGIBLE, autocast_dtype
from manualbp.functional._dispatch import apply, function
from manualbp.functional._reduction import REDUCTION, SequenceTerms, sequence_outer_sum
from manualbp.functional._tangents import tangent_sum
from manualbp.functional._validation import (
    DtypeError,
    InputError,
    check_choice,
    check_floating,
    check_same_device,
    check_same_dtype,
    check_unit_interval,
    is_int,
    shape_str,
)
from manualbp.functional.dropout import DropoutFunction, dropout_mask
from manualbp.functional.linear import linear_tangent

# ---------------------------------------------------------------------------------------------------
# Layout: the Functions compute time-major and batched; these map the caller's layout there and back.


def _time_major(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """(T, B, F) view of a sequence given as (T, B, F), (B, T, F) with ``batch_first``, or (T, F) unbatched."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.transpose(0, 1) if batch_first else x


def _as_input(y: torch.Tensor, input_dim: int, batch_first: bool) -> torch.Tensor:
    """A (T, B, F) sequence in the layout of an input with ``input_dim`` dims (inverse of ``_time_major``)."""
    if input_dim == 2:
        return y.squeeze(1)
    return y.transpose(0, 1) if batch_first else y


def _batched(h: torch.Tensor) -> torch.Tensor:
    """A state as (B, F): an unbatched (F,) state gets a batch of one."""
    return h.unsqueeze(0) if h.dim() == 1 else h


def _as_state(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, F) state shaped like the initial state ``like`` ((F,) when unbatched)."""
    return h.squeeze(0) if like.dim() == 1 else h


def _steps(length: int, reverse: bool) -> range:
    """The time indices in the order a direction processes them."""
    return range(length - 1, -1, -1) if reverse else range(length)


def _in_time_order(per_step: list[torch.Tensor], reverse: bool) -> torch.Tensor:
    """(T, ...) from tensors listed in processing order."""
    return torch.stack(per_step[::-1] if reverse else per_step)


def _previous(states: torch.Tensor, first: torch.Tensor, mask: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """The state each step starts from, (T, B, F), from the masked per-step states (T, B, F) and the initial
    state ``first`` (B, F): the previous step's state, or ``first`` where a sequence starts.

    Forward direction: step t starts from states[t-1] (a sequence running at t ran at t-1 too), step 0 from
    ``first``. Reverse direction: step t starts from states[t+1] where the sequence ran at t+1, else (its last
    step, or t = T-1) from ``first``. Entries of steps the mask skips are not used.
    """
    if not reverse:
        return torch.cat([first.unsqueeze(0), states[:-1]])
    following = torch.cat([states[1:], first.unsqueeze(0)])
    if mask is None:
        return following
    started = torch.cat([mask[1:], torch.zeros_like(mask[:1])]).unsqueeze(-1)
    return torch.where(started, following, first)


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, batch_first: bool) -> torch.Tensor:
    """x Wᵀ + b for every step at once, one matmul: a new contiguous time-major (T, B, G) tensor.

    x is made time-major and contiguous first (a copy of x for batch_first): linear takes a contiguous input as
    one addmm, a transposed one as a batched matmul and a separate bias addition, six times slower."""
    return torch.nn.functional.linear(_time_major(x, batch_first).contiguous(), weight, bias)


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b of two optional biases (None: absent)."""
    return a if b is None else b if a is None else a + b


def _via_sigmoid(t: torch.Tensor) -> bool:
    """Whether tanh is computed as 2σ(2x) - 1 (``_tanh``) for tensors like ``t``: the same function, two to three
    times faster than ``torch.tanh`` on the CPU (torch 2.14: its tanh kernel takes six times as long as its
    sigmoid), and the forward loops fold the 2 of the argument into their weights, so that a step needs a single
    sigmoid. In float32 and float64, in eager mode, only: in bfloat16 and float16 the subtraction loses the
    relative precision of small values, and in a graph torch.compile traces one tanh is less to trace."""
    return t.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x), as ``_via_sigmoid`` decides."""
    return torch.sigmoid(2 * x) * 2 - 1 if _via_sigmoid(x) else torch.tanh(x)


def _doubled(t: torch.Tensor | None, start: int, stop: int, double: bool = True) -> torch.Tensor | None:
    """A copy of ``t`` (weight or bias) with rows start..stop-1 doubled, the 2 of ``_tanh``; ``t`` itself when
    it is None or not ``double``."""
    if t is None or not double:
        return t
    scale = torch.ones(t.shape[0], dtype=t.dtype, device=t.device)
    scale[start:stop] = 2
    return t * (scale if t.dim() == 1 else scale.unsqueeze(1))


def _in_place() -> bool:
    """Whether a loop may write its results into preallocated buffers (``_Steps``): in plain eager mode, not while
    autograd records the loop (a backward with ``create_graph``), a torch.func transform runs it (vmap may batch
    some operands and not a buffer) or torch.compile traces it (functionalized, each write would copy the buffer)."""
    return not (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling())


class _Steps:
    """The per-step results (B, F) of a loop, gathered into one (T, B, F) tensor in time order.

    In place (``_in_place()``), each step's last op writes into a preallocated buffer through ``out=out(t)``,
    so nothing is copied afterwards (a stack of the steps costs as much as a step's elementwise work at batch
    128); otherwise ``out(t)`` is None, the ops make new tensors, ``keep`` lists them and ``tensor`` stacks them.
    """

    def __init__(self, like: torch.Tensor, length: int, width: int, reverse: bool, in_place: bool) -> None:
        self.buffer = like.new_empty(length, like.shape[0], width) if in_place else None
        self.listed: list[torch.Tensor] = []
        self.reverse = reverse

    def out(self, t: int) -> torch.Tensor | None:
        return None if self.buffer is None else self.buffer[t]

    def keep(self, value: torch.Tensor) -> None:
        if self.buffer is None:
            self.listed.append(value)

    def tensor(self) -> torch.Tensor:
        return self.buffer if self.buffer is not None else _in_time_order(self.listed, self.reverse)


def _advance(mask: torch.Tensor | None, t: int, new: torch.Tensor, carried: torch.Tensor, in_place: bool = False):
    """(the state after step t, what step t emits): both ``new`` where the step runs; where the mask skips
    it, the state stays ``carried`` and the step emits zeros (written into ``new`` when ``in_place``)."""
    if mask is None:
        return new, new
    m = mask[t].unsqueeze(-1)
    return torch.where(m, new, carried), torch.mul(new, m, out=new if in_place else None)


def _final(state: torch.Tensor, like: torch.Tensor, in_place: bool) -> torch.Tensor:
    """The last state shaped like ``like``; a copy when it may be a step of a buffer another output holds."""
    return _as_state(state.clone() if in_place else state, like)


def _split(mask: torch.Tensor | None, t: int, error: torch.Tensor, carried: torch.Tensor):
    """The backward of ``_advance``: (the error entering step t, the error passed straight to the state
    before it): (``error``, None) where every sequence runs; else ``error`` where the step runs and
    ``carried`` (the error at the state alone: the step's zero output has no gradient) where it is skipped."""
    if mask is None:
        return error, None
    m = mask[t].unsqueeze(-1)
    return torch.where(m, error, 0), torch.where(m, 0, carried)


def _masked(per_step: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(T, B, F) with the entries of skipped steps zeroed."""
    return per_step if mask is None else per_step * mask.unsqueeze(-1)


def _plus(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return a if b is None else a + b


def _zeros_or(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t`` as (B, F), or zeros like ``like`` when it is None (autograd's zero)."""
    return torch.zeros_like(like) if t is None else _batched(t)


def _parameter_grads(ctx, entries) -> tuple[torch.Tensor | None, ...]:
    """The gradients of the layer's parameters, one per entry (its position among the Function's inputs, G, X):
    a weight's dL/dW = Σ_{t,b} G[t, b]ᵀ X[t, b] (``sequence_outer_sum``), a bias's (X None) dL/db = Σ_{t,b} G[t, b];
    None where not asked for. The reduction seam's mode forms them when one is open (``manualbp.per_sample``)."""
    needs = tuple(ctx.needs_input_grad[i] for i, _, _ in entries)
    if REDUCTION.mode is not None and any(needs):
        ordinals = tuple(ctx.ordinals[i] for i, _, _ in entries)
        terms = SequenceTerms([(g, x) for _, g, x in entries], needs, ordinals, batched=ctx.batched)
        return REDUCTION.mode.reduce(ctx, terms)
    bias_sums: dict[int, torch.Tensor] = {}  # b_ih and b_hh often share G: summed once
    grads = []
    for (_, g, x), need in zip(entries, needs):
        if not need:
            grads.append(None)
        elif x is not None:
            grads.append(sequence_outer_sum(g, x))
        else:
            if id(g) not in bias_sums:
                bias_sums[id(g)] = g.sum((0, 1))
            grads.append(bias_sums[id(g)])
    return tuple(grads)


def _tensor_ordinals(inputs: Sequence[object]) -> list[int]:
    """Each input's position among the tensor inputs (the graph node's ``next_functions``, which skip None)."""
    ordinals, count = [], 0
    for value in inputs:
        ordinals.append(count)
        count += isinstance(value, torch.Tensor)
    return ordinals


def _pre_tangent(x, w_ih, x_t, w_ih_t, bias_t, batch_first, h_prev, w_hh_t) -> torch.Tensor | None:
    """The part of the pre-activations' tangent not carried through time, (T, B, G), None when zero:
    ẋ W_ihᵀ + x Ẇ_ihᵀ + ḃ + h_{t-1} Ẇ_hhᵀ (the loop adds ḣ_{t-1} W_hhᵀ)."""
    projected = linear_tangent(x, w_ih, x_t, w_ih_t, bias_t)
    return tangent_sum(
        None if projected is None else _time_major(projected, batch_first),
        None if w_hh_t is None else h_prev.matmul(w_hh_t.t()),
    )


def _at(per_step: Sequence[torch.Tensor] | None, t: int) -> torch.Tensor | None:
    return None if per_step is None else per_step[t]


def _steps_of(grad: torch.Tensor | None, batch_first: bool) -> tuple[torch.Tensor, ...] | None:
    """An incoming dL/dy (None: absent) as its T steps (B, F)."""
    return None if grad is None else _time_major(grad, batch_first).unbind(0)


# ---------------------------------------------------------------------------------------------------
# Elman RNN


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
        h, w_hh_t, in_place = _batched(h0), (scale * w_hh).t(), _in_place()
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
        ctx.ordinals, ctx.batched = _tensor_ordinals(inputs), x.dim() == 3
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
        d_pre = _Steps(dh, ys.shape[0], dh.shape[1], not ctx.reverse, _in_place())
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


# ---------------------------------------------------------------------------------------------------
# LSTM


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

    The factors that do not involve the carried errors (g ⊙ i(1-i), ..., o ⊙ (1 - tanh²c̃)) are formed for all
    steps before the loop, so a step is a few elementwise products and one matmul. Gradients reaching the
    gates and cells outputs (differentiating twice) add to dL/da and dL/dc̃.

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
        pre_x, in_place = pre.unbind(0), _in_place()
        h, c, w_hh_t = _batched(h0), _batched(c0), _doubled(w_hh, *g_rows, via_sigmoid).t()
        outputs = _Steps(h, len(pre_x), h.shape[1], reverse, in_place)
        cells = _Steps(c, len(pre_x), c.shape[1], reverse, in_place)
        gates = []  # in place, the gates are in ``pre``
        for t in _steps(len(pre_x), reverse):
            act = torch.addmm(pre_x[t], h, w_hh_t, out=pre_x[t] if in_place else None)
            if via_sigmoid:
                act.sigmoid_()[:, g_rows[0] : g_rows[1]].mul_(2.0).sub_(1.0)
            else:
                act[:, : g_rows[0]].sigmoid_()
                act[:, g_rows[0] : g_rows[1]].tanh_()
                act[:, g_rows[1] :].sigmoid_()
            i, f, g, o = act.chunk(4, 1)
            c_new = torch.addcmul(f * c, i, g, out=cells.out(t))
            hat = torch.sigmoid(2.0 * c_new).mul_(2.0).sub_(1.0) if via_sigmoid else torch.tanh(c_new)  # tanh(c̃)
            h_new = torch.mul(hat, o, out=outputs.out(t) if w_hr is None else None)
            if w_hr is not None:
                h_new = torch.mm(h_new, w_hr.t(), out=outputs.out(t))
            h, h_new = _advance(mask, t, h_new, h, in_place)
            c, c_new = _advance(mask, t, c_new, c, in_place)
            if mask is not None:
                act = torch.mul(act, mask[t].unsqueeze(-1), out=act if in_place else None)
            outputs.keep(h_new)
            cells.keep(c_new)
            gates.append(act)
        y = _as_input(outputs.tensor(), x.dim(), batch_first)
        gates = pre if in_place else _in_time_order(gates, reverse)
        return y, _final(h, h0, in_place), _final(c, c0, in_place), gates, cells.tensor()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, w_ih, w_hh, b_ih, _, w_hr, mask, ctx.reverse, ctx.batch_first = inputs
        ctx.ordinals, ctx.batched = _tensor_ordinals(inputs), x.dim() == 3
        y, _, _, gates, cells = output
        ctx.set_materialize_grads(False)  # absent grads and tangents arrive as None (see _tangents)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells)
        ctx.save_for_forward(x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells)
        ctx.has_bias = b_ih is not None

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_gates, grad_cells):
        x, h0, c0, w_ih, w_hh, w_hr, mask, y, gates, cells = ctx.saved_tensors
        ys = _time_major(y, ctx.batch_first)
        i, f, g, o = gates.chunk(4, -1)
        slope_i, slope_f, _, slope_o = torch.addcmul(gates, gates, gates, value=-1.0).chunk(4, -1)  # σ' = σ(1-σ)
        tanh_c = _tanh(cells)
        hat = o * tanh_c  # ĥ
        c_prev = _previous(cells, _batched(c0), mask, ctx.reverse)
        # per step: dL/da_{i,f,g} = dL/dc̃ ⊙ to_ifg, dL/da_o = dL/dĥ ⊙ to_o, dL/dc̃ = δc + dL/dĥ ⊙ to_c
        to_ifg = torch.stack([g * slope_i, c_prev * slope_f, torch.addcmul(i, i * g, g, value=-1.0)], 2)
        to_ifg, to_o = to_ifg.unbind(0), (tanh_c * slope_o).unbind(0)
        to_c = torch.addcmul(o, hat, tanh_c, value=-1.0).unbind(0)  # o (1 - tanh²c̃)
        extra_pre = None if grad_gates is None else _masked(grad_gates * _lstm_gate_derivative(gates), mask)
        extra_c = None if grad_cells is None else _masked(grad_cells, mask)
        grad_ys, forget = _steps_of(grad_y, ctx.batch_first), f.unbind(0)
        dh, dc = _zeros_or(grad_h_n, _batched(h0)), _zeros_or(grad_c_n, _batched(c0))
        d_pre, d_out = _Steps(dh, len(forget), w_hh.shape[0], not ctx.reverse, _in_place()), []
        for t in reversed(_steps(len(forget), ctx.reverse)):
            error_h, passed_h = _split(mask, t, _plus(dh, _at(grad_ys, t)), dh)
            error_c, passed_c = _split(mask, t, dc, dc)
            d_hat = error_h if w_hr is None else error_h.mm(w_hr)
            d_cell = _plus(torch.addcmul(error_c, d_hat, to_c[t]), _at(extra_c, t))
            step = torch.cat([(to_ifg[t] * d_cell.unsqueeze(1)).flatten(1), d_hat * to_o[t]], 1, out=d_pre.out(t))
            if extra_pre is not None:
                step = torch.add(step, extra_pre[t], out=d_pre.out(t))
            dh, dc = _plus(step.mm(w_hh), passed_h), _plus(d_cell * forget[t], passed_c)
            d_pre.keep(step)
            d_out.append(error_h)
        d_pre = d_pre.tensor()
        need = ctx.needs_input_grad
        grad_x = _as_input(d_pre.matmul(w_ih), x.dim(), ctx.batch_first) if need[0] else None
        h_prev = _previous(ys, _batched(h0), mask, ctx.reverse)
        d_hat = _in_time_order(d_out, not ctx.reverse) if w_hr is not None else None
        entries = [(3, d_pre, _time_major(x, ctx.batch_first)), (4, d_pre, h_prev), (5, d_pre, None), (6, d_pre, None)]
        weights = _parameter_grads(ctx, entries + ([(7, d_hat, hat)] if w_hr is not None else []))
        return (
            grad_x, _as_state(dh, h0) if need[1] else None, _as_state(dc, c0) if need[2] else None,
            *weights[:4], weights[4] if w_hr is not None else None, None, None, None,
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
            _as_state(hd, h0), _as_state(cd, c0),
            _in_time_order(gates_d, ctx.reverse), _in_time_order(cells_d, ctx.reverse),
        )


def _lstm_gate_derivative(gates: torch.Tensor) -> torch.Tensor:
    """d[i, f, g, o]/d[a_i, a_f, a_g, a_o] from the gates: [i(1-i), f(1-f), 1-g², o(1-o)], (T, B, 4H)."""
    i, f, g, o = gates.chunk(4, -1)
    return torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], -1)


# ---------------------------------------------------------------------------------------------------
# GRU


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
        h, w_hh_t, in_place = _batched(h0), w_hh.t(), _in_place()
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
        ctx.ordinals, ctx.batched = _tensor_ordinals(inputs), x.dim() == 3
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
        dh, in_place = _zeros_or(grad_h_n, _batched(h0)), _in_place()
        d_q = _Steps(dh, len(update), w_hh.shape[0], not ctx.reverse, in_place)
        d_n = _Steps(dh, len(update), dh.shape[1], not ctx.reverse, in_place)
        for t in reversed(_steps(len(update), ctx.reverse)):
            error, passed = _split(mask, t, _plus(dh, _at(grad_ys, t)), dh)
            out = d_q.out(t)
            step_q = torch.mul(to_q[t], error.unsqueeze(1), out=None if out is None else out.view_as(to_q[t]))
            step_q = step_q.flatten(1)
            step_n = torch.mul(to_n[t], error, out=d_n.out(t))
            if extra_q is not None:
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


def _gru_gates_grad(grad_gates: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a gradient reaching the gates output [r, z, n, q_n] adds to ([dL/da_r, dL/da_z, dL/dq_n], dL/da_n):
    dL/dn passes through n = tanh(a_n) to a_n, and from a_n = p_n + r ⊙ q_n on to r and q_n."""
    g_r, g_z, g_n, g_q = grad_gates.chunk(4, -1)
    r, z, n, q_n = gates.chunk(4, -1)
    e_n = g_n * (1 - n * n)
    return torch.cat([(g_r + e_n * q_n) * r * (1 - r), g_z * z * (1 - z), g_q + e_n * r], -1).unbind(0), e_n.unbind(0)


# ---------------------------------------------------------------------------------------------------
# Joining layers, packing sequences


@function
class ConcatFunction(torch.autograd.Function):
    """y = the tensors joined along ``dim``: side by side (``torch.cat``) or, with ``stack``, along a new dim
    (``torch.stack``). Joins the two directions' outputs, and the final states of every layer and direction.

    With ``batch_first`` the tensors are (B, T, F) views of time-major memory, as the layers return them, and
    are joined in that memory (y too is a (B, T, ·) view of a (T, B, ·) tensor, the layout torch's RNNs return);
    ``dim`` then counts from the end.

    dL/dx_k = the k-th block (with ``stack``: the k-th slice) of dL/dy along dim      ẏ = the tangents joined alike
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dim: int, stack: bool, batch_first: bool, *tensors):
        return _join(tensors, dim, stack, batch_first)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim, ctx.stack, ctx.batch_first = inputs[:3]
        ctx.sizes = [t.shape[ctx.dim] for t in inputs[3:]]

    @staticmethod
    def backward(ctx, grad_out):
        parts = grad_out.unbind(ctx.dim) if ctx.stack else grad_out.split(ctx.sizes, ctx.dim)
        return None, None, None, *(part if need else None for part, need in zip(parts, ctx.needs_input_grad[3:]))

    @staticmethod
    def jvp(ctx, _dim, _stack, _batch_first, *tangents):
        return _join(tangents, ctx.dim, ctx.stack, ctx.batch_first)


def _join(tensors: Sequence[torch.Tensor], dim: int, stack: bool, batch_first: bool) -> torch.Tensor:
    if batch_first:
        return _join([t.transpose(0, 1) for t in tensors], dim, stack, False).transpose(0, 1)
    return torch.stack(tensors, dim) if stack else torch.cat(tensors, dim)


@function
class PackFunction(torch.autograd.Function):
    """The entries of a padded sequence that hold steps, in a PackedSequence's order: data = padded[rows].

    padded: (S0, S1, *) (time-major or batch-first)   rows: (N,) indices into the flattened S0·S1   data: (N, *)

    dL/dpadded = dL/ddata put back at ``rows``, zeros elsewhere        ḋata = ṗadded[rows]
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(padded, rows):
        return padded.flatten(0, 1).index_select(0, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])
        ctx.sizes = tuple(inputs[0].shape[:2])

    @staticmethod
    def backward(ctx, grad_data):
        (rows,) = ctx.saved_tensors
        return _scatter_rows(grad_data, rows, ctx.sizes, 0.0), None

    @staticmethod
    def jvp(ctx, padded_t, _):
        (rows,) = ctx.saved_tensors
        return padded_t.flatten(0, 1).index_select(0, rows)


@function
class UnpackFunction(torch.autograd.Function):
    """A padded sequence from a PackedSequence's data: padded[rows] = data, ``padding_value`` elsewhere.

    data: (N, *)   rows: (N,) indices into the flattened size0·size1   padded: (size0, size1, *)

    dL/ddata = dL/dpadded[rows]        ṗadded = ḋata put at ``rows``, zeros elsewhere
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(data, rows, size0: int, size1: int, padding_value: float):
        return _scatter_rows(data, rows, (size0, size1), padding_value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])
        ctx.sizes = tuple(inputs[2:4])

    @staticmethod
    def backward(ctx, grad_padded):
        (rows,) = ctx.saved_tensors
        return grad_padded.flatten(0, 1).index_select(0, rows), None, None, None, None

    @staticmethod
    def jvp(ctx, data_t, *_):
        (rows,) = ctx.saved_tensors
        return _scatter_rows(data_t, rows, ctx.sizes, 0.0)


def _scatter_rows(data: torch.Tensor, rows: torch.Tensor, sizes: tuple[int, int], fill: float) -> torch.Tensor:
    """(sizes[0], sizes[1], *) filled with ``fill``, with data's rows (N, *) at the flattened ``rows``."""
    padded = data.new_full((sizes[0] * sizes[1], *data.shape[1:]), fill)
    return padded.index_copy(0, rows, data).unflatten(0, sizes)


def _packed_rows(
    batch_sizes: torch.Tensor,
    sorted_indices: torch.Tensor | None,
    count: int,
    batch: int,
    length: int,
    batch_first: bool,
) -> torch.Tensor:
    """For each of the ``count`` rows of a PackedSequence's data, its index in a flattened padded (length, batch)
    tensor ((batch, length) with ``batch_first``), the batch in the original order. Tensor operations of static
    shape only (no value is read), so torch.compile traces them: row r is step s = #{ends <= r} (ends: the
    running sum of batch_sizes) and sorted slot r - (ends_s - batch_sizes_s), the sequence sorted_indices[slot]."""
    ends = batch_sizes.cumsum(0)
    row = torch.arange(count, device=batch_sizes.device)
    step = torch.searchsorted(ends, row, right=True)
    slot = row - (ends - batch_sizes)[step]
    sequence = slot if sorted_indices is None else sorted_indices.to(slot.device)[slot]
    return sequence * length + step if batch_first else step * batch + sequence


def _packed_mask(batch_sizes: torch.Tensor, unsorted_indices: torch.Tensor | None, batch: int) -> torch.Tensor:
    """m: (T, batch) bool, m[t, b] = sequence b (original order) has a step t; static shapes, as ``_packed_rows``."""
    running = torch.arange(batch, device=batch_sizes.device) < batch_sizes.unsqueeze(1)  # (T, batch), sorted order
    return running if unsorted_indices is None else running[:, unsorted_indices.to(running.device)]


# ---------------------------------------------------------------------------------------------------
# Entry points

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_FUNCTIONS = {"rnn": RNNFunction, "lstm": LSTMFunction, "gru": GRUFunction}
_Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def rnn(
    input: torch.Tensor | PackedSequence,
    hx: torch.Tensor | None,
    weights: Sequence[torch.Tensor],
    nonlinearity: str = "tanh",
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    """Hand-differentiated multi-layer Elman RNN: what ``torch.nn.RNN`` computes (``RNNFunction`` per layer and
    direction).

    input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a ``PackedSequence``
    hx: h0, (num_layers·D, B, H) ((num_layers·D, H) unbatched), D = 2 if ``bidirectional`` else 1; None: zeros
    weights: W_ih, W_hh[, b_ih, b_hh] of each layer and direction in torch's order (``RNNBase._flat_weights``)
    dropout: applied (``training``) to the outputs of every layer but the last, as torch's
    lengths: for a batched padded input, the length of each sequence (B ints, at most T): each runs (and the
    reverse direction starts) at its own last step, and the output is zero beyond it
    Returns (output, h_n): output like input with D·H features (a ``PackedSequence`` for one), h_n like hx.
    """
    check_choice("rnn", "nonlinearity", nonlinearity, ("tanh", "relu"))
    relu = nonlinearity == "relu"
    options = (bias, num_layers, dropout, training, bidirectional, batch_first, lengths)
    return _stack("rnn", input, hx, weights, *options, relu)


def lstm(
    input: torch.Tensor | PackedSequence,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weights: Sequence[torch.Tensor],
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
    """Hand-differentiated multi-layer LSTM: what ``torch.nn.LSTM`` computes (``LSTMFunction`` per layer and
    direction). Arguments as ``rnn``'s; hx is (h0, c0), h0 with P = proj_size (or H) features, c0 with H;
    each layer's weights end with W_hr when the layer projects. Returns (output, (h_n, c_n))."""
    return _stack("lstm", input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths)


def gru(
    input: torch.Tensor | PackedSequence,
    hx: torch.Tensor | None,
    weights: Sequence[torch.Tensor],
    bias: bool = True,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor | PackedSequence, torch.Tensor]:
    """Hand-differentiated multi-layer GRU: what ``torch.nn.GRU`` computes (``GRUFunction`` per layer and
    direction). Arguments and result as ``rnn``'s."""
    return _stack("gru", input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths)


def rnn_cell(
    input: torch.Tensor,
    hx: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
) -> torch.Tensor:
    """One step of an Elman RNN, as ``torch.nn.RNNCell``: h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).
    input: (B, I) or (I,)   hx: (B, H) or (H,), None for zeros   returns h' like hx (``RNNFunction``, one step)."""
    check_choice("rnn_cell", "nonlinearity", nonlinearity, ("tanh", "relu"))
    x, (h0,), weights, out_dtype = _cell_args("rnn_cell", input, [hx], weight_ih, weight_hh, bias_ih, bias_hh)
    h = apply(RNNFunction, x, h0, *weights, None, False, False, nonlinearity == "relu")[1]
    return _cast(h, out_dtype)


def lstm_cell(
    input: torch.Tensor,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of an LSTM, as ``torch.nn.LSTMCell``: (h', c') from input (B, I) or (I,) and hx = (h, c), each
    (B, H) or (H,), None for zeros (``LSTMFunction``, one step)."""
    states = [None, None] if hx is None else _pair("lstm_cell", hx)
    x, (h0, c0), weights, out_dtype = _cell_args("lstm_cell", input, states, weight_ih, weight_hh, bias_ih, bias_hh)
    _, h, c, _, _ = apply(LSTMFunction, x, h0, c0, *weights, None, None, False, False)
    return _cast(h, out_dtype), _cast(c, out_dtype)


def gru_cell(
    input: torch.Tensor,
    hx: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of a GRU, as ``torch.nn.GRUCell``: h' from input (B, I) or (I,) and hx (B, H) or (H,), None for
    zeros (``GRUFunction``, one step)."""
    x, (h0,), weights, out_dtype = _cell_args("gru_cell", input, [hx], weight_ih, weight_hh, bias_ih, bias_hh)
    return _cast(apply(GRUFunction, x, h0, *weights, None, False, False)[1], out_dtype)


def pack_padded_sequence(
    input: torch.Tensor, lengths: Sequence[int] | torch.Tensor, batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """Hand-differentiated ``torch.nn.utils.rnn.pack_padded_sequence``: the same ``PackedSequence`` (data,
    batch_sizes, sorted_indices, unsorted_indices), its data gathered by ``PackFunction``.

    input: (T, B, *) or (B, T, *) with ``batch_first``; lengths: B ints in [1, T] (a list keeps the call free of
    host reads, so torch.compile traces it); ``enforce_sorted``: they must be in decreasing order.
    """
    op = "pack_padded_sequence"
    check_floating(op, input=input)
    if input.dim() < 2:
        raise InputError(f"{op}: expected an input with a time and a batch dimension, got shape {shape_str(input)}")
    steps, batch = (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])
    values = _length_values(op, lengths, input, steps, batch, minimum=1)
    if enforce_sorted and any(a < b for a, b in zip(values, values[1:])):
        raise InputError(
            f"{op}: lengths {values} are not in decreasing order, as enforce_sorted=True requires; sort the "
            "batch, or pass enforce_sorted=False"
        )
    order = sorted(range(batch), key=lambda b: -values[b])  # stable, as torch's sort of the lengths
    batch_sizes = [sum(1 for v in values if v > t) for t in range(max(values, default=0))]
    rows = [
        order[j] * steps + t if batch_first else t * batch + order[j]
        for t, size in enumerate(batch_sizes)
        for j in range(size)
    ]
    data = apply(PackFunction, input, torch.tensor(rows, dtype=torch.long, device=input.device))
    if enforce_sorted:
        return PackedSequence(data, torch.tensor(batch_sizes, dtype=torch.long))
    inverse = sorted(range(batch), key=order.__getitem__)
    indices = dict(dtype=torch.long, device=input.device)
    sorted_indices, unsorted_indices = torch.tensor(order, **indices), torch.tensor(inverse, **indices)
    return PackedSequence(data, torch.tensor(batch_sizes, dtype=torch.long), sorted_indices, unsorted_indices)


def pad_packed_sequence(
    sequence: PackedSequence, batch_first: bool = False, padding_value: float = 0.0, total_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-differentiated ``torch.nn.utils.rnn.pad_packed_sequence``: (padded, lengths), padded (T, B, *) or
    (B, T, *) in the original batch order with ``padding_value`` beyond each sequence's end (``UnpackFunction``),
    T = ``total_length`` or the longest length; lengths: (B,) int64 on the CPU."""
    data, batch_sizes, sorted_indices, unsorted_indices = sequence
    steps = batch_sizes.shape[0]
    if total_length is not None:
        if total_length < steps:
            raise InputError(
                f"pad_packed_sequence: total_length={total_length} is shorter than the longest sequence ({steps} steps)"
            )
        steps = total_length
    batch = _packed_batch(sequence)
    rows = _packed_rows(batch_sizes, sorted_indices, data.shape[0], batch, steps, batch_first).to(data.device)
    sizes = (batch, steps) if batch_first else (steps, batch)
    padded = apply(UnpackFunction, data, rows, *sizes, float(padding_value))
    return padded, _packed_mask(batch_sizes, unsorted_indices, batch).sum(0)


def _packed_batch(sequence: PackedSequence) -> int:
    """B of a PackedSequence: from sorted_indices' shape (no value read), else batch_sizes[0]."""
    if sequence.sorted_indices is not None:
        return sequence.sorted_indices.shape[0]
    return int(sequence.batch_sizes[0]) if sequence.batch_sizes.numel() else 0


def _stack(
    op: str, input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first, lengths, relu=False
):
    """The layers and directions of ``rnn``/``lstm``/``gru``: checks, autocast, then one Function per layer and
    direction, the directions joined, dropout between layers; a PackedSequence is unpacked to a padded
    time-major sequence with a mask, and its output packed again."""
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    check_floating(op, input=data)
    check_unit_interval(op, "dropout", dropout)
    directions = 2 if bidirectional else 1
    groups = _weight_groups(op, weights, bias, num_layers, directions)
    if packed:
        if lengths is not None:
            raise InputError(f"{op}: a PackedSequence carries its lengths; pass lengths only with a padded input")
        if data.dim() != 2:
            raise InputError(
                f"{op}: expected PackedSequence data of 2 dimensions (steps, features), got {shape_str(data)}"
            )
        steps, batch, batch_first = input.batch_sizes.shape[0], _packed_batch(input), False
        rows = _packed_rows(input.batch_sizes, input.sorted_indices, data.shape[0], batch, steps, False).to(data.device)
        mask = _packed_mask(input.batch_sizes, input.unsorted_indices, batch).to(data.device)
    else:
        if data.dim() not in (2, 3):
            raise InputError(f"{op}: expected input of 2 (unbatched) or 3 dimensions, got shape {shape_str(data)}")
        steps = data.shape[1] if batch_first and data.dim() == 3 else data.shape[0]
        batch = 1 if data.dim() == 2 else data.shape[0] if batch_first else data.shape[1]
        rows, mask = None, _lengths_mask(op, lengths, data, steps, batch)
    _check_input_size(op, data, groups[0][0], "weight_ih_l0")
    if steps == 0:
        raise InputError(f"{op}: expected a sequence of at least one step, got input of shape {shape_str(data)}")
    states = _initial_states(op, hx, data, packed, batch, num_layers * directions, groups[0])
    _check_tensors(op, data, states, weights)
    compute, out_dtype = _autocast_dtypes(op, data, states, weights, variable_lengths=mask is not None)
    if compute is not None:
        data, states = _cast(data, compute), [_cast(s, compute) for s in states]
        groups = [tuple(_cast(w, compute) for w in group) for group in groups]
    states = [s.unbind(0) for s in states]  # one per layer and direction (unbind: no select_backward kernel)
    x = data if rows is None else apply(UnpackFunction, data, rows, steps, batch, 0.0)
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            if layer:
                _check_input_size(op, x, groups[k][0], f"weight_ih_l{layer}")
            extra = (relu,) if op == "rnn" else ()
            w_ih, w_hh, b_ih, b_hh, w_hr = groups[k]
            weight_args = (w_ih, w_hh, b_ih, b_hh, w_hr) if op == "lstm" else (w_ih, w_hh, b_ih, b_hh)
            initial = (s[k] for s in states)
            result = apply(_FUNCTIONS[op], x, *initial, *weight_args, mask, direction == 1, batch_first, *extra)
            outputs.append(result[0])
            for final, value in zip(finals, result[1 : 1 + len(states)]):
                final.append(value)
        x = outputs[0] if directions == 1 else apply(ConcatFunction, -1, False, batch_first and x.dim() == 3, *outputs)
        if training and dropout > 0 and layer < num_layers - 1:
            x = apply(DropoutFunction, x, _dropout_mask(x, dropout, rows, steps, batch, batch_first))
    if rows is not None:
        data = apply(PackFunction, x, rows)
        x = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    else:
        x = _cast(x, out_dtype)
    last = [_cast(apply(ConcatFunction, 0, True, False, *final), out_dtype) for final in finals]
    if rows is not None and out_dtype is not None:
        x = PackedSequence(_cast(x.data, out_dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return x, (tuple(last) if op == "lstm" else last[0])


def _weight_groups(
    op: str, weights: Sequence[torch.Tensor], bias: bool, num_layers: int, directions: int
) -> list[_Weights]:
    """(W_ih, W_hh, b_ih, b_hh, W_hr) of each layer and direction from torch's flat list (None where absent)."""
    count, base = num_layers * directions, 2 + 2 * bool(bias)
    per = base + 1 if op == "lstm" and len(weights) == count * (base + 1) else base
    if count < 1 or len(weights) != count * per:
        listed = "W_ih, W_hh" + (", b_ih, b_hh" if bias else "")
        raise InputError(
            f"{op}: expected {count * base} weights ({listed} for each of {num_layers} layer(s) and {directions} "
            f"direction(s)), got {len(weights)}"
        )
    check_floating(op, **{f"weights[{i}]": w for i, w in enumerate(weights)})
    groups = []
    for k in range(count):
        w = list(weights[k * per : (k + 1) * per])
        groups.append((w[0], w[1], w[2] if bias else None, w[3] if bias else None, w[-1] if per > base else None))
    _check_weight_shapes(op, groups, directions)
    return groups


def _check_weight_shapes(op: str, groups: list[_Weights], directions: int) -> None:
    """Every layer and direction with the first one's sizes: W_ih (G·H, I or D·P), W_hh (G·H, P), biases (G·H,),
    W_hr (P, H). (Under torch.compile with dynamic shapes these checks also tell the compiler that the sizes
    agree.)"""
    gate_rows, real = groups[0][1].shape
    hidden = real if groups[0][4] is None else groups[0][4].shape[1]
    if gate_rows != _GATES[op] * hidden:
        raise InputError(
            f"{op}: W_hh of layer 0 has shape {shape_str(groups[0][1])}, expected {_GATES[op]} · hidden_size rows "
            f"(hidden_size {hidden}, {_GATES[op]} gate(s))"
        )
    for k, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(groups):
        inputs = groups[0][0].shape[1] if k < directions else directions * real
        expected = {"W_ih": (gate_rows, inputs), "W_hh": (gate_rows, real), "b_ih": (gate_rows,), "b_hh": (gate_rows,)}
        if w_hr is not None:
            expected["W_hr"] = (real, hidden)
        for name, weight in zip(("W_ih", "W_hh", "b_ih", "b_hh", "W_hr"), (w_ih, w_hh, b_ih, b_hh, w_hr)):
            if weight is not None and tuple(weight.shape) != expected[name]:
                raise InputError(
                    f"{op}: {name} of layer {k // directions}{' (reverse)' if k % directions else ''} has shape "
                    f"{shape_str(weight)}, expected {expected[name]} (hidden_size {hidden}, {_GATES[op]} gate(s))"
                )


def _check_input_size(op: str, x: torch.Tensor, w_ih: torch.Tensor, name: str) -> None:
    if x.shape[-1] != w_ih.shape[1]:
        raise InputError(
            f"{op}: input of shape {shape_str(x)} has {x.shape[-1]} features, but {name} of shape {shape_str(w_ih)} "
            f"expects input_size={w_ih.shape[1]}"
        )


def _check_tensors(op: str, data: torch.Tensor, states: list[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
    tensors = {"input": data, **dict(zip(("h0", "c0"), states)), **{f"weights[{i}]": w for i, w in enumerate(weights)}}
    check_same_dtype(op, **tensors)
    check_same_device(op, **tensors)


def _initial_states(op, hx, data, packed, batch, count, group: _Weights) -> list[torch.Tensor]:
    """[h0] ([h0, c0] for the LSTM), (count, B, size) or (count, size) for an unbatched input: hx's, checked
    against the input, or zeros in the input's dtype."""
    w_hh = group[1]
    sizes = [("h0", w_hh.shape[1], "proj_size" if group[4] is not None else "hidden_size")]
    if op == "lstm":
        sizes.append(("c0", w_hh.shape[0] // 4, "hidden_size"))
    unbatched = not packed and data.dim() == 2
    given = [None] * len(sizes) if hx is None else _pair(op, hx) if op == "lstm" else [hx]
    states = []
    for (name, size, size_name), state in zip(sizes, given):
        expected = (count, size) if unbatched else (count, batch, size)
        if state is None:
            state = data.new_zeros(expected)
        else:
            check_floating(op, **{name: state})
            if tuple(state.shape) != expected:
                meaning = "num_layers · num_directions, " + ("" if unbatched else "batch, ") + size_name
                what = f"a PackedSequence of {batch} sequences" if packed else f"the input of shape {shape_str(data)}"
                raise InputError(
                    f"{op}: {name} of shape {shape_str(state)} does not match {what}: expected {expected} ({meaning})"
                )
        states.append(state)
    return states


def _pair(op: str, hx: object) -> list[torch.Tensor]:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{op}: hx must be a pair (h0, c0), got {type(hx).__name__}")
    return list(hx)


def _length_values(op: str, lengths, input: torch.Tensor, steps: int, batch: int, minimum: int) -> list[int]:
    """``lengths`` as a list of ints, checked: one per sequence, each in [minimum, steps]."""
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex():
            raise DtypeError(
                f"{op}: lengths must be a 1-D integer tensor or a sequence of ints, got {lengths.dtype} of shape "
                f"{shape_str(lengths)}"
            )
        values = lengths.tolist()
    else:
        values = list(lengths)
    if len(values) != batch or not all(is_int(v) for v in values):
        raise InputError(
            f"{op}: expected {batch} integer lengths, one per sequence of the input of shape {shape_str(input)}, "
            f"got {values}"
        )
    if values and min(values) < minimum:
        raise InputError(f"{op}: lengths must be at least {minimum}, got {values}")
    if values and max(values) > steps:
        raise InputError(
            f"{op}: lengths {values} are longer than the sequence of {steps} steps (input of shape {shape_str(input)})"
        )
    return values


def _lengths_mask(op: str, lengths, data: torch.Tensor, steps: int, batch: int) -> torch.Tensor | None:
    """m: (T, B) bool, m[t, b] = t < lengths[b]; None without lengths."""
    if lengths is None:
        return None
    if data.dim() != 3:
        raise InputError(f"{op}: lengths need a batched input of 3 dimensions, got input of shape {shape_str(data)}")
    values = torch.tensor(_length_values(op, lengths, data, steps, batch, minimum=0), device=data.device)
    return torch.arange(steps, device=data.device).unsqueeze(1) < values


#: Under CPU autocast, the state whose dtype torch's result keeps (index into the initial states): torch's CPU
#: kernels cast the matmuls' operands to the autocast dtype, and a layer that adds the carried state to a
#: product (the GRU's h, the cell state c of the LSTM's packed path and of LSTMCell) promotes its result to
#: that state's dtype; the other paths (RNN, the LSTM's fused kernel) return the autocast dtype.
_CARRIED = {"gru": 0, "gru_cell": 0, "lstm_cell": 1}


def _autocast_dtypes(
    op: str,
    data: torch.Tensor,
    states: list[torch.Tensor],
    weights: Sequence[torch.Tensor | None],
    variable_lengths: bool,
) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(the dtype the op computes in, the dtype of its results) under autocast, (None, None) outside.

    The recurrent layers are products by W_ih and W_hh, so they compute in the dtype ``linear`` takes under
    autocast (``_autocast``); their results come in torch's dtypes (``_CARRIED``; on CUDA, cuDNN's: the
    autocast dtype). Measured with torch 2.14 on the CPU.
    """
    compute = autocast_dtype("linear", data, *states, *(w for w in weights if w is not None))
    if compute is None:
        return None, None
    carried = 1 if op == "lstm" and variable_lengths else _CARRIED.get(op)
    if carried is None or data.device.type != "cpu":
        return compute, compute
    return compute, torch.promote_types(compute, states[carried].dtype)


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` when both are given and t is eligible for autocast (``Tensor.to``: recorded by autograd)."""
    if t is None or dtype is None or t.dtype == dtype or t.dtype not in ELIGIBLE:
        return t
    return t.to(dtype)


def _dropout_mask(
    x: torch.Tensor, p: float, rows: torch.Tensor | None, steps: int, batch: int, batch_first: bool
) -> torch.Tensor:
    """The dropout mask for a layer's output x, drawn as torch's RNNs draw it, so one seed drops the same
    entries: over the time-major (T, B, F) output, or over the packed data (N, F) of a PackedSequence."""
    features = x.shape[-1]
    if rows is not None:
        return _scatter_rows(dropout_mask(x.new_empty(rows.shape[0], features), p), rows, (steps, batch), 0.0)
    return _as_input(dropout_mask(x.new_empty(steps, batch, features), p), x.dim(), batch_first)


def _cell_args(op, input, states, w_ih, w_hh, b_ih, b_hh):
    """A cell's call as a sequence of one step: (x (1, B, I) or (1, I), initial states (zeros for None),
    weights, the result dtype under autocast), everything checked and cast for autocast."""
    check_floating(op, input=input, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh)
    if input.dim() not in (1, 2):
        raise InputError(f"{op}: expected input of 1 (unbatched) or 2 dimensions, got shape {shape_str(input)}")
    _check_input_size(op, input, w_ih, "weight_ih")
    gates, hidden = _GATES[op.removesuffix("_cell")], w_hh.shape[-1]
    if w_hh.shape != (gates * hidden, hidden) or w_ih.shape[0] != gates * hidden:
        raise InputError(
            f"{op}: weight_ih of shape {shape_str(w_ih)} and weight_hh of shape {shape_str(w_hh)} do not fit a cell of "
            f"{gates} gate(s): expected ({gates} · hidden_size, input_size) and ({gates} · hidden_size, hidden_size)"
        )
    expected = (input.shape[0], hidden) if input.dim() == 2 else (hidden,)
    names = ("hx",) if len(states) == 1 else ("hx[0]", "hx[1]")
    states = [input.new_zeros(expected) if s is None else s for s in states]
    for name, state in zip(names, states):
        check_floating(op, **{name: state})
        if tuple(state.shape) != expected:
            raise InputError(
                f"{op}: {name} of shape {shape_str(state)} does not match the input of shape {shape_str(input)}: "
                f"expected {expected}"
            )
    named = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
    tensors = {"input": input, **dict(zip(names, states)), **named}
    check_same_dtype(op, **tensors)
    check_same_device(op, **tensors)
    weights = (w_ih, w_hh, b_ih, b_hh)
    compute, out_dtype = _autocast_dtypes(op, input, states, weights, variable_lengths=False)
    x = _cast(input, compute).unsqueeze(0)
    return x, [_cast(s, compute) for s in states], tuple(_cast(w, compute) for w in weights), out_dtype
