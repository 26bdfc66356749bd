"""The ``manualbp`` command's parser: exact option names, a misspelt one answered with the option meant, and a
one-line description for every ``--model.*`` and ``--data.*`` option in the help."""

from __future__ import annotations

import re

import pytest

from manualbp.cli import ManualbpCLI, main


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the Trainer would write stays out of the repository


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param(
            ["--trainer.max_epoch=1"],
            "unrecognized option --trainer.max_epoch; did you mean --trainer.max_epochs?",
            id="abbreviation",
        ),
        pytest.param(
            ["--trainer.max_epoch", "1"],
            "unrecognized option --trainer.max_epoch; did you mean --trainer.max_epochs?",
            id="abbreviation-value-apart",
        ),
        pytest.param(["--modle.arch=lenet5"], "unrecognized option --modle.arch; did you mean --model.arch?", id="key"),
        pytest.param(
            ["--dat.batch_size=3"],
            "unrecognized option --dat.batch_size; did you mean --data.batch_size?",
            id="default-data",
        ),
        pytest.param(
            ["--data=MNISTDataModule", "--data.batchsize=3"],
            "unrecognized option --data.batchsize for MNISTDataModule; did you mean --data.batch_size?",
            id="given-data",
        ),
        pytest.param(
            ["--model.arch=lstmm"],
            "--model.arch=lstmm is not one of mlp, lenet5, rnn, lstm, gru, vit; did you mean lstm?",
            id="choice",
        ),
        pytest.param(
            ["--trainer.callbacks+=GradientFlo"],
            "--trainer.callbacks: unknown class GradientFlo; did you mean GradientFlow?",
            id="callback-class",
        ),
        pytest.param(
            ["--data=MNISTDataModul"],
            "--data: unknown class MNISTDataModul; did you mean MNISTDataModule?",
            id="data-class",
        ),
        pytest.param(
            ["--model.dp.noise_multiplier=1.0"],
            "--model.dp (DifferentialPrivacy) needs --model.dp.max_grad_norm too: it has no default",
            id="required-argument",
        ),
    ],
)
def test_a_misspelt_option_names_the_option_meant_and_nothing_runs(options, message, capsys, monkeypatch):
    runs = []
    monkeypatch.setattr(ManualbpCLI, "_run_subcommand", lambda self, subcommand: runs.append(subcommand))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *options])
    assert exit_info.value.code == 2
    assert not runs
    assert capsys.readouterr().err.splitlines() == [f"manualbp: error: {message}", "see `manualbp fit --help`"]


def test_help_lists_verify_with_the_other_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict,verify}" in out
    assert re.search(r"^ +verify +Check every built-in manualbp op", out, re.MULTILINE)


def _help(args: list[str], capsys) -> str:
    """What ``manualbp <args>`` prints, a help that ends with exit status 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _descriptions(help_text: str, prefix: str) -> dict[str, str]:
    """Each option of ``help_text`` that starts with ``prefix``, and its description without the
    "(type: ..., default: ...)" that jsonargparse adds to every option."""
    texts: dict[str, str] = {}
    option = None
    for line in help_text.splitlines():
        if line.startswith(f"  {prefix}"):
            spec, _, text = line.strip().partition("  ")  # two spaces part the option from its text
            option = spec.split()[0].rstrip(",")
            texts[option] = text
        elif option is not None and line.startswith(" " * 24):
            texts[option] += " " + line.strip()
        else:
            option = None
    return {option: re.sub(r"\(type: .*\)$", "", text, flags=re.DOTALL).strip() for option, text in texts.items()}


def test_every_model_option_has_a_description(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    descriptions = _descriptions(_help(["fit", "--help"], capsys), "--model.")
    assert "--model.arch" in descriptions
    assert [option for option, text in descriptions.items() if not text] == []


@pytest.mark.parametrize("data_module", ["DigitsDataModule", "MNISTDataModule"])
def test_every_data_option_has_a_description(data_module, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    descriptions = _descriptions(_help(["fit", "--data.help", data_module], capsys), "--data.")
    assert "--data.batch_size" in descriptions
    assert [option for option, text in descriptions.items() if not text] == []


def test_help_shows_the_model_and_data_and_leaves_the_trainer_to_its_own_section(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    short = _help(["fit", "--help"], capsys)
    assert len(short.splitlines()) < 300  # 1,323 lines with every Trainer option and every torch.nn Module listed
    assert short.index("--model.arch") < short.index("--data ") < short.index("--optimizer ")
    assert "--trainer.max_epochs" not in short and "`manualbp fit --help=trainer`" in " ".join(short.split())
    trainer = _help(["fit", "--help=trainer"], capsys)
    assert "--trainer.max_epochs" in trainer and "--model.arch" not in trainer
    everything = _help(["fit", "--help=all"], capsys)
    assert "--trainer.max_epochs" in everything and "--model.arch" in everything
