import pytest
import torch

from manualbp.verify.builtin_cases import BUILTIN_CASES

from manualbp.verify import differentiable


def _params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


CASES = _params(BUILTIN_CASES)
CASES_WITH_PARAMETERS = _params(c for c in BUILTIN_CASES if any(True for _ in c.manual().parameters()))
CASES_WITH_SEVERAL_INPUTS = _params(c for c in BUILTIN_CASES if len(differentiable(c.sample())) > 1)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
