"""Registry cases: Convolutions over one, two and three spatial dims (Conv1d, Conv3d; Conv2d's first cases are in builtin_cases).

The 3-d inputs are tiny ((2, 2, 4, 4, 4) and the like, kernels of 2 or 3): every case runs gradcheck in float64 and
torch.compile. The battery's memory-format check feeds every 5-D tensor as channels_last_3d.
"""

from manualbp.verify.case import OpCase
from manualbp.verify.case_makers import args, randn, twin

CASES: list[OpCase] = [
    # Conv1d
    twin("conv1d-k3", "Conv1d", 2, 3, 3, inputs=args(randn(2, 2, 7))),
    twin("conv1d-nobias", "Conv1d", 2, 3, 3, bias=False, inputs=args(randn(2, 2, 6))),
    twin("conv1d-stride2-pad1", "Conv1d", 2, 3, 3, stride=2, padding=1, inputs=args(randn(2, 2, 8))),
    twin("conv1d-stride3-kernel2", "Conv1d", 2, 2, 2, stride=3, inputs=args(randn(2, 2, 9))),
    twin("conv1d-dilation2-pad1", "Conv1d", 2, 2, 3, dilation=2, padding=1, inputs=args(randn(2, 2, 8))),
    twin("conv1d-same-even_kernel", "Conv1d", 2, 2, 4, padding="same", inputs=args(randn(2, 2, 7))),
    twin("conv1d-same-dilated", "Conv1d", 2, 2, 2, padding="same", dilation=3, inputs=args(randn(2, 2, 7))),
    twin("conv1d-valid", "Conv1d", 2, 2, 3, padding="valid", inputs=args(randn(2, 2, 6))),
    twin("conv1d-kernel_equals_input", "Conv1d", 2, 3, 5, inputs=args(randn(2, 2, 5))),
    twin("conv1d-groups2", "Conv1d", 4, 6, 3, groups=2, padding=1, inputs=args(randn(2, 4, 6))),
    twin("conv1d-depthwise", "Conv1d", 3, 3, 3, groups=3, inputs=args(randn(2, 3, 7))),
    twin("conv1d-depthwise-multiplier2-stride2", "Conv1d", 3, 6, 3, stride=2, groups=3, inputs=args(randn(2, 3, 8))),
    twin("conv1d-unbatched", "Conv1d", 2, 3, 3, padding=1, inputs=args(randn(2, 6))),
    twin("conv1d-unbatched-same-groups2", "Conv1d", 2, 4, 2, padding="same", groups=2, inputs=args(randn(2, 5))),
    # Conv3d
    twin("conv3d-k2", "Conv3d", 2, 3, 2, inputs=args(randn(2, 2, 4, 4, 4))),
    twin("conv3d-nobias-k3-pad1", "Conv3d", 2, 2, 3, padding=1, bias=False, inputs=args(randn(2, 2, 3, 4, 3))),
    twin("conv3d-stride2-pad1", "Conv3d", 2, 2, 3, stride=2, padding=1, inputs=args(randn(2, 2, 4, 4, 4))),
    twin(
        "conv3d-rect_kernel-rect_stride-dilation",
        "Conv3d",
        2,
        2,
        (1, 2, 3),
        stride=(1, 2, 1),
        dilation=(2, 1, 1),
        padding=(0, 1, 0),
        inputs=args(randn(2, 2, 3, 4, 4)),
    ),
    twin("conv3d-same-even_kernel", "Conv3d", 2, 2, 2, padding="same", inputs=args(randn(2, 2, 3, 4, 3))),
    twin(
        "conv3d-same-dilated",
        "Conv3d",
        2,
        2,
        (2, 1, 3),
        padding="same",
        dilation=(2, 1, 1),
        inputs=args(randn(2, 2, 4, 3, 4)),
    ),
    twin("conv3d-valid", "Conv3d", 2, 2, (2, 3, 2), padding="valid", inputs=args(randn(2, 2, 3, 4, 3))),
    twin("conv3d-groups2", "Conv3d", 4, 4, 2, groups=2, inputs=args(randn(2, 4, 3, 3, 3))),
    twin("conv3d-depthwise-multiplier2", "Conv3d", 2, 4, 2, groups=2, inputs=args(randn(2, 2, 3, 3, 3))),
    twin("conv3d-unbatched", "Conv3d", 2, 3, 2, padding=1, inputs=args(randn(2, 3, 3, 3))),
]
