"""One model-level torch.compile with inductor (code generation); every op is checked with aot_eager by
the verify battery (tests/verify/test_builtin_ops.py), which catches graph breaks far faster."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp.functional as MF
from manualbp.models import lenet5


@pytest.mark.slow
def test_lenet5_compiles_with_inductor_and_matches_eager():
    torch.manual_seed(0)
    model = lenet5(in_shape=(1, 8, 8))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return MF.cross_entropy(model(x), y)

    def step(loss_fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        value = loss_fn(x, y)
        return value.detach(), list(torch.autograd.grad(value, list(model.parameters())))

    torch._dynamo.reset()
    loss_c, grads_c = step(torch.compile(loss, fullgraph=True))
    loss_e, grads_e = step(loss)
    assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for g_c, g_e in zip(grads_c, grads_e):
        assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
