"""DP-SGD's noise: ``add_noise``'s arguments, its distribution (default, seeded and secure), and the noise
generator of ``DifferentialPrivacy(seed=..., secure_mode=...)``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy import stats

from manualbp.cli import command
from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.per_sample import DPSGD, DifferentialPrivacy, add_noise
from manualbp.per_sample.dp import secure_normal
from manualbp.per_sample.noise import NoiseStream

_BAD_ARGUMENTS = [
    ("noise_multiplier", -1.0), ("noise_multiplier", math.nan), ("noise_multiplier", math.inf),
    ("noise_multiplier", True), ("noise_multiplier", "1"),
    ("max_grad_norm", -1.0), ("max_grad_norm", 0.0), ("max_grad_norm", math.nan), ("max_grad_norm", math.inf),
    ("max_grad_norm", True),
    ("expected_batch_size", 0), ("expected_batch_size", -4), ("expected_batch_size", math.nan),
    ("expected_batch_size", math.inf), ("expected_batch_size", True), ("expected_batch_size", None),
]  # fmt: skip


def _grad(n: int = 1000, dtype: torch.dtype = torch.float32) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
    p.grad = torch.linspace(-3, 5, n, dtype=dtype)
    return p


@pytest.mark.parametrize("name, value", _BAD_ARGUMENTS, ids=[f"{n}={v!r}" for n, v in _BAD_ARGUMENTS])
def test_add_noise_refuses_an_argument_it_cannot_honour_and_changes_nothing(name, value):
    arguments = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4} | {name: value}
    p = _grad()
    before = p.grad.clone()
    with pytest.raises(ValueError, match=name):
        add_noise([p], **arguments)
    assert torch.equal(p.grad, before)


def test_add_noise_refuses_a_noise_std_the_gradient_cannot_hold():
    """σ > 0 with σC/B below float32's smallest normal number would round the noise away: refused, not a step
    without noise; the same std in float64 is noise."""
    with pytest.raises(ValueError, match="noise"):
        add_noise([_grad()], 1e-20, 1e-20, 10.0)
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    add_noise([p], 1e-20, 1e-20, 10.0)
    assert p.grad.ne(0).all()


def test_add_noise_refuses_a_generator_in_secure_mode():
    with pytest.raises(ValueError, match="secure_mode"):
        add_noise([_grad()], 1.0, 1.0, 4, torch.Generator(), secure_mode=True)
    with pytest.raises(TypeError, match="generator"):
        add_noise([_grad()], 1.0, 1.0, 4, generator=0)


@pytest.mark.parametrize("sigma", [1e-6, 0.1, 1.0, 30.0])
@pytest.mark.parametrize("clip", [1e-3, 1.0, 50.0])
@pytest.mark.parametrize("batch", [1, 7.5, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_the_noise_is_there_whatever_the_valid_arguments(sigma, clip, batch, dtype):
    """σ > 0: every coordinate of the step gets noise of std σC/B, also where no gradient was written (p.grad
    None: an empty Poisson batch), with each dtype's range of stds."""
    p = torch.nn.Parameter(torch.zeros(4000, dtype=dtype))
    add_noise([p], sigma, clip, batch, torch.Generator().manual_seed(0))
    noise = p.grad.double() / (sigma * clip / batch)
    assert noise.ne(0).all() and abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1


def test_the_noise_is_normal_with_std_sigma_c_over_b():
    """10⁶ coordinates, fixed generator: (p.grad_after − p.grad/B) is N(0, (σC/B)²), by a KS test and its first
    four moments (standard errors 1e-3, 7e-4, 2.5e-3 and 1e-2 at this size)."""
    sigma, clip, batch = 1.3, 0.7, 7
    p = _grad(1_000_000, torch.float64)
    before = p.grad / batch
    add_noise([p], sigma, clip, batch, torch.Generator().manual_seed(1))
    z = ((p.grad - before) / (sigma * clip / batch)).numpy()
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 4e-3
    assert abs(stats.skew(z)) < 0.012 and abs(stats.kurtosis(z)) < 0.05


