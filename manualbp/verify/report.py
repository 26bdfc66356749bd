"""The verification report: one row per (case, check), printable as a table or an ops x checks matrix."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "unsupported", "graph_break"]

_MARK = {"pass": "pass", "fail": "FAIL", "unsupported": "unsupported", "graph_break": "graph break"}


@dataclass(frozen=True)
class Row:
    """The outcome of one check on one case.

    ``max_abs_err``/``max_rel_err`` are the largest errors of the compared tensors (NaN when the
    check compares none); ``detail`` says where the largest error is, or why the check failed or
    could not run. ``graph_break``: torch.compile cannot trace the Function because it defines ``jvp``
    (a limit of Dynamo, not a wrong gradient; ``detail`` says how to compile it).
    """

    case: str
    check: str
    status: Status
    max_abs_err: float = math.nan
    max_rel_err: float = math.nan
    detail: str = ""


@dataclass
class Report:
    """All rows of a ``verify`` run."""

    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed ("unsupported" and "graph_break" are not failures)."""
        return all(row.status != "fail" for row in self.rows)

    @property
    def failures(self) -> list[Row]:
        """The rows whose status is "fail"."""
        return [row for row in self.rows if row.status == "fail"]

    def extend(self, other: Report) -> None:
        """Append ``other``'s rows."""
        self.rows.extend(other.rows)

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` carrying the table when any check failed."""
        if not self.passed:
            raise AssertionError(f"{len(self.failures)} check(s) failed:\n{self}")

    def to_json(self) -> str:
        """The rows as a JSON list of objects (NaN errors as null)."""
        return json.dumps([_json_row(row) for row in self.rows], indent=2)

    def __str__(self) -> str:
        header = ("case", "check", "status", "max_abs_err", "max_rel_err", "detail")
        lines = [
            (row.case, row.check, _MARK[row.status], _number(row.max_abs_err), _number(row.max_rel_err), row.detail)
            for row in self.rows
        ]
        return _table(header, lines)

    def matrix(self) -> str:
        """Cases as rows, checks as columns, each cell pass / FAIL / unsupported / graph break."""
        checks = list(dict.fromkeys(row.check for row in self.rows))
        cases = list(dict.fromkeys(row.case for row in self.rows))
        cell = {(row.case, row.check): _MARK[row.status] for row in self.rows}
        lines = [(case, *(cell.get((case, check), "-") for check in checks)) for case in cases]
        return _table(("case", *checks), lines)


def _json_row(row: Row) -> dict:
    data = asdict(row)
    for key in ("max_abs_err", "max_rel_err"):
        if math.isnan(data[key]):
            data[key] = None
    return data


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2e}"


def _table(header: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(tuple("-" * w for w in widths)), *(render(line) for line in lines)])
