"""What a ``manualbp`` run prints: the progress bar, the model summary and the results, not Lightning's notices."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Lightning's one-line notices (rank_zero_info: "GPU available", "Seed set to", the "💡 Tip" adverts, "The
# following callbacks returned in `LightningModule.configure_callbacks` will override ...", checkpoint
# restoring) go to these loggers; the model summary and the progress bar do not.
_NOTICES = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
)

# Warnings a run would print that are no fault of the user's options.
_WARNINGS = (
    # the default logger is the CSV logger when TensorBoard is not installed, as the README says
    r"Starting from v1.9.0, `tensorboardX` has been removed",
    # Lightning's own use of a torch API deprecated in torch 2.10
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the command chooses the optimizer with --optimizer, which replaces the model's default on purpose
    r"`\w+\.configure_optimizers` will be overridden by `\w+\.configure_optimizers`",
    # every run logs into a new version folder, so checkpoint callbacks restored from a checkpoint move
    r"The dirpath has changed from",
)

# With stdout not a terminal, the progress bar refreshes only when an epoch ends instead of at every batch,
# through the environment variable Lightning's TQDMProgressBar reads for its refresh rate.
_NON_INTERACTIVE_REFRESH = "1000000000"


@contextmanager
def quiet_run() -> Iterator[None]:
    """Within the block, Lightning's notices and the warnings in ``_WARNINGS`` are not printed, and on a stdout
    that is not a terminal the progress bar writes one line per epoch (unless ``TQDM_MINITERS`` is set)."""
    notices = [logging.getLogger(name) for name in _NOTICES]
    levels = [logger.level for logger in notices]
    refresh = os.environ.get("TQDM_MINITERS")
    for logger in notices:
        logger.setLevel(logging.WARNING)
    if refresh is None and not sys.stdout.isatty():
        os.environ["TQDM_MINITERS"] = _NON_INTERACTIVE_REFRESH
    try:
        with warnings.catch_warnings():
            for message in _WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(notices, levels):
            logger.setLevel(level)
        if refresh is None:
            os.environ.pop("TQDM_MINITERS", None)