def test_secure_noise_is_normal():
    """``os.urandom`` through Box-Muller: N(0, std²) by a KS test and its moments over 10⁶ draws (not seeded: the
    bounds are 5-6 standard errors, failing about once in a million runs)."""
    z = secure_normal(1_000_000, 2.5).numpy() / 2.5
    assert stats.kstest(z, "norm").pvalue > 1e-6
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 4e-3
    assert abs(stats.skew(z)) < 0.015 and abs(stats.kurtosis(z)) < 0.06
    assert len(set(z[:1000].tolist())) == 1000


def test_secure_mode_noise_is_normal_with_std_sigma_c_over_b():
    """secure_mode: the sum of 4 draws of std σC, halved, added to p.grad in float64 and divided by B."""
    sigma, clip, batch = 0.8, 1.5, 3
    p = _grad(1_000_000, torch.float64)
    before = p.grad / batch
    add_noise([p], sigma, clip, batch, secure_mode=True)
    z = ((p.grad - before) / (sigma * clip / batch)).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-6
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 4e-3
    q = _grad(1000)
    add_noise([q], sigma, clip, batch, secure_mode=True)  # float32: the float64 sum rounded once
    assert q.grad.dtype == torch.float32 and (q.grad != _grad().grad / batch).all()


def test_dp_settings_take_a_seed_or_secure_mode_not_both():
    assert DifferentialPrivacy(1.0, 1.0, seed=3).seed == 3
    with pytest.raises(ValueError, match="secure_mode"):
        DifferentialPrivacy(1.0, 1.0, seed=3, secure_mode=True)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            DifferentialPrivacy(1.0, 1.0, seed=bad)
    with pytest.raises(TypeError, match="secure_mode"):
        DifferentialPrivacy(1.0, 1.0, secure_mode=1)


def test_the_command_parses_seed_and_secure_mode():
    args = ["--model.dp.noise_multiplier=0.5", "--model.dp.max_grad_norm=2", "--trainer.logger=false"]
    assert command([*args, "--model.dp.seed=3"], run=False).model._dp.settings.seed == 3
    assert command([*args, "--model.dp.secure_mode=true"], run=False).model._dp.settings.secure_mode


def _privatized(settings: DifferentialPrivacy, torch_seed: int) -> torch.Tensor:
    """Three DP steps' noise on a zero gradient, with torch's default generator seeded ``torch_seed``."""
    torch.manual_seed(torch_seed)
    dp = DPSGD(settings)
    dp.sample_rate, dp.expected_batch_size = 0.1, 10
    p = torch.nn.Parameter(torch.zeros(100))
    steps = []
    for _ in range(3):
        p.grad = None
        dp.privatize([p])
        steps.append(p.grad.clone())
    return torch.stack(steps)


def test_a_seed_reproduces_the_noise_and_nothing_else_does():
    """dp.seed: the same noise whatever torch's default generator holds; steps draw anew. Without a seed, fresh
    entropy: two runs seeded alike by torch still differ."""
    seeded = _privatized(DifferentialPrivacy(1.0, 1.0, seed=3), torch_seed=0)
    assert torch.equal(seeded, _privatized(DifferentialPrivacy(1.0, 1.0, seed=3), torch_seed=1))
    assert not torch.equal(seeded[0], seeded[1])
    assert not torch.equal(seeded, _privatized(DifferentialPrivacy(1.0, 1.0, seed=4), torch_seed=0))
    assert not torch.equal(
        _privatized(DifferentialPrivacy(1.0, 1.0), torch_seed=0),
        _privatized(DifferentialPrivacy(1.0, 1.0), torch_seed=0),
    )
    assert not torch.equal(*(_privatized(DifferentialPrivacy(1.0, 1.0, secure_mode=True), 0) for _ in range(2)))


