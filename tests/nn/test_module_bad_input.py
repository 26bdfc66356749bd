"""A manualbp layer built with a bad hyper-parameter fails where it is built, naming the layer and the value.

torch's own constructors accept many of these silently (a zero kernel, a negative eps, momentum 1.5)
or crash on a negative size with a message that names neither the layer nor the argument.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import manualbp.nn as mnn

BAD_LAYERS = [
    # (id, constructor call, exception, message pattern)
    (
        "Linear-negative-in",
        lambda: mnn.Linear(-1, 3),
        ValueError,
        r"manualbp.nn.Linear: in_features must be at least 0, got -1",
    ),
    (
        "Linear-negative-out",
        lambda: mnn.Linear(4, out_features=-3),
        ValueError,
        r"manualbp.nn.Linear: out_features must be at least 0, got -3",
    ),
    (
        "Linear-float-size",
        lambda: mnn.Linear(2.5, 3),
        TypeError,
        r"manualbp.nn.Linear: in_features must be an int, got 2.5",
    ),
    (
        "Conv2d-zero-kernel",
        lambda: mnn.Conv2d(3, 4, 0),
        ValueError,
        r"manualbp.nn.Conv2d: kernel_size must be at least 1, got 0",
    ),
    (
        "Conv2d-negative-kernel",
        lambda: mnn.Conv2d(3, 4, (3, -1)),
        ValueError,
        r"manualbp.nn.Conv2d: kernel_size must be at least 1, got \(3, -1\)",
    ),
    (
        "Conv2d-zero-stride",
        lambda: mnn.Conv2d(3, 4, 3, stride=0),
        ValueError,
        r"manualbp.nn.Conv2d: stride must be at least 1, got 0",
    ),
    (
        "Conv2d-negative-padding",
        lambda: mnn.Conv2d(3, 4, 3, padding=-1),
        ValueError,
        r"manualbp.nn.Conv2d: padding must be at least 0, got -1",
    ),
    (
        "Conv2d-zero-dilation",
        lambda: mnn.Conv2d(3, 4, 3, dilation=0),
        ValueError,
        r"manualbp.nn.Conv2d: dilation must be at least 1, got 0",
    ),
    (
        "Conv2d-zero-groups",
        lambda: mnn.Conv2d(3, 3, 3, groups=0),
        ValueError,
        r"manualbp.nn.Conv2d: groups must be at least 1, got 0",
    ),
    (
        "Conv2d-negative-channels",
        lambda: mnn.Conv2d(-3, 4, 3),
        ValueError,
        r"manualbp.nn.Conv2d: in_channels must be at least 0, got -3",
    ),
    (
        "Conv2d-kernel-float",
        lambda: mnn.Conv2d(3, 4, 2.5),
        TypeError,
        r"manualbp.nn.Conv2d: kernel_size must be an int or a pair of ints, got 2.5",
    ),
    (
        "MaxPool2d-zero-kernel",
        lambda: mnn.MaxPool2d(0),
        ValueError,
        r"manualbp.nn.MaxPool2d: kernel_size must be at least 1, got 0",
    ),
    (
        "MaxPool2d-zero-stride",
        lambda: mnn.MaxPool2d(2, stride=0),
        ValueError,
        r"manualbp.nn.MaxPool2d: stride must be at least 1, got 0",
    ),
    (
        "MaxPool2d-negative-padding",
        lambda: mnn.MaxPool2d(3, padding=-1),
        ValueError,
        r"manualbp.nn.MaxPool2d: padding must be at least 0, got -1",
    ),
    (
        "MaxPool2d-padding-over-half",
        lambda: mnn.MaxPool2d(2, padding=2),
        ValueError,
        r"manualbp.nn.MaxPool2d: padding \(2, 2\) must be at most half of kernel_size \(2, 2\)",
    ),
    (
        "MaxPool2d-zero-dilation",
        lambda: mnn.MaxPool2d(2, dilation=0),
        ValueError,
        r"manualbp.nn.MaxPool2d: dilation must be at least 1, got 0",
    ),
    (
        "MaxPool2d-kernel-float",
        lambda: mnn.MaxPool2d(2.5),
        TypeError,
        r"manualbp.nn.MaxPool2d: kernel_size must be an int or a pair of ints, got 2.5",
    ),
    (
        "AvgPool2d-zero-kernel",
        lambda: mnn.AvgPool2d(0),
        ValueError,
        r"manualbp.nn.AvgPool2d: kernel_size must be at least 1, got 0",
    ),
    (
        "AvgPool2d-zero-divisor",
        lambda: mnn.AvgPool2d(2, divisor_override=0),
        ValueError,
        r"manualbp.nn.AvgPool2d: divisor_override must be a non-zero int or None, got 0",
    ),
    (
        "AdaptiveAvgPool2d-zero",
        lambda: mnn.AdaptiveAvgPool2d(0),
        ValueError,
        r"manualbp.nn.AdaptiveAvgPool2d: output_size must hold positive ints or None, got 0",
    ),
    (
        "AdaptiveAvgPool2d-negative",
        lambda: mnn.AdaptiveAvgPool2d((None, -2)),
        ValueError,
        r"manualbp.nn.AdaptiveAvgPool2d: output_size must hold positive ints or None, got \(None, -2\)",
    ),
    (
        "BatchNorm2d-negative-eps",
        lambda: mnn.BatchNorm2d(4, eps=-1),
        ValueError,
        r"manualbp.nn.BatchNorm2d: eps must be non-negative, got -1",
    ),
    (
        "BatchNorm1d-momentum-above-one",
        lambda: mnn.BatchNorm1d(4, momentum=1.5),
        ValueError,
        r"manualbp.nn.BatchNorm1d: momentum has to be between 0 and 1, but got 1.5",
    ),
    (
        "BatchNorm2d-negative-momentum",
        lambda: mnn.BatchNorm2d(4, momentum=-0.1),
        ValueError,
        r"manualbp.nn.BatchNorm2d: momentum has to be between 0 and 1, but got -0.1",
    ),
    (
        "BatchNorm2d-negative-features",
        lambda: mnn.BatchNorm2d(-1),
        ValueError,
        r"manualbp.nn.BatchNorm2d: num_features must be at least 0, got -1",
    ),
    (
        "LayerNorm-negative-eps",
        lambda: mnn.LayerNorm(4, eps=-1e-5),
        ValueError,
        r"manualbp.nn.LayerNorm: eps must be non-negative, got -1e-05",
    ),
    (
        "LayerNorm-negative-shape",
        lambda: mnn.LayerNorm((4, -3)),
        ValueError,
        r"manualbp.nn.LayerNorm: normalized_shape must hold sizes >= 0, got \(4, -3\)",
    ),
    (
        "LayerNorm-shape-string",
        lambda: mnn.LayerNorm("8"),
        TypeError,
        r"manualbp.nn.LayerNorm: normalized_shape must be an int or a sequence of ints, got '8'",
    ),
    (
        "Dropout-negative-p",
        lambda: mnn.Dropout(-0.1),
        ValueError,
        r"manualbp.nn.Dropout: p has to be between 0 and 1, but got -0.1",
    ),
    (
        "Dropout-p-above-one",
        lambda: mnn.Dropout(p=2),
        ValueError,
        r"manualbp.nn.Dropout: p has to be between 0 and 1, but got 2",
    ),
    (
        "Dropout-p-string",
        lambda: mnn.Dropout("0.5"),
        TypeError,
        r"manualbp.nn.Dropout: p must be a real number, got '0.5'",
    ),
    (
        "LeakyReLU-slope-string",
        lambda: mnn.LeakyReLU("0.1"),
        TypeError,
        r"manualbp.nn.LeakyReLU: negative_slope must be a real number, got '0.1'",
    ),
    ("ELU-alpha-none", lambda: mnn.ELU(None), TypeError, r"manualbp.nn.ELU: alpha must be a real number, got None"),
    (
        "GELU-approximate",
        lambda: mnn.GELU("fast"),
        ValueError,
        r"manualbp.nn.GELU: approximate must be one of \('none', 'tanh'\), got 'fast'",
    ),
    (
        "Flatten-dim-string",
        lambda: mnn.Flatten("1"),
        TypeError,
        r"manualbp.nn.Flatten: start_dim must be an int, got '1'",
    ),
    (
        "CrossEntropyLoss-label-smoothing",
        lambda: mnn.CrossEntropyLoss(label_smoothing=1.5),
        ValueError,
        r"manualbp.nn.CrossEntropyLoss: label_smoothing has to be between 0 and 1, but got 1.5",
    ),
    (
        "CrossEntropyLoss-reduction",
        lambda: mnn.CrossEntropyLoss(reduction="avg"),
        ValueError,
        r"manualbp.nn.CrossEntropyLoss: reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
    ),
    (
        "CrossEntropyLoss-weight-dims",
        lambda: mnn.CrossEntropyLoss(weight=torch.ones(2, 5)),
        ValueError,
        r"manualbp.nn.CrossEntropyLoss: expected weight with 1 dimensions, got 2-D weight of shape \(2, 5\)",
    ),
    (
        "CrossEntropyLoss-integer-weight",
        lambda: mnn.CrossEntropyLoss(weight=torch.ones(5, dtype=torch.long)),
        TypeError,
        r"manualbp.nn.CrossEntropyLoss: expected a floating-point weight, got dtype torch.int64",
    ),
    (
        "NLLLoss-ignore-index-float",
        lambda: mnn.NLLLoss(ignore_index=1.5),
        TypeError,
        r"manualbp.nn.NLLLoss: ignore_index must be an int, got 1.5",
    ),
    (
        "NLLLoss-reduction",
        lambda: mnn.NLLLoss(reduction="total"),
        ValueError,
        r"manualbp.nn.NLLLoss: reduction must be one of .*, got 'total'",
    ),
    (
        "MSELoss-reduction",
        lambda: mnn.MSELoss(reduction="avg"),
        ValueError,
        r"manualbp.nn.MSELoss: reduction must be one of .*, got 'avg'",
    ),
]


@pytest.mark.parametrize("build, exception, pattern", [pytest.param(*c[1:], id=c[0]) for c in BAD_LAYERS])
def test_bad_hyper_parameter_fails_at_construction(build, exception, pattern):
    with pytest.raises(exception, match=pattern):
        build()


GOOD_LAYERS = [
    # edge values torch accepts, which the checks must accept too
    ("BatchNorm2d-zero-eps", lambda: mnn.BatchNorm2d(4, eps=0.0)),
    ("BatchNorm1d-momentum-none", lambda: mnn.BatchNorm1d(4, momentum=None)),
    ("BatchNorm1d-momentum-one", lambda: mnn.BatchNorm1d(4, momentum=1)),
    ("LayerNorm-size", lambda: mnn.LayerNorm(torch.Size([2, 3]))),
    ("Conv2d-padding-same", lambda: mnn.Conv2d(3, 4, (3, 2), padding="same", dilation=(1, 2))),
    ("Conv2d-pair-lists", lambda: mnn.Conv2d(4, 4, [3, 1], stride=[2, 1], padding=[1, 0], groups=2)),
    ("MaxPool2d-stride-none", lambda: mnn.MaxPool2d(3, padding=1, dilation=2)),
    ("AvgPool2d-divisor", lambda: mnn.AvgPool2d((2, 4), stride=1, padding=(1, 2), divisor_override=-3)),
    ("AdaptiveAvgPool2d-none", lambda: mnn.AdaptiveAvgPool2d((None, 2))),
    ("Dropout-bounds", lambda: (mnn.Dropout(0), mnn.Dropout(1.0))),
    ("LeakyReLU-int-slope", lambda: mnn.LeakyReLU(1)),
    ("CrossEntropyLoss-weighted", lambda: mnn.CrossEntropyLoss(torch.ones(3), ignore_index=-1, label_smoothing=1.0)),
]


@pytest.mark.parametrize("build", [pytest.param(c[1], id=c[0]) for c in GOOD_LAYERS])
def test_valid_edge_values_still_build(build):
    layers = build()
    for layer in layers if isinstance(layers, tuple) else (layers,):
        assert isinstance(layer, mnn.ManualModule)


def test_from_torch_applies_the_same_checks():
    """A torch layer that torch built silently with a bad value is refused when it becomes manual."""
    with pytest.raises(ValueError, match=r"manualbp.nn.MaxPool2d: kernel_size must be at least 1, got 0"):
        mnn.MaxPool2d.from_torch(torch.nn.MaxPool2d(0))
    with pytest.raises(ValueError, match=r"manualbp.nn.BatchNorm2d: momentum has to be between 0 and 1, but got 2"):
        mnn.BatchNorm2d.from_torch(torch.nn.BatchNorm2d(3, momentum=2))


def test_a_wrong_call_keeps_torchs_message_and_signature():
    """Binding the arguments for the checks must not change how a wrong call fails, or the signature."""
    with pytest.raises(TypeError, match="out_features"):
        mnn.Linear(4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'kernel'"):
        mnn.BatchNorm2d(4, kernel=3)
    assert inspect.signature(mnn.Linear) == inspect.signature(torch.nn.Linear)
    assert inspect.signature(mnn.BatchNorm2d) == inspect.signature(torch.nn.BatchNorm2d)


def test_keyword_and_positional_arguments_are_checked_alike():
    for build in (lambda: mnn.Linear(in_features=4, out_features=-2), lambda: mnn.Linear(4, -2)):
        with pytest.raises(ValueError, match="out_features must be at least 0, got -2"):
            build()
