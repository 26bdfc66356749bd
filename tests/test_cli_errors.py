"""The ``manualbp`` command answers a bad option with a message and exit status 2, not a traceback, before the
run writes anything; an error once training runs is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import manualbp.lightning
from manualbp.cli import ManualbpCLI, main
from manualbp.lightning import ClassifierModule
from manualbp.per_sample import PerSampleError


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the Trainer writes stays out of the repository


@pytest.mark.parametrize(
    "option, message",
    [
        pytest.param(
            "--data.batch_size=0", "DigitsDataModule: batch_size must be at least 1, got 0", id="data-batch-size"
        ),
        pytest.param(
            "--data.num_workers=-1", "DigitsDataModule: num_workers must be at least 0, got -1", id="data-workers"
        ),
        pytest.param(
            "--trainer.max_epochs=-5", "`max_epochs` must be a non-negative integer or -1", id="trainer-max-epochs"
        ),
        pytest.param("--model.dropout=2", "ClassifierModule: dropout must lie in [0, 1), got 2.0", id="model-dropout"),
        pytest.param("--optimizer.lr=-1", "Invalid learning rate: -1.0", id="optimizer-lr"),
        pytest.param(
            ["--optimizer=SGD", "--optimizer.momentum=-1"], "Invalid momentum value: -1.0", id="optimizer-momentum"
        ),
        pytest.param("--model.hidden=[-3]", "mlp: hidden widths must be positive ints, got [-3]", id="model-hidden"),
    ],
)
def test_a_value_rejected_while_building_is_one_line_and_status_2(option, message, capsys):
    assert main(["fit", *([option] if isinstance(option, str) else option)]) == 2
    err = capsys.readouterr().err
    assert f"manualbp: error: {message}" in err
    assert "Traceback" not in err


def test_a_data_module_error_is_reported_without_jsonargparse_wrapping(capsys):
    assert main(["fit", "--data=MNISTDataModule", "--data.val_size=-3"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "manualbp: error: MNISTDataModule: val_size must be positive, got -3"
    assert "Union subtypes" not in err


@pytest.mark.parametrize(
    "option, message",
    [
        pytest.param("--nosuch=1", "unrecognized option --nosuch", id="unknown-option"),
        pytest.param("--model.backend=foo", "--model.backend=foo is not one of manual, autograd", id="bad-choice"),
        pytest.param(
            "--trainer.max_epochs=many",
            """Parser key "trainer.max_epochs": Expected a <class 'int'>; Given value: many""",
            id="bad-type",
        ),
    ],
)
def test_parse_errors_exit_2_with_the_message_and_no_usage(option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", option])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"manualbp: error: {message}", "see `manualbp fit --help`"]


def _parse_error(args: list[str], capsys) -> str:
    """The one error line of ``manualbp <args>``, a parse error (exit status 2, then the pointer to --help)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    error, pointer = capsys.readouterr().err.splitlines()
    assert error.startswith("manualbp: error: ") and pointer == f"see `manualbp {args[0]} --help`"
    return error.removeprefix("manualbp: error: ")


def test_predict_without_a_checkpoint_is_refused_before_the_run(tmp_path, capsys):
    message = _parse_error(["predict"], capsys)
    assert message.startswith("predict needs --ckpt_path, the checkpoint to predict with")
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("subcommand", ["fit", "predict"])
def test_a_checkpoint_that_is_not_there_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, subcommand):
    message = _parse_error([subcommand, "--ckpt_path=nosuch/last.ckpt"], capsys)
    assert message == "--ckpt_path=nosuch/last.ckpt: no such file"
    assert not (tmp_path / "lightning_logs").exists()


