"""A checkpoint may name code to run: its options hold a network of the user's own as a class path
(``net: {class_path: somepkg.Net}``), which loading would import and construct. Loading imports and constructs
nothing the checkpoint names unless the user names it too (``trusted_classes=`` in Python, ``--model.net`` on the
command line); the built-in networks name nothing and load as ever.

The crafted checkpoints name a module written by the test into tmp_path (on ``sys.path``) whose import and
constructor each append a line to a marker file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.testing import assert_close

from manualbp.checkpoints import UntrustedCheckpointError, named_classes
from manualbp.cli import main
from manualbp.lightning import ClassifierModule

_NET = """
import pathlib

import torch

MARKER = pathlib.Path(__file__).with_suffix(".ran")
with MARKER.open("a") as f:
    f.write("imported\\n")


class Net(torch.nn.Module):
    def __init__(self, width: int = 10) -> None:
        super().__init__()
        with MARKER.open("a") as f:
            f.write("constructed\\n")
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(64, width)

    def forward(self, x):
        return self.fc(self.flat(x))
"""


class _SameLayers(torch.nn.Module):
    """The untrusted Net's layers, to make its weights without running it."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(x))


@pytest.fixture
def untrusted(tmp_path, monkeypatch):
    """(module name, marker file): a module on sys.path that leaves a trace when imported or its Net built."""
    name = f"untrusted_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # lightning_logs/ of the command stays here
    yield name, tmp_path / f"{name}.ran"
    sys.modules.pop(name, None)


def _checkpoint(path: Path, net: object) -> Path:
    """A checkpoint as ``manualbp fit --model.net=...`` saves it: the options with ``net`` as given, LightningCLI's
    instantiator, and the weights of a network with the same layers."""
    module = ClassifierModule(net=_SameLayers(), in_shape=(1, 8, 8))
    hparams = {
        **ClassifierModule(in_shape=(1, 8, 8)).hparams,
        "net": net,
        "_instantiator": "pytorch_lightning.cli.instantiate_module",
    }
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": pl.__version__},
        path,
    )
    return path


def _net(name: str, **init_args: object) -> dict:
    return {"class_path": f"{name}.Net", "init_args": {"width": 10, **init_args}}


def test_python_loading_refuses_a_class_the_user_did_not_name(untrusted, tmp_path):
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", _net(name))
    with pytest.raises(UntrustedCheckpointError) as error:
        ClassifierModule.load_from_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint {path} names {name}.Net (as net), which loading it would import and construct"
    )
    assert message.endswith(
        f"if you trust the file, pass trusted_classes=['{name}.Net'] to ClassifierModule.load_from_checkpoint"
    )
    assert not marker.exists() and name not in sys.modules


def test_python_loading_with_the_class_trusted_builds_it(untrusted, tmp_path):
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", _net(name))
    model = ClassifierModule.load_from_checkpoint(path, trusted_classes=[f"{name}.Net"])
    assert type(model.net).__module__ == name and marker.read_text() == "imported\nconstructed\n"
    assert_close(model.net.fc.weight, torch.load(path, weights_only=True)["state_dict"]["net.fc.weight"])


def test_python_loading_with_the_network_handed_over_imports_nothing(untrusted, tmp_path):
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", _net(name))
    model = ClassifierModule.load_from_checkpoint(path, net=_SameLayers())
    assert isinstance(model.net, _SameLayers) and not marker.exists()


@pytest.mark.parametrize(
    "net, where",
    [
        pytest.param(
            lambda name: {"class_path": "torch.nn.Identity", "init_args": {"inner": {"class_path": f"{name}.Net"}}},
            "net.init_args.inner",
            id="nested",
        ),
        pytest.param(lambda name: f"{name}.Net", "net", id="short-form"),
    ],
)
def test_a_class_anywhere_in_the_options_needs_trust(untrusted, tmp_path, net, where):
    """A class nested in a trusted class's arguments, and ``net`` as a bare class path (jsonargparse resolves both)."""
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", net(name))
    with pytest.raises(UntrustedCheckpointError, match=rf"names {name}\.Net \(as {where}\), which"):
        ClassifierModule.load_from_checkpoint(path, trusted_classes=["torch.nn.Identity"])
    assert not marker.exists()


def test_a_built_in_network_loads_without_trust(tmp_path):
    model = ClassifierModule(hidden=(16,), in_shape=(1, 8, 8))
    path = tmp_path / "mlp.ckpt"
    hparams = {**model.hparams, "_instantiator": "pytorch_lightning.cli.instantiate_module"}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": pl.__version__},
        path,
    )
    loaded = ClassifierModule.load_from_checkpoint(path)
    assert_close(loaded.net.fc1.weight, model.net.fc1.weight)
    assert list(named_classes(hparams)) == []


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_the_command_refuses_a_class_the_command_line_does_not_name(untrusted, tmp_path, capsys, subcommand):
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", _net(name))
    assert main([subcommand, f"--ckpt_path={path}"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("manualbp: error:")]
    assert f"checkpoint {path} names {name}.Net (as net), which loading it would import and construct" in line
    assert line.endswith(f"name it yourself: --model.net={name}.Net (or give the run's config.yaml with --config)")
    assert "Traceback" not in err and not marker.exists() and name not in sys.modules


def test_the_command_loads_the_class_named_on_the_command_line(untrusted, tmp_path, capsys):
    name, marker = untrusted
    path = _checkpoint(tmp_path / "crafted.ckpt", _net(name))
    args = ["predict", f"--model.net={name}.Net", "--trainer.enable_progress_bar=false", f"--ckpt_path={path}"]
    assert main(args) == 0
    assert "predictions written to" in capsys.readouterr().out
    assert marker.read_text().startswith("imported\n") and "constructed" in marker.read_text()
