"""The ``memory_format`` check: the function keeps the memory format its reference keeps.

A channels_last network feeds every layer channels_last tensors (its 4-D weights too, after
``model.to(memory_format=torch.channels_last)``) and channels_last gradients from the layer above. An op
that returns NCHW there silently switches the rest of the network to NCHW; one that returns a gradient in
another layout than autograd's costs a copy in the layer below.
"""

from __future__ import annotations

from typing import Any

import torch

from manualbp.verify._harness import _Errors, _first_lines, _Sample, _vjp


def _check_memory_format(s: _Sample) -> _Errors:
    """Every tensor (inputs and parameters) contiguous, then in the layout of a channels-last network
    (``relayout``); dL/dy in each output's own layout: outputs and gradients equal to the reference's, in the
    reference's layouts."""
    f, r = s.subjects(torch.float64)
    errors = s.errors(torch.float64)
    for name, arrange in (("contiguous", lambda t: t.contiguous()), ("channels-last network", relayout)):
        try:
            out_r, grads_r = _vjp(r, [arrange(t) for t in r.tensors], "like_output")
        except RuntimeError as error:  # a limit of the reference (torch's nll_loss2d backward on channels_last)
            errors.note = (
                f"the reference fails in the {name} layout, so it is not compared: {_first_lines(str(error), 1)}"
            )
            continue
        out_f, grads_f = _vjp(f, [arrange(t) for t in f.tensors], "like_output")
        output_labels = [f"output {i} ({name})" for i in range(len(out_r))]
        grad_labels = [f"grad of {label} ({name})" for label in f.labels]
        errors.add_all(output_labels, out_f, out_r)
        errors.add_all(grad_labels, grads_f, grads_r)
        for label, actual, expected in zip(output_labels + grad_labels, [*out_f, *grads_f], [*out_r, *grads_r]):
            if (
                isinstance(actual, torch.Tensor)
                and isinstance(expected, torch.Tensor)
                and layout(actual) != layout(expected)
            ):
                errors.ok = False
                errors.worst = f"{label}: layout {layout(actual)} != reference {layout(expected)}"
                return errors
    return errors


def relayout(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a channels-last network holds it: channels_last (4-D), channels_last_3d (5-D), otherwise as it is."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def layout(t: torch.Tensor) -> str:
    """The memory format of ``t``: "channels_last", "contiguous" (both when one dim makes them alike), or its
    dims from the outermost in memory to the innermost (dims of size 1 left out, where any order is the same)."""
    formats = [
        name
        for name, fmt in (
            ("contiguous", torch.contiguous_format),
            ("channels_last", torch.channels_last),
            ("channels_last_3d", torch.channels_last_3d),
        )
        if _has_dims(t, fmt) and t.is_contiguous(memory_format=fmt)
    ]
    if formats:
        return " and ".join(formats)
    strides = t.stride()
    order = sorted((d for d in range(t.dim()) if t.shape[d] > 1), key=lambda d: -strides[d])
    return "dims in memory order " + str(tuple(order))


def _has_dims(t: torch.Tensor, fmt: Any) -> bool:
    return {torch.channels_last: 4, torch.channels_last_3d: 5}.get(fmt, t.dim()) == t.dim()
