"""The ``manualbp`` command: a LightningCLI over ClassifierModule and the digit DataModules.

``manualbp fit`` trains the default job (an MLP with hand-written backprop on scikit-learn's digits)
and then tests the best checkpoint; ``predict`` writes ``predictions.csv`` into the run's folder;
``validate``, ``test``, ``--config`` and ``--print_config`` behave as in any LightningCLI, and so do
``--optimizer`` and ``--lr_scheduler`` (Adam, lr 1e-3, by default; the recurrent archs have their own
recipe). ``manualbp verify`` is dispatched before the LightningCLI.

A bad option fails with a message and exit status 2, never a traceback: the parser
(``manualbp.cli_parser``) rejects unknown options, suggesting the closest one, and values of the wrong type;
a value that only a class's own checks reject (``--data.batch_size=0``, ``--optimizer.lr=-1``) fails while
the data module, model, optimizer and trainer are built; data that is not there (``DataNotFoundError``) and a
checkpoint of another network (``CheckpointMismatchError``) stop the run. ``main`` reports each as
``manualbp: error: <message>``. Any other exception during training is a bug, and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, get_args

from jsonargparse import lazy_instance
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple, instantiate_class
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.optim import Optimizer

from manualbp.callbacks import GradientCheckCallback, GradientFlow, LearningAnimation
from manualbp.checkpoints import CheckpointMismatchError
from manualbp.data import DataNotFoundError, DigitsDataModule, MNISTDataModule, TensorDataModule
from manualbp.cli_parser import ManualbpArgumentParser, add_verify_subcommand
from manualbp.lightning import ClassifierModule
from manualbp.models import Cell
from manualbp.predictions import PredictionWriter
from manualbp.quiet import quiet_run

# Imported so that short names resolve on the command line: --data=MNISTDataModule,
# --trainer.callbacks+=LearningAnimation, +=GradientCheckCallback, +=GradientFlow.
__all__ = [
    "ConfigurationError", "GradientCheckCallback", "GradientFlow", "LearningAnimation", "MNISTDataModule",
    "ManualbpCLI", "main",
]

_DESCRIPTION = (
    "manualbp: train digit classifiers with hand-written backprop (fit, validate, test, predict). "
    "`manualbp verify` checks every built-in op against PyTorch (see `manualbp verify --help`)."
)


# What a class's own argument checks raise while the CLI builds it (MisconfigurationException: the
# Trainer's, for --trainer.max_epochs=-5 or an accelerator the machine lacks).
_CONFIGURATION_ERRORS = (ValueError, TypeError, FileNotFoundError, MisconfigurationException)


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

    def instantiate_classes(self) -> None:
        """Build the data module, model and trainer; an argument check that fails while doing so (a
        ValueError, TypeError, FileNotFoundError or Lightning's MisconfigurationException at the start
        of the chain) becomes a ``ConfigurationError`` carrying that check's message. The optimizer and
        scheduler are built once on the model's parameters too, so that their own checks (a negative lr)
        fail here rather than once training starts."""
        try:
            super().instantiate_classes()
            self._check_optimization()
        except _CONFIGURATION_ERRORS as error:
            cause = _first_cause(error)
            if not isinstance(cause, _CONFIGURATION_ERRORS):
                raise
            raise ConfigurationError(str(cause) or type(cause).__name__) from error

    def before_instantiate_classes(self) -> None:
        """A recurrent arch (rnn, lstm, gru) given neither ``--optimizer`` values of its own nor ``--lr_scheduler``
        trains with its own recipe, ``ClassifierModule.configure_optimizers`` (Adam under a one-cycle schedule):
        the command's default Adam steps aside, and the saved config.yaml shows ``optimizer: null``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        default = self._parser(self.subcommand).get_defaults().optimizer
        recurrent = config.model.get("arch") in get_args(Cell) and config.model.get("net") is None
        if recurrent and not config.get("lr_scheduler") and config.get("optimizer") == default:
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
        parser.set_defaults({"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}})
        parser.link_arguments("data.in_shape", "model.in_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint and print test_acc."
        )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if results and "test_acc" in results[0] and self.trainer.is_global_zero:
            source = f"best checkpoint {best}" if best else "final weights"
            print(f"test_acc = {results[0]['test_acc']:.4f} ({source})")

    def before_predict(self) -> None:
        """Predictions go to ``predictions.csv`` in the run's log folder (``PredictionWriter``), unless the
        trainer already has a prediction writer of the user's own."""
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def after_predict(self) -> None:
        for writer in self.trainer.callbacks:
            if isinstance(writer, PredictionWriter) and writer.path is not None:
                print(f"predictions written to {writer.path}")


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
    an option's value while being built, when the data is not found (``DataNotFoundError``) or when the
    checkpoint does not fit the network (``CheckpointMismatchError``); parse errors exit with status 2 from
    the parser itself. The run prints what ``quiet_run`` lets through.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["verify"]:
        from manualbp.verify.command import main as verify_main

        return verify_main(args[1:])
    try:
        with quiet_run():
            command(None if argv is None else args)
    except (ConfigurationError, DataNotFoundError, CheckpointMismatchError) as error:
        print(f"manualbp: error: {error}", file=sys.stderr)
        return 2
    return 0
