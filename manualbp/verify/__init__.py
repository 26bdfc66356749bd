"""Gradient verification: op cases (a manual callable, its reference, sample inputs) and the tools to
compare the two. ``manualbp.verify.builtin_cases`` holds the registry of manualbp's own ops."""

from manualbp.verify.case import OpCase, as_function, differentiable, seeded

__all__ = ["OpCase", "as_function", "differentiable", "seeded"]
