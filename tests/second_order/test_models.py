"""``manualbp.curvature`` on whole networks: equal to BackPACK 1.7.1 in float64 where BackPACK computes the
quantity (a ReLU MLP and a LeNet-like CNN; Monte-Carlo quantities from the same seed), equal to brute force on
recurrent networks (stacked, bidirectional) that BackPACK does not take, and the Monte-Carlo estimates unbiased."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

import manualbp
from tests.second_order.references import ggn_reference

TOL = dict(rtol=1e-9, atol=1e-13)
BACKPACK_QUANTITIES = {
    "grad_batch": "BatchGrad",
    "batch_l2": "BatchL2Grad",
    "sum_grad_squared": "SumGradSquared",
    "variance": "Variance",
    "diag_ggn_exact": "DiagGGNExact",
    "diag_ggn_exact_batch": "BatchDiagGGNExact",
    "diag_ggn_mc": "DiagGGNMC",
    "diag_ggn_mc_batch": "BatchDiagGGNMC",
    "diag_h": "DiagHessian",
    "diag_h_batch": "BatchDiagHessian",
    "kflr": "KFLR",
    "kfac": "KFAC",
}


def relu_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 4),
    )  # fmt: skip


def lenet_like() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(3, 4, 2),
        torch.nn.ReLU(), torch.nn.AvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4 * 1 * 1, 4),
    )  # fmt: skip


def sigmoid_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 6), torch.nn.Sigmoid(), torch.nn.Linear(6, 4))


NETWORKS = {"relu_mlp": relu_mlp, "lenet_like": lenet_like, "sigmoid_mlp": sigmoid_mlp}
LOSSES = [("cross_entropy", "mean"), ("cross_entropy", "sum"), ("mse_loss", "mean"), ("mse_loss", "sum")]


def data(kind: str, batch: int = 5, classes: int = 4):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 1, 4, 4, generator=g, dtype=torch.float64)
    if kind == "cross_entropy":
        return x, torch.randint(0, classes, (batch,), generator=g)
    return x, torch.randn(batch, classes, generator=g, dtype=torch.float64)


def backpack_run(model: torch.nn.Module, x, y, kind: str, reduction: str, names, mc_samples: int, seed: int):
    from backpack import backpack, extend, extensions

    model = extend(model)
    loss = extend(
        torch.nn.CrossEntropyLoss(reduction=reduction)
        if kind == "cross_entropy"
        else torch.nn.MSELoss(reduction=reduction)
    )
    exts = []
    for name in names:
        cls = getattr(extensions, BACKPACK_QUANTITIES[name])
        exts.append(cls(mc_samples=mc_samples) if name in ("diag_ggn_mc", "diag_ggn_mc_batch", "kfac") else cls())
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # BackPACK makes some of its tensors (unfolding kernels) in it
    try:
        with backpack(*exts):
            loss(model(x), y).backward()
    finally:
        torch.set_default_dtype(default)
    return {n: [getattr(p, q) for q in names] for n, p in model.named_parameters()}


def manual_run(model: torch.nn.Module, x, y, kind: str, reduction: str, names, mc_samples: int, seed: int):
    model = manualbp.convert(model)
    torch.manual_seed(seed)
    with manualbp.curvature(model, *names, mc_samples=mc_samples):
        getattr(manualbp.functional, kind)(model(x), y, reduction=reduction).backward()
    return {n: [getattr(p, q) for q in names] for n, p in model.named_parameters()}


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("kind, reduction", LOSSES)
@pytest.mark.parametrize("network", ["relu_mlp", "lenet_like"])
@pytest.mark.parametrize(
    "names",
    [
        ("grad_batch", "batch_l2", "sum_grad_squared", "variance"),
        ("diag_ggn_exact", "diag_ggn_exact_batch", "diag_h", "diag_h_batch", "kflr"),
        ("diag_ggn_mc",),
        ("diag_ggn_mc_batch",),
        ("kfac",),
    ],
    ids=["first_order", "exact", "mc", "mc_batch", "kfac"],
)
def test_equal_to_backpack(network, kind, reduction, names):
    torch.manual_seed(0)
    model = NETWORKS[network]().double()
    x, y = data(kind)
    mc = 3
    theirs = backpack_run(copy.deepcopy(model), x, y, kind, reduction, names, mc, seed=7)
    ours = manual_run(copy.deepcopy(model), x, y, kind, reduction, names, mc, seed=7)
    for key in theirs:
        for name, a, b in zip(names, ours[key], theirs[key]):
            if isinstance(b, list):
                assert len(a) == len(b), (key, name)
                for u, v in zip(a, b):
                    assert_close(u, v, **TOL)
            else:
                assert_close(a, b, **TOL, msg=f"{key} {name}")


class LastStep(torch.nn.Module):
    """A recurrent layer (batch first) read at its last step, then a linear head."""

    def __init__(self, layer: torch.nn.Module, features: int, classes: int = 3) -> None:
        super().__init__()
        self.layer, self.head = layer, torch.nn.Linear(features, classes, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x)[0][:, -1])


RECURRENT = {
    "lstm-2layers-bidirectional": ("LSTM", dict(num_layers=2, bidirectional=True), 2 * 5),
    "gru-2layers": ("GRU", dict(num_layers=2), 5),
    "rnn-tanh": ("RNN", {}, 5),
    "lstm-proj": ("LSTM", dict(proj_size=3), 3),
}


@pytest.mark.parametrize("kind, reduction", [("cross_entropy", "mean"), ("mse_loss", "sum")])
@pytest.mark.parametrize("name", list(RECURRENT))
def test_recurrent_networks_equal_brute_force(name, kind, reduction):
    """BackPACK takes none of these (multi-layer, bidirectional, GRU): brute force is the reference."""
    layer, kwargs, features = RECURRENT[name]
    torch.manual_seed(0)
    reference = LastStep(getattr(torch.nn, layer)(4, 5, batch_first=True, dtype=torch.float64, **kwargs), features)
    manual = manualbp.convert(copy.deepcopy(reference))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (3,), generator=g) if kind == "cross_entropy" else torch.randn(3, 3, dtype=torch.float64)
    expected = ggn_reference(reference, x, y, kind, reduction)
    with manualbp.curvature(manual, "diag_ggn_exact", "diag_ggn_exact_batch"):
        getattr(manualbp.functional, kind)(manual(x), y, reduction=reduction).backward()
    for (_, p), key in zip(manual.named_parameters(), expected):
        assert_close(p.diag_ggn_exact, expected[key]["diag"], rtol=1e-8, atol=1e-12)
        assert_close(p.diag_ggn_exact_batch, expected[key]["batch"], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse_loss"])
def test_monte_carlo_estimates_are_unbiased(kind):
    """The mean of R independent M = 1 estimates of the diagonal GGN against the exact one: every entry within
    5 standard errors (from the R estimates themselves); a 25% bias in the same estimates is detected, so the test
    can fail."""
    torch.manual_seed(0)
    model = manualbp.convert(relu_mlp().double())
    x, y = data(kind, batch=6)

    def estimate(*names):
        with manualbp.curvature(model, *names):
            getattr(manualbp.functional, kind)(model(x), y).backward()
        return torch.cat([getattr(p, names[0]).flatten() for p in model.parameters()])

    exact = estimate("diag_ggn_exact")
    torch.manual_seed(1)
    draws = torch.stack([estimate("diag_ggn_mc") for _ in range(400)])
    mean, error = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    informative = error > 1e-12  # entries that every draw leaves at zero (dead ReLU units) are exact
    z = ((mean - exact).abs() / error.clamp(min=1e-300))[informative]
    assert z.max() < 5, z.max()
    biased = ((1.25 * mean - exact).abs() / error.clamp(min=1e-300))[informative]
    assert biased.max() > 5


def test_mc_samples_average_their_columns():
    """M Monte-Carlo columns average: the estimate with M = 200 is close to the exact diagonal."""
    torch.manual_seed(0)
    model = manualbp.convert(relu_mlp().double())
    x, y = data("cross_entropy", batch=6)
    with manualbp.curvature(model, "diag_ggn_exact", "diag_ggn_mc", mc_samples=200):
        manualbp.functional.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        assert_close(p.diag_ggn_mc, p.diag_ggn_exact, rtol=0.35, atol=1e-3 * p.diag_ggn_exact.max().item())


class TinyResidual(torch.nn.Module):
    """A residual block with batch norm in eval mode, a grouped convolution, SiLU, adaptive average pooling and a
    linear head: a torchvision-style network that BackPACK's KFAC and diagonal Hessian do not take."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.norm = torch.nn.BatchNorm2d(4)
        self.act = torch.nn.SiLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.act(self.norm(self.conv(h)))
        return self.head(self.pool(h).flatten(1))


@pytest.mark.parametrize("kind", ["cross_entropy", "mse_loss"])
def test_residual_network_equals_brute_force(kind):
    torch.manual_seed(0)
    reference = TinyResidual().double()
    with torch.no_grad():
        reference.norm.running_mean.uniform_(-0.5, 0.5)
        reference.norm.running_var.uniform_(0.5, 2)
    reference.eval()
    manual = manualbp.convert(copy.deepcopy(reference))
    x, y = data(kind, batch=3, classes=3)
    expected = ggn_reference(reference, x, y, kind, "mean")
    with manualbp.curvature(manual, "diag_ggn_exact", "diag_ggn_exact_batch"):
        getattr(manualbp.functional, kind)(manual(x), y).backward()
    for (_, p), key in zip(manual.named_parameters(), expected):
        assert_close(p.diag_ggn_exact, expected[key]["diag"], rtol=1e-8, atol=1e-13)
        assert_close(p.diag_ggn_exact_batch, expected[key]["batch"], rtol=1e-8, atol=1e-13)
