"""One model-level torch.compile with inductor (code generation); every op is checked with aot_eager by
the verify battery (tests/verify/test_builtin_ops.py), which catches graph breaks far faster."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn
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


def test_lenet5_compiles_with_dynamic_shapes_and_exports_with_a_dynamic_batch():
    """Both pools of the manual LeNet-5 (the fused ReLU+max-pool) with a symbolic batch size: compiled with
    dynamic=True (aot_eager), a second batch size runs without recompiling; exported with a dynamic batch
    dimension, the program takes any batch size."""
    torch.manual_seed(0)
    model = lenet5(in_shape=(1, 8, 8))
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for batch in (3, 5):
        x = torch.randn(batch, 1, 8, 8, requires_grad=True)
        compiled(x).square().sum().backward()
        x_eager = x.detach().clone().requires_grad_()
        model(x_eager).square().sum().backward()
        assert_close(x.grad, x_eager.grad, rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    program = torch.export.export(
        model.eval(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    x = torch.randn(7, 1, 8, 8)
    assert_close(program.module()(x), model(x))


@pytest.mark.slow
def test_the_classifier_trains_compiled_as_it_does_eager():
    """``ClassifierModule(compile=True)`` (``--model.compile=true``): the network compiled in place, names kept;
    two Lightning training steps give the eager module's weights."""
    import pytorch_lightning as pl

    from manualbp.data import DigitsDataModule
    from manualbp.lightning import ClassifierModule

    weights = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        pl.seed_everything(0)
        module = ClassifierModule(arch="lenet5", in_shape=(1, 8, 8), compile=compiled)
        trainer = pl.Trainer(
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
        assert (module.net._compiled_call_impl is not None) == compiled
        weights[compiled] = module.state_dict()
    assert list(weights[True]) == list(weights[False])  # the same names: checkpoints move both ways
    for name, value in weights[True].items():
        assert_close(value, weights[False][name], rtol=1e-4, atol=1e-5, msg=name)


def test_compile_refuses_dp():
    from manualbp.lightning import ClassifierModule
    from manualbp.per_sample import DifferentialPrivacy

    with pytest.raises(ValueError, match="dp"):
        ClassifierModule(compile=True, dp=DifferentialPrivacy(1.0, 1.0))


@pytest.mark.slow
def test_per_sample_contexts_on_a_compiled_model_give_the_eager_results():
    """The per-sample seam is a global mode read in each layer's backward: a torch.compile'd model (compiled
    outside any context first) still computes grad_sample and the clipped gradient inside one."""
    import manualbp

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lenet5(in_shape=(1, 8, 8))
    compiled = torch.compile(model)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    MF.cross_entropy(compiled(x), y).backward()

    def per_sample(net):
        model.zero_grad()
        with manualbp.per_sample_grads(model):
            MF.cross_entropy(net(x), y).backward()
        samples = [p.grad_sample.clone() for p in model.parameters()]
        model.zero_grad()
        with manualbp.clip_per_sample(model, 0.5) as clip:
            MF.cross_entropy(net(x), y).backward()
        return samples, [p.grad.clone() for p in model.parameters()], clip.norms

    got, want = per_sample(compiled), per_sample(model)
    for got_part, want_part in zip(got[:2], want[:2]):
        for g, w in zip(got_part, want_part):
            assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert_close(got[2], want[2], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_two_gelus_compile_with_dynamic_shapes(approximate):
    """Two manual GELUs in one graph (every transformer block has one): Dynamo once failed on the module-level
    constants their backward read ("lift_tracked_freevar_to_input should not be called on root SubgraphTracer")."""
    net = torch.nn.Sequential(mnn.Linear(4, 4), mnn.GELU(approximate), mnn.Linear(4, 4), mnn.GELU(approximate))
    compiled = torch.compile(net, dynamic=True)
    for batch in (2, 3):
        x = torch.randn(batch, 4, requires_grad=True)
        (grad,) = torch.autograd.grad(compiled(x).sum(), x)
        (expected,) = torch.autograd.grad(net(x).sum(), x)
        assert_close(grad, expected)