def _fit_weights(dp: DifferentialPrivacy, torch_seed: int) -> dict[str, torch.Tensor]:
    """A 6-step DP fit of a fixed initial network, torch's default generator reseeded before it."""
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=256)
    model = ClassifierModule(hidden=(16,), in_shape=data.in_shape, dp=dp)
    torch.manual_seed(torch_seed)
    trainer = pl.Trainer(
        max_steps=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return {n: p.detach().clone() for n, p in model.net.named_parameters()}


def test_a_seeded_fit_is_reproduced_and_a_secure_one_trains():
    first = _fit_weights(DifferentialPrivacy(1.0, 1.0, seed=3), torch_seed=1)
    second = _fit_weights(DifferentialPrivacy(1.0, 1.0, seed=3), torch_seed=2)
    assert all(torch.equal(first[n], second[n]) for n in first)
    secure = _fit_weights(DifferentialPrivacy(1.0, 1.0, secure_mode=True), torch_seed=1)
    assert all(torch.isfinite(w).all() and not torch.equal(w, first[n]) for n, w in secure.items())


def test_a_checkpoint_continues_the_noise_stream_and_a_seeded_one_stays_on_its_device_type():
    """The generator's state goes into the DP state: a DPSGD loaded from it draws what the first one would have
    drawn next. A seeded stream saved on another device type would start over on this one, repeating the first
    steps' noise: refused. Without a seed, fresh entropy instead."""
    settings = DifferentialPrivacy(1.0, 1.0, seed=3)
    first = DPSGD(settings)
    first.sample_rate, first.expected_batch_size = 0.1, 10
    p = torch.nn.Parameter(torch.zeros(100))
    first.privatize([p])
    state = first.state_dict()
    p.grad = None
    first.privatize([p])
    resumed = DPSGD(settings)
    resumed.load_state_dict(state)
    resumed.sample_rate, resumed.expected_batch_size = 0.1, 10
    q = torch.nn.Parameter(torch.zeros(100))
    resumed.privatize([q])
    assert resumed.steps == 2 and torch.equal(q.grad, p.grad)
    moved = dict(state, generator=dict(state["generator"], device="cuda"))
    for seed, refused in ((3, True), (None, False)):
        dp = DPSGD(DifferentialPrivacy(1.0, 1.0, seed=seed))
        dp.load_state_dict(moved)
        dp.sample_rate, dp.expected_batch_size = 0.1, 10
        if refused:
            with pytest.raises(RuntimeError, match="repeat"):
                dp.privatize([q])
        else:
            dp.privatize([q])


def _standard_normal_failures(z) -> list[str]:
    """What makes the draws ``z`` (10⁶ of them, meant to be N(0, 1)) not so, within sampling error: a KS and an
    Anderson-Darling test of normality at 1%, the mean and the std within 5 standard errors (5e-3, 3.5e-3)."""
    failures = []
    if stats.kstest(z, "norm").pvalue < 0.01:
        failures.append("KS")
    if stats.anderson(z, "norm", method="interpolate").pvalue < 0.01:
        failures.append("Anderson-Darling")
    if abs(z.mean()) > 5 / len(z) ** 0.5:
        failures.append("mean")
    if abs(z.std() - 1) > 5 / (2 * len(z)) ** 0.5:
        failures.append("std")
    return failures


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("prefetch", [False, True], ids=["generator", "prefetched"])
def test_the_default_noise_is_exactly_n_0_sigma_c_over_b_and_a_wrong_std_is_caught(dtype, prefetch):
    """add_noise's default noise, as the step draws it (torch's normal_ in the gradient's dtype, plain or through
    a prefetching NoiseStream), on 10⁶ coordinates: (p.grad_after − p.grad/B) / (σC/B) passes the checks; the same
    draws with a std 5% off (1.05 σC/B) or shifted by 0.01 fail them, so the checks can fail."""
    sigma, clip, batch = 1.1, 0.9, 128
    p = _grad(1_000_000, dtype)
    before = p.grad / batch
    generator = torch.Generator().manual_seed(5)
    source = NoiseStream(generator, prefetch=True) if prefetch else generator
    add_noise([p], sigma, clip, batch, source)
    z = ((p.grad - before).double() / (sigma * clip / batch)).numpy()
    assert _standard_normal_failures(z) == []
    assert "std" in _standard_normal_failures(1.05 * z) and "KS" in _standard_normal_failures(1.05 * z)
    assert "mean" in _standard_normal_failures(z + 0.01)


def test_steps_draw_independent_noise():
    """Consecutive steps of a stream (prefetched) and two parameters in one step: no run of 4 values of one found
    in another (a stream restarted or repeated would be), and correlations within 5 standard errors of 0 (1/√n).
    Single float32 values do repeat by chance (2²⁴ values per binade)."""
    stream = NoiseStream(torch.Generator().manual_seed(2), prefetch=True)
    w, b = torch.nn.Parameter(torch.zeros(500, 400)), torch.nn.Parameter(torch.zeros(200_000))
    steps = []
    for _ in range(3):
        w.grad, b.grad = None, None
        add_noise([w, b], 1.0, 1.0, 1, stream)
        steps.append(torch.cat([w.grad.flatten(), b.grad]))
    stream.close()
    values = torch.stack(steps)
    runs = [np.lib.stride_tricks.sliding_window_view(v.numpy().view(np.int32), 4) for v in values]
    seen = {bytes(r) for r in runs[0][: 200_000 - 3]}  # step 0's w
    others = [runs[0][200_000::97], *(r[::97] for r in runs[1:])]  # step 0's b, steps 1 and 2
    assert not any(bytes(r) in seen for rows in others for r in rows)
    n = values.shape[1]
    for first, second in ((values[0], values[1]), (values[1], values[2]), (values[0, :200_000], values[0, 200_000:])):
        assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 5 / min(n, first.numel()) ** 0.5


def _noise_of_steps(source, shapes) -> list[torch.Tensor]:
    out = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.zeros(shape))
        add_noise([p], 1.0, 1.0, 4, source)
        out.append(p.grad.clone())
    return out


