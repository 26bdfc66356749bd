"""What each manualbp op computes in under ``torch.autocast``: the same as its torch twin.

Source: PyTorch's "Autocast Op Reference" (``torch.amp`` documentation, section "Op-Specific
Behavior"), whose lists are the ones torch registers in ``aten/src/ATen/autocast_mode.h``:

* "CUDA Ops that can autocast to float16" / "CPU Ops that can autocast to bfloat16" (the
  lower-precision lists): conv2d, linear, ... compute in the autocast dtype, whatever their inputs' dtypes.
* "CUDA Ops that can autocast to float32" / "CPU Ops that can autocast to float32": the losses
  (cross_entropy, nll_loss, mse_loss) on both, and softmax, log_softmax, layer_norm on CUDA only, compute
  in float32.
* Every other op runs in the widest floating type of its inputs (autocast leaves it alone; torch's
  kernels promote). Batch and layer norm where they are on no list (``INPUT_DTYPE``) compute so too,
  but return the input's dtype, as torch's kernels do for a lower-precision input with float32
  parameters: their entry points pass the output through ``autocast_output``.

Only float16, bfloat16 and float32 tensors are cast ("Ops that run in float64 or non-floating-point
dtypes are not eligible"). With x the inputs and d the op's dtype under autocast,

    y = op(cast_d(x_1), ..., cast_d(x_k)),      dL/dx_i = cast_{dtype(x_i)}(dL/d cast_d(x_i))

so each gradient comes back in its input's dtype (float32 gradients for float32 parameters): the casts
are ``Tensor.to`` calls, recorded by autograd exactly as torch's own autocast records its casts, and a
tensor already in d is not copied. Outside autocast nothing is cast, and mixed dtypes stay an error.

Entry points call ``autocast_inputs`` where it can change something: an op on a list, or one with
several floating inputs. A one-input op on no list (relu, dropout, pooling, ...) runs in its input's
dtype, as torch's does, without it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from typing_extensions import TypeVarTuple, Unpack

    Tensors = TypeVarTuple("Tensors")  # autocast_inputs's arguments: tensors, None, or values its caller rejects

LOWER_PRECISION = "lower_precision"
FLOAT32 = "float32"
INPUT_DTYPE = "input_dtype"

#: device type -> op -> the list the op is on (an op absent from a device's table runs in its widest input type).
POLICY: dict[str, dict[str, str]] = {
    "cpu": {
        "conv2d": LOWER_PRECISION,
        "linear": LOWER_PRECISION,
        "linear_relu": LOWER_PRECISION,  # relu(linear(...)): the linear map decides
        "scaled_dot_product_attention": LOWER_PRECISION,
        "attention_weights": LOWER_PRECISION,  # torch computes them with baddbmm, on the list, then softmax
        "cross_entropy": FLOAT32,
        "nll_loss": FLOAT32,
        "mse_loss": FLOAT32,
        "max_pool3d": FLOAT32,
        "avg_pool3d": FLOAT32,
        "adaptive_avg_pool3d": FLOAT32,
        "adaptive_max_pool3d": FLOAT32,
        "batch_norm": INPUT_DTYPE,
        "layer_norm": INPUT_DTYPE,
        "rms_norm": INPUT_DTYPE,
    },
    "cuda": {
        "conv2d": LOWER_PRECISION,
        "linear": LOWER_PRECISION,
        "linear_relu": LOWER_PRECISION,
        "scaled_dot_product_attention": LOWER_PRECISION,
        "attention_weights": LOWER_PRECISION,  # torch computes them with baddbmm, on the list, then softmax
        "cross_entropy": FLOAT32,
        "nll_loss": FLOAT32,
        "mse_loss": FLOAT32,
        "softmax": FLOAT32,
        "log_softmax": FLOAT32,
        "layer_norm": FLOAT32,
        "rms_norm": FLOAT32,
        "batch_norm": INPUT_DTYPE,
    },
}

ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)


def _device_type(tensors: tuple[object, ...]) -> str | None:
    """The device type of the first tensor, None when there is none."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device.type
    return None


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for a device autocast does not know, such as meta)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_dtype(op: str, *tensors: object) -> torch.dtype | None:
    """The dtype ``op`` computes in under the autocast now active on the tensors' device: the autocast
    dtype for an op on the lower-precision list, float32 for one on the float32 list, the widest floating
    dtype among the eligible ``tensors`` otherwise; None outside autocast or with no eligible tensor."""
    if not torch._C._is_any_autocast_enabled():  # the common case, in one call
        return None
    device_type = _device_type(tensors)
    if device_type is None or not _autocast_enabled(device_type):
        return None
    eligible = [t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.dtype in ELIGIBLE]
    if not eligible:
        return None
    listed = POLICY.get(device_type, {}).get(op)
    if listed == LOWER_PRECISION:
        return torch.get_autocast_dtype(device_type)
    if listed == FLOAT32:
        return torch.float32
    return functools.reduce(torch.promote_types, eligible)


def autocast_inputs(op: str, *tensors: Unpack[Tensors]) -> tuple[Unpack[Tensors]]:
    """``tensors`` as ``op`` takes them under the current autocast: every eligible one (float16, bfloat16,
    float32) cast to ``autocast_dtype(op, ...)``; None, float64 and integer tensors (and non-tensors, left
    for the entry point's checks to reject) unchanged. Outside autocast, ``tensors`` unchanged."""
    dtype = autocast_dtype(op, *tensors)
    if dtype is None:
        return tensors
    # each keeps its type (a tensor cast to another dtype is still a tensor), which tuple() cannot say
    converted: tuple[Any, ...] = tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in ELIGIBLE else t for t in tensors
    )
    return converted


def autocast_output(op: str, output: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """``output`` in ``input_dtype`` for an ``INPUT_DTYPE`` op under autocast (y = cast_{dtype(x)}(op(...)),
    dL/d op(...) = cast_d(dL/dy)); ``output`` itself otherwise."""
    device_type = output.device.type
    if (
        _autocast_enabled(device_type)
        and POLICY.get(device_type, {}).get(op) == INPUT_DTYPE
        and input_dtype in ELIGIBLE
    ):
        return output.to(input_dtype)
    return output
