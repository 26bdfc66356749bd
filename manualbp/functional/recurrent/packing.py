"""Joining layers and directions (``ConcatFunction``), unpacking and packing sequences (``UnpackFunction``,
``PackFunction``), and manualbp's ``pack_padded_sequence`` / ``pad_packed_sequence``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import PackedSequence

from manualbp.functional._dispatch import apply, function
from manualbp.functional._validation import DtypeError, InputError, check_floating, is_int, shape_str


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


def _join(
    tensors: tuple[torch.Tensor, ...] | list[torch.Tensor], dim: int, stack: bool, batch_first: bool
) -> torch.Tensor:
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
    if enforce_sorted and any(a < b for a, b in itertools.pairwise(values)):
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
    sorted_indices = torch.tensor(order, dtype=torch.long, device=input.device)
    unsorted_indices = torch.tensor(inverse, dtype=torch.long, device=input.device)
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
