"""The op-case registry: every configuration of every manualbp op that the test-suite checks.

Adding an op (or an interesting configuration of one) is one ``twin(...)`` line here; every gradient
and module test is parametrised over ``BUILTIN_CASES``. A fused layer, which has no torch.nn twin, is
compared with the ``torch.nn.Sequential`` of the layers it fuses (``OpCase(..., is_twin=False)``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import torch

import manualbp.functional as MF
import manualbp.nn as mnn
from manualbp.verify.case import InputMaker, OpCase

Maker = Callable[[torch.Generator], Any]


def randn(*shape: int, scale: float = 1.0, offset: float = 0.0) -> Maker:
    """A float64 normal sample of ``shape``, times ``scale``, plus ``offset``."""
    return lambda g: torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset


def classes(*shape: int, num_classes: int, ignore: int | None = None) -> Maker:
    """Class indices in [0, num_classes) of ``shape``; with ``ignore``, every third one set to it."""

    def make(g: torch.Generator) -> torch.Tensor:
        target = torch.randint(0, num_classes, shape, generator=g)
        if ignore is not None:
            target.view(-1)[::3] = ignore
        return target

    return make


def probabilities(*shape: int) -> Maker:
    """Rows of class probabilities along dim 1 (dim 0 for 1-D shapes)."""
    dim = 1 if len(shape) > 1 else 0
    return lambda g: torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim)


def pretrained(*shape: int) -> torch.Tensor:
    """A fixed float32 table of ``shape`` (an embedding's ``from_pretrained`` weights), the same on every call."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


def args(*makers: Maker) -> InputMaker:
    return lambda g: tuple(make(g) for make in makers)


def twin(
    case_id: str, layer: str, *ctor_args: Any, inputs: InputMaker, train: bool = True, **ctor_kwargs: Any
) -> OpCase:
    """A case comparing ``manualbp.nn.<layer>`` with ``torch.nn.<layer>``, both built from the same arguments.

    Tensor constructor arguments (a class weight) are made from a fixed generator on every build.
    """

    def build(namespace: Any) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            g = torch.Generator().manual_seed(1)
            resolved = {k: v(g) if callable(v) else v for k, v in ctor_kwargs.items()}
            return getattr(namespace, layer)(*ctor_args, **resolved)

        return make

    return OpCase(case_id, build(mnn), build(torch.nn), inputs, train)


def fused(case_id: str, layer: Callable[[], mnn.ReLUMaxPool2d | mnn.LinearReLU], *, inputs: InputMaker) -> OpCase:
    """A case comparing a fused manualbp layer (``manualbp.nn.ReLUMaxPool2d``, ``LinearReLU``) with its
    autograd counterpart ``layer().to_torch()`` (not a twin: torch.nn has no fused class)."""
    return OpCase(case_id, layer, lambda: layer().to_torch(), inputs, is_twin=False)


class Clone(torch.nn.Module):
    """x -> a copy of x, for an in-place layer to overwrite: autograd refuses to overwrite a leaf that requires
    grad (the battery's inputs are such leaves), as a network's in-place activation never sees one either."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.clone()


def in_place(case_id: str, layer: str, *ctor_args: Any, inputs: InputMaker, **ctor_kwargs: Any) -> OpCase:
    """A case comparing ``manualbp.nn.<layer>(..., inplace=True)`` with ``torch.nn.<layer>(..., inplace=True)``,
    each applied to a ``Clone`` of the input (so a comparison of the numbers only, ``is_twin=False``; the
    layers' twin-ness is the out-of-place cases')."""

    def build(namespace: Any) -> Callable[[], torch.nn.Module]:
        return lambda: torch.nn.Sequential(Clone(), getattr(namespace, layer)(*ctor_args, inplace=True, **ctor_kwargs))

    return OpCase(case_id, build(mnn), build(torch.nn), inputs, is_twin=False)


def class_weight(num_classes: int) -> Maker:
    return lambda g: torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.5


class WithCellState(torch.nn.Module):
    """``layer(input, (h0, c0))`` as a function of three tensors: the battery's inputs are tensors, and an LSTM
    (or LSTMCell) takes its initial states as a pair."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, input: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> Any:
        return self.layer(input, (h0, c0))


class Packed(torch.nn.Module):
    """A recurrent layer on a padded batch-first input whose sequences have the given ``lengths``: returns (the
    output, zero beyond each sequence's end, the final state).

    A manual layer gets the ``PackedSequence`` of manualbp's ``pack_padded_sequence`` (``enforce_sorted=False``)
    and its output goes through manualbp's ``pad_packed_sequence``. A torch layer runs on each sequence alone,
    which is what packing means (torch's packed kernels do not run under ``torch.func.jvp``); the same layer on
    torch's own PackedSequence, dropout included, is compared in tests/nn/test_recurrent.py."""

    def __init__(self, layer: torch.nn.Module, lengths: list[int]) -> None:
        super().__init__()
        self.layer = layer
        self.lengths = lengths

    def forward(self, input: torch.Tensor) -> Any:
        if input.shape[0] != len(self.lengths):
            raise ValueError(f"Packed: {len(self.lengths)} lengths for a batch of {input.shape[0]}")
        if isinstance(self.layer, mnn.ManualModule):
            packed = MF.pack_padded_sequence(input, self.lengths, batch_first=True, enforce_sorted=False)
            output, state = self.layer(packed)
            return MF.pad_packed_sequence(output, batch_first=True, total_length=input.shape[1])[0], state
        results = [self.layer(input[b : b + 1, :length]) for b, length in enumerate(self.lengths)]
        output = torch.cat(
            [torch.nn.functional.pad(out, (0, 0, 0, input.shape[1] - out.shape[1])) for out, _ in results]
        )
        states = [state for _, state in results]  # each (layers · directions, 1, H), or a pair of them (LSTM)
        if isinstance(states[0], tuple):
            return output, tuple(torch.cat(parts, dim=1) for parts in zip(*states))
        return output, torch.cat(states, dim=1)


def wrapped(
    case_id: str,
    wrap: Callable[[torch.nn.Module], torch.nn.Module],
    layer: str,
    *ctor_args: Any,
    inputs: InputMaker,
    **ctor_kwargs: Any,
) -> OpCase:
    """A case comparing ``wrap(manualbp.nn.<layer>(...))`` with ``wrap(torch.nn.<layer>(...))`` (numbers only)."""

    def build(namespace: Any) -> Callable[[], torch.nn.Module]:
        return lambda: wrap(getattr(namespace, layer)(*ctor_args, **ctor_kwargs))

    return OpCase(case_id, build(mnn), build(torch.nn), inputs, is_twin=False)


def time_major(case: OpCase) -> OpCase:
    """``case`` of a sequence in (T, N, features): its batch dim, which the dynamic-shape checks vary, is 1."""
    return dataclasses.replace(case, batch_dim=1)


def not_the_derivative(case: OpCase, why: str) -> OpCase:
    """``case`` whose gradient is by definition not the derivative of its forward (``why``), as torch defines it:
    gradcheck, which compares the two by finite differences, cannot apply (its row is "unsupported")."""
    reason = f"the gradient is by definition not the derivative of the forward: {why}"
    return dataclasses.replace(case, unsupported=(("gradcheck", reason),))


def batch_kept_first(case: OpCase) -> OpCase:
    """``case`` of a batch-first attention layer, whose tensors' layouts differ from torch's by design: torch runs
    ``batch_first=True`` as transposed views of its sequence-first computation, so its output and input gradients
    are transposed views; manualbp keeps each sample's rows in dim 0 (the per-sample seam reads the batch there),
    with equal values. The memory-format check, which compares layouts, cannot apply."""
    reason = "batch_first attention keeps the batch in dim 0; torch's tensors are transposed views of (T, N, E) ones"
    return dataclasses.replace(case, unsupported=(("memory_format", reason),))


def unbatched_sequence(case: OpCase) -> OpCase:
    """``case`` of one sequence (T, features): no batch dim (the dynamic-shape checks run at its own size)."""
    return dataclasses.replace(case, batch_dim=None)


class Attention(torch.nn.Module):
    """``function(query, key, value, attn_mask, **options)`` (manualbp's or torch's scaled_dot_product_attention) as
    a module of its tensors: the battery's inputs are tensors, the mask (when given) the fourth."""

    def __init__(self, function: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__()
        self.function = function
        self.options = options

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.function(query, key, value, attn_mask=attn_mask, **self.options)


def math_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
    """torch's scaled_dot_product_attention on its math path (``SDPBackend.MATH``), the composite of differentiable
    ops: the one that runs every check (torch's fused CPU kernel has no double backward)."""
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)


def attention(case_id: str, *, inputs: InputMaker, **options: Any) -> OpCase:
    """A case comparing ``manualbp.functional.scaled_dot_product_attention`` with torch's math path
    (``math_attention``), called with ``options`` (numbers only: no module twin)."""
    return OpCase(
        case_id,
        lambda: Attention(MF.scaled_dot_product_attention, **options),
        lambda: Attention(math_attention, **options),
        inputs,
        is_twin=False,
    )


def bool_mask(*shape: int, masked_row: tuple[int, ...] | None = None) -> Maker:
    """A boolean attention mask (True = takes part), each entry True with probability 0.6; with ``masked_row``
    (an index of the leading dims and the row), that query row takes no key at all."""

    def make(g: torch.Generator) -> torch.Tensor:
        mask = torch.rand(shape, generator=g) < 0.6
        if masked_row is not None:
            mask[masked_row] = False
        return mask

    return make


#: Why an embedding's gradient is not the derivative of its forward (torch's definitions, which manualbp follows).
PADDING_ROW = "the padding_idx row gets no gradient, though the forward reads it"
BY_FREQUENCY = "with scale_grad_by_freq each row's gradient is divided by its index's count in the batch"
RENORM = "max_norm renormalises the rows read, in place in the weight, before the lookup; the gradient is the lookup's"


class SelfAttention(torch.nn.Module):
    """``layer(x, x, x, **options)[0]``: self-attention's output, the one tensor as query, key and value (what the
    packed projection's one-matmul path needs), with fixed options."""

    def __init__(self, layer: torch.nn.Module, **options: Any) -> None:
        super().__init__()
        self.layer, self.options = layer, options

    def forward(self, x: torch.Tensor) -> Any:
        return self.layer(x, x, x, **self.options)[0]


class PaddedCausalAttention(torch.nn.Module):
    """Attention of a (T, N, E) batch with a causal ``attn_mask`` (boolean) and a ``key_padding_mask`` that hides
    the last key of sample 0, both made from the input's shape."""

    def __init__(self, layer: torch.nn.Module, **options: Any) -> None:
        super().__init__()
        self.layer, self.options = layer, options

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Any:
        causal = torch.ones(query.shape[0], key.shape[0], dtype=torch.bool).triu(1)
        padding = torch.zeros(key.shape[1], key.shape[0], dtype=torch.bool)
        padding[0, -1] = True
        return self.layer(query, key, value, attn_mask=causal, key_padding_mask=padding, **self.options)


def _forward_on_math_path(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return type(module).forward(module, *args, **kwargs)


def on_math_path(case: OpCase) -> OpCase:
    """``case`` with its torch reference computing attention on torch's math path (``SDPBackend.MATH``, the
    composite of differentiable ops): torch's CPU flash kernel has no double backward to compare with."""

    def reference() -> torch.nn.Module:
        module = case.reference()
        # bound to the instance, so a deep copy of the module (as the battery makes) is bound to the copy
        module.forward = types.MethodType(_forward_on_math_path, module)
        return module

    return dataclasses.replace(case, reference=reference)


def transformer_stack(case_id: str, kind: str, layers: int, *, inputs: InputMaker, **layer_kwargs: Any) -> OpCase:
    """``manualbp.nn.<kind>`` of ``layers`` copies of a ``<kind>Layer`` (TransformerEncoder or TransformerDecoder)
    against torch's, each built from its own namespace's layer."""

    def build(namespace: Any) -> Callable[[], torch.nn.Module]:
        layer = getattr(namespace, f"{kind}Layer")
        return lambda: getattr(namespace, kind)(layer(**layer_kwargs), layers)

    return OpCase(case_id, build(mnn), build(torch.nn), inputs)


def tiny_vit(namespace: Any) -> Callable[[], torch.nn.Module]:
    """A two-block vision transformer on 8x8 images of 4x4 patches (5 tokens with the class token), width 4:
    torchvision's ``VisionTransformer`` or its ``manualbp.nn`` twin."""
    vit = namespace.VisionTransformer if namespace is mnn else torchvision_vit()
    return lambda: vit(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=4, mlp_dim=8, num_classes=3)


def torchvision_vit() -> type[torch.nn.Module]:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer


BUILTIN_CASES: list[OpCase] = [
    # Linear
    twin("linear-bias", "Linear", 5, 4, inputs=args(randn(3, 5))),
    twin("linear-nobias-3d", "Linear", 5, 4, bias=False, inputs=args(randn(2, 3, 5))),
    twin("linear-unbatched", "Linear", 5, 4, inputs=args(randn(5))),
    twin("linear-batch1-4d", "Linear", 3, 2, inputs=args(randn(1, 2, 1, 3))),
    # elementwise activations
    twin("relu", "ReLU", inputs=args(randn(3, 4))),
    twin("leaky_relu-slope0.2", "LeakyReLU", 0.2, inputs=args(randn(3, 4))),
    twin("elu", "ELU", inputs=args(randn(3, 4))),
    twin("elu-alpha0.5-extreme", "ELU", 0.5, inputs=args(randn(3, 4, scale=1e3))),
    twin("sigmoid", "Sigmoid", inputs=args(randn(3, 4))),
    twin("sigmoid-extreme", "Sigmoid", inputs=args(randn(3, 4, scale=1e3))),
    twin("tanh", "Tanh", inputs=args(randn(3, 4))),
    twin("tanh-extreme", "Tanh", inputs=args(randn(3, 4, scale=1e3))),
    twin("gelu", "GELU", inputs=args(randn(3, 4, scale=2.0))),
    twin("gelu-tanh", "GELU", approximate="tanh", inputs=args(randn(3, 4, scale=2.0))),
    twin("silu", "SiLU", inputs=args(randn(3, 4, scale=2.0))),
    twin("silu-extreme", "SiLU", inputs=args(randn(3, 4, scale=1e3))),
    twin("relu6", "ReLU6", inputs=args(randn(3, 4, scale=5.0, offset=2.0))),
    # in place: y written into (a copy of) x, backward from what survives the overwrite
    in_place("relu-inplace", "ReLU", inputs=args(randn(3, 4))),
    in_place("relu6-inplace", "ReLU6", inputs=args(randn(3, 4, scale=5.0, offset=2.0))),
    in_place("leaky_relu-slope0.2-inplace", "LeakyReLU", 0.2, inputs=args(randn(3, 4))),
    in_place("leaky_relu-slope0-inplace", "LeakyReLU", 0.0, inputs=args(randn(3, 4))),
    in_place("elu-alpha0.5-inplace", "ELU", 0.5, inputs=args(randn(3, 4, scale=2.0))),
    in_place("silu-inplace", "SiLU", inputs=args(randn(3, 4, scale=2.0))),
    in_place("dropout-p0.3-inplace", "Dropout", 0.3, inputs=args(randn(4, 6))),
    # softmax family
    twin("softmax-dim1", "Softmax", dim=1, inputs=args(randn(3, 5))),
    twin("softmax-dim0-3d", "Softmax", dim=0, inputs=args(randn(3, 2, 4))),
    twin("softmax-logits+1e4", "Softmax", dim=-1, inputs=args(randn(3, 5, offset=1e4))),
    twin("softmax-logits-1e4", "Softmax", dim=-1, inputs=args(randn(3, 5, offset=-1e4))),
    twin("softmax-logits-spread1e4", "Softmax", dim=-1, inputs=args(randn(3, 5, scale=1e4))),
    twin("log_softmax-dim1", "LogSoftmax", dim=1, inputs=args(randn(3, 5))),
    twin("log_softmax-dim-1-4d", "LogSoftmax", dim=-1, inputs=args(randn(2, 3, 2, 4))),
    twin("log_softmax-logits+1e4", "LogSoftmax", dim=1, inputs=args(randn(3, 5, offset=1e4))),
    twin("log_softmax-logits-spread1e4", "LogSoftmax", dim=1, inputs=args(randn(3, 5, scale=1e4))),
    # shape
    twin("flatten-default", "Flatten", inputs=args(randn(2, 3, 2, 2))),
    twin("flatten-dims1-2", "Flatten", 1, 2, inputs=args(randn(2, 3, 2, 2))),
    twin("flatten-all", "Flatten", 0, -1, inputs=args(randn(2, 3, 2))),
    # dropout (training mode; the fixed seed gives both sides the same mask)
    twin("dropout-p0.3", "Dropout", 0.3, inputs=args(randn(4, 6))),
    twin("dropout-p1", "Dropout", 1.0, inputs=args(randn(4, 6))),
    # cross entropy
    twin("cross_entropy-mean", "CrossEntropyLoss", inputs=args(randn(4, 5), classes(4, num_classes=5))),
    twin("cross_entropy-sum", "CrossEntropyLoss", reduction="sum", inputs=args(randn(4, 5), classes(4, num_classes=5))),
    twin(
        "cross_entropy-none", "CrossEntropyLoss", reduction="none", inputs=args(randn(4, 5), classes(4, num_classes=5))
    ),
    twin(
        "cross_entropy-weight",
        "CrossEntropyLoss",
        weight=class_weight(5),
        inputs=args(randn(6, 5), classes(6, num_classes=5)),
    ),
    twin(
        "cross_entropy-ignore_index",
        "CrossEntropyLoss",
        ignore_index=-1,
        inputs=args(randn(6, 5), classes(6, num_classes=5, ignore=-1)),
    ),
    twin(
        "cross_entropy-label_smoothing",
        "CrossEntropyLoss",
        label_smoothing=0.1,
        inputs=args(randn(4, 5), classes(4, num_classes=5)),
    ),
    twin(
        "cross_entropy-weight-smoothing-ignore-none",
        "CrossEntropyLoss",
        weight=class_weight(5),
        ignore_index=2,
        label_smoothing=0.2,
        reduction="none",
        inputs=args(randn(6, 5), classes(6, num_classes=5, ignore=2)),
    ),
    twin(
        "cross_entropy-weight-smoothing-ignore-mean",
        "CrossEntropyLoss",
        weight=class_weight(5),
        ignore_index=2,
        label_smoothing=0.2,
        inputs=args(randn(6, 5), classes(6, num_classes=5, ignore=2)),
    ),
    twin(
        "cross_entropy-spatial",
        "CrossEntropyLoss",
        weight=class_weight(3),
        inputs=args(randn(2, 3, 2, 3), classes(2, 2, 3, num_classes=3)),
    ),
    twin(
        "cross_entropy-spatial-none",
        "CrossEntropyLoss",
        reduction="none",
        label_smoothing=0.1,
        inputs=args(randn(2, 3, 4), classes(2, 4, num_classes=3)),
    ),
    twin("cross_entropy-unbatched", "CrossEntropyLoss", inputs=args(randn(5), classes(num_classes=5))),
    twin(
        "cross_entropy-probabilities",
        "CrossEntropyLoss",
        weight=class_weight(5),
        label_smoothing=0.1,
        inputs=args(randn(4, 5), probabilities(4, 5)),
    ),
    twin(
        "cross_entropy-logits-spread1e4",
        "CrossEntropyLoss",
        inputs=args(randn(4, 5, scale=1e4), classes(4, num_classes=5)),
    ),
    twin(
        "cross_entropy-logits+1e4", "CrossEntropyLoss", inputs=args(randn(4, 5, offset=1e4), classes(4, num_classes=5))
    ),
    # negative log-likelihood
    twin("nll_loss-mean", "NLLLoss", inputs=args(randn(4, 5), classes(4, num_classes=5))),
    twin("nll_loss-sum", "NLLLoss", reduction="sum", inputs=args(randn(4, 5), classes(4, num_classes=5))),
    twin(
        "nll_loss-weight-ignore-none",
        "NLLLoss",
        weight=class_weight(5),
        ignore_index=0,
        reduction="none",
        inputs=args(randn(6, 5), classes(6, num_classes=5, ignore=0)),
    ),
    twin(
        "nll_loss-spatial-weight",
        "NLLLoss",
        weight=class_weight(3),
        inputs=args(randn(2, 3, 2, 2), classes(2, 2, 2, num_classes=3)),
    ),
    # mean squared error
    twin("mse_loss-mean", "MSELoss", inputs=args(randn(3, 4), randn(3, 4))),
    twin("mse_loss-sum", "MSELoss", reduction="sum", inputs=args(randn(3, 4), randn(3, 4))),
    twin("mse_loss-none-3d", "MSELoss", reduction="none", inputs=args(randn(2, 3, 4), randn(2, 3, 4))),
    # convolution and pooling
    twin("conv2d-k3", "Conv2d", 2, 3, 3, inputs=args(randn(2, 2, 5, 5))),
    twin("conv2d-stride2-pad1", "Conv2d", 2, 3, 3, stride=2, padding=1, inputs=args(randn(2, 2, 6, 6))),
    twin("conv2d-batch1-one_channel", "Conv2d", 1, 2, 3, inputs=args(randn(1, 1, 5, 5))),
    twin("conv2d-kernel_equals_input", "Conv2d", 2, 3, 4, inputs=args(randn(2, 2, 4, 4))),
    twin("conv2d-stride3-kernel2", "Conv2d", 2, 2, 2, stride=3, inputs=args(randn(2, 2, 7, 7))),
    twin(
        "conv2d-rect_kernel-rect_stride",
        "Conv2d",
        2,
        3,
        (3, 2),
        stride=(2, 1),
        padding=(1, 0),
        inputs=args(randn(2, 2, 6, 5)),
    ),
    twin("conv2d-dilation2-pad1", "Conv2d", 2, 2, 3, dilation=2, padding=1, inputs=args(randn(2, 2, 7, 7))),
    twin("conv2d-rect_dilation-stride2", "Conv2d", 2, 2, 2, stride=2, dilation=(3, 1), inputs=args(randn(2, 2, 7, 6))),
    twin("conv2d-groups2", "Conv2d", 4, 6, 3, groups=2, padding=1, inputs=args(randn(2, 4, 4, 4))),
    twin("conv2d-depthwise", "Conv2d", 3, 3, 3, groups=3, inputs=args(randn(2, 3, 5, 5))),
    twin("conv2d-depthwise-multiplier2-stride2", "Conv2d", 3, 6, 3, stride=2, groups=3, inputs=args(randn(2, 3, 5, 5))),
    twin("conv2d-nobias", "Conv2d", 2, 3, 3, bias=False, inputs=args(randn(2, 2, 5, 5))),
    twin("conv2d-same-even_kernel", "Conv2d", 2, 2, (4, 2), padding="same", inputs=args(randn(2, 2, 5, 5))),
    twin(
        "conv2d-same-dilated",
        "Conv2d",
        2,
        2,
        (2, 3),
        padding="same",
        dilation=(3, 2),
        inputs=args(randn(2, 2, 6, 6)),
    ),
    twin("conv2d-valid", "Conv2d", 2, 2, 3, padding="valid", inputs=args(randn(2, 2, 5, 4))),
    twin("conv2d-unbatched", "Conv2d", 2, 3, 3, padding=1, inputs=args(randn(2, 4, 5))),
    twin("conv2d-unbatched-same-groups2", "Conv2d", 2, 4, 2, padding="same", groups=2, inputs=args(randn(2, 4, 4))),
    twin("max_pool2d-k2", "MaxPool2d", 2, inputs=args(randn(2, 2, 6, 6))),
    twin("max_pool2d-k3-stride2-pad1", "MaxPool2d", 3, stride=2, padding=1, inputs=args(randn(2, 2, 7, 7))),
    twin("max_pool2d-ceil_mode", "MaxPool2d", 3, stride=2, ceil_mode=True, inputs=args(randn(2, 2, 6, 6))),
    twin(
        "max_pool2d-ceil_mode-pad1",
        "MaxPool2d",
        2,
        stride=2,
        padding=1,
        ceil_mode=True,
        inputs=args(randn(2, 2, 5, 5)),
    ),
    twin("max_pool2d-dilation2", "MaxPool2d", 2, stride=1, dilation=2, inputs=args(randn(2, 2, 5, 5))),
    twin("max_pool2d-dilation2-pad1-ceil", "MaxPool2d", 3, 2, 1, 2, ceil_mode=True, inputs=args(randn(2, 2, 8, 8))),
    twin(
        "max_pool2d-rect_kernel-rect_stride",
        "MaxPool2d",
        (3, 2),
        stride=(2, 1),
        padding=(1, 0),
        inputs=args(randn(2, 2, 6, 5)),
    ),
    twin("max_pool2d-stride3-kernel2", "MaxPool2d", 2, stride=3, inputs=args(randn(2, 2, 7, 7))),
    twin("max_pool2d-kernel_equals_input", "MaxPool2d", 5, inputs=args(randn(2, 3, 5, 5))),
    twin("max_pool2d-batch1-one_channel", "MaxPool2d", 2, inputs=args(randn(1, 1, 6, 6))),
    twin("max_pool2d-unbatched", "MaxPool2d", 3, stride=2, padding=1, inputs=args(randn(2, 6, 5))),
    twin("avg_pool2d-k2", "AvgPool2d", 2, inputs=args(randn(2, 2, 6, 6))),
    twin("avg_pool2d-k3-stride2-pad1", "AvgPool2d", 3, stride=2, padding=1, inputs=args(randn(2, 2, 7, 7))),
    twin(
        "avg_pool2d-ceil_mode-pad1",
        "AvgPool2d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        inputs=args(randn(2, 2, 6, 6)),
    ),
    twin(
        "avg_pool2d-ceil_mode-pad1-exclude_pad",
        "AvgPool2d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
        inputs=args(randn(2, 2, 6, 6)),
    ),
    twin(
        "avg_pool2d-ceil_mode-uncovered_edge",
        "AvgPool2d",
        2,
        stride=3,
        ceil_mode=True,
        inputs=args(randn(2, 2, 6, 7)),
    ),
    twin("avg_pool2d-divisor_override3", "AvgPool2d", 2, padding=1, divisor_override=3, inputs=args(randn(2, 2, 5, 5))),
    twin(
        "avg_pool2d-divisor_override-ceil-exclude_pad",
        "AvgPool2d",
        3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
        divisor_override=5,
        inputs=args(randn(2, 2, 6, 6)),
    ),
    twin(
        "avg_pool2d-rect_kernel-rect_stride",
        "AvgPool2d",
        (3, 2),
        stride=(2, 1),
        padding=(1, 0),
        inputs=args(randn(2, 2, 6, 5)),
    ),
    twin("avg_pool2d-stride3-kernel2", "AvgPool2d", 2, stride=3, inputs=args(randn(2, 2, 7, 7))),
    twin("avg_pool2d-kernel_equals_input", "AvgPool2d", 5, inputs=args(randn(2, 3, 5, 5))),
    twin("avg_pool2d-batch1-one_channel", "AvgPool2d", 2, inputs=args(randn(1, 1, 6, 6))),
    twin(
        "avg_pool2d-unbatched-exclude_pad",
        "AvgPool2d",
        3,
        2,
        1,
        count_include_pad=False,
        inputs=args(randn(2, 5, 6)),
    ),
    twin("adaptive_avg_pool2d-3x3-from-7x5", "AdaptiveAvgPool2d", 3, inputs=args(randn(2, 2, 7, 5))),
    twin("adaptive_avg_pool2d-global", "AdaptiveAvgPool2d", 1, inputs=args(randn(2, 3, 4, 4))),
    twin("adaptive_avg_pool2d-None-2", "AdaptiveAvgPool2d", (None, 2), inputs=args(randn(2, 2, 3, 5))),
    twin("adaptive_avg_pool2d-upsample", "AdaptiveAvgPool2d", (5, 6), inputs=args(randn(2, 2, 3, 4))),
    twin("adaptive_avg_pool2d-batch1-one_channel", "AdaptiveAvgPool2d", (2, 3), inputs=args(randn(1, 1, 5, 7))),
    twin("adaptive_avg_pool2d-unbatched", "AdaptiveAvgPool2d", (3, 2), inputs=args(randn(2, 6, 5))),
    # normalisation
    twin("batch_norm1d-train-2d", "BatchNorm1d", 3, inputs=args(randn(4, 3, scale=2.0, offset=1.0))),
    twin("batch_norm1d-train-3d", "BatchNorm1d", 3, inputs=args(randn(2, 3, 4, scale=2.0, offset=1.0))),
    twin("batch_norm1d-train-batch2", "BatchNorm1d", 3, inputs=args(randn(2, 3))),
    twin("batch_norm1d-train-momentum_none", "BatchNorm1d", 3, momentum=None, inputs=args(randn(3, 3, 2))),
    twin("batch_norm1d-train-no_running_stats", "BatchNorm1d", 3, track_running_stats=False, inputs=args(randn(4, 3))),
    twin("batch_norm1d-eval-3d", "BatchNorm1d", 3, train=False, inputs=args(randn(2, 3, 4))),
    twin("batch_norm2d-train", "BatchNorm2d", 3, inputs=args(randn(2, 3, 3, 3, scale=2.0, offset=1.0))),
    twin("batch_norm2d-train-momentum_none", "BatchNorm2d", 3, momentum=None, inputs=args(randn(2, 3, 2, 2))),
    twin(
        "batch_norm2d-train-momentum0.5-eps0.1",
        "BatchNorm2d",
        2,
        eps=0.1,
        momentum=0.5,
        inputs=args(randn(3, 2, 2, 2)),
    ),
    twin("batch_norm2d-train-no_affine", "BatchNorm2d", 3, affine=False, inputs=args(randn(2, 3, 2, 2))),
    twin("batch_norm2d-train-no_bias", "BatchNorm2d", 3, bias=False, inputs=args(randn(2, 3, 2, 2))),
    twin(
        "batch_norm2d-train-no_running_stats",
        "BatchNorm2d",
        3,
        track_running_stats=False,
        inputs=args(randn(2, 3, 2, 2)),
    ),
    twin("batch_norm2d-train-batch2-1x1", "BatchNorm2d", 3, inputs=args(randn(2, 3, 1, 1))),
    twin("batch_norm2d-train-one_channel", "BatchNorm2d", 1, inputs=args(randn(2, 1, 3, 2))),
    twin("batch_norm2d-eval", "BatchNorm2d", 3, train=False, inputs=args(randn(2, 3, 2, 2))),
    twin("batch_norm2d-eval-no_affine", "BatchNorm2d", 3, affine=False, train=False, inputs=args(randn(2, 3, 2, 2))),
    twin(
        "batch_norm2d-eval-no_running_stats",
        "BatchNorm2d",
        3,
        track_running_stats=False,
        train=False,
        inputs=args(randn(2, 3, 2, 2)),
    ),
    twin("layer_norm-int", "LayerNorm", 4, inputs=args(randn(3, 4, scale=2.0, offset=1.0))),
    twin("layer_norm-tuple-3d", "LayerNorm", (3, 4), inputs=args(randn(2, 3, 4))),
    twin("layer_norm-tuple-unbatched", "LayerNorm", (2, 3), inputs=args(randn(2, 3))),
    twin("layer_norm-int-4d-eps0.1", "LayerNorm", 3, eps=0.1, inputs=args(randn(2, 2, 2, 3))),
    twin("layer_norm-no_affine", "LayerNorm", 4, elementwise_affine=False, inputs=args(randn(3, 4))),
    twin("layer_norm-no_bias", "LayerNorm", (2, 3), bias=False, inputs=args(randn(2, 2, 3))),
    twin("layer_norm-size2", "LayerNorm", 2, inputs=args(randn(3, 2))),
    twin("rms_norm-int", "RMSNorm", 4, inputs=args(randn(3, 4, scale=2.0, offset=1.0))),
    twin("rms_norm-tuple-3d", "RMSNorm", (3, 4), inputs=args(randn(2, 3, 4))),
    twin("rms_norm-tuple-unbatched", "RMSNorm", (2, 3), inputs=args(randn(2, 3))),
    twin("rms_norm-int-4d-eps0.1", "RMSNorm", 3, eps=0.1, inputs=args(randn(2, 2, 2, 3))),
    twin("rms_norm-eps1e-5-seq", "RMSNorm", 5, eps=1e-5, inputs=args(randn(2, 3, 5, offset=0.5))),
    twin("rms_norm-no_affine", "RMSNorm", 4, elementwise_affine=False, inputs=args(randn(3, 4))),
    # embedding: integer indices (constants, rolled per slice under vmap); the weight is the differentiable tensor
    twin("embedding", "Embedding", 10, 4, inputs=args(classes(3, 5, num_classes=10))),
    twin("embedding-1d", "Embedding", 7, 3, inputs=args(classes(6, num_classes=7))),
    twin("embedding-3d", "Embedding", 7, 3, inputs=args(classes(2, 3, 2, num_classes=7))),
    unbatched_sequence(twin("embedding-scalar-unbatched", "Embedding", 5, 3, inputs=args(classes(num_classes=5)))),
    twin("embedding-int32", "Embedding", 6, 3, inputs=args(lambda g: classes(3, 4, num_classes=6)(g).int())),
    not_the_derivative(
        twin(
            "embedding-padding_idx",
            "Embedding",
            8,
            3,
            padding_idx=2,
            inputs=args(classes(3, 4, num_classes=8, ignore=2)),
        ),
        PADDING_ROW,
    ),
    not_the_derivative(
        twin(
            "embedding-padding_idx-negative",
            "Embedding",
            6,
            3,
            padding_idx=-1,
            inputs=args(classes(2, 5, num_classes=6, ignore=5)),
        ),
        PADDING_ROW,
    ),
    not_the_derivative(
        twin("embedding-max_norm", "Embedding", 10, 4, max_norm=1.0, inputs=args(classes(3, 4, num_classes=10))),
        RENORM,
    ),
    not_the_derivative(
        twin(
            "embedding-max_norm-norm_type1",
            "Embedding",
            10,
            4,
            max_norm=2.0,
            norm_type=1.0,
            inputs=args(classes(3, 4, num_classes=10)),
        ),
        RENORM,
    ),
    not_the_derivative(
        twin(
            "embedding-scale_grad_by_freq",
            "Embedding",
            5,
            3,
            scale_grad_by_freq=True,
            inputs=args(classes(4, 5, num_classes=5)),
        ),
        BY_FREQUENCY,
    ),
    not_the_derivative(
        twin(
            "embedding-scale_grad_by_freq-padding_idx",
            "Embedding",
            5,
            3,
            padding_idx=0,
            scale_grad_by_freq=True,
            inputs=args(classes(4, 5, num_classes=5, ignore=0)),
        ),
        f"{PADDING_ROW}; {BY_FREQUENCY}",
    ),
    not_the_derivative(
        OpCase(
            "embedding-from_pretrained-padding_idx",
            lambda: mnn.Embedding.from_pretrained(pretrained(6, 3), freeze=False, padding_idx=1),
            lambda: torch.nn.Embedding.from_pretrained(pretrained(6, 3), freeze=False, padding_idx=1),
            args(classes(3, 4, num_classes=6, ignore=1)),
        ),
        PADDING_ROW,
    ),
    # fused
    fused("fused-relu_max_pool2d-k2", lambda: mnn.ReLUMaxPool2d(2), inputs=args(randn(2, 3, 6, 6))),
    fused(
        "fused-relu_max_pool2d-k3-stride2-pad1",
        lambda: mnn.ReLUMaxPool2d(3, stride=2, padding=1),
        inputs=args(randn(2, 2, 7, 7)),
    ),
    fused(
        "fused-relu_max_pool2d-ceil_mode-pad1",
        lambda: mnn.ReLUMaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        inputs=args(randn(2, 2, 6, 6)),
    ),
    fused(
        "fused-relu_max_pool2d-ceil_mode-stride3",
        lambda: mnn.ReLUMaxPool2d(2, stride=3, ceil_mode=True),
        inputs=args(randn(2, 2, 6, 7)),
    ),
    fused(
        "fused-relu_max_pool2d-rect_kernel-rect_stride",
        lambda: mnn.ReLUMaxPool2d((3, 2), stride=(2, 1), padding=(1, 0)),
        inputs=args(randn(2, 2, 6, 5)),
    ),
    fused("fused-relu_max_pool2d-batch1-one_channel", lambda: mnn.ReLUMaxPool2d(2), inputs=args(randn(1, 1, 6, 6))),
    fused(
        "fused-relu_max_pool2d-unbatched",
        lambda: mnn.ReLUMaxPool2d(3, stride=2, padding=1),
        inputs=args(randn(2, 6, 5)),
    ),
    fused(
        "fused-relu_max_pool2d-all_negative", lambda: mnn.ReLUMaxPool2d(2), inputs=args(randn(2, 2, 4, 4, offset=-5.0))
    ),
    fused("fused-linear_relu-bias", lambda: mnn.LinearReLU(5, 4), inputs=args(randn(3, 5))),
    fused("fused-linear_relu-nobias-3d", lambda: mnn.LinearReLU(5, 4, bias=False), inputs=args(randn(2, 3, 5))),
    fused("fused-linear_relu-unbatched", lambda: mnn.LinearReLU(5, 4), inputs=args(randn(5))),
    fused("fused-linear_relu-dead_units", lambda: mnn.LinearReLU(3, 6), inputs=args(randn(4, 3, offset=-2.0))),
    # recurrent: (T, B, I) time-major unless batch_first; training mode (dropout: the seed gives both sides one mask)
    time_major(twin("rnn-tanh", "RNN", 2, 3, inputs=args(randn(2, 3, 2)))),
    twin(
        "rnn-relu-2layers-nobias-batch_first-h0",
        "RNN",
        2,
        2,
        2,
        nonlinearity="relu",
        bias=False,
        batch_first=True,
        inputs=args(randn(3, 2, 2), randn(2, 3, 2)),
    ),
    unbatched_sequence(
        twin(
            "rnn-unbatched-bidirectional-2layers-dropout0.5",
            "RNN",
            2,
            2,
            2,
            bidirectional=True,
            dropout=0.5,
            inputs=args(randn(2, 2)),
        ),
    ),
    time_major(twin("lstm", "LSTM", 2, 3, inputs=args(randn(2, 3, 2)))),
    wrapped(
        "lstm-2layers-bidirectional-batch_first-dropout0.5-h0-c0",
        WithCellState,
        "LSTM",
        2,
        2,
        2,
        bidirectional=True,
        batch_first=True,
        dropout=0.5,
        inputs=args(randn(3, 2, 2), randn(4, 3, 2), randn(4, 3, 2)),
    ),
    unbatched_sequence(
        twin("lstm-proj-unbatched-nobias", "LSTM", 2, 3, proj_size=2, bias=False, inputs=args(randn(2, 2)))
    ),
    wrapped(
        "lstm-packed-bidirectional",
        lambda layer: Packed(layer, [2, 1, 2]),
        "LSTM",
        2,
        2,
        bidirectional=True,
        batch_first=True,
        inputs=args(randn(3, 2, 2)),
    ),
    time_major(twin("gru", "GRU", 2, 3, inputs=args(randn(2, 3, 2)))),
    twin(
        "gru-2layers-bidirectional-nobias-batch_first-dropout0.5",
        "GRU",
        2,
        2,
        2,
        bidirectional=True,
        bias=False,
        batch_first=True,
        dropout=0.5,
        inputs=args(randn(3, 2, 2)),
    ),
    unbatched_sequence(twin("gru-unbatched-h0", "GRU", 2, 3, inputs=args(randn(2, 2), randn(1, 3)))),
    wrapped(
        "gru-packed-2layers",
        lambda layer: Packed(layer, [1, 2, 2]),
        "GRU",
        2,
        2,
        2,
        batch_first=True,
        inputs=args(randn(3, 2, 2)),
    ),
    twin("rnn_cell-tanh", "RNNCell", 2, 3, inputs=args(randn(3, 2))),
    twin(
        "rnn_cell-relu-unbatched-nobias-h0",
        "RNNCell",
        2,
        3,
        bias=False,
        nonlinearity="relu",
        inputs=args(randn(2), randn(3)),
    ),
    wrapped("lstm_cell-h0-c0", WithCellState, "LSTMCell", 2, 3, inputs=args(randn(3, 2), randn(3, 3), randn(3, 3))),
    twin("lstm_cell-unbatched-nobias", "LSTMCell", 2, 3, bias=False, inputs=args(randn(2))),
    twin("gru_cell", "GRUCell", 2, 3, inputs=args(randn(3, 2))),
    twin("gru_cell-unbatched-nobias-h0", "GRUCell", 2, 3, bias=False, inputs=args(randn(2), randn(3))),
    # scaled dot-product attention: (N, H, L, E) queries, (N, H, S, E) keys, (N, H, S, Ev) values
    attention("attention", inputs=args(randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3))),
    attention(
        "attention-bool_mask-broadcast-masked_row",
        inputs=args(
            randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3), bool_mask(2, 1, 3, 4, masked_row=(0, 0, 1))
        ),
    ),
    attention(
        "attention-float_mask", inputs=args(randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3), randn(3, 4))
    ),
    attention(
        "attention-causal-L3-S4", is_causal=True, inputs=args(randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3))
    ),
    attention(
        "attention-causal-L4-S2", is_causal=True, inputs=args(randn(2, 2, 4, 3), randn(2, 2, 2, 3), randn(2, 2, 2, 3))
    ),
    attention(
        "attention-gqa-4q_heads-2kv_heads",
        enable_gqa=True,
        inputs=args(randn(2, 4, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3)),
    ),
    attention("attention-scale0.7", scale=0.7, inputs=args(randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 3))),
    attention("attention-unbatched-3d", inputs=args(randn(2, 3, 3), randn(2, 4, 3), randn(2, 4, 3))),
    attention("attention-Ev5", inputs=args(randn(2, 2, 3, 3), randn(2, 2, 4, 3), randn(2, 2, 4, 5))),
    attention(
        "attention-scores-spread",
        inputs=args(randn(2, 2, 3, 3, scale=10.0), randn(2, 2, 4, 3, scale=10.0), randn(2, 2, 4, 3)),
    ),
    # multi-head attention (need_weights=True, torch's default, returns the averaged weights too)
    batch_kept_first(
        on_math_path(
            wrapped(
                "multihead_attention-self-batch_first",
                lambda layer: SelfAttention(layer, need_weights=False),
                "MultiheadAttention",
                4,
                2,
                batch_first=True,
                inputs=args(randn(2, 3, 4)),
            ),
        )
    ),
    on_math_path(
        twin(
            "multihead_attention-cross",
            "MultiheadAttention",
            4,
            2,
            inputs=args(randn(3, 2, 4), randn(5, 2, 4), randn(5, 2, 4)),
        ),
    ),
    on_math_path(
        twin(
            "multihead_attention-kdim-vdim-add_bias_kv-add_zero_attn",
            "MultiheadAttention",
            4,
            2,
            kdim=3,
            vdim=5,
            add_bias_kv=True,
            add_zero_attn=True,
            inputs=args(randn(3, 2, 4), randn(4, 2, 3), randn(4, 2, 5)),
        ),
    ),
    on_math_path(
        wrapped(
            "multihead_attention-causal-key_padding_mask-per_head_weights",
            lambda layer: PaddedCausalAttention(layer, average_attn_weights=False),
            "MultiheadAttention",
            4,
            2,
            inputs=args(randn(3, 2, 4), randn(3, 2, 4), randn(3, 2, 4)),
        ),
    ),
    on_math_path(
        wrapped(
            "multihead_attention-causal-no_weights",
            lambda layer: PaddedCausalAttention(layer, need_weights=False),
            "MultiheadAttention",
            4,
            1,
            bias=False,
            inputs=args(randn(3, 2, 4), randn(4, 2, 4), randn(4, 2, 4)),
        ),
    ),
    on_math_path(
        twin(
            "multihead_attention-unbatched-nobias",
            "MultiheadAttention",
            4,
            2,
            bias=False,
            inputs=args(randn(3, 4), randn(2, 4), randn(2, 4)),
        ),
    ),
    # transformer layers (dropout 0: attention's dropout mask is drawn differently from torch's)
    on_math_path(
        twin(
            "transformer_encoder_layer-relu",
            "TransformerEncoderLayer",
            4,
            2,
            8,
            dropout=0.0,
            inputs=args(randn(3, 2, 4)),
        ),
    ),
    on_math_path(
        twin(
            "transformer_encoder_layer-gelu-norm_first-batch_first",
            "TransformerEncoderLayer",
            4,
            2,
            8,
            dropout=0.0,
            activation="gelu",
            norm_first=True,
            batch_first=True,
            inputs=args(randn(2, 3, 4)),
        ),
    ),
    on_math_path(
        twin(
            "transformer_decoder_layer-relu",
            "TransformerDecoderLayer",
            4,
            2,
            8,
            dropout=0.0,
            inputs=args(randn(3, 2, 4), randn(2, 2, 4)),
        ),
    ),
    batch_kept_first(
        on_math_path(
            twin(
                "transformer_decoder_layer-gelu-norm_first-batch_first",
                "TransformerDecoderLayer",
                4,
                2,
                8,
                dropout=0.0,
                activation="gelu",
                norm_first=True,
                batch_first=True,
                inputs=args(randn(2, 3, 4), randn(2, 2, 4)),
            ),
        )
    ),
    on_math_path(
        transformer_stack(
            "transformer_encoder-2layers",
            "TransformerEncoder",
            2,
            d_model=4,
            nhead=2,
            dim_feedforward=8,
            dropout=0.0,
            batch_first=True,
            inputs=args(randn(2, 3, 4)),
        ),
    ),
    on_math_path(
        transformer_stack(
            "transformer_decoder-2layers",
            "TransformerDecoder",
            2,
            d_model=4,
            nhead=2,
            dim_feedforward=8,
            dropout=0.0,
            inputs=args(randn(3, 2, 4), randn(2, 2, 4)),
        ),
    ),
    # torchvision's vision transformer: the class token and the position embedding are manual too
    on_math_path(OpCase("vision_transformer-tiny", tiny_vit(mnn), tiny_vit(torch.nn), args(randn(2, 3, 8, 8)))),
]


def case_by_id(case_id: str) -> OpCase:
    for case in BUILTIN_CASES:
        if case.id == case_id:
            return case
    raise KeyError(f"no op case named {case_id!r}; known: {', '.join(c.id for c in BUILTIN_CASES)}")
