"""Registry cases: Pools over one and three spatial dims, adaptive max pools (the 2-d pools' first cases are in
builtin_cases).

Max pools draw their inputs from a normal distribution, so no window holds a tie (a tie's gradient is the
argmax's choice, which finite differences cannot check). The 3-d shapes are tiny: gradcheck in float64 and
torch.compile run on each. Every batched case also runs channels_last (4-d) or channels_last_3d (5-d) in the
memory-format check; torch's max_pool3d refuses an unbatched (C, D, H, W) input in channels_last, which that
check then notes as a limit of the reference.
"""

from manualbp.verify.case import OpCase
from manualbp.verify.case_makers import args, randn, twin

CASES: list[OpCase] = [
    # MaxPool1d
    twin("max_pool1d-k3", "MaxPool1d", 3, inputs=args(randn(2, 2, 7))),
    twin("max_pool1d-k3-stride2-pad1", "MaxPool1d", 3, stride=2, padding=1, inputs=args(randn(2, 3, 8))),
    twin(
        "max_pool1d-dilation2-pad1-ceil_mode",
        "MaxPool1d",
        3,
        stride=2,
        padding=1,
        dilation=2,
        ceil_mode=True,
        inputs=args(randn(2, 2, 10)),
    ),
    twin("max_pool1d-return_indices", "MaxPool1d", 2, stride=1, return_indices=True, inputs=args(randn(2, 2, 6))),
    twin("max_pool1d-unbatched", "MaxPool1d", 3, stride=2, padding=1, inputs=args(randn(2, 7))),
    # MaxPool3d
    twin("max_pool3d-k2", "MaxPool3d", 2, inputs=args(randn(2, 2, 4, 4, 4))),
    twin(
        "max_pool3d-k3-stride2-pad1-ceil_mode",
        "MaxPool3d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        inputs=args(randn(1, 2, 4, 5, 4)),
    ),
    twin(
        "max_pool3d-rect_kernel-dilation",
        "MaxPool3d",
        (2, 2, 1),
        stride=(1, 2, 1),
        dilation=(2, 1, 1),
        inputs=args(randn(2, 1, 4, 4, 3)),
    ),
    twin("max_pool3d-return_indices", "MaxPool3d", 2, stride=1, return_indices=True, inputs=args(randn(1, 2, 3, 3, 3))),
    twin("max_pool3d-unbatched", "MaxPool3d", 2, stride=2, padding=1, inputs=args(randn(2, 3, 4, 3))),
    # AvgPool1d
    twin("avg_pool1d-k3", "AvgPool1d", 3, inputs=args(randn(2, 2, 7))),
    twin(
        "avg_pool1d-ceil_mode-pad1-exclude_pad",
        "AvgPool1d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
        inputs=args(randn(2, 2, 8)),
    ),
    twin("avg_pool1d-ceil_mode-uncovered_edge", "AvgPool1d", 2, stride=3, ceil_mode=True, inputs=args(randn(2, 2, 7))),
    twin("avg_pool1d-unbatched-pad1", "AvgPool1d", 3, 2, 1, inputs=args(randn(2, 7))),
    # AvgPool3d
    twin("avg_pool3d-k2", "AvgPool3d", 2, inputs=args(randn(2, 2, 4, 4, 4))),
    twin(
        "avg_pool3d-ceil_mode-pad1-exclude_pad",
        "AvgPool3d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
        inputs=args(randn(1, 2, 4, 5, 4)),
    ),
    twin(
        "avg_pool3d-divisor_override3-pad1",
        "AvgPool3d",
        2,
        padding=1,
        divisor_override=3,
        inputs=args(randn(1, 2, 3, 3, 3)),
    ),
    twin(
        "avg_pool3d-rect_kernel-rect_stride",
        "AvgPool3d",
        (3, 2, 1),
        stride=(2, 1, 2),
        padding=(1, 0, 0),
        inputs=args(randn(2, 1, 5, 3, 4)),
    ),
    twin("avg_pool3d-unbatched", "AvgPool3d", 2, stride=1, inputs=args(randn(2, 3, 3, 4))),
    # AdaptiveAvgPool1d
    twin("adaptive_avg_pool1d-3-from-7", "AdaptiveAvgPool1d", 3, inputs=args(randn(2, 2, 7))),
    twin("adaptive_avg_pool1d-global", "AdaptiveAvgPool1d", 1, inputs=args(randn(2, 3, 5))),
    twin("adaptive_avg_pool1d-upsample", "AdaptiveAvgPool1d", 5, inputs=args(randn(2, 2, 3))),
    twin("adaptive_avg_pool1d-unbatched", "AdaptiveAvgPool1d", 4, inputs=args(randn(2, 6))),
    # AdaptiveAvgPool3d
    twin("adaptive_avg_pool3d-2x3x2-from-5x4x3", "AdaptiveAvgPool3d", (2, 3, 2), inputs=args(randn(2, 2, 5, 4, 3))),
    twin("adaptive_avg_pool3d-global", "AdaptiveAvgPool3d", 1, inputs=args(randn(2, 2, 3, 2, 3))),
    twin("adaptive_avg_pool3d-None-2-None", "AdaptiveAvgPool3d", (None, 2, None), inputs=args(randn(1, 2, 3, 5, 2))),
    twin("adaptive_avg_pool3d-unbatched", "AdaptiveAvgPool3d", (2, 1, 3), inputs=args(randn(2, 3, 3, 4))),
    # AdaptiveMaxPool1d
    twin("adaptive_max_pool1d-3-from-7", "AdaptiveMaxPool1d", 3, inputs=args(randn(2, 2, 7))),
    twin("adaptive_max_pool1d-upsample", "AdaptiveMaxPool1d", 5, inputs=args(randn(2, 2, 3))),
    twin(
        "adaptive_max_pool1d-return_indices",
        "AdaptiveMaxPool1d",
        4,
        return_indices=True,
        inputs=args(randn(2, 2, 6)),
    ),
    twin("adaptive_max_pool1d-unbatched", "AdaptiveMaxPool1d", 2, inputs=args(randn(3, 5))),
    # AdaptiveMaxPool2d
    twin("adaptive_max_pool2d-3x3-from-7x5", "AdaptiveMaxPool2d", 3, inputs=args(randn(2, 2, 7, 5))),
    twin("adaptive_max_pool2d-global", "AdaptiveMaxPool2d", 1, inputs=args(randn(2, 3, 4, 4))),
    twin("adaptive_max_pool2d-None-2", "AdaptiveMaxPool2d", (None, 2), inputs=args(randn(2, 2, 3, 5))),
    twin("adaptive_max_pool2d-upsample", "AdaptiveMaxPool2d", (5, 6), inputs=args(randn(2, 2, 3, 4))),
    twin(
        "adaptive_max_pool2d-return_indices",
        "AdaptiveMaxPool2d",
        (2, 3),
        return_indices=True,
        inputs=args(randn(1, 2, 5, 7)),
    ),
    twin("adaptive_max_pool2d-unbatched", "AdaptiveMaxPool2d", (3, 2), inputs=args(randn(2, 6, 5))),
    # AdaptiveMaxPool3d
    twin("adaptive_max_pool3d-2x3x2-from-5x4x3", "AdaptiveMaxPool3d", (2, 3, 2), inputs=args(randn(2, 2, 5, 4, 3))),
    twin("adaptive_max_pool3d-global", "AdaptiveMaxPool3d", 1, inputs=args(randn(2, 2, 3, 2, 3))),
    twin("adaptive_max_pool3d-None-2-None", "AdaptiveMaxPool3d", (None, 2, None), inputs=args(randn(1, 2, 3, 5, 2))),
    twin(
        "adaptive_max_pool3d-return_indices",
        "AdaptiveMaxPool3d",
        2,
        return_indices=True,
        inputs=args(randn(1, 2, 3, 4, 3)),
    ),
    twin("adaptive_max_pool3d-unbatched", "AdaptiveMaxPool3d", (2, 1, 3), inputs=args(randn(2, 3, 3, 4))),
]
