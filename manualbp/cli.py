"""The ``manualbp`` command: a LightningCLI over ClassifierModule and the digit DataModules.

``manualbp fit`` trains the default job (an MLP with hand-written backprop on scikit-learn's digits)
and then tests the best checkpoint; ``validate``, ``test``, ``predict``, ``--config`` and
``--print_config`` behave as in any LightningCLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import lazy_instance
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from manualbp.callbacks import GradientCheckCallback, LearningAnimation
from manualbp.data import DigitsDataModule, MNISTDataModule, TensorDataModule
from manualbp.lightning import ClassifierModule

# Imported so that short names resolve on the command line: --data=MNISTDataModule,
# --trainer.callbacks+=LearningAnimation, --trainer.callbacks+=GradientCheckCallback.
__all__ = ["GradientCheckCallback", "LearningAnimation", "MNISTDataModule", "ManualbpCLI", "main"]

_DESCRIPTION = (
    "manualbp: train digit classifiers with hand-written backprop (fit, validate, test, predict). "
    "`manualbp verify` checks every built-in op against PyTorch (see `manualbp verify --help`)."
)


class ManualbpCLI(LightningCLI):
    """LightningCLI with the data's shape linked into the model and a test of the best checkpoint after fit."""

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
        if results and "test_acc" in results[0]:
            source = f"best checkpoint {best}" if best else "final weights"
            print(f"test_acc = {results[0]['test_acc']:.4f} ({source})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manualbp`` console script: ``manualbp verify ...`` or a LightningCLI subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["verify"]:
        from manualbp.verify.command import main as verify_main

        return verify_main(args[1:])
    ManualbpCLI(
        ClassifierModule,
        TensorDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={"max_epochs": 20, "log_every_n_steps": 10},
        parser_kwargs={"description": _DESCRIPTION},
        args=None if argv is None else args,
    )
    return 0
