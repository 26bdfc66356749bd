"""Helpers shared by the jvp (forward-mode) rules.

A jvp receives one tangent per forward input. Functions with several tensor inputs call
``ctx.set_materialize_grads(False)`` so that an input without a tangent arrives as None instead of a
tensor of zeros; their jvp then skips that input's term (``tangent_sum``) and their backward returns
no gradient for an absent ``grad_out`` (``None`` is autograd's zero). LinearFunction keeps torch's
default (zeros are materialised) so that its backward, quoted in the README, stays as it is.
"""

from __future__ import annotations

import torch


def tangent_sum(*terms: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the terms that are not None (None stands for a zero tangent); None when all are."""
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    return total
