"""torchvision's classification zoo through ``manualbp.convert``: every model of at most 100M parameters, converted,
against the original in float64.

For each model of ``torchvision.models.list_models`` (classification) with at most 100M parameters (10 classes;
a ViT built for twice its patch size): the model is built from a fixed seed in float64, deep-copied and the copy
converted (``manualbp.convert``). Recorded: the parameter count; what stays torch.nn (``layer_summary``: nothing
is "fully manual"; torchvision's ``Permute`` and MaxViT's window moves only move data and are not counted); and,
for one seeded batch of 2 images at the smallest size the family takes (64 x 64; inception 96, MaxViT 224, ViT its
own), in eval mode and in train mode (dropout and stochastic depth drawing the same masks from the same seed on both
sides), the largest relative difference of the logits and of every parameter's gradient of the cross entropy
(|a - b| / max|b| per tensor, the worst tensor; a gradient that is zero in exact arithmetic, such as the bias of
a layer followed by a batch norm in training, is rounding noise, so max|b| is floored at 1e-6 of the largest
gradient of the model). torch's float64 Hardsigmoid backward multiplies by 1/6 rounded to float32
(0.16666667163..., a relative error of 3.0e-8), so in the original every
``Hardsigmoid`` is computed as relu6(x + 3) / 6 through autograd, the same function with an exact slope
(``manualbp.verify.exact_references.exact_hardsigmoid``). A model passes when both are within 1e-8. A model that fails to
build, convert or run is a row with its ``error``.

    python experiments/zoo.py [--models resnet18 swin_t ...] [--json experiments/results/zoo.json]

prints one line per model and with ``--json PATH`` writes ``{"meta": {...}, "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torchvision
from _common import machine_meta, write_json

import manualbp
from manualbp.convert import layer_summary
from manualbp.verify import seeded
from manualbp.verify.exact_references import exact_hardsigmoid

LIMIT = 100_000_000
TOLERANCE = 1e-8


def zoo() -> list[str]:
    """The classification models of at most ``LIMIT`` parameters (torchvision's own count, 1000 classes)."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if next(iter(torchvision.models.get_model_weights(n))).meta["num_params"] <= LIMIT]


def input_size(name: str) -> int:
    if name.startswith("vit_"):
        return 2 * int(name.rsplit("_", 1)[1])
    return {"inception_v3": 96, "maxvit_t": 224}.get(name, 64)


def build(name: str) -> torch.nn.Module:
    options: dict = {"num_classes": 10}
    if name.startswith("vit_"):
        options["image_size"] = input_size(name)
    if name.startswith(("googlenet", "inception")):
        options.update(init_weights=True, aux_logits=False)
    torch.manual_seed(0)
    return torchvision.models.get_model(name, **options).double()


def relative(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max|a - b| / max|b|, the denominator at least ``floor`` (and 1 when b and the floor are zero)."""
    scale = max(b.abs().max().item(), floor)
    return (a - b).abs().max().item() / (scale or 1.0)


def compare(model: torch.nn.Module, reference: torch.nn.Module, size: int, train: bool) -> dict[str, float]:
    """The worst relative difference of the logits and of the parameters' gradients, one seeded batch."""
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 7])
    outputs = []
    for m in (model, reference):
        m.train(train)
        m.zero_grad(set_to_none=True)
        out = seeded(m)(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        outputs.append(out.detach())
    pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters()) if q.grad is not None]
    if any(a is None for a, _ in pairs):
        raise RuntimeError("a parameter with a gradient in the original has none after conversion")
    floor = 1e-6 * max((b.abs().max().item() for _, b in pairs), default=0.0)
    grads = [relative(a, b, floor) for a, b in pairs]
    return {"output": relative(*outputs), "gradients": max(grads, default=0.0)}


def run(name: str) -> dict[str, object]:
    row: dict[str, object] = {"model": name}
    start = time.perf_counter()
    try:
        reference = build(name)
        row["parameters"] = sum(p.numel() for p in reference.parameters())
        model = manualbp.convert(copy.deepcopy(reference))
        exact_hardsigmoid(reference)
        left = layer_summary(model)["torch"]
        row["left_to_torch"] = dict(left)
        row["fully_manual"] = not left
        row["eval"] = compare(model, reference, input_size(name), train=False)
        row["train"] = compare(model, reference, input_size(name), train=True)
        worst = max(row["eval"]["output"], row["eval"]["gradients"], row["train"]["output"], row["train"]["gradients"])
        row["equal"] = worst <= TOLERANCE
    except Exception as error:  # a row with the error, and the run goes on
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="these models only (default: the whole zoo)")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows} to this JSON file")
    opts = parser.parse_args(argv)
    names = opts.models or zoo()
    rows = []
    for name in names:
        row = run(name)
        rows.append(row)
        if "error" in row:
            print(f"{name:24s} error: {row['error']}")
        else:
            left = ", ".join(f"{k} x{v}" for k, v in row["left_to_torch"].items()) or "nothing"
            print(
                f"{name:24s} {row['parameters'] / 1e6:6.1f}M  left to torch: {left:30s}  "
                f"eval {row['eval']['gradients']:.1e}  train {row['train']['gradients']:.1e}  "
                f"{'equal' if row['equal'] else 'DIFFERENT'}  {row['seconds']}s"
            )
    done = [r for r in rows if "error" not in r]
    print(
        f"{len(rows)} models: {sum(bool(r['fully_manual']) for r in done)} fully manual, "
        f"{sum(bool(r['equal']) for r in done)} equal to the original within {TOLERANCE:g}, "
        f"{len(rows) - len(done)} errors"
    )
    write_json(opts.json, {"meta": machine_meta("zoo.py", argv, tolerance=TOLERANCE), "rows": rows})


if __name__ == "__main__":
    main()
