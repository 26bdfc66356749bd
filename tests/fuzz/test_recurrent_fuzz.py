"""Fuzzing the recurrent ops (``recurrent_strategies.RECURRENT_FAMILIES``) against torch, in float64: forward
outputs, first and second derivatives (``test_ops_match_torch.assert_matches_torch``), on contiguous or strided
inputs and dL/dy. A recurrent call costs tens of milliseconds, so fewer examples are drawn than for the other
ops (``HYPOTHESIS_PROFILE=fuzz`` still draws many more)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.recurrent_strategies import RECURRENT_FAMILIES
from tests.fuzz.test_ops_match_torch import assert_matches_torch

EXAMPLES = settings().max_examples // 5  # "ci": 40 a family; "fuzz": 1000


@pytest.mark.parametrize("family", sorted(RECURRENT_FAMILIES))
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_recurrent_op_matches_torch(family: str, data: st.DataObject) -> None:
    case = data.draw(RECURRENT_FAMILIES[family], label=family)
    assert_matches_torch(case, strided=data.draw(st.booleans(), label="strided inputs and dL/dy"))
