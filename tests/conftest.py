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

#: The devices a test that can run on an accelerator runs on: the CPU, and CUDA where a CUDA device is present.
#: On a CPU-only machine the cuda variants do not exist (they are not skipped stand-ins), so the suite's time
#: there does not change; on a GPU machine they carry ``cuda`` in their ids, and ``pytest -k cuda`` selects them
#: (experiments/gpu_check.sh).
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device of ``DEVICES`` in turn; the test's id names it (``test_x[cuda]``)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
