"""Registry cases: Pools over one and three spatial dims, adaptive max pools (the 2-d pools' first cases are in builtin_cases)."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
