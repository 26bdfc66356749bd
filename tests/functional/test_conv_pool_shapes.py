"""Convolution and pooling on drawn shapes: values and gradients agree with torch in float64.

Bugs in these backward passes hide in geometry (a stride that leaves rows out of every window, a
ceil_mode window past the edge, an uneven "same" padding, groups), so hypothesis draws valid
configurations and every one is compared with torch's autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import manualbp.functional as MF
import manualbp.nn as mnn

pairs = st.tuples


def _compare(manual_fn, torch_fn, tensors, seed):
    """Forward and the gradients of every tensor under one random dL/dy, manual against torch."""
    manual_in = [t.clone().requires_grad_() for t in tensors]
    torch_in = [t.clone().requires_grad_() for t in tensors]
    out_m, out_t = manual_fn(*manual_in), torch_fn(*torch_in)
    assert_close(out_m, out_t)
    grad_out = torch.randn(out_t.shape, generator=torch.Generator().manual_seed(seed), dtype=out_t.dtype)
    assert_close(torch.autograd.grad(out_m, manual_in, grad_out), torch.autograd.grad(out_t, torch_in, grad_out))


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = draw(pairs(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    padding_kinds = ["int", "pair", "valid"] + (["same"] if stride == (1, 1) else [])
    kind = draw(st.sampled_from(padding_kinds))
    if kind == "int":
        padding = draw(st.integers(0, 2))
        pads = (padding, padding)
    elif kind == "pair":
        padding = pads = draw(pairs(st.integers(0, 2), st.integers(0, 2)))
    else:
        padding, pads = kind, (0, 0)
    # smallest input with a non-empty output ("same" pads d·(k-1) in all, so any size works)
    low = [1 if kind == "same" else max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, pads)]
    size = [draw(st.integers(m, m + 5)) for m in low]
    batch = draw(st.one_of(st.none(), st.integers(1, 3)))
    bias = draw(st.booleans())
    return dict(
        input_shape=((batch,) if batch else ()) + (in_channels, *size),
        weight_shape=(out_channels, in_channels // groups, *kernel),
        bias=bias,
        args=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
    )


@settings(max_examples=150, deadline=None)
@given(conv_configs(), st.integers(0, 2**16))
def test_conv2d_matches_torch_on_drawn_shapes(config, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(config["input_shape"], generator=g, dtype=torch.float64)
    w = torch.randn(config["weight_shape"], generator=g, dtype=torch.float64)
    tensors = [x, w] + ([torch.randn(w.shape[0], generator=g, dtype=torch.float64)] if config["bias"] else [])
    args = config["args"]
    _compare(
        lambda x, w, *b: MF.conv2d(x, w, *b, **args),
        lambda x, w, *b: F.conv2d(x, w, *b, **args),
        tensors,
        seed,
    )


@st.composite
def pool_configs(draw, dilated: bool):
    kernel = draw(pairs(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(pairs(st.integers(1, 4), st.integers(1, 4)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = draw(pairs(st.integers(1, 3), st.integers(1, 3))) if dilated else (1, 1)
    low = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, padding)]
    size = [draw(st.integers(m, m + 5)) for m in low]
    batch = draw(st.one_of(st.none(), st.integers(1, 2)))
    shape = ((batch,) if batch else ()) + (draw(st.integers(1, 2)), *size)
    args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=draw(st.booleans()))
    if dilated:
        args["dilation"] = dilation
    return shape, args


@settings(max_examples=150, deadline=None)
@given(pool_configs(dilated=True), st.integers(0, 2**16))
def test_max_pool2d_matches_torch_on_drawn_shapes(config, seed):
    shape, args = config
    # float64 normal samples: no two equal values, so every window has one argmax
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    values, indices = F.max_pool2d(x, **args, return_indices=True)
    if torch.isinf(values).any():
        # A dilated window holding padding only (y = -inf): torch's own backward writes out of bounds
        # there, so the reference is an explicit -inf padding and a pool without padding.
        _compare(lambda x: MF.max_pool2d(x, **args), _max_pool2d_by_explicit_padding(args, values.shape), [x], seed)
    else:
        _compare(lambda x: MF.max_pool2d(x, **args), lambda x: F.max_pool2d(x, **args), [x], seed)
        assert torch.equal(MF.max_pool2d(x, **args, return_indices=True)[1], indices)


def _max_pool2d_by_explicit_padding(args, out_shape):
    """max_pool2d as a pool of x padded with -inf (and enough -inf on the far side for ceil_mode windows),
    cropped to torch's output size."""
    (ph, pw), (kh, kw), (dh, dw) = args["padding"], args["kernel_size"], args["dilation"]
    far_h, far_w = ph + dh * (kh - 1) + args["stride"][0], pw + dw * (kw - 1) + args["stride"][1]

    def pool(x):
        padded = F.pad(x, (pw, far_w, ph, far_h), value=float("-inf"))
        return F.max_pool2d(padded, args["kernel_size"], args["stride"], 0, args["dilation"])[
            ..., : out_shape[-2], : out_shape[-1]
        ]

    return pool


