"""What the recurrent Functions share: the layout maps (time-major, batched), the loops' step helpers and
buffers, masks of variable lengths, and the reduction of their parameter gradients (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import torch

from manualbp.functional._reduction import REDUCTION, SequenceTerms, sequence_outer_sum
from manualbp.functional._tangents import tangent_sum
from manualbp.functional.linear import linear_tangent


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


@overload
def _doubled(t: torch.Tensor, start: int, stop: int, double: bool = True) -> torch.Tensor: ...
@overload
def _doubled(t: None, start: int, stop: int, double: bool = True) -> None: ...
def _doubled(t: torch.Tensor | None, start: int, stop: int, double: bool = True) -> torch.Tensor | None:
    """A copy of ``t`` (weight or bias) with rows start..stop-1 doubled, the 2 of ``_tanh``; ``t`` itself when
    it is None or not ``double``."""
    if t is None or not double:
        return t
    scale = torch.ones(t.shape[0], dtype=t.dtype, device=t.device)
    scale[start:stop] = 2
    return t * (scale if t.dim() == 1 else scale.unsqueeze(1))


class _Steps:
    """The per-step results (B, F) of a loop, gathered into one (T, B, F) tensor in time order.

    In place (``scratch_writable()``), each step's last op writes into a preallocated buffer through ``out=out(t)``,
    so nothing is copied afterwards (a stack of the steps costs as much as a step's elementwise work at batch
    128); otherwise ``out(t)`` is None, the ops make new tensors, ``keep`` lists them and ``tensor`` stacks them.
    """

    def __init__(self, like: torch.Tensor, length: int, width: int, reverse: bool, in_place: bool) -> None:
        self.buffer = like.new_empty(length, like.shape[0], width) if in_place else None
        self.rows = None if self.buffer is None else self.buffer.unbind(0)  # the steps' views, made at once
        self.listed: list[torch.Tensor] = []
        self.reverse = reverse

    def out(self, t: int) -> torch.Tensor | None:
        return None if self.rows is None else self.rows[t]

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
        layout = None if ctx.masked else "batch_first" if ctx.batch_first else "time_major"  # packed: none given out
        terms = SequenceTerms([(g, x) for _, g, x in entries], needs, ordinals, batched=ctx.batched, layout=layout)
        return REDUCTION.mode.reduce(ctx, terms)
    bias_sums: dict[int, torch.Tensor] = {}  # b_ih and b_hh often share G: summed once
    grads: list[torch.Tensor | None] = []
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


def _at(per_step: Sequence[torch.Tensor] | torch.Tensor | None, t: int) -> torch.Tensor | None:
    return None if per_step is None else per_step[t]


def _steps_of(grad: torch.Tensor | None, batch_first: bool) -> tuple[torch.Tensor, ...] | None:
    """An incoming dL/dy (None: absent) as its T steps (B, F)."""
    return None if grad is None else _time_major(grad, batch_first).unbind(0)
