"""Memory formats: the layout torch gives an op's results, which the manual ops give theirs."""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from manualbp.functional._dispatch import capturing_graph


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch gives the output of a pool or convolution, and the gradient of an input or weight, for ``x``: channels_last for a 4-D x whose
    strides are ordered as channels_last (``Tensor.suggest_memory_format``), the standard one otherwise
    (always for a per-sample tensor under vmap, whose strides are the batch's). Under ``torch.jit.trace``,
    whose sizes are traced tensors, only a dense channels_last x counts as one."""
    if x.dim() != 4 or torch._C._functorch.is_batchedtensor(x):
        return torch.contiguous_format
    if not torch.jit.is_tracing() and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format  # the common case, without the Python of suggest_memory_format (~5 µs)
    if torch.jit.is_tracing():
        dense = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return torch.channels_last if dense else torch.contiguous_format
    if capturing_graph():  # symbolic sizes: torch's own test, which guards them
        return suggest_memory_format(x)
    return torch.channels_last if _strides_like_channels_last(x.shape, x.stride()) else torch.contiguous_format


def _strides_like_channels_last(sizes: torch.Size, strides: tuple[int, ...]) -> bool:
    """c10's ``is_channels_last_strides_2d_s4`` (what ``suggest_memory_format`` decides by) on plain ints: the
    strides grow along C, W, H, N, with the ambiguous layouts of size-1 dims (an input of one channel, which is
    both contiguous and channels_last) read as torch reads them. Through torch's Python twin
    (``torch._prims_common``) this took ~25 µs a call, paid twice a forward by a convolution of one input channel."""
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True
