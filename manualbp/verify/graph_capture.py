"""The checks through torch's graph capture: ``compile`` (fullgraph, against eager mode), ``compile_dynamic``
(dynamic shapes, two batch sizes, no recompilation) and ``export_dynamic`` (torch.export with a dynamic batch
dimension)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.fx.experimental import _config as fx_config
from torch.utils._pytree import tree_leaves

from manualbp.verify._harness import GraphBreak, _Errors, _first_lines, _Sample, _Subject, _vjp
from manualbp.verify.case import seeded


def _check_compile(s: _Sample) -> _Errors:
    """torch.compile(fullgraph=True) of the function (through its jvp-less twin when it has one):
    outputs and gradients equal to eager mode."""
    return _compiled_vs_eager(s, [s.args], dynamic=False)


def _check_compile_dynamic(s: _Sample) -> _Errors:
    """torch.compile(fullgraph=True, dynamic=True) called at two batch sizes (``_two_batch_sizes``): outputs
    and gradients equal to eager mode at both, and no recompilation for the second size."""
    samples = _two_batch_sizes(s)
    errors = _compiled_vs_eager(s, samples, dynamic=True)
    errors.note = errors.note or _one_size_note(samples)
    return errors


def _one_size_note(samples: Sequence[Sequence[Any]]) -> str:
    return (
        "" if len(samples) > 1 else "one size only: the sample has no batch dim, or the reference refuses other sizes"
    )


def _compiled_vs_eager(s: _Sample, samples: Sequence[Sequence[Any]], dynamic: bool) -> _Errors:
    """One compiled function called on each of ``samples`` in turn (the later ones under the stance
    ``fail_on_recompile``), against the eager function on the same sample."""
    entry = _compile_entry(s.function)
    subjects = [dataclasses.replace(s, function=entry, args=args).subjects(torch.float32)[0] for args in samples]
    errors = s.errors(torch.float32)
    torch._dynamo.reset()
    compiled = seeded(torch.compile(subjects[0].unseeded, backend=s.compile_backend, fullgraph=True, dynamic=dynamic))
    try:
        for k, subject in enumerate(subjects):
            where = _where(subject, dynamic)
            call = functools.partial(compiled, ints=subject.integer_tensors())
            stance = torch.compiler.set_stance("fail_on_recompile") if k else contextlib.nullcontext()
            try:
                # duck sizing would tie a batch size to an equal feature size, a coincidence of the sample
                # fx_config's patch() is installed at runtime by torch.utils._config_module: untyped
                with _trace_log_kept_for_torch(), stance, fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]
                    out_c, grads_c = _vjp(call, subject.tensors)
            except RuntimeError as error:
                if "Detected recompile" not in str(error):
                    raise
                errors.ok = False
                errors.worst = (
                    f"recompiled for {where}: "
                    + _first_lines(str(error), 4).split("triggered by the following guard failure(s): ")[-1]
                )
                return errors
            out_e, grads_e = _vjp(subject, subject.tensors)
            errors.add_all([f"output {i} (compiled vs eager, {where})" for i in range(len(out_e))], out_c, out_e)
            errors.add_all(
                [f"grad of {label} (compiled vs eager, {where})" for label in subject.labels], grads_c, grads_e
            )
    except torch._dynamo.exc.Unsupported as error:
        if "custom jvp" in str(error):
            raise GraphBreak(_custom_jvp_hint(s.function)) from error
        errors.ok = False
        errors.worst = "graph break: " + _first_lines(str(error), 1)
    finally:
        torch._dynamo.reset()
    return errors


def _where(subject: _Subject, dynamic: bool) -> str:
    shape = tuple(subject.tensors[0].shape) if subject.num_inputs else ()
    return f"input shape {shape}" if dynamic else "static"


def _check_export_dynamic(s: _Sample) -> _Errors:
    """torch.export.export of the function with its batch dimension dynamic (``Dim("batch")``), exported at
    the first of ``_two_batch_sizes`` and run at both: outputs equal to eager mode (float64)."""
    samples = _two_batch_sizes(s)
    subjects = [dataclasses.replace(s, args=args).subjects(torch.float64)[0] for args in samples]
    errors = s.errors(torch.float64)
    exportable = _Exportable(subjects[0])
    batch = torch.export.Dim("batch")
    dims = _batch_dims(samples)
    shapes = tuple({dim % t.dim(): batch} if dim is not None else None for t, dim in zip(exportable.tensors(), dims))
    with _trace_log_kept_for_torch():
        program = seeded(torch.export.export)(
            exportable, exportable.tensors(), dynamic_shapes={"tensors": shapes} if samples[1:] else None
        )
    for subject in subjects:
        where = _where(subject, dynamic=True)
        exported = seeded(program.module())(*_Exportable(subject).tensors())
        eager = subject(*subject.tensors)
        actual = [o for o in tree_leaves(exported) if isinstance(o, torch.Tensor)]
        expected = [o for o in tree_leaves(eager) if isinstance(o, torch.Tensor)]
        errors.add_all([f"output {i} (exported vs eager, {where})" for i in range(len(expected))], actual, expected)
    errors.note = _one_size_note(samples)
    return errors


class _Exportable(torch.nn.Module):
    """A subject's call as a module of its tensor arguments (floating and integer), for torch.export; the
    subject's module, if any, is a child, so its parameters and buffers are the exported program's own."""

    def __init__(self, subject: _Subject) -> None:
        super().__init__()
        self.args = list(subject.args)
        self.slots = [i for i, a in enumerate(self.args) if isinstance(a, torch.Tensor)]
        self.layer = subject.module
        self.function = subject.target

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.args[i].detach() for i in self.slots)

    def forward(self, *tensors: torch.Tensor) -> Any:
        full = list(self.args)
        for slot, tensor in zip(self.slots, tensors):
            full[slot] = tensor
        return (self.layer if self.layer is not None else self.function)(*full)


def _two_batch_sizes(s: _Sample) -> list[list[Any]]:
    """The sample grown by one and by two along its batch dimension: ``s.batch_dim`` (0 by default), or else
    the last dim, of every tensor argument whose size there is the first tensor's (``_grown``), the first of
    those dims the reference accepts at both sizes (an unbatched image may vary in its width). Both sizes are
    at least 2: torch specialises sizes 0 and 1. ``[sample]`` when no dim can vary (an unbatched Linear, a
    LayerNorm over the whole input) or the sample has no batch dim (``batch_dim=None``)."""
    tensors = [a for a in s.args if isinstance(a, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0 or s.batch_dim is None:
        return [list(s.args)]
    for dim in dict.fromkeys((s.batch_dim % tensors[0].dim(), tensors[0].dim() - 1)):
        candidates = [_grown(s.args, dim, by) for by in (1, 2)]
        try:
            for args in candidates:
                reference = dataclasses.replace(s, args=args).subjects(torch.float64)[1]
                reference(*reference.tensors)
        except Exception:  # the reference refuses this size: dim is no batch dimension
            continue
        return candidates
    return [list(s.args)]


def _grown(args: Sequence[Any], dim: int, by: int) -> list[Any]:
    """``args`` with ``by`` more entries along ``dim`` (counted from the end for tensors of fewer dims than the
    first one) in every tensor whose size there is the first tensor's: copies of its first entries, halved
    for floating tensors (so the new entries are not ties of the old), as they are for integer ones (so class
    targets stay valid)."""
    first = next(a for a in args if isinstance(a, torch.Tensor))
    size = first.shape[dim]
    grown = []
    for a in args:
        d = _dim_of(a, dim, dim - first.dim())
        if d is not None and a.shape[d] == size and size > 0:
            extra = a.index_select(d, torch.arange(by, device=a.device) % size)
            a = torch.cat([a, extra * 0.5 if a.is_floating_point() else extra], d)
        grown.append(a)
    return grown


def _dim_of(a: Any, dim: int, from_end: int) -> int | None:
    """Which dim of ``a`` is ``dim`` of the first tensor: the same index for the batch dim 0, the same
    distance from the end otherwise; None for non-tensors and tensors without it."""
    if not isinstance(a, torch.Tensor) or a.dim() == 0:
        return None
    d = dim if dim == 0 else a.dim() + from_end
    return d if 0 <= d < a.dim() else None


def _batch_dims(samples: Sequence[Sequence[Any]]) -> list[int | None]:
    """For each tensor argument, the dim in which the later samples are larger than the first (None: none)."""
    first = [a for a in samples[0] if isinstance(a, torch.Tensor)]
    if len(samples) < 2:
        return [None] * len(first)
    later = [a for a in samples[1] if isinstance(a, torch.Tensor)]
    return [next((d for d in range(a.dim()) if b.shape[d] != a.shape[d]), None) for a, b in zip(first, later)]


def _function_class(function: Callable[..., Any]) -> type[torch.autograd.Function] | None:
    """The Function class when ``function`` is its ``apply``, else None."""
    owner = getattr(function, "__self__", None)
    is_apply = getattr(function, "__name__", "") == "apply"
    return owner if is_apply and isinstance(owner, type) and issubclass(owner, torch.autograd.Function) else None


def _compile_entry(function: Callable[..., Any]) -> Callable[..., Any]:
    """``Function.call`` for the ``apply`` of a Function decorated with ``manualbp.function`` (it applies the
    jvp-less twin while torch.compile traces); ``function`` itself otherwise."""
    cls = _function_class(function)
    if cls is None or "compile_twin" not in vars(cls):
        return function
    decorated: Any = cls  # ``call`` is attached by manualbp.function, outside the class's static type
    return decorated.call


def _custom_jvp_hint(function: Callable[..., Any]) -> str:
    """What to do when Dynamo refuses the Function because it defines jvp."""
    cls = _function_class(function)
    name = cls.__name__ if cls is not None else "Function"
    return (
        f"Dynamo cannot trace {name}: it defines jvp (graph break 'Unsupported custom jvp'). "
        f"Decorate it with @manualbp.function and call {name}.call(...), which applies a jvp-less twin "
        "while torch.compile traces."
    )


@contextlib.contextmanager
def _trace_log_kept_for_torch() -> Iterator[None]:
    """Detach, for the block, the handlers that others attached to torch's structured-trace logger.

    ``torch.__trace`` is the machine-readable record of a compilation (read by tlparse when
    ``TORCH_TRACE`` is set): always at DEBUG, never propagated, and written whenever the logger has a
    handler. pytest's log capture attaches its handlers to every logger that does not propagate, so
    each compilation under pytest put dozens of empty ``DEBUG torch.__trace`` lines into a failing
    test's captured log. Torch's own trace handler stays attached.
    """
    trace_log = logging.getLogger("torch.__trace")
    foreign = [h for h in trace_log.handlers if type(h).__module__.split(".")[0] != "torch"]
    for handler in foreign:
        trace_log.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            trace_log.addHandler(handler)
