"""pytest plugin (registered through the ``pytest11`` entry point): the ``verify_function`` fixture.

    def test_my_function(verify_function):
        verify_function(MySquare.apply, torch.square, [(torch.randn(3, 4),)])

runs the ``manualbp.verify`` battery and fails the test with the report's table when a check fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from manualbp.verify.battery import verify
from manualbp.verify.report import Report


@pytest.fixture
def verify_function() -> Callable[..., Report]:
    """``verify_function(function, reference, sample_inputs, **options)``: ``manualbp.verify.verify``
    that fails the calling test with the report's table when any check failed, and returns the report."""

    def run(function: Callable[..., Any], reference: Callable[..., Any], sample_inputs: Any, **options: Any) -> Report:
        report = verify(function, reference, sample_inputs, **options)
        if not report.passed:
            pytest.fail(f"{len(report.failures)} check(s) failed:\n{report}", pytrace=False)
        return report

    return run
