"""The ``manualbp`` command answers a bad option with a message and exit status 2, not a traceback;
an error once training runs is a bug and keeps its traceback."""

from __future__ import annotations

import pytest

import manualbp.lightning
from manualbp.cli import ManualbpCLI, main


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the Trainer writes stays out of the repository


@pytest.mark.parametrize(
    "option, message",
    [
        pytest.param("--data.batch_size=0", "DigitsDataModule: batch_size must be at least 1, got 0", id="data-batch-size"),
        pytest.param("--data.num_workers=-1", "DigitsDataModule: num_workers must be at least 0, got -1", id="data-workers"),
        pytest.param("--trainer.max_epochs=-5", "`max_epochs` must be a non-negative integer or -1", id="trainer-max-epochs"),
        pytest.param("--model.dropout=2", "ClassifierModule: dropout must lie in [0, 1), got 2.0", id="model-dropout"),
        pytest.param("--optimizer.lr=-1", "Invalid learning rate: -1.0", id="optimizer-lr"),
        pytest.param(["--optimizer=SGD", "--optimizer.momentum=-1"], "Invalid momentum value: -1.0", id="optimizer-momentum"),
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
        pytest.param(
            "--model.backend=foo",
            """Parser key "model.backend": Expected a typing.Literal['manual', 'autograd']. Got value: foo""",
            id="bad-choice",
        ),
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
