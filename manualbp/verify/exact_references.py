"""References with exact derivatives where torch's own backward rounds: for comparing a model with its conversion.

torch's float64 ``Hardsigmoid`` backward multiplies by 1/6 rounded to float32 (0.16666667163..., a relative error
of 3.0e-8), so a float64 comparison of a converted model with the original at a tolerance below that would blame
manualbp's exact slope. ``exact_hardsigmoid`` swaps every ``torch.nn.Hardsigmoid`` of the original for the same
function, relu6(x + 3) / 6, differentiated by autograd with an exact 1/6.
"""

from __future__ import annotations

import torch


class ExactHardsigmoid(torch.nn.Module):
    """relu6(x + 3) / 6: ``torch.nn.Hardsigmoid``'s function, differentiated by autograd with an exact 1/6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(x + 3) / 6


def exact_hardsigmoid(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``torch.nn.Hardsigmoid`` replaced by ``ExactHardsigmoid``, in place."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.Hardsigmoid:
                setattr(module, name, ExactHardsigmoid())
    return model
