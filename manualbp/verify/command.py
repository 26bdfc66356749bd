"""``manualbp verify``: the ops x checks matrix of manualbp's built-in ops, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from manualbp.verify.battery import CHECKS, available_checks, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES
from manualbp.verify.report import Report, Row

DESCRIPTION = "Check every built-in manualbp op against its PyTorch twin and print the ops x checks matrix."

#: Below this many cases per core, starting worker processes (each imports torch: seconds) costs more than it saves.
_CASES_PER_PROCESS = 4


def main(argv: Sequence[str] | None = None) -> int:
    """Run the battery on the built-in op cases; print the matrix; exit 1 when any check failed."""
    parser = argparse.ArgumentParser(
        prog="manualbp verify",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--op", action="append", metavar="NAME", help="only cases whose id starts with NAME (repeatable)"
    )
    parser.add_argument(
        "--check", action="append", metavar="CHECK", choices=list(CHECKS), help="only this check (repeatable)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the samples run (default cpu). cuda: every check but autocast_cpu_bfloat16 on the CUDA device, "
        "float32 without TF32, plus the CUDA autocast checks",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--compile-backend", default="aot_eager", help="torch.compile backend of the compile check")
    parser.add_argument(
        "--exhaustive",
        action="store_true",
        help="gradcheck and gradgradcheck compare every Jacobian entry (default: torch's fast mode, random projections)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        metavar="N",
        help="check the cases in N processes (default: one per CPU core when there are many cases, else 1)",
    )
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    cases = [c for c in BUILTIN_CASES if not args.op or any(c.id.startswith(name) for name in args.op)]
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if not cases:
        parser.error(f"no op case starts with {args.op}; see `manualbp verify --list`")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    checks = args.check or list(available_checks(args.device))
    cores = os.cpu_count() or 1
    jobs = args.jobs or (cores if len(cases) >= _CASES_PER_PROCESS * cores else 1)
    options = dict(checks=checks, compile_backend=args.compile_backend, exhaustive=args.exhaustive, device=args.device)
    report = Report()
    for rows in _with_progress(_check_all([c.id for c in cases], options, jobs), [c.id for c in cases]):
        report.rows.extend(rows)
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


def _check_case(case_id: str, options: dict) -> list[Row]:
    """The rows of one built-in case (run in a worker process, or here). The ops' own warnings about their
    arguments (torch's note on ``padding='same'`` with an even kernel) are the cases' doing, not findings."""
    (case,) = [c for c in BUILTIN_CASES if c.id == case_id]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return verify_cases([case], **options).rows


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _check_all(case_ids: Sequence[str], options: dict, jobs: int) -> Iterator[list[Row]]:
    """Each case's rows, in order: here, or over ``jobs`` processes (spawned; each with its share of the cores'
    torch threads)."""
    jobs = min(jobs, len(case_ids))
    if jobs == 1:
        yield from (_check_case(case_id, options) for case_id in case_ids)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        yield from pool.imap(_CaseChecker(options), case_ids)


class _CaseChecker:
    """``_check_case`` with its options bound, picklable for the worker processes."""

    def __init__(self, options: dict) -> None:
        self.options = options

    def __call__(self, case_id: str) -> list[Row]:
        return _check_case(case_id, self.options)


def _with_progress(results: Iterator[list[Row]], case_ids: Sequence[str]) -> Iterator[list[Row]]:
    """``results`` one case at a time, with a progress bar on stderr (cases done / total, the case just checked)
    when stderr is a terminal; nothing extra when it is piped or redirected. The bar is cleared at the end."""
    terminal = sys.stderr.isatty()
    with tqdm(
        total=len(case_ids), desc="verify", unit="case", file=sys.stderr, disable=not terminal, leave=False
    ) as bar:
        for index, rows in enumerate(results):  # to the end of ``results``: a pool behind it closes
            bar.set_postfix_str(case_ids[index])
            yield rows
            bar.update()
