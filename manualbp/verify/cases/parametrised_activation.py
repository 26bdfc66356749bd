"""Registry cases: Activations with a parameter (PReLU)."""

from manualbp.verify.case import OpCase
from manualbp.verify.case_makers import args, randn, twin

CASES: list[OpCase] = [
    # one slope for every channel, one per channel (dim 1), on (N, C, L) and (N, C, H, W)
    twin("prelu-shared", "PReLU", inputs=args(randn(4, 3, 5))),
    twin("prelu-per_channel", "PReLU", 3, 0.1, inputs=args(randn(4, 3, 5))),
    twin("prelu-per_channel-4d", "PReLU", 3, inputs=args(randn(2, 3, 4, 4))),
    twin("prelu-shared-2d", "PReLU", 1, -0.5, inputs=args(randn(5, 4))),
    # an input of fewer than 2 dims has one channel and no batch dim (torch's PReLU: "no channel dim")
    twin("prelu-shared-1d-unbatched", "PReLU", inputs=args(randn(6))),
]
