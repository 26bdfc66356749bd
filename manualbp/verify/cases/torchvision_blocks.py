"""Registry cases: torchvision blocks that own a parameter (ConvNeXt's layer scale, Swin's and MaxViT's relative position bias)."""

from manualbp.verify.case import OpCase

CASES: list[OpCase] = []
