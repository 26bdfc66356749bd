"""``ClassifierModule(net=model)`` on a model the user converted with a learning rule keeps that rule (and its
``feedback_weight`` buffers): the training steps send the error back through B, and the summary line names the
rule."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

import manualbp
from manualbp.functional import cross_entropy
from manualbp.lightning import ClassifierModule


def _converted(rule: str = "feedback_alignment") -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    return manualbp.convert(model, rule=rule)


class _FirstStepGradients(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = [p.grad.clone() for p in pl_module.net.parameters()]


def test_a_training_step_uses_the_users_rule(capsys):
    model = _converted()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    x, y = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    with_rule, true_gradient = copy.deepcopy(model), manualbp.to_torch(model)
    for reference in (with_rule, true_gradient):
        cross_entropy(reference(x), y).backward()

    module = ClassifierModule(net=model, in_shape=(1, 8, 8))
    assert (
        "ClassifierModule: manual (hand-written backward): 1 Flatten, 2 Linear, 1 ReLU; learning rule "
        "feedback_alignment (2 Linear)" in capsys.readouterr().out
    )
    for name, buffer in module.net.named_buffers():
        assert_close(buffer, buffers[name], rtol=0, atol=0)  # the user's B, not another draw
    grads = _FirstStepGradients()
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[grads],
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))

    first_weight = 0
    assert_close(grads.grads[first_weight], with_rule[1].weight.grad)  # dL/dW_1 from the error sent back through B
    assert not torch.allclose(grads.grads[first_weight], true_gradient[1].weight.grad, atol=1e-4)
    assert_close(grads.grads[2], true_gradient[3].weight.grad)  # the output layer's is the true gradient


def test_the_same_rule_named_again_keeps_the_users_matrices():
    model = _converted()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    module = ClassifierModule(net=model, in_shape=(1, 8, 8), rule="feedback_alignment")
    assert dict(module.net.named_buffers()).keys() == buffers.keys()
    for name, buffer in module.net.named_buffers():
        assert_close(buffer, buffers[name], rtol=0, atol=0)


def test_another_rule_than_the_nets_is_refused():
    with pytest.raises(
        ValueError,
        match=r"ClassifierModule: net learns by feedback_alignment already "
        r"\(manualbp.convert\(net, rule=...\)\), but rule='sign_symmetry'",
    ):
        ClassifierModule(net=_converted(), in_shape=(1, 8, 8), rule="sign_symmetry")


def test_a_rule_is_given_to_a_net_without_one(capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    module = ClassifierModule(net=net, in_shape=(1, 8, 8), rule="sign_symmetry")
    assert module.net[1].rule.name == "sign_symmetry"
    assert "; learning rule sign_symmetry (2 Linear)" in capsys.readouterr().out
