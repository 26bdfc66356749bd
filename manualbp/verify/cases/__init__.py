"""The registry's later families, one module each; ``manualbp.verify.builtin_cases`` adds them to ``BUILTIN_CASES``."""

from manualbp.verify.case import OpCase
from manualbp.verify.cases import (
    conv_transpose,
    convolution,
    normalization,
    parametrised_activation,
    pooling,
    torchvision_blocks,
)

FAMILY_CASES: list[OpCase] = [
    *convolution.CASES,
    *conv_transpose.CASES,
    *pooling.CASES,
    *normalization.CASES,
    *parametrised_activation.CASES,
    *torchvision_blocks.CASES,
]
