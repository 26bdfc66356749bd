"""The ``manualbp`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``manualbp`` console script."""
    parser = argparse.ArgumentParser(
        prog="manualbp",
        description=(
            "manualbp: hand-written backward passes checked against autograd. "
            "The training commands (fit, validate, test, predict) are not built yet."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


def _version() -> str:
    from manualbp import __version__

    return __version__
