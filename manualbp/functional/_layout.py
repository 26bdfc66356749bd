"""Memory formats: the layout torch gives an op's results, which the manual ops give theirs."""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format


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
    return suggest_memory_format(x)
