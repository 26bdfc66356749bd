import pytest
import torch

from manualbp.verify.builtin_cases import BUILTIN_CASES

CASES = [pytest.param(case, id=case.id) for case in BUILTIN_CASES]


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
