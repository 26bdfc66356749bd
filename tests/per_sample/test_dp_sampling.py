"""DP-SGD's Poisson batches (``manualbp.per_sample.PoissonSampler``) across epochs and across a resumed fit.

The accountant assumes a fresh Poisson draw at every step: no two steps may train on the same draw, however the
fit is cut into epochs, loaders and runs; and a fit resumed from a checkpoint continues the uninterrupted fit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from manualbp.per_sample import DifferentialPrivacy, PoissonSampler

_STEPS_PER_EPOCH = 5  # 1,258 training digits in batches of 256


class _Batches(pl.Callback):
    """Every training batch this fit saw, with its global step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        images, labels = batch
        self.seen.append((trainer.global_step, images.clone(), labels.clone()))


def _fit(root: Path, epochs: int, dp: DifferentialPrivacy, ckpt: Path | None = None, **trainer_args) -> tuple:
    """A small DP fit of ``epochs`` epochs (from ``ckpt`` when given): its batches and its final weights."""
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=256)
    model = ClassifierModule(hidden=(16,), in_shape=data.in_shape, dp=dp)
    batches = _Batches()
    trainer = pl.Trainer(
        default_root_dir=root, max_epochs=epochs, limit_val_batches=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[batches, *trainer_args.pop("callbacks", [])], **trainer_args,
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    return batches.seen, {n: p.detach().clone() for n, p in model.state_dict().items()}


def _same(a: tuple, b: tuple) -> bool:
    return a[1].shape == b[1].shape and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def _assert_all_distinct(seen: list) -> None:
    for i, a in enumerate(seen):
        for b in seen[i + 1 :]:
            assert not _same(a, b), f"steps {a[0]} and {b[0]} trained on the same Poisson draw"


def test_a_resumed_fit_sees_the_batches_and_ends_with_the_weights_of_the_uninterrupted_fit(tmp_path):
    """2 epochs, then resumed from last.ckpt to 3: epoch 2 sees the uninterrupted run's epoch 2 (not its epoch 0),
    and with the noise seeded the weights come out bit for bit the same."""
    dp = DifferentialPrivacy(1.0, 1.0, seed=3)
    straight, straight_weights = _fit(tmp_path / "straight", 3, dp)
    first, _ = _fit(tmp_path / "first", 2, dp)
    resumed, resumed_weights = _fit(tmp_path / "resumed", 3, dp, tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert len(straight) == 3 * _STEPS_PER_EPOCH and len(resumed) == _STEPS_PER_EPOCH
    for a, b in zip(straight[: 2 * _STEPS_PER_EPOCH], first, strict=True):
        assert _same(a, b), a[0]
    for a, b in zip(straight[2 * _STEPS_PER_EPOCH :], resumed, strict=True):
        assert a[0] == b[0] and _same(a, b), (a[0], b[0])
    for name, tensor in straight_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


@pytest.mark.parametrize("reload", [0, 1], ids=["one-loader", "reload-every-epoch"])
def test_no_two_steps_draw_the_same_batch(tmp_path, reload):
    """Over 3 epochs every step has a draw of its own, whether the loader lives through the fit or is rebuilt
    every epoch (``reload_dataloaders_every_n_epochs=1``)."""
    seen, _ = _fit(tmp_path, 3, DifferentialPrivacy(1.0, 1.0), reload_dataloaders_every_n_epochs=reload)
    assert [step for step, _, _ in seen] == list(range(3 * _STEPS_PER_EPOCH))
    _assert_all_distinct(seen)


def test_a_fit_resumed_mid_epoch_continues_the_draws_and_repeats_none(tmp_path):
    """A checkpoint written after step 7 (mid-epoch 1): the resumed fit's steps 7..14 draw what the uninterrupted
    fit's did, none of the draws of steps 0..6 again, and the weights end the same."""
    dp = DifferentialPrivacy(1.0, 1.0, seed=5)
    every = ModelCheckpoint(dirpath=tmp_path / "every", every_n_train_steps=7, save_top_k=-1, filename="{step}")
    straight, straight_weights = _fit(tmp_path / "straight", 3, dp, callbacks=[every])
    with warnings.catch_warnings(record=True) as caught:  # Lightning warns of a mid-epoch resume it cannot continue
        warnings.simplefilter("always")
        resumed, resumed_weights = _fit(tmp_path / "resumed", 3, dp, tmp_path / "every" / "step=7.ckpt")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert [step for step, _, _ in resumed] == list(range(7, 3 * _STEPS_PER_EPOCH))
    for a, b in zip(straight[7:], resumed, strict=True):
        assert _same(a, b), a[0]
    _assert_all_distinct(straight[:7] + resumed)
    for name, tensor in straight_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


def test_the_ranks_shares_make_up_the_single_process_batch():
    """Under DDP each rank keeps i ≡ rank (mod W) of the same draw: disjoint shares whose union is the batch a
    single process draws at that step, whatever the step."""
    single = PoissonSampler(1000, 0.05, 4, lambda: 7, seed=11)
    shares = [PoissonSampler(1000, 0.05, 4, lambda: 7, seed=11, rank=r, world_size=3) for r in range(3)]
    for whole, *parts in zip(single, *shares, strict=True):
        assert sorted(i for part in parts for i in part) == whole
        assert all(i % 3 == r for r, part in enumerate(parts) for i in part)
    assert single.batch(7) != single.batch(8)  # step 7 starts the pass (first_step), each step draws anew


def test_the_inclusion_rate_is_q():
    """Each index is in a step's batch with probability q, independently of the other steps: over 400 steps of
    2,000 indices, the batch sizes average q·2000 and an index's count over the steps is Binomial(400, q)."""
    sampler = PoissonSampler(2000, 0.1, 400, lambda: 0, seed=0)
    counts = torch.zeros(2000)
    sizes = []
    for batch in sampler:
        counts[batch] += 1
        sizes.append(len(batch))
    sizes = torch.tensor(sizes, dtype=torch.float64)
    assert abs(sizes.mean().item() - 200) < 4 * (2000 * 0.1 * 0.9 / 400) ** 0.5
    assert abs(counts.mean().item() - 40) < 0.5 and abs(counts.var().item() - 36) < 3


def test_a_fit_resumed_with_dp_switched_on_or_off_is_refused(tmp_path):
    """The privacy spent so far would be dropped (DP off), or a private run would continue a non-private one (DP
    on): both stop with a CheckpointMismatchError, before any step."""
    from manualbp.checkpoints import CheckpointMismatchError

    _fit(tmp_path / "dp", 1, DifferentialPrivacy(1.0, 1.0, seed=0))
    with pytest.raises(CheckpointMismatchError, match="with DP-SGD"):
        _fit(tmp_path / "off", 2, None, tmp_path / "dp" / "checkpoints" / "last.ckpt")
    _fit(tmp_path / "plain", 1, None)
    with pytest.raises(CheckpointMismatchError, match="without DP-SGD"):
        _fit(
            tmp_path / "on", 2, DifferentialPrivacy(1.0, 1.0, seed=0), tmp_path / "plain" / "checkpoints" / "last.ckpt"
        )
