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

Files: ``rnn``, ``lstm``, ``gru`` (one Function each), ``_steps`` (what they share: layouts, step buffers, masks,
the reduction of their parameter gradients), ``packing`` (joining directions, unpacking and packing sequences)
and ``layers`` (the entry points and their checks).
"""

from manualbp.functional.recurrent.gru import GRUFunction
from manualbp.functional.recurrent.layers import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell
from manualbp.functional.recurrent.lstm import LSTMFunction
from manualbp.functional.recurrent.packing import (
    ConcatFunction,
    PackFunction,
    UnpackFunction,
    pack_padded_sequence,
    pad_packed_sequence,
)
from manualbp.functional.recurrent.rnn import RNNFunction

__all__ = [
    "ConcatFunction",
    "GRUFunction",
    "LSTMFunction",
    "PackFunction",
    "RNNFunction",
    "UnpackFunction",
    "gru",
    "gru_cell",
    "lstm",
    "lstm_cell",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "rnn",
    "rnn_cell",
]
