"""The class-index losses under torch.func transforms and on the meta device, where target values cannot be
read: the per-sample-gradient recipe vmap(grad(...)) works and matches torch; eager mode still checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import manualbp
import manualbp.functional as MF

_LOSSES = {
    "cross_entropy": (MF.cross_entropy, F.cross_entropy),
    "nll_loss": (lambda x, y: MF.nll_loss(MF.log_softmax(x, 1), y), lambda x, y: F.nll_loss(F.log_softmax(x, 1), y)),
    "CrossEntropyLoss": (manualbp.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()),
}


def _per_sample_grads(model: torch.nn.Module, loss, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
    def sample_loss(params, x, y):
        return loss(functional_call(model, params, (x[None],)), y[None])

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(dict(model.named_parameters()), xs, ys)


@pytest.mark.parametrize("name", list(_LOSSES))
def test_vmap_of_grad_gives_torchs_per_sample_gradients(name):
    manual_loss, torch_loss = _LOSSES[name]
    model = manualbp.nn.Linear(4, 3)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    xs, ys = torch.randn(6, 4), torch.randint(0, 3, (6,))
    ours, theirs = _per_sample_grads(model, manual_loss, xs, ys), _per_sample_grads(twin, torch_loss, xs, ys)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)


@pytest.mark.parametrize("name", list(_LOSSES))
def test_the_losses_run_on_the_meta_device(name):
    manual_loss, torch_loss = _LOSSES[name]
    logits, target = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    out = manual_loss(logits, target)
    assert out.device.type == "meta" and out.shape == torch_loss(logits, target).shape


def test_eager_mode_still_names_a_bad_target():
    with pytest.raises(IndexError, match="cross_entropy: target 5 is out of bounds"):
        MF.cross_entropy(torch.randn(2, 3), torch.tensor([0, 5]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "ignore_index, targets",
    [(-100, [0, 3, 1, 3]), (2, [0, 3, 1, 3]), (2, [0, 2, 1, 3]), (1, [1, 1, 1, 1])],
    ids=["none_ignored", "ignore_index_among_classes_unused", "one_ignored", "all_ignored"],
)
def test_cross_entropy_counts_ignored_targets_in_its_backward(ignore_index, targets, reduction):
    """The backward takes a shorter path when the forward's range check shows that no target equals
    ignore_index; with an ignored target among the classes it must not."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(targets)
    grad_out = torch.randn(4, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    (got,) = torch.autograd.grad(MF.cross_entropy(x, y, ignore_index=ignore_index, reduction=reduction), x, grad_out)
    (want,) = torch.autograd.grad(F.cross_entropy(x, y, ignore_index=ignore_index, reduction=reduction), x, grad_out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
