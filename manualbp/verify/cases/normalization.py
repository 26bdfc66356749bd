"""Registry cases: Group, instance and channels-first layer norms, BatchNorm3d."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
