"""The ``manualbp`` command: a LightningCLI over ClassifierModule and the digit DataModules.

``manualbp fit`` trains the default job (an MLP with hand-written backprop on scikit-learn's digits)
and then tests the best checkpoint; ``validate``, ``test``, ``predict``, ``--config`` and
``--print_config`` behave as in any LightningCLI.

A bad option fails with a message and exit status 2, never a traceback: jsonargparse rejects unknown
options and values of the wrong type while parsing; a value that only a class's own checks reject
(``--data.batch_size=0``, ``--trainer.max_epochs=-5``) fails while the data module, model and trainer
are built, and ``main`` reports it as ``manualbp: error: <message>``. Only that building phase is
covered: an exception during training is a bug, and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import lazy_instance
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from manualbp.callbacks import GradientCheckCallback, LearningAnimation
from manualbp.data import DigitsDataModule, MNISTDataModule, TensorDataModule
from manualbp.lightning import ClassifierModule

# Imported so that short names resolve on the command line: --data=MNISTDataModule,
# --trainer.callbacks+=LearningAnimation, --trainer.callbacks+=GradientCheckCallback.
__all__ = ["ConfigurationError", "GradientCheckCallback", "LearningAnimation", "MNISTDataModule", "ManualbpCLI", "main"]

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
    """LightningCLI with the data's shape linked into the model and a test of the best checkpoint after fit."""

    def instantiate_classes(self) -> None:
        """Build the data module, model and trainer; an argument check that fails while doing so (a
        ValueError, TypeError, FileNotFoundError or Lightning's MisconfigurationException at the start
        of the chain) becomes a ``ConfigurationError`` carrying that check's message."""
        try:
            super().instantiate_classes()
        except _CONFIGURATION_ERRORS as error:
            cause = _first_cause(error)
            if not isinstance(cause, _CONFIGURATION_ERRORS):
                raise
            raise ConfigurationError(str(cause) or type(cause).__name__) from error

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": lazy_instance(DigitsDataModule)})
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
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)
        if results and "test_acc" in results[0] and self.trainer.is_global_zero:
            source = f"best checkpoint {best}" if best else "final weights"
            print(f"test_acc = {results[0]['test_acc']:.4f} ({source})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manualbp`` console script: ``manualbp verify ...`` or a LightningCLI subcommand.

    Returns the exit status: 0, or 2 with ``manualbp: error: <message>`` on stderr when a class rejects
    an option's value while being built (parse errors exit with status 2 from the parser itself).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["verify"]:
        from manualbp.verify.command import main as verify_main

        return verify_main(args[1:])
    try:
        ManualbpCLI(
            ClassifierModule,
            TensorDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={"max_epochs": 20, "log_every_n_steps": 10},
            parser_kwargs={"description": _DESCRIPTION},
            args=None if argv is None else args,
        )
    except ConfigurationError as error:
        print(f"manualbp: error: {error}", file=sys.stderr)
        return 2
    return 0
