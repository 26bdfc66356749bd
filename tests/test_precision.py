"""Every precision Lightning offers trains with both backends, on each device of ``DEVICES``: 32-true, 64-true,
bf16-true, bf16-mixed, and on CUDA 16-mixed (float16 autocast with a gradient scaler) too."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from manualbp.data import DigitsDataModule
from manualbp.lightning import ClassifierModule
from tests.conftest import DEVICES

STEPS = 12
#: relative agreement of the two backends' losses, step by step, at each precision
AGREEMENT = {"64-true": 1e-9, "32-true": 1e-4, "bf16-mixed": 5e-2, "bf16-true": 1e-1}
#: on CUDA: 16-mixed too; and cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default, where the two
#: backends reach different convolution kernels (the manual backward's conv_transpose2d against torch's convolution
#: backward), so 32-true agrees to TF32's rounding
CUDA_AGREEMENT = {**AGREEMENT, "32-true": 1e-2, "16-mixed": 5e-2}
#: (device, precision) pairs, each device's precisions
RUNS = [(device, precision) for device in DEVICES for precision in (CUDA_AGREEMENT if device == "cuda" else AGREEMENT)]


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtype: torch.dtype | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.dtype = batch[0].dtype


def _small_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)
    )


NETS = {
    "mlp": dict(arch="mlp", hidden=(32,)),
    "lenet5": dict(arch="lenet5"),
    "net": dict(net=None),
}


def _train(precision: str, backend: str, net: str, device: str = "cpu") -> _Losses:
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    kwargs = dict(NETS[net])
    if net == "net":
        kwargs["net"] = _small_net()
    model = ClassifierModule(backend=backend, in_shape=data.in_shape, **kwargs)
    losses = _Losses()
    trainer = pl.Trainer(
        max_steps=STEPS,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[losses],
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator=device,
        devices=1,
    )
    trainer.fit(model, datamodule=data)
    return losses


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("device, precision", RUNS, ids=[f"{p}-{d}" for d, p in RUNS])
def test_every_precision_trains_with_both_backends_alike(device, precision, net):
    """A few steps at each precision: the batch reaches the net in the precision's dtype, the loss falls, and
    the manual backend's losses follow the autograd backend's step by step."""
    runs = {backend: _train(precision, backend, net, device) for backend in ("manual", "autograd")}
    expected_dtype = {"64-true": torch.float64, "bf16-true": torch.bfloat16}.get(precision, torch.float32)
    for backend, run in runs.items():
        assert len(run.losses) == STEPS, backend
        assert run.dtype == expected_dtype, backend
        first, last = sum(run.losses[:3]) / 3, sum(run.losses[-3:]) / 3
        assert last < first, (backend, run.losses)
    torch.testing.assert_close(
        torch.tensor(runs["manual"].losses, dtype=torch.float64),
        torch.tensor(runs["autograd"].losses, dtype=torch.float64),
        rtol=(CUDA_AGREEMENT if device == "cuda" else AGREEMENT)[precision],
        atol=0.0,
    )
