"""KFACPreconditioner: one step's preconditioned gradient against a dense float64 solve with Kronecker factors
built independently from the network's own formulas, a short fit through the Trainer, and what it refuses."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from manualbp.callbacks import KFACPreconditioner
from manualbp.cli import main
from manualbp.lightning import ClassifierModule
from manualbp.second_order import CurvatureError

IN_SHAPE, CLASSES, HIDDEN, BATCH = (1, 2, 3), 4, 5, 8


class _Grads(pl.Callback):
    """Keeps a copy of the parameters before the first step and of the gradients the optimizer receives (placed
    after the preconditioner, it sees the transformed ones)."""

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.params:
            self.params = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.net.named_parameters()}


def _data(n: int, seed: int = 0) -> TensorDataset:
    """Inputs of IN_SHAPE and the labels a fixed random linear teacher gives them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *IN_SHAPE, generator=generator)
    teacher = torch.randn(math.prod(IN_SHAPE), CLASSES, generator=generator)
    return TensorDataset(x, (x.flatten(1) @ teacher).argmax(1))


def _fit(
    callbacks: list[pl.Callback],
    data: TensorDataset,
    steps: int,
    lr: float = 0.0,
    batch: int = BATCH,
    accumulate: int = 1,
    **module_args,
):
    pl.seed_everything(0, verbose=False)
    model = ClassifierModule(hidden=(HIDDEN,), in_shape=IN_SHAPE, num_classes=CLASSES, **module_args)
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=lr)
    trainer = pl.Trainer(
        max_steps=steps,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model, DataLoader(data, batch_size=batch))
    return model


