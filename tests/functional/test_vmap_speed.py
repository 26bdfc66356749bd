"""The pools under ``torch.func.vmap`` use only operations that have batching rules: torch warns
("There is a performance drop because we have not yet implemented the batching rule for ...") and runs a
per-sample loop for any other, which made per-sample gradients of lenet5 several times slower."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacfwd, vmap

import manualbp.functional as MF
from manualbp.models import lenet5

POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max_pool2d": lambda x: MF.max_pool2d(x, 2),
    "max_pool2d-padded-dilated": lambda x: MF.max_pool2d(x, 3, 2, 1, dilation=2),
    "relu_max_pool2d": lambda x: MF.relu_max_pool2d(x, 2),
    "relu_max_pool2d-padded": lambda x: MF.relu_max_pool2d(x, 3, 2, 1),
    "avg_pool2d": lambda x: MF.avg_pool2d(x, 3, 2, 1),
    "adaptive_avg_pool2d": lambda x: MF.adaptive_avg_pool2d(x, 3),
}


def _slow_paths(fn: Callable[[], object]) -> list[str]:
    """The batching-rule performance warnings that running ``fn`` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "performance drop" in str(w.message)]


@pytest.mark.parametrize("name", list(POOLS))
def test_pool_backward_and_forward_mode_have_batching_rules(name: str) -> None:
    pool = POOLS[name]
    x = torch.randn(4, 3, 9, 9)
    per_sample_grad = vmap(grad(lambda xi: pool(xi).square().sum()))
    per_sample_jacobian = vmap(jacfwd(pool))
    assert _slow_paths(lambda: per_sample_grad(x)) == []
    assert _slow_paths(lambda: per_sample_jacobian(x)) == []


def test_lenet5_per_sample_gradients_have_batching_rules() -> None:
    model = lenet5(in_shape=(1, 28, 28))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), ti[None])

    x, t = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert _slow_paths(lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, t)) == []
