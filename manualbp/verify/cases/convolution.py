"""Registry cases: Convolutions over one, two and three spatial dims (Conv1d, Conv3d; Conv2d's first cases are in builtin_cases)."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
