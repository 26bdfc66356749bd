"""Bad convolution and pooling input raises an error naming the op and the offending shapes."""

from __future__ import annotations

import warnings

import pytest
import torch

import manualbp
import manualbp.functional as MF
import manualbp.nn as mnn

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 3, 5, 5)

BAD_CALLS = [
    # (id, call, exception, message pattern)
    (
        "conv2d-channels",
        lambda: MF.conv2d(X, W),
        ValueError,
        r"conv2d: input of shape \(2, 4, 8, 8\) has 4 channels but weight of shape \(6, 3, 5, 5\) expects 3 "
        r"\(in_channels / groups = 3 per group × 1 groups\)",
    ),
    (
        "conv2d-channels-groups",
        lambda: MF.conv2d(X, torch.randn(6, 1, 3, 3), groups=2),
        ValueError,
        r"conv2d: input of shape \(2, 4, 8, 8\) has 4 channels but weight of shape \(6, 1, 3, 3\) expects 2 "
        r"\(in_channels / groups = 1 per group × 2 groups\)",
    ),
    (
        "conv2d-module-channels",
        lambda: mnn.Conv2d(3, 6, 5)(X),
        ValueError,
        r"conv2d: input of shape \(2, 4, 8, 8\) has 4 channels",
    ),
    (
        "conv2d-unbatched-channels",
        lambda: MF.conv2d(X[0], W),
        ValueError,
        r"conv2d: input of shape \(4, 8, 8\) has 4 channels",
    ),
    (
        "conv2d-kernel-larger-than-padded-input",
        lambda: MF.conv2d(torch.randn(1, 3, 4, 6), W),
        ValueError,
        r"conv2d: kernel of size \(5, 5\) \(dilated to \(5, 5\)\) is larger than the padded input of size \(4, 6\) "
        r"\(input of shape \(1, 3, 4, 6\)",
    ),
    (
        "conv2d-dilated-kernel-larger-than-padded-input",
        lambda: MF.conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), padding=1, dilation=(5, 1)),
        ValueError,
        r"conv2d: kernel of size \(3, 3\) \(dilated to \(11, 3\)\) is larger than the padded input of size \(10, 10\)",
    ),
    (
        "conv2d-groups-do-not-divide-weight",
        lambda: MF.conv2d(torch.randn(1, 6, 5, 5), torch.randn(4, 2, 3, 3), groups=3),
        ValueError,
        r"conv2d: groups=3 does not divide the 4 output channels of weight of shape \(4, 2, 3, 3\)",
    ),
    (
        "conv2d-groups-do-not-divide-input",
        lambda: MF.conv2d(X, torch.randn(6, 1, 3, 3), groups=3),
        ValueError,
        r"conv2d: groups=3 does not divide the 4 channels of input of shape \(2, 4, 8, 8\)",
    ),
    (
        "conv2d-groups-zero",
        lambda: MF.conv2d(X, W, groups=0),
        ValueError,
        r"conv2d: groups must be a positive int, got 0",
    ),
    (
        "conv2d-module-groups-in_channels",
        lambda: mnn.Conv2d(4, 6, 3, groups=3),
        ValueError,
        r"manualbp.nn.Conv2d: groups=3 must divide both in_channels=4 and out_channels=6",
    ),
    (
        "conv2d-module-groups-out_channels",
        lambda: mnn.Conv2d(3, 4, 3, groups=3),
        ValueError,
        r"manualbp.nn.Conv2d: groups=3 must divide both in_channels=3 and out_channels=4",
    ),
    (
        "conv2d-input-dims",
        lambda: MF.conv2d(torch.randn(4, 8), W),
        ValueError,
        r"conv2d: expected input with 3 or 4 dimensions, got 2-D input of shape \(4, 8\)",
    ),
    (
        "conv2d-input-5d",
        lambda: MF.conv2d(torch.randn(1, 2, 3, 8, 8), W),
        ValueError,
        r"conv2d: expected input with 3 or 4 dimensions, got 5-D input of shape \(1, 2, 3, 8, 8\)",
    ),
    (
        "conv2d-weight-dims",
        lambda: MF.conv2d(X, torch.randn(6, 4, 5)),
        ValueError,
        r"conv2d: expected weight with 4 dimensions, got 3-D weight of shape \(6, 4, 5\)",
    ),
    (
        "conv2d-integer-input",
        lambda: MF.conv2d(torch.ones(2, 3, 8, 8, dtype=torch.int64), W),
        TypeError,
        r"conv2d: expected a floating-point input, got dtype torch.int64 with shape \(2, 3, 8, 8\)",
    ),
    (
        "conv2d-dtype-mismatch",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8, dtype=torch.float64), W),
        TypeError,
        r"conv2d: .*same dtype.*input torch.float64, weight torch.float32",
    ),
    (
        "conv2d-bias-dtype-mismatch",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, torch.zeros(6, dtype=torch.float64)),
        TypeError,
        r"conv2d: .*same dtype.*input torch.float32, weight torch.float32, bias torch.float64",
    ),
    (
        "conv2d-bias-shape",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, torch.zeros(3)),
        ValueError,
        r"conv2d: bias of shape \(3,\) does not match weight of shape \(6, 3, 5, 5\): expected \(6,\)",
    ),
    (
        "conv2d-same-strided",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, stride=2, padding="same"),
        ValueError,
        r"conv2d: padding='same' is not supported for strided convolutions \(stride=\(2, 2\)\)",
    ),
    (
        "conv2d-padding-string",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, padding="full"),
        ValueError,
        r"conv2d: padding must be 'valid', 'same', an int or a pair of ints, got 'full'",
    ),
    (
        "conv2d-negative-padding",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, padding=-1),
        ValueError,
        r"conv2d: padding must be at least 0, got -1",
    ),
    (
        "conv2d-stride-zero",
        lambda: MF.conv2d(torch.randn(2, 3, 8, 8), W, stride=(1, 0)),
        ValueError,
        r"conv2d: stride must be at least 1, got \(1, 0\)",
    ),
    (
        "max_pool2d-kernel-larger-than-padded-input",
        lambda: MF.max_pool2d(torch.randn(2, 3, 4, 4), 7, padding=1),
        ValueError,
        r"max_pool2d: kernel of size \(7, 7\) is larger than the padded input of size \(6, 6\) "
        r"\(input of shape \(2, 3, 4, 4\), padding \(1, 1\)\)",
    ),
    (
        "max_pool2d-dilated-kernel-larger-than-padded-input",
        lambda: MF.max_pool2d(torch.randn(2, 3, 5, 9), 3, dilation=3),
        ValueError,
        r"max_pool2d: kernel of size \(3, 3\) \(dilated to \(7, 7\)\) is larger than the padded input of size \(5, 9\) "
        r"\(input of shape \(2, 3, 5, 9\), padding \(0, 0\)\)",
    ),
    (
        "avg_pool2d-kernel-larger-than-padded-input",
        lambda: MF.avg_pool2d(torch.randn(3, 4, 7), (2, 8), padding=(1, 0)),
        ValueError,
        r"avg_pool2d: kernel of size \(2, 8\) is larger than the padded input of size \(6, 7\) "
        r"\(input of shape \(3, 4, 7\), padding \(1, 0\)\)",
    ),
    (
        "max_pool2d-module-kernel-larger",
        lambda: mnn.MaxPool2d(5)(torch.randn(1, 1, 4, 4)),
        ValueError,
        r"max_pool2d: kernel of size \(5, 5\) is larger than the padded input of size \(4, 4\)",
    ),
    (
        "max_pool2d-padding-over-half-kernel",
        lambda: MF.max_pool2d(torch.randn(1, 1, 8, 8), 3, padding=2),
        ValueError,
        r"max_pool2d: padding \(2, 2\) must be at most half of kernel_size \(3, 3\)",
    ),
    (
        "avg_pool2d-padding-over-half-kernel",
        lambda: MF.avg_pool2d(torch.randn(1, 1, 8, 8), (4, 2), padding=(1, 2)),
        ValueError,
        r"avg_pool2d: padding \(1, 2\) must be at most half of kernel_size \(4, 2\)",
    ),
    (
        "max_pool2d-input-dims",
        lambda: MF.max_pool2d(torch.randn(8, 8), 2),
        ValueError,
        r"max_pool2d: expected input with 3 or 4 dimensions, got 2-D input of shape \(8, 8\)",
    ),
    (
        "avg_pool2d-input-dims",
        lambda: MF.avg_pool2d(torch.randn(1, 1, 1, 8, 8), 2),
        ValueError,
        r"avg_pool2d: expected input with 3 or 4 dimensions, got 5-D input of shape \(1, 1, 1, 8, 8\)",
    ),
    (
        "adaptive_avg_pool2d-input-dims",
        lambda: MF.adaptive_avg_pool2d(torch.randn(8, 8), 2),
        ValueError,
        r"adaptive_avg_pool2d: expected input with 3 or 4 dimensions, got 2-D input of shape \(8, 8\)",
    ),
    (
        "max_pool2d-integer-input",
        lambda: MF.max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2),
        TypeError,
        r"max_pool2d: expected a floating-point input, got dtype torch.int64 with shape \(1, 1, 4, 4\)",
    ),
    (
        "avg_pool2d-integer-input",
        lambda: MF.avg_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), 2),
        TypeError,
        r"avg_pool2d: expected a floating-point input, got dtype torch.int32",
    ),
    (
        "adaptive_avg_pool2d-integer-input",
        lambda: MF.adaptive_avg_pool2d(torch.ones(1, 4, 4, dtype=torch.uint8), 2),
        TypeError,
        r"adaptive_avg_pool2d: expected a floating-point input, got dtype torch.uint8",
    ),
    (
        "avg_pool2d-divisor-zero",
        lambda: MF.avg_pool2d(torch.randn(1, 1, 4, 4), 2, divisor_override=0),
        ValueError,
        r"avg_pool2d: divisor_override must be a non-zero int or None, got 0",
    ),
    (
        "adaptive_avg_pool2d-output-size-zero",
        lambda: MF.adaptive_avg_pool2d(torch.randn(1, 1, 4, 4), (0, None)),
        ValueError,
        r"adaptive_avg_pool2d: output_size must hold positive ints or None, got \(0, None\)",
    ),
    (
        "adaptive_avg_pool2d-output-size-length",
        lambda: MF.adaptive_avg_pool2d(torch.randn(1, 1, 4, 4), (2, 2, 2)),
        ValueError,
        r"adaptive_avg_pool2d: output_size must be an int, None or a pair of them, got \(2, 2, 2\)",
    ),
    (
        "max_pool2d-kernel-not-int",
        lambda: MF.max_pool2d(torch.randn(1, 1, 4, 4), 2.0),
        TypeError,
        r"max_pool2d: kernel_size must be an int or a pair of ints, got 2.0",
    ),
    (
        "max_pool2d-kernel-three-values",
        lambda: MF.max_pool2d(torch.randn(1, 1, 4, 4), (2, 2, 2)),
        ValueError,
        r"max_pool2d: kernel_size must be an int or a pair of ints, got \(2, 2, 2\)",
    ),
    (
        "max_pool2d-kernel-zero",
        lambda: MF.max_pool2d(X, 0),
        ValueError,
        r"max_pool2d: kernel_size must be at least 1, got 0",
    ),
    (
        "max_pool2d-stride-zero",
        lambda: MF.max_pool2d(X, 2, 0),
        ValueError,
        r"max_pool2d: stride must be at least 1, got 0",
    ),
    (
        "max_pool2d-negative-padding",
        lambda: MF.max_pool2d(X, 2, 2, -1),
        ValueError,
        r"max_pool2d: padding must be at least 0, got -1",
    ),
    (
        "max_pool2d-dilation-zero",
        lambda: MF.max_pool2d(X, 2, dilation=(1, 0)),
        ValueError,
        r"max_pool2d: dilation must be at least 1, got \(1, 0\)",
    ),
    (
        "avg_pool2d-negative-kernel",
        lambda: MF.avg_pool2d(X, (2, -2)),
        ValueError,
        r"avg_pool2d: kernel_size must be at least 1, got \(2, -2\)",
    ),
    (
        "avg_pool2d-divisor-float",
        lambda: MF.avg_pool2d(X, 2, divisor_override=2.0),
        ValueError,
        r"avg_pool2d: divisor_override must be a non-zero int or None, got 2.0",
    ),
    (
        "adaptive_avg_pool2d-output-size-float",
        lambda: MF.adaptive_avg_pool2d(X, 2.5),
        ValueError,
        r"adaptive_avg_pool2d: output_size must be an int, None or a pair of them, got 2.5",
    ),
    (
        "adaptive_avg_pool2d-not-a-tensor",
        lambda: MF.adaptive_avg_pool2d([[1.0]], 1),
        TypeError,
        r"adaptive_avg_pool2d: input must be a Tensor, got list",
    ),
    (
        "conv2d-empty-kernel",
        lambda: MF.conv2d(X, torch.randn(6, 4, 0, 3)),
        ValueError,
        r"conv2d: weight of shape \(6, 4, 0, 3\) has an empty kernel of size \(0, 3\); kernel_size must be at least 1",
    ),
    (
        "conv2d-dilation-zero",
        lambda: MF.conv2d(X, torch.randn(6, 4, 3, 3), dilation=0),
        ValueError,
        r"conv2d: dilation must be at least 1, got 0",
    ),
    (
        "conv2d-stride-float",
        lambda: MF.conv2d(X, torch.randn(6, 4, 3, 3), stride=1.5),
        TypeError,
        r"conv2d: stride must be an int or a pair of ints, got 1.5",
    ),
    (
        "conv2d-not-a-tensor",
        lambda: MF.conv2d(X.tolist(), torch.randn(6, 4, 3, 3)),
        TypeError,
        r"conv2d: input must be a Tensor, got list",
    ),
    (
        "conv2d-weight-on-another-device",
        lambda: MF.conv2d(X, torch.randn(6, 4, 3, 3, device="meta")),
        RuntimeError,
        r"conv2d: expected all tensors to be on the same device, got input on cpu, weight on meta",
    ),
    (
        "conv2d-bias-on-another-device",
        lambda: MF.conv2d(X, torch.randn(6, 4, 3, 3), torch.zeros(6, device="meta")),
        RuntimeError,
        r"conv2d: .*input on cpu, weight on cpu, bias on meta",
    ),
    (
        "conv2d-module-input-on-another-device",
        lambda: mnn.Conv2d(4, 6, 3)(X.to("meta")),
        RuntimeError,
        r"conv2d: .*input on meta, weight on cpu, bias on cpu",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input_names_op_and_shapes(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_mode_other_than_zeros_is_rejected_by_name(padding_mode):
    pattern = f"manualbp.nn.Conv2d: padding_mode='{padding_mode}' is not supported"
    with pytest.raises(NotImplementedError, match=pattern):
        mnn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode)


def test_conv2d_unknown_padding_mode_is_torchs_error():
    with pytest.raises(ValueError, match="padding_mode"):
        mnn.Conv2d(2, 3, 3, padding_mode="mirror")


def test_convert_leaves_a_non_zero_padding_mode_conv_as_torch():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), torch.nn.MaxPool2d(2))
    with pytest.warns(UserWarning, match="padding_mode='reflect'"):
        manualbp.convert(model)
    assert type(model[0]) is torch.nn.Conv2d and isinstance(model[1], mnn.MaxPool2d)


def test_convert_swaps_every_conv_and_pool_layer():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, groups=2, padding="same"),
        torch.nn.AvgPool2d(2, ceil_mode=True),
        torch.nn.AdaptiveAvgPool2d((2, None)),
    )
    x = torch.randn(2, 1, 9, 9)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manualbp.convert(model)
    assert all(isinstance(layer, mnn.ManualModule) for layer in model)
    torch.testing.assert_close(model(x), expected)