def _reference(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """The mean cross entropy's gradients (autograd) and exact-GGN Kronecker factors (KFLR) of the MLP
    x -> relu(W1 x + b1) -> W2 h + b2, formed densely: B_out = (1/N) Σ_n H_n with H_n = diag(p_n) - p_n p_nᵀ,
    B_1 = (1/N) Σ_n J_nᵀ H_n J_n with J_n = W2 diag(relu'(s_n)), A = (1/N) Σ_n (input)(input)ᵀ."""
    w1, b1, w2, b2 = (params[k].clone().requires_grad_() for k in ("fc1.weight", "fc1.bias", "out.weight", "out.bias"))
    x = x.flatten(1).to(w1.dtype)
    s = x @ w1.t() + b1
    h = s.relu()
    f = h @ w2.t() + b2
    torch.nn.functional.cross_entropy(f, y).backward()
    p = f.softmax(1).detach()
    hess = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (N, C, C)
    jac = w2.detach().unsqueeze(0) * (s > 0).to(s.dtype).unsqueeze(1)  # (N, C, H)
    n = len(x)
    b_out = hess.sum(0) / n
    b_hidden = torch.einsum("nci,ncd,ndj->ij", jac, hess, jac) / n
    h = h.detach()
    factors = {
        "fc1.weight": [b_hidden, x.t() @ x / n],
        "fc1.bias": [b_hidden],
        "out.weight": [b_out, h.t() @ h / n],
        "out.bias": [b_out],
    }
    grads = {"fc1.weight": w1.grad, "fc1.bias": b1.grad, "out.weight": w2.grad, "out.bias": b2.grad}
    return factors, grads


def _dense_solve(factors: list[torch.Tensor], grad: torch.Tensor, damping: float) -> torch.Tensor:
    """((B + λ_B I) ⊗ (A + λ_A I))⁻¹ vec(G) (π-split damping), or (F + γ I)⁻¹ g, as one dense solve."""
    if len(factors) == 2:
        b, a = factors
        pi = math.sqrt((a.trace() / len(a)) / (b.trace() / len(b)))
        lam_a, lam_b = pi * math.sqrt(damping), math.sqrt(damping) / pi
        damped_b = b + lam_b * torch.eye(len(b), dtype=b.dtype)
        damped_a = a + lam_a * torch.eye(len(a), dtype=a.dtype)
        block = torch.kron(damped_b.contiguous(), damped_a.contiguous())  # kron views: contiguous inputs
    else:
        (f,) = factors
        block = f + damping * torch.eye(len(f), dtype=f.dtype)
    return torch.linalg.solve(block, grad.reshape(-1)).reshape(grad.shape)


@pytest.mark.parametrize("damping", [1e-3, 0.3])
def test_one_kflr_step_is_the_dense_solve_with_factors_formed_independently(damping):
    data = _data(BATCH)
    kfac = KFACPreconditioner(damping=damping, ema_decay=0.0, quantity="kflr")
    grads = _Grads()
    _fit([kfac, grads], data, steps=1)
    factors, plain = _reference(grads.params, *data.tensors)
    for name, expected in factors.items():
        for got, want in zip(kfac.factors[name], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        want = _dense_solve(expected, plain[name], damping)
        torch.testing.assert_close(grads.grads[name], want, rtol=1e-9, atol=1e-12)
        assert not torch.allclose(grads.grads[name], plain[name], rtol=1e-3)  # the transform does something


def test_one_kfac_step_is_the_dense_solve_with_its_sampled_factors():
    data = _data(BATCH)
    kfac = KFACPreconditioner(damping=1e-2, ema_decay=0.0, mc_samples=3)
    grads = _Grads()
    _fit([kfac, grads], data, steps=1)
    exact, plain = _reference(grads.params, *data.tensors)
    for name, expected in exact.items():
        sampled = kfac.factors[name]
        if len(expected) == 2:  # the input factor is not sampled; the output one is
            torch.testing.assert_close(sampled[1], expected[1], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(sampled[0], expected[0])
        want = _dense_solve(sampled, plain[name], 1e-2)
        torch.testing.assert_close(grads.grads[name], want, rtol=1e-9, atol=1e-12)


def test_kl_clipping_scales_every_step_to_the_bound():
    data, kappa, lr = _data(BATCH), 1e-6, 0.5
    free, free_grads = KFACPreconditioner(damping=0.1, ema_decay=0.0, quantity="kflr"), _Grads()
    _fit([free, free_grads], data, steps=1, lr=lr)
    clipped, clipped_grads = KFACPreconditioner(damping=0.1, ema_decay=0.0, quantity="kflr", kl_clip=kappa), _Grads()
    _fit([clipped, clipped_grads], data, steps=1, lr=lr)
    _, plain = _reference(free_grads.params, *data.tensors)
    length = sum(lr**2 * float((free_grads.grads[name] * plain[name]).sum()) for name in plain)
    nu = math.sqrt(kappa / length)
    assert nu < 0.1 and free.last_scale == 1.0
    assert clipped.last_scale == pytest.approx(nu, rel=1e-9)
    for name, step in free_grads.grads.items():
        torch.testing.assert_close(clipped_grads.grads[name], nu * step)


def test_a_convolution_is_preconditioned_as_a_matrix_of_unfolded_patches():
    data = TensorDataset(torch.randn(BATCH, 1, 8, 8), torch.randint(0, CLASSES, (BATCH,)))
    kfac, grads = KFACPreconditioner(damping=0.05, ema_decay=0.0, quantity="kflr"), _Grads()
    pl.seed_everything(0, verbose=False)
    model = ClassifierModule(arch="lenet5", in_shape=(1, 8, 8), num_classes=CLASSES)
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = pl.Trainer(
        max_steps=1,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[kfac, grads],
    )
    trainer.fit(model, DataLoader(data, batch_size=BATCH))
    patches = torch.nn.functional.unfold(data.tensors[0].double(), 5, padding=2)  # (N, 1·5·5, positions)
    b, a = kfac.factors["conv1.weight"]
    torch.testing.assert_close(a, torch.einsum("nkt,nlt->kl", patches, patches) / BATCH)
    model.zero_grad()
    model.loss_fn(model(data.tensors[0].double()), data.tensors[1]).backward()
    plain = model.net.conv1.weight.grad
    want = _dense_solve([b, a], plain.reshape(6, -1), 0.05).reshape(plain.shape)
    torch.testing.assert_close(grads.grads["conv1.weight"], want)


def test_the_averages_decay_and_the_inverses_wait_for_their_step():
    data = _data(2 * BATCH)
    halves = [TensorDataset(*(t[i * BATCH : (i + 1) * BATCH] for t in data.tensors)) for i in range(2)]
    single = [KFACPreconditioner(damping=0.1, ema_decay=0.0, quantity="kflr") for _ in halves]
    for kfac, half in zip(single, halves):
        _fit([kfac], half, steps=1)  # lr 0: every fit sees the initial weights
    kfac = KFACPreconditioner(damping=0.1, ema_decay=0.25, update_every=5, quantity="kflr")
    _fit([kfac], data, steps=2)
    for name, (b1, *a1) in single[0].factors.items():
        b2, *a2 = single[1].factors[name]
        expected = [0.25 * f1 + 0.75 * f2 for f1, f2 in zip([b1, *a1], [b2, *a2])]
        for got, want in zip(kfac.factors[name], expected, strict=True):
            torch.testing.assert_close(got, want)
    # update_every=5: the second step was preconditioned with the inverses of the first step's factors
    state = kfac._states["fc1.weight"]
    assert state.updates == 2
    torch.testing.assert_close(state.inverses, single[0].damped_inverses(single[0].factors["fc1.weight"]))


def test_gradient_accumulation_gives_the_factors_and_step_of_the_whole_batch():
    data = _data(2 * BATCH)
    whole, whole_grads = KFACPreconditioner(damping=0.1, ema_decay=0.0, quantity="kflr"), _Grads()
    _fit([whole, whole_grads], data, steps=1, batch=2 * BATCH)
    parts, parts_grads = KFACPreconditioner(damping=0.1, ema_decay=0.0, quantity="kflr"), _Grads()
    _fit([parts, parts_grads], data, steps=1, accumulate=2)
    for name, factors in whole.factors.items():
        for got, want in zip(parts.factors[name], factors, strict=True):
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(parts_grads.grads[name], whole_grads.grads[name])


def test_a_short_fit_brings_the_loss_down():
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    _fit([KFACPreconditioner(damping=0.1, update_every=2), Losses()], _data(512), steps=40, lr=0.3, batch=32)
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_an_autograd_network_is_refused_by_the_curvature_context():
    with pytest.raises(CurvatureError):
        _fit([KFACPreconditioner()], _data(BATCH), steps=1, backend="autograd")


def test_it_runs_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = [
        "--trainer.callbacks+=manualbp.callbacks.KFACPreconditioner",
        "--trainer.callbacks.damping=0.01",
        "--trainer.callbacks.update_every=2",
        "--optimizer=SGD",
        "--optimizer.lr=0.05",
        "--model.hidden=[16]",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--test_after_fit=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    assert main(["fit", *options]) == 0
    (last,) = tmp_path.glob("lightning_logs/*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)["callbacks"]
    (state,) = (v for k, v in saved.items() if k.startswith("KFACPreconditioner"))
    assert state["fc1.weight"]["updates"] == 3 and len(state["fc1.weight"]["factors"]) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"damping": 0}, "damping"),
        ({"damping": math.inf}, "damping"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"update_every": 0}, "update_every"),
        ({"mc_samples": 1.5}, "mc_samples"),
        ({"quantity": "diag_ggn_exact"}, "quantity"),
        ({"kl_clip": 0.0}, "kl_clip"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFACPreconditioner(**kwargs)