def test_a_prefetched_stream_draws_what_its_generator_draws_bit_for_bit():
    """NoiseStream(prefetch=True) gives the draws of add_noise with the plain generator, also when a step asks for
    other shapes than the one prefetched (the prefetch is thrown away, the generator put back); its state is that
    of the steps taken: a generator set to it draws the next step's noise."""
    shapes = [(300, 7), (300, 7), (50,), (300, 7), (300, 7)]
    plain = _noise_of_steps(torch.Generator().manual_seed(9), shapes)
    stream = NoiseStream(torch.Generator().manual_seed(9), prefetch=True)
    ahead = _noise_of_steps(stream, shapes)
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead))
    resumed = torch.Generator().set_state(stream.get_state())
    assert torch.equal(_noise_of_steps(stream, [(300, 7)])[0], _noise_of_steps(resumed, [(300, 7)])[0])
    stream.close()


def test_a_prefetching_dpsgd_resumes_its_stream_and_matches_one_without():
    """DifferentialPrivacy(prefetch_noise=True): the noise of a run without it, and a checkpoint taken while the
    next step's noise is being drawn resumes at that step (the prefetched draw is not skipped)."""

    def run(prefetch: bool, steps: int, state=None):
        dp = DPSGD(DifferentialPrivacy(1.0, 1.0, seed=4, prefetch_noise=prefetch))
        if state is not None:
            dp.load_state_dict(state)
        dp.sample_rate, dp.expected_batch_size = 0.1, 10
        p = torch.nn.Parameter(torch.zeros(1000))
        out = []
        for _ in range(steps):
            p.grad = None
            dp.privatize([p])
            out.append(p.grad.clone())
        return dp, out

    _, plain = run(False, 3)
    dp, ahead = run(True, 1)
    state = dp.state_dict()
    _, resumed = run(True, 2, state)
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead + resumed))
    with pytest.raises(TypeError, match="prefetch_noise"):
        DifferentialPrivacy(1.0, 1.0, prefetch_noise=1)
