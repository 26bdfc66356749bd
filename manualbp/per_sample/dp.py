"""DP-SGD's settings and its noise step, around ``clip_per_sample``.

One DP-SGD step (Abadi et al. 2016, as Opacus's ``DPOptimizer`` takes it): a batch drawn by Poisson sampling
(each example in with probability q; ``PoissonSampler``), the per-sample gradients clipped to norm C and summed
(``clip_per_sample(model, C, loss_reduction="sum")``), Gaussian noise of std σ·C added to the sum, and the result
divided by the expected batch size q·|dataset| (``add_noise``); the privacy spent, ε at a given δ, from Opacus's
RDP accountant, stepped once per step with (σ, q). Nothing of the accounting is written here.

Under DDP (W processes) the step is the same step on the union of the ranks' batches: every rank draws the same
Poisson batch and keeps its share, the ranks' clipped sums are added up by an all-reduce, rank 0 alone adds the
noise, and every rank divides by the global expected batch size (``DPSGD``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from manualbp.per_sample.noise import NoiseStream

if TYPE_CHECKING:
    from manualbp.per_sample.clip import PerSampleClip


def _check_number(where: str, name: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite int or float (not a bool) for which ``ok``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class DifferentialPrivacy:
    """DP-SGD's settings: ``noise_multiplier`` σ (the noise's std over the clipping norm), ``max_grad_norm`` C
    (each sample's gradient is clipped to it) and ``delta`` δ (the ε reported is that of (ε, δ)-DP).

    ``seed``: the seed of the noise's generator, so that a run's noise is reproducible when asked; None (the
    default) seeds it from the operating system's entropy, a new stream every run. ``secure_mode``: the noise and
    the Poisson sampling drawn from the operating system's cryptographically secure generator (``os.urandom``),
    with Opacus's mitigation against floating-point attacks on the Gaussian (``add_noise``); nothing of it can be
    replayed, so a seed is refused with it. ``prefetch_noise``: draw each step's noise in a background thread
    while the step before runs (``NoiseStream``; the same noise as without, bit for bit: CPU only, and only
    faster where the step leaves a core idle).
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    seed: int | None = None
    secure_mode: bool = False
    prefetch_noise: bool = False

    def __post_init__(self) -> None:
        where = "DifferentialPrivacy"
        _check_number(where, "noise_multiplier", self.noise_multiplier, lambda v: v >= 0, "a number >= 0")
        _check_number(where, "max_grad_norm", self.max_grad_norm, lambda v: v > 0, "a number > 0")
        _check_number(where, "delta", self.delta, lambda v: 0 < v < 1, "a number in (0, 1)")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"{where}: seed must be an int >= 0 or None, got {self.seed!r}")
        for flag in ("secure_mode", "prefetch_noise"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{where}: {flag} must be a bool, got {getattr(self, flag)!r}")
        if self.secure_mode and self.seed is not None:
            raise ValueError(
                f"{where}: secure_mode=True draws the noise from the operating system's secure generator, which "
                f"takes no seed; seed={self.seed} would make the noise predictable. Leave seed unset (None)"
            )


def add_noise(
    params: Iterable[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | NoiseStream | None = None,
    *,
    secure_mode: bool = False,
) -> None:
    """In place, for each parameter p that requires grad: p.grad ← (p.grad + ξ) / B, ξ ~ N(0, (σ C)² I), where
    p.grad holds the sum of the clipped per-sample gradients (zeros when None) and B is the expected batch
    size: Opacus's ``DPOptimizer.add_noise`` then ``scale_grad`` with ``loss_reduction="mean"``. Each coordinate
    of the result is p.grad/B plus noise of std σC/B, drawn from ``generator`` (None: torch's default generator
    of p's device; a ``NoiseStream``: the same draws as from its generator, perhaps drawn ahead in a thread).
    torch's ``normal_`` (mt19937, Box-Muller) is the fastest normal generator measured on CPU
    (``experiments/bench_dp_noise.py``: numpy's ziggurat on PCG64 or SFC64, Box-Muller from ``torch.rand`` and two
    generators on two threads all took longer per draw).

    Computed as p.grad / B + ξ/B in one pass over p.grad, ξ/B drawn as N(0, (σ C / B)² I) (the same
    distribution; measured 4.7 ms instead of 7.4 for mlp(800, 800)'s 1.3M parameters on 2 CPU threads, where
    drawing the normals takes 4.4).

    ``secure_mode``: ξ from ``os.urandom`` (``secure_normal``), in float64, as the sum of 4 draws of std σC
    halved (Opacus's ``_generate_noise``, after Holohan et al. 2021, section 5.1: the sum of 2n Gaussian draws, n = 2,
    leaves no gaps in the floating-point values an attacker could read the gradient from), then
    (p.grad + ξ) / B in float64, rounded once to p's dtype. Opacus also discards a first draw: torch's generator
    may hold the second value of a Box-Muller pair from an earlier call; here every call reads fresh bytes from
    the operating system, so nothing is held. Measured on mlp(800, 800)'s 1.28M parameters (2 CPU threads,
    ``experiments/bench_dp_noise.py``): 180 ms instead of 5.8, 130 of them reading 41 MB from ``os.urandom``.

    Refused with a ValueError naming the argument: σ that is not a finite number >= 0, C or B not finite numbers
    > 0 (bools are not numbers), a generator with ``secure_mode``, and σ > 0 with a noise std σC/B that p.grad's
    dtype cannot hold (below its smallest normal number or above its largest), where the step would come out
    without noise or infinite; a generator that is not a ``torch.Generator`` and a ``secure_mode`` that is not
    a bool are a TypeError. Nothing is changed when an argument is refused.
    """
    where = "add_noise"
    _check_number(where, "noise_multiplier", noise_multiplier, lambda v: v >= 0, "a finite number >= 0")
    _check_number(where, "max_grad_norm", max_grad_norm, lambda v: v > 0, "a finite number > 0")
    _check_number(where, "expected_batch_size", expected_batch_size, lambda v: v > 0, "a finite number > 0")
    if not isinstance(secure_mode, bool):
        raise TypeError(f"{where}: secure_mode must be a bool, got {secure_mode!r}")
    if generator is not None and not isinstance(generator, (torch.Generator, NoiseStream)):
        raise TypeError(
            f"{where}: generator must be a torch.Generator, a NoiseStream or None, got {type(generator).__name__}"
        )
    if secure_mode and generator is not None:
        raise ValueError(f"{where}: secure_mode draws from the operating system's secure generator; pass no generator")
    params = [p for p in params if p.requires_grad]
    scale = 1.0 / expected_batch_size
    std = noise_multiplier * max_grad_norm * scale
    if noise_multiplier > 0:
        for p in params:
            info = torch.finfo(p.dtype)
            if not info.tiny <= std <= info.max:
                raise ValueError(
                    f"{where}: the noise's std noise_multiplier * max_grad_norm / expected_batch_size = {std!r} lies "
                    f"outside what a {p.dtype} gradient holds ([{info.tiny}, {info.max}]): the step would have no "
                    "noise or infinite noise"
                )
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [cast(torch.Tensor, p.grad) for p in params]
        if std > 0 and isinstance(generator, NoiseStream):
            with generator.draw(grads, std) as noises:
                for grad, noise in zip(grads, noises):
                    torch.add(noise, grad, alpha=scale, out=grad)
            return
        plain = generator if isinstance(generator, torch.Generator) else None  # a NoiseStream drew above, if any
        for grad in grads:
            if std == 0:
                grad.mul_(scale)
            elif secure_mode:
                noise = secure_normal(4 * grad.numel(), noise_multiplier * max_grad_norm).to(grad.device)
                noise = noise.view(4, *grad.shape)
                grad.copy_((grad.double() + noise.sum(0) / 2) * scale)
            else:
                noise = torch.empty_like(grad).normal_(0.0, std, generator=plain)
                torch.add(noise, grad, alpha=scale, out=grad)


def secure_uniform(count: int) -> torch.Tensor:
    """``count`` uniforms on [0, 1), float64, from ``os.urandom``: the top 53 bits k of 8 random bytes, k · 2⁻⁵³
    (through numpy, whose unsigned shift is 6x faster than torch's on CPU)."""
    bits = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def secure_normal(count: int, std: float) -> torch.Tensor:
    """``count`` draws of N(0, std²), float64, from ``os.urandom``: Box-Muller on pairs of ``secure_uniform``s,
    z = √(−2 ln(1 − u₁)) · (cos 2πu₂, sin 2πu₂) (1 − u₁ ∈ (0, 1], exact in float64, so the logarithm is finite)."""
    pairs = (count + 1) // 2
    u = secure_uniform(2 * pairs)
    radius = torch.rsub(u[:pairs], 1.0).log_().mul_(-2.0).sqrt_().mul_(std)
    angle = u[pairs:].mul_(2 * math.pi)
    z = torch.empty(2 * pairs, dtype=torch.float64)
    torch.cos(angle, out=z[:pairs]).mul_(radius)
    torch.sin(angle, out=z[pairs:]).mul_(radius)
    return z[:count]


class PoissonSampler(torch.utils.data.Sampler[list[int]]):
    """The batches of Poisson sampling, ``steps`` per pass: the batch of DP step t holds each index i of
    ``range(num_samples)`` with probability q = ``sample_rate``, independently: i is in iff u_t,i < q.

    u_t is a function of (``seed``, t) alone: numpy's PCG64 seeded with the SeedSequence of (seed, t), so distinct
    steps draw independent batches and a run resumed from a checkpoint (or rebuilding its loaders every epoch)
    draws what the uninterrupted run draws; ``seed`` None: u_t from ``os.urandom`` (secure mode). A pass starts at
    t = ``first_step()``, the number of steps taken so far (``DPSGD.steps``), read when the pass begins: with one
    step per batch, step t trains on draw t and no draw is used twice. Opacus's ``UniformWithReplacementSampler``
    draws from one running generator instead (the loader's, which a data module seeds afresh with every loader
    it builds: a rebuilt or resumed loader replays the first epoch's batches), and its
    ``DistributedUniformWithReplacementSampler`` skips a rank's empty batch, so the ranks would take different
    numbers of steps.

    Under DDP (``world_size`` W > 1) every rank draws the same u_t and keeps the indices i ≡ ``rank`` (mod W):
    the union of the ranks' batches is one Poisson batch of rate q over the whole dataset, the batch a single
    process draws at step t. In secure mode each rank reads bytes of its own: index i is still in with
    probability q, decided by rank i mod W alone, so the union is still such a batch. A rank's share may be
    empty; it is still a step (all ranks step together).
    """

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        steps: int,
        first_step: Callable[[], int],
        seed: int | None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"PoissonSampler: sample_rate must lie in (0, 1], got {sample_rate!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PoissonSampler: rank must lie in [0, world_size = {world_size}), got {rank!r}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self.first_step = first_step
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        start = self.first_step()
        return (self.batch(t) for t in range(start, start + self.steps))

    def batch(self, step: int) -> list[int]:
        """This rank's share of the Poisson batch of step ``step``: indices in increasing order."""
        if self.seed is None:
            u = secure_uniform(self.num_samples)
        else:
            u = torch.from_numpy(np.random.default_rng([self.seed, step]).random(self.num_samples))
        chosen = torch.nonzero(u < self.sample_rate).flatten()
        return chosen[chosen % self.world_size == self.rank].tolist()


class PoissonLoader:
    """A ``DataLoader`` whose batches come from a ``PoissonSampler``, wrapped: iterating it iterates the loader,
    ``len`` is the sampler's steps per pass. Not a ``DataLoader`` itself, so that Lightning leaves its sampler
    alone under DDP (it would put a ``DistributedSampler`` into a ``DataLoader``'s place, which a batch sampler
    refuses). Lightning keeps its state, the sampler's seed, in checkpoints (``state_dict``): a resumed fit
    draws from the same seed; and Lightning, seeing a loader with a state, does not warn that a fit resumed
    mid-epoch cannot continue where it stopped (it does: the sampler starts at the steps taken)."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: PoissonSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self.dataset = loader.dataset

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's seed (None in secure mode), which Lightning keeps in checkpoints."""
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's seed (a secure sampler keeps drawing from the operating system)."""
        if self.sampler.seed is not None and state.get("seed") is not None:  # secure sampling stays secure
            self.sampler.seed = state["seed"]


def _opacus() -> tuple[ModuleType, ModuleType]:
    """Opacus's data loader and accountant modules; a clear error when Opacus is not installed."""
    try:
        from opacus import accountants, data_loader
    except ImportError as error:  # pragma: no cover - Opacus is a dev dependency
        raise ImportError(
            "DP-SGD takes its privacy accountant and the collation of empty batches from Opacus: "
            'pip install "manualbp[dp]" (or pip install opacus)'
        ) from error
    return accountants, data_loader


class DPSGD:
    """The state of a DP-SGD training run with ``settings`` (``DifferentialPrivacy``): the sampling rate and
    expected batch size of its Poisson loader, the noise's generator, and Opacus's RDP accountant.

    ``poisson_loader(loader, rank, world_size)``: a ``PoissonLoader`` over ``loader``'s dataset with ``loader``'s
    collate function and workers, each example drawn with probability q = 1 / len(loader) at each of len(loader)
    steps a pass (batches of ``loader``'s size on average, on each rank; B = int(q · |dataset|), the expected
    size of the step's whole batch, as Opacus takes it), seeded by ``loader``'s generator (a data module's seed;
    torch's initial seed when it has none). ``clip(model)``: ``clip_per_sample`` for the step's summed loss.
    ``privatize(params)``: the noise and the division by B (``add_noise``), the sum over the ranks, and one
    accountant step (σ, q). ``steps``: the steps taken (the accountant's). ``epsilon()``: ε at δ so far.

    Under DDP (``world_size`` W > 1, torch.distributed initialised): each rank holds the clipped sum of its
    share of the batch, rank 0 alone adds the noise (one draw for the step, as Opacus's ``DistributedDPOptimizer``),
    every rank divides by B, and an all-reduce adds the ranks' results up: Σ_r (s_r + [r = 0] ξ) / B = (s + ξ) / B,
    the single-process step on the union of the shares. The all-reduce leaves the same values on every rank, so
    the weights stay identical. The ranks' own gradient synchronisation must be off (DDP's ``no_sync``): the clipped
    sums are written at the end of the backward, after DDP's hooks.

    ``settings.prefetch_noise``: the next step's noise drawn in a background thread while the step runs
    (``NoiseStream``; the same noise; ``state_dict`` saves the stream where the steps taken left it).

    ``state_dict()``: the accountant and the noise generator's state, so that a resumed fit continues both; a
    seeded generator's state cannot move to another device type (its stream would start over, repeating the noise
    of the first steps: refused).
    """

    def __init__(self, settings: DifferentialPrivacy) -> None:
        accountants, _ = _opacus()
        self.settings = settings
        self.accountant = accountants.RDPAccountant()
        self.sample_rate: float | None = None
        self.expected_batch_size: int | None = None
        self.rank, self.world_size = 0, 1
        self._generator: NoiseStream | None = None  # made on the parameters' device by the first step
        self._generator_state: dict[str, Any] | None = None  # a checkpoint's, until then

    @property
    def steps(self) -> int:
        """The DP steps taken so far (the accountant's count: carried by checkpoints)."""
        return sum(steps for _, _, steps in self.accountant.history)

    def poisson_loader(self, loader: torch.utils.data.DataLoader, rank: int = 0, world_size: int = 1) -> PoissonLoader:
        """This rank's ``PoissonLoader`` over ``loader``'s dataset (see the class docstring); sets the sampling rate
        and the expected batch size the step divides by."""
        _, data_loader = _opacus()
        if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"DPSGD: world_size={world_size} needs torch.distributed initialised (DDP)")
        steps = len(loader)
        dataset = cast(Sized, loader.dataset)  # map-style, as Poisson sampling needs: torch's Dataset declares no len
        self.sample_rate = 1 / steps
        self.expected_batch_size = int(len(dataset) * self.sample_rate)
        self.rank, self.world_size = rank, world_size
        if self.settings.secure_mode:
            seed = None
        else:
            seed = loader.generator.initial_seed() if loader.generator is not None else torch.initial_seed()
        sampler = PoissonSampler(len(dataset), self.sample_rate, steps, lambda: self.steps, seed, rank, world_size)
        first = loader.dataset[0]
        collate = data_loader.wrap_collate_with_empty(
            collate_fn=loader.collate_fn,
            sample_empty_shapes=[(0, *getattr(x, "shape", ())) for x in first],
            dtypes=[getattr(x, "dtype", type(x)) for x in first],
        )
        poisson = torch.utils.data.DataLoader(
            loader.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor,
            persistent_workers=loader.persistent_workers,
        )
        return PoissonLoader(poisson, sampler)

    def clip(self, model: torch.nn.Module) -> PerSampleClip:
        """``clip_per_sample(model, max_grad_norm, loss_reduction="sum")``: the context of the step's backward."""
        from manualbp.per_sample.clip import clip_per_sample

        return clip_per_sample(model, self.settings.max_grad_norm, loss_reduction="sum")

    def privatize(self, params: Iterable[torch.nn.Parameter]) -> None:
        """After the backward, before the optimizer's step: the noise (rank 0), the division by B, the sum over the
        ranks under DDP, and one accountant step (see the class docstring)."""
        if self.sample_rate is None or self.expected_batch_size is None:  # set together by poisson_loader
            raise RuntimeError("DPSGD: no Poisson loader yet (poisson_loader) to take the sampling rate from")
        params = [p for p in params if p.requires_grad]
        settings = self.settings
        noise_multiplier = settings.noise_multiplier if self.rank == 0 else 0.0
        generator = None
        if noise_multiplier > 0 and not settings.secure_mode and params:
            generator = self._noise_generator(params[0].device)
        add_noise(
            params, noise_multiplier, settings.max_grad_norm, self.expected_batch_size, generator,
            secure_mode=settings.secure_mode,
        )  # fmt: skip
        if self.world_size > 1:
            for p in params:
                assert p.grad is not None, "add_noise gives every parameter that requires grad a gradient"
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        self.accountant.step(noise_multiplier=settings.noise_multiplier, sample_rate=self.sample_rate)

    def _noise_generator(self, device: torch.device) -> NoiseStream:
        """The noise's stream on ``device``: a generator seeded with ``settings.seed`` (from the operating system's
        entropy when None), or in the state a checkpoint left (``load_state_dict``), drawing ahead when
        ``settings.prefetch_noise``."""
        if self._generator is not None and self._generator.device == device:
            return self._generator
        saved = self._generator_state if self._generator is None else self._state(self._generator)
        if self._generator is not None:
            self._generator.close()
        generator = torch.Generator(device)
        if saved is not None and saved["device"] == device.type:
            generator.set_state(saved["state"])
        elif saved is not None and self.settings.seed is not None:
            raise RuntimeError(
                f"DPSGD: the noise generator of dp.seed={self.settings.seed} ran on {saved['device']} so far; on "
                f"{device.type} its stream would start over and repeat the noise of the first steps. Train on "
                f"{saved['device']}, or continue with another dp.seed"
            )
        elif self.settings.seed is not None:
            generator.manual_seed(self.settings.seed)
        else:
            generator.seed()
        self._generator = NoiseStream(generator, prefetch=self.settings.prefetch_noise)
        self._generator_state = None
        return self._generator

    def epsilon(self) -> float:
        """The ε of (ε, δ)-DP spent so far, at ``settings.delta``, by Opacus's RDP accountant."""
        return float(self.accountant.get_epsilon(self.settings.delta))

    @staticmethod
    def _state(stream: NoiseStream) -> dict[str, Any]:
        """The stream's generator state where its steps stand (a prefetched draw not counted)."""
        return {"device": stream.device.type, "state": stream.get_state()}

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history, the sampling rate and the noise generator's state, for checkpoints."""
        generator = self._generator_state if self._generator is None else self._state(self._generator)
        return {"accountant": self.accountant.state_dict(), "sample_rate": self.sample_rate, "generator": generator}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s: the privacy spent so far, and the noise's stream where it stopped."""
        if state["accountant"].get("history"):
            self.accountant.load_state_dict(state["accountant"])
        if state.get("generator") is not None:
            if self._generator is not None:
                self._generator.close()
            self._generator, self._generator_state = None, state["generator"]
