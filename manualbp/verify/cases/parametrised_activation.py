"""Registry cases: Activations with a parameter (PReLU)."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