def test_max_pool2d_windows_of_padding_only_pass_no_gradient():
    # rows -1 and 2 of a 2-row input: every window's taps miss it (this only happens to all windows at once)
    x = torch.randn(2, 3, 2, 7, dtype=torch.float64, requires_grad=True)
    args = dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(3, 2), ceil_mode=True)
    y = MF.max_pool2d(x, **args)
    assert torch.isinf(y).all()
    assert_close(y, F.max_pool2d(x.detach(), **args))
    grad_out = torch.randn(y.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    assert_close(grad, torch.autograd.grad(_max_pool2d_by_explicit_padding(args, y.shape)(x), x, grad_out)[0])
    assert_close(grad, torch.zeros_like(x), rtol=0, atol=0)


@settings(max_examples=100, deadline=None)
@given(
    pool_configs(dilated=False),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 7)),
    st.integers(0, 2**16),
)
def test_avg_pool2d_matches_torch_on_drawn_shapes(config, count_include_pad, divisor_override, seed):
    shape, args = config
    args = dict(args, count_include_pad=count_include_pad, divisor_override=divisor_override)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _compare(lambda x: MF.avg_pool2d(x, **args), lambda x: F.avg_pool2d(x, **args), [x], seed)


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.one_of(st.none(), st.integers(1, 9)), st.one_of(st.none(), st.integers(1, 9))),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_adaptive_avg_pool2d_matches_torch_on_drawn_shapes(size, output_size, batched, seed):
    shape = ((2,) if batched else ()) + (2, *size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _compare(
        lambda x: MF.adaptive_avg_pool2d(x, output_size), lambda x: F.adaptive_avg_pool2d(x, output_size), [x], seed
    )


def test_max_pool2d_return_indices_like_torch():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    values, indices = MF.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    ref_values, ref_indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert_close(values, ref_values)
    assert indices.dtype == torch.int64 and torch.equal(indices, ref_indices)
    assert not indices.requires_grad
    assert isinstance(values.grad_fn, torch.autograd.function.BackwardCFunction)
    module_values, module_indices = mnn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)(x)
    assert_close(module_values, ref_values)
    assert torch.equal(module_indices, ref_indices)
    (grad,) = torch.autograd.grad(values.sum(), x)
    (ref_grad,) = torch.autograd.grad(ref_values.sum(), x)
    assert_close(grad, ref_grad)


def test_functions_compose_with_vmap_and_grad():
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)

    def loss(manual, x):
        conv = MF.conv2d if manual else F.conv2d
        maxp = MF.max_pool2d if manual else F.max_pool2d
        avgp = MF.avg_pool2d if manual else F.avg_pool2d
        adap = MF.adaptive_avg_pool2d if manual else F.adaptive_avg_pool2d
        h = maxp(conv(x, w, None, 1, "same"), 2, ceil_mode=True)
        return (adap(avgp(h, 2, 1, 1), (2, None)) ** 2).sum()

    grads = [torch.func.vmap(torch.func.grad(lambda x, m=manual: loss(m, x)))(x) for manual in (True, False)]
    assert_close(*grads)
