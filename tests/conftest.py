import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from manualbp.verify.builtin_cases import BUILTIN_CASES

# Hypothesis profiles. "ci" (the default): derandomized, so every run draws the same examples, and quick.
# "fuzz": many more random examples, for a long local run (README: "Fuzzing"). Pick one with
# HYPOTHESIS_PROFILE=fuzz or hypothesis's own --hypothesis-profile=fuzz. A test's own @settings wins.
_PROFILE_DEFAULTS = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=200, **_PROFILE_DEFAULTS)
settings.register_profile("fuzz", max_examples=5_000, **_PROFILE_DEFAULTS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# pytest-xdist runs one worker per core (addopts: -n auto); each worker gets its share of the cores, so the
# workers' torch threads do not compete (most checks are small ops that one thread runs as fast).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

CASES = [pytest.param(case, id=case.id) for case in BUILTIN_CASES]


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