class BatchNormNet(torch.nn.Module):
    """A network for the (N, 1, 8, 8) digits that normalises with the statistics of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(144, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


_DP = ["--model.dp.noise_multiplier=1.0", "--model.dp.max_grad_norm=1.0", "--model.dp.delta=1e-5"]


def test_dp_sgd_refuses_batch_norm_when_the_model_is_built(tmp_path, capsys):
    with pytest.raises(PerSampleError, match=r"ClassifierModule\(dp=...\): layers.1 \(BatchNorm2d\) normalises"):
        ClassifierModule(net=BatchNormNet(), in_shape=(1, 8, 8), dp={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    assert main(["fit", "--model.net=tests.test_cli_errors.BatchNormNet", *_DP]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("manualbp: error: ClassifierModule(dp=...): layers.1 (BatchNorm2d) normalises with the")
    assert "Traceback" not in err and not (tmp_path / "lightning_logs").exists()


def _lstm_checkpoint(root: Path) -> Path:
    job = [
        "--model.arch=lstm",
        "--model.hidden_size=8",
        "--trainer.limit_train_batches=1",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--test_after_fit=false",
        f"--trainer.default_root_dir={root}",
    ]
    assert main(["fit", *job]) == 0
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_an_option_that_the_checkpoint_would_replace_is_an_error_naming_both(tmp_path, capsys):
    checkpoint = _lstm_checkpoint(tmp_path / "lstm")
    capsys.readouterr()
    message = _parse_error(["predict", "--model.arch=mlp", f"--ckpt_path={checkpoint}"], capsys)
    assert message.startswith(
        f"--model.arch=mlp conflicts with checkpoint {checkpoint}, trained with --model.arch=lstm (a checkpoint's "
    )
    message = _parse_error(["fit", "--model.hidden_size=16", f"--ckpt_path={checkpoint}"], capsys)
    assert message.startswith("--model.hidden_size=16 conflicts with checkpoint ")
    assert not (tmp_path / "lightning_logs").exists()


def test_the_checkpoints_own_options_given_again_are_no_conflict(tmp_path, capsys):
    """Options equal to the checkpoint's, the run's config.yaml among them (as the README's resume says), pass."""
    checkpoint = _lstm_checkpoint(tmp_path)
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    capsys.readouterr()
    args = ["fit", f"--config={config}", "--model.arch=lstm", "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}"]
    assert main(args) == 0
    # the resumed fit trains its second epoch (the model summary may come first: a table when rich is installed)
    assert "\nEpoch 1: " in "\n" + capsys.readouterr().out


def test_arch_and_net_together_are_an_error_naming_both(capsys, monkeypatch):
    monkeypatch.setattr(ManualbpCLI, "_run_subcommand", lambda self, subcommand: pytest.fail("the run started"))
    net = "--model.net=tests.test_training_cli.SmallCNN"
    assert _parse_error(["fit", net, "--model.arch=lstm"], capsys) == (
        "--model.arch=lstm and --model.net=tests.test_training_cli.SmallCNN are both given: a network of your own "
        "replaces the built-in arch, so give one of them"
    )


def test_dfa_on_a_recurrent_arch_names_the_layers_it_cannot_drive(capsys):
    for layers in ("1", "2"):
        args = ["fit", "--model.arch=lstm", "--model.rule=direct_feedback_alignment", f"--model.num_layers={layers}"]
        assert main(args) == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(
                "needs at least two layers it drives (manualbp Linear, LinearReLU, Conv2d: the hidden ones and the "
                "output), found 1: out (Linear); it does not apply to lstm (LSTM)"
            )
        )


def test_an_error_once_training_runs_keeps_its_traceback(monkeypatch):
    def failing_run(self, subcommand):
        raise ValueError("a bug inside training")

    monkeypatch.setattr(ManualbpCLI, "_run_subcommand", failing_run)
    with pytest.raises(ValueError, match="a bug inside training"):
        main(["fit"])


def test_a_bug_while_building_that_is_no_argument_check_keeps_its_traceback(monkeypatch):
    def broken_mlp(*args, **kwargs):
        raise RuntimeError("a bug in the model builder")

    monkeypatch.setattr(manualbp.lightning, "mlp", broken_mlp)
    with pytest.raises(RuntimeError, match="a bug in the model builder"):
        main(["fit"])


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--op", "nosuchop"], "no op case starts with ['nosuchop']", id="unknown-op"),
        pytest.param(["--check", "nosuch"], "argument --check: invalid choice: 'nosuch'", id="unknown-check"),
    ],
)
def test_verify_rejects_unknown_ops_and_checks(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
