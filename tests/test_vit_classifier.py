"""The vision transformer classifier (``arch=vit``): both backends build the same network with the same weights,
its options reach it, bad shapes are clear errors, it trains with its own recipe, and checkpoints check its shape."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import manualbp.functional as MF
from manualbp.checkpoints import CheckpointMismatchError, check_checkpoint_fits
from manualbp.cli import command, main
from manualbp.convert import layer_summary
from manualbp.lightning import ClassifierModule
from manualbp.models import ViTOptions, vit


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 28, 28), (3, 12, 12)], ids=["digits", "mnist", "3channels"])
def test_backends_share_names_weights_outputs_and_gradients(in_shape):
    models = {}
    for backend in ("manual", "autograd"):
        torch.manual_seed(0)
        models[backend] = vit(hidden_dim=8, num_layers=2, num_heads=2, mlp_dim=16, in_shape=in_shape, backend=backend)
    manual, reference = models["manual"], models["autograd"]
    assert layer_summary(manual)["torch"] == {} and layer_summary(reference)["manual"] == {}
    assert_close(manual.state_dict(), reference.state_dict(), rtol=0, atol=0)
    x, y = torch.randn(4, *in_shape), torch.tensor([0, 3, 9, 1])
    MF.cross_entropy(manual(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(manual.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_patch_grid_is_four_by_four_unless_given():
    assert vit(in_shape=(1, 28, 28)).patch_size == 7
    assert vit(in_shape=(1, 8, 8)).patch_size == 2
    assert vit(patch_size=4, in_shape=(1, 28, 28)).encoder.pos_embedding.shape == (1, 50, 64)


def test_the_vit_options_reach_the_network_through_the_command():
    options = ["--model.arch=vit", "--model.vit.hidden_dim=16", "--model.vit.num_layers=1", "--model.vit.num_heads=2"]
    cli = command(options, run=False)
    net = cli.model.net
    assert (net.hidden_dim, len(net.encoder.layers), net.encoder.layers[0].num_heads) == (16, 1, 2)
    assert cli.config.optimizer is None  # the arch's own recipe: Adam under a one-cycle schedule
    assert cli.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            dict(patch_size=3),
            "vit: needs a square image cut into whole patches, got in_shape (1, 8, 8) and patch_size 3",
        ),
        (dict(hidden_dim=10), "vit: hidden_dim (10) must be a multiple of num_heads (4)"),
        (dict(num_layers=0), "vit: num_layers must be at least 1, got 0"),
    ],
)
def test_bad_shapes_are_clear_errors(shape, message, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        ClassifierModule(arch="vit", vit=ViTOptions(**shape), in_shape=(1, 8, 8))
    options = [f"--model.vit.{name}={value}" for name, value in shape.items()]
    assert main(["fit", "--model.arch=vit", *options]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"manualbp: error: {message}"


def test_a_checkpoint_of_another_vit_shape_is_refused_and_the_defaults_match_none():
    small = ClassifierModule(arch="vit", vit=ViTOptions(hidden_dim=16, num_heads=2), in_shape=(1, 8, 8))
    checkpoint = {"hyper_parameters": dict(small.hparams), "state_dict": small.state_dict()}
    default = ClassifierModule(arch="vit", in_shape=(1, 8, 8))
    with pytest.raises(CheckpointMismatchError, match=re.escape("--model.vit=")):
        check_checkpoint_fits(checkpoint, default.hparams, default.state_dict())
    spelled_out = ClassifierModule(arch="vit", vit=ViTOptions(), in_shape=(1, 8, 8))
    saved = {"hyper_parameters": dict(default.hparams), "state_dict": default.state_dict()}
    check_checkpoint_fits(saved, spelled_out.hparams, spelled_out.state_dict())  # None and the defaults agree


def test_fast_dev_run_through_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--model.arch=vit", "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]) == 0
    assert "test_acc = " in capsys.readouterr().out
