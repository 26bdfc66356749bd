"""Training runs through the ``manualbp`` command as a Lightning user expects them: the user's checkpoints,
predictions on disk, a model of the user's own, each data module's own defaults, one optimizer switch, data
errors in one line, and nothing printed that the user did not ask for."""

from __future__ import annotations

import csv
import logging
import re
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from manualbp.checkpoints import CheckpointMismatchError, check_checkpoint_fits
from manualbp.cli import command, main
from manualbp.lightning import ClassifierModule
from manualbp.nn._base import ManualModule
from tests.test_data import make_mnist

# A small job: 3 steps of a narrow MLP per epoch, one validation batch.
_SMALL = (
    "--model.hidden=[16]",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
)


class SmallCNN(torch.nn.Module):
    """A user's own network for (N, 1, 8, 8) digits: conv, ReLU, pool, a normalisation manualbp has no twin of, linear."""

    def __init__(self, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.LocalResponseNorm(2),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and data/ stay out of the repository


def _run_dir(root: Path, version: int = 0) -> Path:
    return root / "lightning_logs" / f"version_{version}"


def test_the_users_model_checkpoint_replaces_the_built_in_ones(tmp_path, capsys):
    mine = [
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.monitor=val_loss",
        "--trainer.callbacks.save_top_k=3",
    ]
    assert main(["fit", *_SMALL, "--trainer.max_epochs=3", *mine, "--trainer.callbacks.filename=mine-{epoch}"]) == 0
    files = sorted(p.name for p in (_run_dir(tmp_path) / "checkpoints").iterdir())
    assert files == ["mine-epoch=0.ckpt", "mine-epoch=1.ckpt", "mine-epoch=2.ckpt"]
    out = capsys.readouterr().out
    assert "test_acc = " in out and "(best checkpoint " in out and "mine-epoch=" in out


def test_predict_writes_one_row_per_input_with_the_class_probabilities(tmp_path, capsys):
    assert main(["fit", *_SMALL, "--trainer.max_epochs=1", "--test_after_fit=false"]) == 0
    checkpoint = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["predict", "--trainer.enable_progress_bar=false", f"--ckpt_path={checkpoint}"]) == 0
    out = capsys.readouterr().out
    path = _run_dir(tmp_path, 1) / "predictions.csv"
    assert f"predictions written to {path.resolve()}" in out
    with path.open() as f:
        rows = list(csv.DictReader(f))
    model = ClassifierModule.load_from_checkpoint(checkpoint).eval()
    data = command([], run=False).datamodule
    data.setup("predict")
    images, labels = data.test_set.tensors
    assert len(rows) == len(labels) == 359
    assert list(rows[0]) == ["index", "predicted", "label", *(f"prob_{c}" for c in range(10))]
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1)
    written = torch.tensor([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-6)
    assert [int(r["index"]) for r in rows] == list(range(359))
    assert [int(r["predicted"]) for r in rows] == expected.argmax(1).tolist()
    assert [int(r["label"]) for r in rows] == labels.tolist()


def test_a_checkpoint_of_another_network_is_one_line_naming_the_option(tmp_path, capsys):
    assert main(["fit", *_SMALL, "--model.arch=lenet5", "--trainer.max_epochs=1", "--test_after_fit=false"]) == 0
    checkpoint = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    make_mnist(tmp_path / "mnist")
    capsys.readouterr()
    status = main(
        ["predict", "--data=MNISTDataModule", f"--data.data_dir={tmp_path / 'mnist'}", f"--ckpt_path={checkpoint}"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert "was trained with --model.in_shape=[1,8,8], but the options here give --model.in_shape=[1,28,28]" in line
    assert f"--config {(_run_dir(tmp_path) / 'config.yaml').resolve()}" in line
    assert not _run_dir(tmp_path, 1).exists()  # stopped before the run: no folder holding only its config.yaml


def test_check_checkpoint_fits_names_a_parameter_of_another_shape():
    net = ClassifierModule(hidden=(16,), in_shape=(1, 8, 8))
    other = ClassifierModule(hidden=(16,), in_shape=(1, 8, 8))
    del other.hparams["hidden"]  # as a checkpoint saved without the option would be
    checkpoint = {
        "hyper_parameters": dict(other.hparams),
        "state_dict": ClassifierModule(hidden=(32,), in_shape=(1, 8, 8)).state_dict(),
    }
    with pytest.raises(
        CheckpointMismatchError, match=r"holds net.fc1.weight of shape \(32, 64\), this network's is \(16, 64\)"
    ):
        check_checkpoint_fits(checkpoint, dict(net.hparams), net.state_dict())


def test_your_own_model_through_the_command(tmp_path, capsys):
    net = "--model.net=tests.test_training_cli.SmallCNN"
    assert main(["fit", *_SMALL, net, "--model.net.init_args.width=6", "--trainer.max_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "ClassifierModule: manual (hand-written backward): 1 Conv2d, 1 ReLU, 1 MaxPool2d, 1 Flatten, 1 Linear" in out
    assert "ClassifierModule: stayed torch.nn (autograd backward): 1 LocalResponseNorm" in out
    assert "test_acc = " in out
    config = yaml.safe_load((_run_dir(tmp_path) / "config.yaml").read_text())
    assert config["model"]["net"] == {
        "class_path": "tests.test_training_cli.SmallCNN",
        "init_args": {"width": 6, "num_classes": 10},
    }
    checkpoint = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    trained = ClassifierModule.load_from_checkpoint(checkpoint, trusted_classes=["tests.test_training_cli.SmallCNN"])
    assert trained.net.features[0].weight.shape == (6, 1, 3, 3)


def test_your_own_model_in_python_trains_through_manual_layers():
    torch.manual_seed(0)
    manual = ClassifierModule(net=SmallCNN(), in_shape=(1, 8, 8))
    torch.manual_seed(0)
    autograd = ClassifierModule(net=SmallCNN(), backend="autograd", in_shape=(1, 8, 8))
    assert "net" not in manual.hparams  # its weights are in the state dict
    layers = [m for m in manual.net.modules() if not list(m.children())]
    assert all(isinstance(m, (ManualModule, torch.nn.LocalResponseNorm)) for m in layers), layers
    images, labels = torch.randn(5, 1, 8, 8), torch.arange(5)
    manual.eval(), autograd.eval()
    manual.loss_fn(manual(images), labels).backward()
    autograd.loss_fn(autograd(images), labels).backward()
    for (name, p), q in zip(manual.named_parameters(), autograd.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_each_data_module_keeps_its_own_batch_size_unless_set():
    assert command([], run=False).datamodule.batch_size == 64
    assert command(["--data=MNISTDataModule"], run=False).datamodule.batch_size == 128
    assert command(["--data=MNISTDataModule", "--data.batch_size=64"], run=False).datamodule.batch_size == 64
    assert command(["--data.batch_size=7", "--data=MNISTDataModule"], run=False).datamodule.batch_size == 7


def test_the_optimizer_is_chosen_once_and_saved_as_used(tmp_path):
    assert (
        main(
            [
                "fit",
                *_SMALL,
                "--trainer.max_epochs=1",
                "--test_after_fit=false",
                "--optimizer=SGD",
                "--optimizer.lr=0.1",
            ]
        )
        == 0
    )
    config = yaml.safe_load((_run_dir(tmp_path) / "config.yaml").read_text())
    assert config["optimizer"]["class_path"] == "torch.optim.SGD" and config["optimizer"]["init_args"]["lr"] == 0.1
    assert not {"optimizer", "lr", "momentum", "weight_decay"} & set(config["model"])
    checkpoint = torch.load(_run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    assert group["lr"] == 0.1 and "momentum" in group and "betas" not in group


def test_the_default_optimizer_is_adam_at_1e_3(tmp_path):
    cli = command([], run=False)
    assert cli.config["optimizer"]["class_path"] == "torch.optim.Adam"
    assert cli.config["optimizer"]["init_args"]["lr"] == 1e-3
    assert type(cli.model.configure_optimizers()).__name__ == "Adam"


@pytest.mark.parametrize("download", [False, True], ids=["download-off", "download-failed"])
def test_missing_data_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch, capsys, download):
    import torchvision

    def no_network(dataset) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried 2 mirrors")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    data_dir = tmp_path / "data"
    status = main(
        ["fit", "--data=MNISTDataModule", f"--data.data_dir={data_dir}", f"--data.download={str(download).lower()}"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("manualbp: error: MNISTDataModule: mnist not found in ")
    assert ("--data.download=true" in err) is (not download)
    if download:
        assert "the download failed (Error downloading train-images-idx3-ubyte.gz: Tried 2 mirrors)" in err
    assert not data_dir.exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_a_run_prints_only_what_the_user_asked_for(tmp_path, capfd):
    notices = [
        logging.getLogger(name) for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.seed")
    ]
    levels = [logger.level for logger in notices]
    job = ["--model.hidden=[16]", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=2"]
    assert main(["fit", *job, "--trainer.max_epochs=2"]) == 0
    assert [logger.level for logger in notices] == levels  # put back
    out, err = capfd.readouterr()
    for notice in (
        "Tip",
        "will override existing callbacks",
        "tensorboardX",
        "deprecated",
        "GPU available",
        "Seed set",
    ):
        assert notice not in out + err, notice
    assert "test_acc = " in out
    # stdout is not a terminal here: one plain line per epoch, the metrics the bar would show, and no bar
    assert "\r" not in out and "\x1b" not in out
    epochs = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 2, epochs
    assert all(re.fullmatch(r"Epoch \d: train_loss=\S+ val_loss=\S+ val_acc=\S+", line) for line in epochs), epochs


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
def test_the_progress_bar_is_kept_on_a_terminal_only(monkeypatch, terminal):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    bar = command(["--trainer.max_epochs=1"], run=False).trainer.progress_bar_callback
    # on a terminal, Lightning's own default (its rich bar when rich is installed, tqdm's otherwise)
    lightning_default = type(pl.Trainer(logger=False, enable_checkpointing=False).progress_bar_callback).__name__
    assert type(bar).__name__ == (lightning_default if terminal else "EpochLines")
    assert command(["--trainer.enable_progress_bar=false"], run=False).trainer.progress_bar_callback is None


def test_the_test_after_fit_takes_the_final_weights_beside_a_checkpoint_callback_without_a_best(tmp_path, capsys):
    # OnExceptionCheckpoint is a Checkpoint with no best_model_path, and with it the run has no ModelCheckpoint: the
    # test after fit takes the final weights (it crashed on the missing attribute once the fit had ended)
    on_exception = ["--trainer.callbacks+=OnExceptionCheckpoint", f"--trainer.callbacks.dirpath={tmp_path / 'saved'}"]
    assert main(["fit", *_SMALL, "--trainer.max_epochs=1", *on_exception]) == 0
    out = capsys.readouterr().out
    assert "test_acc = " in out and "(final weights)" in out
