"""Helpers shared by the experiment scripts (``bench.py``, ``parity.py``).

The scripts compare the two backends of ``manualbp.models``: ``"manual"`` (manualbp.nn layers, every
backward written by hand) and ``"autograd"`` (torch.nn layers, PyTorch's autograd). A fair comparison
needs the same network with the same weights on both sides, and each backend's own loss:
``manualbp.functional.cross_entropy`` for the manual network (so no native autograd node sits between
the loss and the parameters) and ``torch.nn.functional.cross_entropy`` for the autograd one.

The scripts run as ``python experiments/<name>.py``, which puts this folder on ``sys.path``; the tests
put it there themselves. The scripts that write files take their folder from ``output_folder``: the tracked
results under experiments/results/ change only when asked (``--out``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from manualbp.models import cross_entropy, lenet5, mlp, recurrent

BACKENDS = ("manual", "autograd")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Each backend's cross entropy.
LOSSES: dict[str, LossFn] = {backend: cross_entropy(backend) for backend in BACKENDS}

#: The architectures the scripts know, by name: a builder (in_shape, backend) -> model.
ARCHS: dict[str, Callable[..., torch.nn.Module]] = {
    "mlp": lambda in_shape, backend: mlp(hidden=(800,), in_shape=in_shape, backend=backend),
    "mlp800x800": lambda in_shape, backend: mlp(hidden=(800, 800), in_shape=in_shape, backend=backend),
    "lenet5": lambda in_shape, backend: lenet5(in_shape=in_shape, backend=backend),
    # row by row: H steps of C·W features (28 of 28 on MNIST), hidden state 128, as ``--model.arch=lstm``
    "lstm": lambda in_shape, backend: recurrent("lstm", in_shape=in_shape, backend=backend),
    "gru": lambda in_shape, backend: recurrent("gru", in_shape=in_shape, backend=backend),
    # torchvision's, 10 classes, on 3-channel images (``bench.IN_SHAPES``); manual: ``manualbp.convert`` of it
    "resnet18": lambda in_shape, backend: torchvision_model("resnet18", backend),
    "convnext_tiny": lambda in_shape, backend: torchvision_model("convnext_tiny", backend),
}


def torchvision_model(name: str, backend: str) -> torch.nn.Module:
    """torchvision's classification model ``name`` (10 classes), converted fully to manual layers for the manual
    backend (``manualbp.convert(..., strict=True)``)."""
    import torchvision

    import manualbp

    model = torchvision.models.get_model(name, num_classes=10)
    return manualbp.convert(model, strict=True) if backend == "manual" else model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Raise AssertionError unless the two models' state dicts have the same keys and equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        raise AssertionError(f"state dict keys differ: {list(sa)} vs {list(sb)}")
    for key in sa:
        if sa[key].shape != sb[key].shape or not torch.equal(sa[key], sb[key]):
            raise AssertionError(f"state dicts differ at {key!r}")


def build_pair(
    arch: str, in_shape: Sequence[int], seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.nn.Module]:
    """{"manual": model, "autograd": model}: the architecture ``arch`` built by both backends from the
    same seed, checked to have equal state dicts, moved to ``device`` (float32)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    models = {}
    for backend in BACKENDS:
        torch.manual_seed(seed)
        models[backend] = ARCHS[arch](tuple(in_shape), backend).to(device=device, dtype=torch.float32)
    assert_same_weights(models["manual"], models["autograd"])
    return models


def make_optimizer(model: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """Plain SGD (no momentum) or Adam on the model's parameters."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def forward_context(device: torch.device, autocast: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast(device.type, dtype=autocast)``, or nothing when ``autocast`` is None."""
    return torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """One training step: zero the gradients, forward, loss, backward, optimizer update. Returns the
    loss (a 0-d tensor, still on the model's device: reading it is left to the caller, so a timed step
    does not synchronise with a GPU). With ``autocast`` (a dtype), the forward and the loss run under
    ``torch.autocast`` in it, the backward and the update outside (as Lightning's ``*-mixed`` precisions do;
    no gradient scaler)."""
    optimizer.zero_grad(set_to_none=True)
    with forward_context(x.device, autocast):
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def peak_allocated_bytes(prof: torch.profiler.profile) -> int:
    """The most bytes the allocator had handed out and not yet taken back at any moment of a
    ``profile(profile_memory=True)`` run, counted from its start: its ``[memory]`` events (+ allocations,
    - frees) summed in time order."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def summarize_ms(times: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range (p25, p75) of a list of times."""
    if len(times) >= 2:
        p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        p25 = p75 = times[0]
    return {"median": statistics.median(times), "p25": p25, "p75": p75}


def write_json(path: Path | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (its folder made if missing) and say so; nothing when None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def output_folder(out: Path | None, script: str) -> Path:
    """The folder a script writes into: ``out`` when given (``--out experiments/results`` updates the tracked
    results), else a new temporary folder ``manualbp-<script>-*``, so that a plain run never overwrites them. Made
    if missing."""
    folder = Path(tempfile.mkdtemp(prefix=f"manualbp-{script}-")) if out is None else out
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_meta(script: str, argv: Sequence[str] | None = None, **options: object) -> dict[str, object]:
    """What a results JSON records of the machine and the run, for the results page (``docs/_ext/results.py``):
    the CPU's model name, its logical cores (``os.cpu_count()``), torch's CPU threads, the torch and Python
    versions, the date and time (UTC), the 1-, 5- and 15-minute load averages when called (this process counts
    too: about its thread count while it computes), the command that made the file (``python
    experiments/<script>`` with ``argv``, default the command line's arguments) and any ``options`` worth
    naming (repetitions, epochs...)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join(["python", f"experiments/{script}", *args]),
        **({"options": options} if options else {}),
    }
