"""Every built-in op case through the public battery: each (case, check) cell of the matrix must pass."""

from __future__ import annotations

import pytest

from manualbp.verify import CPU_CHECKS, GRAPH_CAPTURE_CHECKS, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES

# the graph-capture cells compile or export (seconds each): the slow tier (pytest -m slow), which CI runs too
CELLS = [
    pytest.param(
        case, check, id=f"{case.id}-{check}", marks=[pytest.mark.slow] if check in GRAPH_CAPTURE_CHECKS else []
    )
    for case in BUILTIN_CASES
    for check in CPU_CHECKS
]


@pytest.mark.parametrize("case, check", CELLS)
def test_builtin_op_passes_check(case, check):
    (row,) = verify_cases([case], checks=[check]).rows
    if row.status == "unsupported" and row.detail.startswith("the reference raises on this machine"):
        pytest.skip(row.detail)  # torch's own layer cannot run this check on this CPU: nothing to compare with
    if row.status == "unsupported" and check in dict(case.unsupported):
        pytest.skip(row.detail)  # the check cannot apply to this configuration, as the case declares
    assert row.status == "pass", f"{row.case} / {row.check}: {row.status}: {row.detail}"
