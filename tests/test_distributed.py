"""``manualbp fit`` under Lightning's DDP: two CPU processes (gloo on 127.0.0.1) take one optimizer step.

The step runs in a subprocess because Lightning's DDP launcher starts the second rank by running the
command again (``python -m tests.ddp_step``, the ``manualbp`` command plus a recording callback).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manualbp.lightning import ClassifierModule
from manualbp.per_sample import add_noise, clip_per_sample

_REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_first_step(out: Path, *args: str) -> list[dict]:
    """Run one SGD step of a small MLP on the digits with DDP over 2 CPU processes (the command's options and
    ``args``); each rank's record."""
    command = [
        sys.executable, "-m", "tests.ddp_step", "fit",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--test_after_fit=false",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        "--model.hidden=[16]", "--optimizer=SGD", "--optimizer.lr=0.1", "--data.batch_size=8",
        "--trainer.callbacks+=tests.ddp_step.RecordFirstStep", f"--trainer.callbacks.out_dir={out}", *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, cwd=_REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]


def _single_process_step(start: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The same SGD step in this process on the whole global batch (both ranks' batches together)."""
    model = ClassifierModule(hidden=(16,), in_shape=(1, 8, 8))
    model.load_state_dict(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.loss_fn(model(images), labels).backward()
    optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.slow
def test_a_ddp_step_on_two_ranks_equals_one_step_on_the_global_batch(tmp_path):
    rank0, rank1 = _ddp_first_step(tmp_path)
    assert not torch.equal(rank0["images"], rank1["images"])  # each rank trains on its own share
    expected = _single_process_step(
        rank0["before"], torch.cat([rank0["images"], rank1["images"]]), torch.cat([rank0["labels"], rank1["labels"]])
    )
    for name, after in rank0["after"].items():
        assert torch.equal(rank0["before"][name], rank1["before"][name]), name
        assert torch.equal(after, rank1["after"][name]), name
        assert not torch.equal(after, rank0["before"][name]), name
        torch.testing.assert_close(after, expected[name], rtol=0, atol=1e-6, msg=name)


def _single_process_dp_step(
    start: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor, batch: int, sigma: float, seed: int
) -> dict:
    """One process's DP-SGD step on the union of the ranks' batches: the clipped sum (C = 0.5), noise of std
    σC/B from a generator seeded ``seed`` (DPSGD's, the parameters in the same order), then SGD with lr 0.1."""
    model = ClassifierModule(hidden=(16,), in_shape=(1, 8, 8))
    model.load_state_dict(start)
    with clip_per_sample(model.net, 0.5, loss_reduction="sum"):
        model.loss_fn(model(images), labels, reduction="sum").backward()
    add_noise(model.net.parameters(), sigma, 0.5, batch, torch.Generator().manual_seed(seed))
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # σ = 0: ε is infinite
@pytest.mark.parametrize("sigma", [0.0, 1.0], ids=["no-noise", "noise"])
def test_a_dp_step_on_two_ranks_equals_one_process_on_the_union_of_their_batches(tmp_path, sigma):
    """``manualbp fit --model.dp.* --trainer.strategy=ddp``, no ``use_distributed_sampler`` given: the ranks draw
    disjoint shares of one Poisson batch, their clipped sums are added up (not averaged by DDP's reducer), divided
    by the global expected batch size, and the noise is added once: the step equals one process's on the union,
    with the noise of the same seeded generator, and leaves the same weights on both ranks."""
    rank0, rank1 = _ddp_first_step(
        tmp_path, f"--model.dp.noise_multiplier={sigma}", "--model.dp.max_grad_norm=0.5", "--model.dp.seed=3"
    )
    assert not torch.equal(rank0["images"], rank1["images"])  # each rank trains on its own share
    batch = rank0["expected_batch_size"]
    assert batch == rank1["expected_batch_size"] == int(1258 / 79)  # q = 1/79: 629 of 1,258 digits a rank, by 8
    expected = _single_process_dp_step(
        rank0["before"], torch.cat([rank0["images"], rank1["images"]]), torch.cat([rank0["labels"], rank1["labels"]]),
        batch, sigma, seed=3,
    )  # fmt: skip
    for name, after in rank0["after"].items():
        assert torch.equal(rank0["before"][name], rank1["before"][name]), name
        assert torch.equal(after, rank1["after"][name]), name
        torch.testing.assert_close(after, expected[name], rtol=0, atol=1e-6, msg=name)
