"""The helpers that build op cases for the registry (``manualbp.verify.builtin_cases``): input makers, the
``twin(...)`` case of a manualbp layer and its torch.nn namesake, and the wrappers that declare what a case's
configuration rules out."""

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


def reference_without_second_derivative(case: OpCase, why: str) -> OpCase:
    """``case`` whose torch reference has no usable second derivative (``why``): the double-backward comparison
    cannot apply (its row is "unsupported"); gradgradcheck still checks the op's own against finite differences."""
    return dataclasses.replace(case, unsupported=(("double_backward", f"torch's reference {why}"),))


def batch_kept_first(case: OpCase) -> OpCase:
    """``case`` of a batch-first attention layer, whose tensors' layouts differ from torch's by design: torch runs
    ``batch_first=True`` as transposed views of its sequence-first computation, so its output and input gradients
    are transposed views; manualbp keeps each sample's rows in dim 0 (the per-sample seam reads the batch there),
    with equal values. The memory-format check, which compares layouts, cannot apply."""
    reason = "batch_first attention keeps the batch in dim 0; torch's tensors are transposed views of (T, N, E) ones"
    return dataclasses.replace(case, unsupported=(("memory_format", reason),))


def unbatched(case: OpCase) -> OpCase:
    """``case`` of one sample with no batch dim, a sequence (T, features) or a map (C, *): the dynamic-shape checks
    run at its own size (its dim 0 is no batch)."""
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


def torchvision_op(case_id: str, layer: str, *ctor_args: Any, inputs: InputMaker) -> OpCase:
    """A case comparing ``manualbp.nn.<layer>`` with ``torchvision.ops.<layer>`` (torchvision loaded on first build)."""

    def build(manual: bool) -> Callable[[], torch.nn.Module]:
        def make() -> torch.nn.Module:
            from torchvision import ops

            return getattr(mnn if manual else ops, layer)(*ctor_args)

        return make

    return OpCase(case_id, build(True), build(False), inputs)


def torchvision_vit() -> type[torch.nn.Module]:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer
