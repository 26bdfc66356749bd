"""``manualbp verify``: the ops x checks matrix of manualbp's built-in ops, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from manualbp.verify.battery import CHECKS, available_checks, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES
from manualbp.verify.case import OpCase

DESCRIPTION = "Check every built-in manualbp op against its PyTorch twin and print the ops x checks matrix."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the battery on the built-in op cases; print the matrix; exit 1 when any check failed."""
    parser = argparse.ArgumentParser(
        prog="manualbp verify",
        description=DESCRIPTION,
    )
    parser.add_argument("--op", action="append", metavar="NAME", help="only cases whose id starts with NAME (repeatable)")
    parser.add_argument("--check", action="append", metavar="CHECK", choices=list(CHECKS), help="only this check (repeatable)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--compile-backend", default="aot_eager", help="torch.compile backend of the compile check")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = parser.parse_args(argv)

    cases = [c for c in BUILTIN_CASES if not args.op or any(c.id.startswith(name) for name in args.op)]
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if not cases:
        parser.error(f"no op case starts with {args.op}; see `manualbp verify --list`")
    checks = args.check or list(available_checks())
    report = verify_cases(_with_progress(cases), checks, compile_backend=args.compile_backend)
    print(report.matrix())
    if report.failures:
        print(f"\n{len(report.failures)} failure(s):")
        for row in report.failures:
            print(f"  {row.case} / {row.check}: {row.detail}")
    unsupported = [row for row in report.rows if row.status == "unsupported"]
    print(
        f"\n{len(cases)} cases x {len(checks)} checks: {len(report.rows) - len(report.failures) - len(unsupported)} pass, "
        f"{len(report.failures)} fail, {len(unsupported)} unsupported"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json())
    return 0 if report.passed else 1


def _with_progress(cases: Sequence[OpCase]) -> Iterator[OpCase]:
    """The cases one by one, with a progress bar on stderr (cases done / total, the op being checked)
    when stderr is a terminal; nothing extra when it is piped or redirected. The bar is cleared at the end."""
    terminal = sys.stderr.isatty()
    with tqdm(total=len(cases), desc="verify", unit="case", file=sys.stderr, disable=not terminal, leave=False) as bar:
        for case in cases:
            bar.set_postfix_str(case.id)
            yield case
            bar.update()
