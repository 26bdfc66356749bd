"""The ``manualbp`` command: a LightningCLI over ClassifierModule and the digit DataModules.

``manualbp fit`` trains the default job (an MLP with hand-written backprop on scikit-learn's digits)
and then tests the best checkpoint (of the whole fit, when it resumed one); ``predict`` writes
``predictions.csv`` into the run's folder; ``validate``, ``test``, ``--config`` and ``--print_config`` behave as
in any LightningCLI, and so do ``--optimizer`` and ``--lr_scheduler`` (Adam, lr 1e-3, by default; the recurrent
archs have their own recipe). ``manualbp verify`` is dispatched before the LightningCLI. With stdout not a
terminal, a fit prints one plain line per epoch instead of the progress bar (``EpochLines``); a fit stopped by
Ctrl-C says how to resume it (``ResumeHint``).

A bad option fails with a message and exit status 2, never a traceback: the parser
(``manualbp.cli_parser``) rejects unknown options, suggesting the closest one, and values of the wrong type;
a value that only a class's own checks reject (``--data.batch_size=0``, ``--optimizer.lr=-1``) fails while
the data module, model, optimizer and trainer are built; data that is not there (``DataNotFoundError``) and a
checkpoint of another network (``CheckpointMismatchError``) stop the run, and so does a checkpoint that names a
class the command line does not (``UntrustedCheckpointError``: ``--ckpt_path`` loads only the classes the user
names, see ``ManualbpCLI.parse_arguments``). ``main`` reports each as ``manualbp: error: <message>``. A missing
``--ckpt_path`` (``predict``) or checkpoint file, and options that the run would ignore (``--model.arch`` next to
``--model.net``, a ``--model.*`` value other than the checkpoint's), are parse errors. All of these stop the run
before it writes anything. Any other exception during training is a bug, and keeps its traceback.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse import lazy_instance
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar
from pytorch_lightning.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    LRSchedulerTypeTuple,
    instantiate_class,
)
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer

from manualbp.callbacks import GradientCheckCallback, GradientFlow, LearningAnimation
from manualbp.checkpoints import (
    CheckpointMismatchError,
    UntrustedCheckpointError,
    check_checkpoint_fits,
    check_trusted,
    given_options_differing,
    named_classes,
    show_option,
)
from manualbp.cli_parser import ManualbpArgumentParser, add_verify_subcommand
from manualbp.data import DataNotFoundError, DigitsDataModule, MNISTDataModule, TensorDataModule
from manualbp.lightning import OWN_RECIPE, ClassifierModule
from manualbp.per_sample import PerSampleError
from manualbp.predictions import PredictionWriter
from manualbp.quiet import EpochLines, quiet_run

# Imported so that short names resolve on the command line: --data=MNISTDataModule,
# --trainer.callbacks+=LearningAnimation, +=GradientCheckCallback, +=GradientFlow.
__all__ = [
    "ConfigurationError",
    "GradientCheckCallback",
    "GradientFlow",
    "LearningAnimation",
    "MNISTDataModule",
    "ManualbpCLI",
    "main",
]

_DESCRIPTION = (
    "manualbp: train digit classifiers with hand-written backprop (fit, validate, test, predict). "
    "`manualbp verify` checks every built-in op against PyTorch (see `manualbp verify --help`)."
)


# What a class's own argument checks raise while the CLI builds it (MisconfigurationException: the
# Trainer's, for --trainer.max_epochs=-5 or an accelerator the machine lacks; PerSampleError: DP-SGD's, for a
# network that normalises with batch statistics).
_CONFIGURATION_ERRORS = (ValueError, TypeError, FileNotFoundError, MisconfigurationException, PerSampleError)

# Lightning's --ckpt_path values that name no file: "best", "last", "hpc", "registry[:...]".
_CHECKPOINT_KEYWORDS = ("best", "last", "hpc")


class ConfigurationError(Exception):
    """A value from the command line or a config file that a class rejected while the CLI built it."""


def _first_cause(error: BaseException) -> BaseException:
    """The exception that started ``error``'s chain of ``raise ... from``: jsonargparse wraps a data
    module's own ValueError in a long "Does not validate against any of the Union subtypes" report."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class ManualbpCLI(LightningCLI):
    """LightningCLI with the data's shape linked into the model, the optimizer chosen by ``--optimizer``, a test
    of the best checkpoint after fit and predictions written to a CSV file."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Lightning's subcommands, and ``verify`` listed with them (``main`` runs it)."""
        super()._add_subcommands(parser, **kwargs)
        add_verify_subcommand(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse the command line into ``self.config``; then refuse, before anything is built or written, what the
        run would otherwise take without a word, each with one line naming the options (the subcommand parser's
        error, exit status 2):

        * ``predict`` without ``--ckpt_path`` (it would predict with untrained weights), and a ``--ckpt_path`` on
          this machine that is no file (Lightning's keywords ``last``, ``best``, ``hpc``, ``registry`` pass);
        * ``--model.arch`` set to a built-in network next to ``--model.net`` (given, or the checkpoint's), which
          replaces it;
        * a checkpoint whose options name a class (``net: {class_path: ...}``, a class in its arguments) that the
          user's own options (the command line, the ``--config`` files) do not name: LightningCLI merges those
          options into the config next, importing and constructing every class they name.
          ``UntrustedCheckpointError`` names the class and the option that trusts it (``--model.net=mypackage.MyNet``);
          the built-in networks name none;
        * a ``--model.*`` option given (on the command line or in a ``--config`` file) with another value than the
          checkpoint's: that merge would replace it by the checkpoint's.

        What the user gave is told from the defaults by parsing ``args`` once more without them. The checkpoint is
        read with ``weights_only=True``, as LightningCLI reads it, and kept for ``instantiate_classes``."""
        super().parse_arguments(parser, args)
        self._command_line = list(sys.argv[1:] if args is None else args)
        self._checkpoint: dict[str, Any] | None = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        subparser = self._parser(subcommand)
        # _skip_validation: jsonargparse's own switch for a parse whose result is not run (no required options)
        given_options = parser.parse_args(self._command_line, defaults=False, _skip_validation=True)
        given_model = given_options[subcommand].get("model")
        given = given_model.as_dict() if given_model is not None else {}
        path = self.config[subcommand].get("ckpt_path")
        if subcommand == "predict" and not path:
            subparser.error(
                "predict needs --ckpt_path, the checkpoint to predict with (e.g. "
                "--ckpt_path=lightning_logs/version_0/checkpoints/last.ckpt): without one the weights are untrained"
            )
        if path and not _is_checkpoint_keyword(path) and _is_local_file_protocol(str(path)):
            if not Path(path).is_file():
                subparser.error(f"--ckpt_path={path}: no such file")
            self._checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        hparams = self._checkpoint.get("hyper_parameters", {}) if self._checkpoint is not None else {}
        _check_arch_and_net(given, hparams, subparser)
        if not hparams:
            return
        model = self.config[subcommand].get("model")
        trusted = {name for _, name in named_classes(model.as_dict() if model is not None else {})}
        own = f"{ClassifierModule.__module__}.{ClassifierModule.__qualname__}"
        check_trusted(hparams, {own, *trusted}, path, _command_line_trust)
        _check_given_options(given, hparams, path, subparser)

    def instantiate_classes(self) -> None:
        """Build the data module, model and trainer; an argument check that fails while doing so (a
        ValueError, TypeError, FileNotFoundError or Lightning's MisconfigurationException at the start
        of the chain) becomes a ``ConfigurationError`` carrying that check's message. The optimizer and
        scheduler are built once on the model's parameters too, so that their own checks (a negative lr)
        fail here rather than once training starts, and the ``--ckpt_path`` checkpoint is checked against the
        model (``CheckpointMismatchError``), as ``on_load_checkpoint`` does once the run has made its folder."""
        try:
            super().instantiate_classes()
            self._check_optimization()
        except _CONFIGURATION_ERRORS as error:
            cause = _first_cause(error)
            if not isinstance(cause, _CONFIGURATION_ERRORS):
                raise
            raise ConfigurationError(str(cause) or type(cause).__name__) from error
        if self._checkpoint is not None:
            path = self.config[self.subcommand].get("ckpt_path")
            check_checkpoint_fits(self._checkpoint, dict(self.model.hparams), self.model.state_dict(), path)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's Trainer, with ``ResumeHint`` for a fit and, when stdout is not a terminal, ``EpochLines`` in
        place of the progress bar (unless the options turn the bar off or give one)."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if self.subcommand == "fit":
            callbacks.append(ResumeHint(self._command_line))
        plain = not sys.stdout.isatty() and config.get("enable_progress_bar") is not False
        if plain and not any(isinstance(callback, ProgressBar) for callback in callbacks):
            callbacks.append(EpochLines())
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})

    def before_instantiate_classes(self) -> None:
        """An arch with its own recipe (rnn, lstm, gru, vit) given neither ``--optimizer`` values of its own nor ``--lr_scheduler``
        trains with its own recipe, ``ClassifierModule.configure_optimizers`` (Adam under a one-cycle schedule):
        the command's default Adam steps aside, and the saved config.yaml shows ``optimizer: null``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        default = self._parser(self.subcommand).get_defaults().optimizer
        own_recipe = config.model.get("arch") in OWN_RECIPE and config.model.get("net") is None
        if own_recipe and not config.get("lr_scheduler") and config.get("optimizer") == default:
            config.optimizer = None

    def _check_optimization(self) -> None:
        optimizer_init = self._get(self.config_init, "optimizer")
        if not optimizer_init:
            return
        optimizer = instantiate_class((list(self.model.parameters()),), optimizer_init)
        scheduler_init = self._get(self.config_init, "lr_scheduler")
        if scheduler_init:
            instantiate_class(optimizer, scheduler_init)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": lazy_instance(DigitsDataModule)})
        # LightningCLI's --optimizer and --lr_scheduler choose the optimization, Adam (lr 1e-3) by default,
        # so the saved config.yaml always names the optimizer a run used.
        parser.add_optimizer_args((Optimizer,))
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        assert parser.groups is not None, "the two calls above added groups"
        parser.groups[
            "optimizer"
        ].title = "Optimizer (Adam, lr 1e-3, by default; the recurrent archs and vit have their own)"
        parser.groups["lr_scheduler"].title = "Learning-rate schedule (none unless --lr_scheduler gives one)"
        parser.set_defaults({"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}})
        parser.link_arguments("data.in_shape", "model.in_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint and print test_acc."
        )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        # the first ModelCheckpoint: another Checkpoint (OnExceptionCheckpoint) keeps no best
        checkpoint = next((c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        best = checkpoint.best_model_path if checkpoint is not None else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if results and "test_acc" in results[0] and self.trainer.is_global_zero:
            source = f"best checkpoint {best}" if best else "final weights"
            print(f"test_acc = {results[0]['test_acc']:.4f} ({source})")

    def before_predict(self) -> None:
        """Predictions go to ``predictions.csv`` in the run's log folder (``PredictionWriter``), unless the
        trainer already has a prediction writer of the user's own."""
        callbacks: list[pl.Callback] = self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector, undeclared
        if not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())

    def after_predict(self) -> None:
        callbacks: list[pl.Callback] = self.trainer.callbacks  # type: ignore[attr-defined]  # as in before_predict
        for writer in callbacks:
            if isinstance(writer, PredictionWriter) and writer.path is not None:
                print(f"predictions written to {writer.path}")


class ResumeHint(pl.Callback):
    """When Ctrl-C stops a fit (Lightning ends it, keeping the checkpoints written at the ends of epochs, and exits
    with status 1), say so on stderr, with the command line that resumes it from the newest checkpoint:
    ``command_line`` with ``--ckpt_path=<run folder>/checkpoints/last.ckpt`` in place of any ``--ckpt_path``."""

    def __init__(self, command_line: Sequence[str]) -> None:
        self.command_line = list(command_line)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        written = [
            Path(path)
            for callback in trainer.checkpoint_callbacks
            for path in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", ""))
            if path and Path(path).is_file()
        ]
        stopped = f"manualbp: fit interrupted in epoch {trainer.current_epoch}"
        if not written:
            print(f"{stopped}, before its first checkpoint (the end of an epoch): nothing to resume", file=sys.stderr)
            return
        newest = max(written, key=lambda path: path.stat().st_mtime_ns)
        args = _without_option(self.command_line, "--ckpt_path")
        print(
            f"{stopped}; its checkpoints are intact. Resume it from the newest with:\n"
            f"  {shlex.join(['manualbp', *args, f'--ckpt_path={newest}'])}",
            file=sys.stderr,
        )


def _without_option(args: Sequence[str], option: str) -> list[str]:
    """``args`` without ``option`` and its value (``--option=value`` or ``--option value``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if not skip and arg != option and not arg.startswith(f"{option}="):
            kept.append(arg)
        skip = arg == option
    return kept


def _is_checkpoint_keyword(path: str | Path) -> bool:
    """Whether ``path`` is one of Lightning's ``ckpt_path`` keywords rather than a file."""
    return str(path) in _CHECKPOINT_KEYWORDS or str(path).startswith("registry")


def _check_arch_and_net(given: dict[str, Any], hparams: dict[str, Any], parser: LightningArgumentParser) -> None:
    """Refuse ``--model.arch`` set to another network than the default next to ``--model.net``, given in ``given``
    or the checkpoint's options ``hparams``: the network of the user's own replaces the built-in one."""
    arch, default = given.get("arch"), parser.get_default("model.arch")
    net = given.get("net") or hparams.get("net")
    if arch in (None, default) or net is None:
        return
    source = "" if given.get("net") else " (the checkpoint's)"
    parser.error(
        f"--model.arch={arch} and --model.net={show_option(net)}{source} are both given: a network of your own "
        "replaces the built-in arch, so give one of them"
    )


def _check_given_options(
    given: dict[str, Any], hparams: dict[str, Any], path: str, parser: LightningArgumentParser
) -> None:
    """Refuse a ``--model.*`` option in ``given`` whose value differs from the options ``hparams`` of the checkpoint
    at ``path``, naming the first such option and both values."""
    differing = given_options_differing(given, hparams)
    if not differing:
        return
    where, value, saved = differing[0]
    parser.error(
        f"--model.{where}={show_option(value)} conflicts with checkpoint {path}, trained with "
        f"--model.{where}={show_option(saved)} (a checkpoint's --model options replace those given): leave "
        f"--model.{where} out, or give another checkpoint"
    )


def _command_line_trust(untrusted: list[tuple[str, str]]) -> str:
    """How the user trusts the classes a checkpoint names: the options that name them. A checkpoint's own module
    class (Lightning's ``_class_path``) other than ClassifierModule has no option: the command builds that one."""
    if any(where.startswith("_") for where, _ in untrusted):
        return f"load it in Python; the manualbp command builds {ClassifierModule.__name__} only"
    options = " ".join(f"--model.{where}={name}" for where, name in untrusted)
    return f"name {'it' if len(untrusted) == 1 else 'them'} yourself: {options} (or give the run's config.yaml with --config)"


def command(args: Sequence[str] | None = None, run: bool = True) -> ManualbpCLI:
    """The ``manualbp`` LightningCLI over ``args`` (the command line when None): with ``run=False`` it only
    parses and builds the data module, model and trainer (``.datamodule``, ``.model``, ``.trainer``)."""
    return ManualbpCLI(
        ClassifierModule,
        TensorDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={"max_epochs": 20, "log_every_n_steps": 10},
        parser_kwargs={"description": _DESCRIPTION},
        parser_class=ManualbpArgumentParser,  # the command's parser and each subcommand's
        args=None if args is None else list(args),
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manualbp`` console script: ``manualbp verify ...`` or a LightningCLI subcommand.

    Returns the exit status: 0, or 2 with ``manualbp: error: <message>`` on stderr when a class rejects
    an option's value while being built, when the data is not found (``DataNotFoundError``), when the
    checkpoint does not fit the network (``CheckpointMismatchError``) or names a class the options do not
    (``UntrustedCheckpointError``); parse errors, and the checks of ``ManualbpCLI.parse_arguments`` (a missing
    ``--ckpt_path`` or checkpoint file, options the run would ignore), exit with status 2 from the parser itself;
    Ctrl-C during a fit exits with status 1 (Lightning's) after ``ResumeHint``'s lines. The run prints what
    ``quiet_run`` lets through.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["verify"]:
        from manualbp.verify.command import main as verify_main

        return verify_main(args[1:])
    try:
        with quiet_run():
            command(None if argv is None else args)
    except (ConfigurationError, DataNotFoundError, CheckpointMismatchError, UntrustedCheckpointError) as error:
        print(f"manualbp: error: {error}", file=sys.stderr)
        return 2
    return 0
