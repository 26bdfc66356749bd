"""Gradient verification as a product.

``verify(function, reference, sample_inputs)`` checks a callable with a hand-written backward (an
``autograd.Function``'s ``apply``, a functional, a module) against a reference implementation and
returns a ``Report``: one row per (sample, check), pass / fail (with the largest error and where) /
unsupported (with the reason) / graph_break (torch.compile cannot trace a Function that defines ``jvp``;
not a failure). ``manualbp.verify.builtin_cases`` holds manualbp's own op cases;
``manualbp verify`` prints their matrix.
"""

from manualbp.verify.battery import (
    CHECKS,
    CPU_CHECKS,
    CPU_ONLY_CHECKS,
    CUDA_CHECKS,
    DEFAULT_TOLERANCES,
    GRAPH_CAPTURE_CHECKS,
    available_checks,
    ieee_float32,
    verify,
    verify_cases,
)
from manualbp.verify.case import OpCase, differentiable, seeded
from manualbp.verify.report import Report, Row

__all__ = [
    "CHECKS",
    "CPU_CHECKS",
    "CPU_ONLY_CHECKS",
    "CUDA_CHECKS",
    "DEFAULT_TOLERANCES",
    "GRAPH_CAPTURE_CHECKS",
    "OpCase",
    "Report",
    "Row",
    "available_checks",
    "differentiable",
    "ieee_float32",
    "seeded",
    "verify",
    "verify_cases",
]
