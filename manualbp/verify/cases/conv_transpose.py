"""Registry cases: Transposed convolutions (ConvTranspose1d/2d/3d)."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
