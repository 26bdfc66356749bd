"""The tables of measured results, generated from ``experiments/results/*.json`` for the results page.

``generate(out)`` writes one Markdown file per table group into ``out`` (``docs/_generated/results/`` at every
build), which ``docs/results.md`` includes with MyST's ``{include}`` directive, so no number on the page is
retyped. The files end in ``.md.inc``, not ``.md``: Sphinx would take a ``.md`` file under ``docs/`` for a page of
its own (a second copy of each table, found by the search); MyST parses an included file as Markdown whatever
its name. A rerun of an experiment script with ``--out``/``--json`` into ``experiments/results/`` changes the page
at the next build. Every table is preceded by the machine it was measured on (CPU, cores, torch threads, torch,
date and load average where the JSON records them; "not recorded" where it does not) and followed by the
command that regenerates it (the one the JSON recorded, else the one the script's docstring gives).

A JSON that is missing gives a paragraph saying so and naming the command that makes it, not a build error: the
page says what has not been measured. A JSON that is there but malformed raises (a table must not go silently
stale or empty).

The targets (issue 30's for the training step, the per-sample benchmark's, the LSTM's) are stated here once,
as numbers, and each table's "met"/"not met" is computed from the JSON.

The files, by section of the results page:

* Speed: ``speed.md.inc`` (bench_cpu.json, the first version's ratios from bench_cpu_baseline.json),
  ``speed_targets.md.inc``, ``speed_recurrent.md.inc`` (bench_cpu_recurrent.json), ``conv_backward.md.inc``
  (conv_backward_timing.json);
* Per-sample gradients and DP-SGD: ``per_sample.md.inc`` (bench_per_sample.json), ``dp_compare.md.inc``
  (dp_compare_mnist.json), ``dp_noise.md.inc`` (bench_dp_noise.json);
* Accuracy: ``accuracy.md.inc`` (accuracy.json);
* Verification timing: ``verify_timing.md.inc`` (verify_timing.json);
* Transformers: ``attention.md.inc`` (bench_attention.json), ``vit.md.inc`` (bench_vit.json);
* torchvision's zoo converted: ``zoo.md.inc`` (zoo.json);
* Curvature: ``curvature.md.inc`` (bench_curvature.json), ``kfac.md.inc`` (kfac_mnist.json).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

#: The repository's results, read when ``generate`` is given no other folder.
RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"

#: The command that regenerates a JSON that does not record its own (``meta.command``).
COMMANDS = {
    "bench_cpu.json": "python experiments/bench.py --models mlp800x800 lenet5 --compile --json experiments/results/bench_cpu.json",
    "bench_cpu_recurrent.json": (
        "python experiments/bench.py --models lstm gru --batches 32 128 512 --json experiments/results/bench_cpu_recurrent.json"
    ),
    "bench_per_sample.json": "python experiments/bench_per_sample.py --json experiments/results/bench_per_sample.json",
    "bench_dp_noise.json": "python experiments/bench_dp_noise.py --json experiments/results/bench_dp_noise.json",
    "dp_compare_mnist.json": (
        "python experiments/dp_compare.py --data-dir ../shared/data/mnist --fit-manual "
        "--json experiments/results/dp_compare_mnist.json"
    ),
    "conv_backward_timing.json": (
        "python experiments/conv_backward_timing.py --threads 1 --reps 60 --out experiments/results/conv_backward_timing.json"
    ),
    "accuracy.json": "python experiments/accuracy.py --out experiments/results",
    "verify_timing.json": "python experiments/verify_timing.py --out experiments/results/verify_timing.json",
    "bench_attention.json": "python experiments/bench_attention.py --json experiments/results/bench_attention.json",
    "bench_vit.json": "python experiments/bench_vit.py --json experiments/results/bench_vit.json",
    "zoo.json": "python experiments/zoo.py --json experiments/results/zoo.json",
    "bench_curvature.json": "python experiments/bench_curvature.py --out experiments/results/bench_curvature.json",
    "kfac_mnist.json": "python experiments/kfac_mnist.py --out experiments/results",
}

MODEL_NAMES = {"mlp800x800": "mlp(800, 800)", "lenet5": "lenet5", "lstm": "lstm", "gru": "gru", "mlp": "mlp(800)"}

#: Issue 30's targets for a training step, manual time / autograd time (and the MLP's share of the machine).
#: (description, which rows, the row's value, the bound, "max" or "min").
SPEED_TARGETS: list[tuple[str, Callable[[dict], bool], str, float, str]] = [
    (
        "LeNet-5 eager ≤ 1.00 at batches 128 and 512",
        lambda r: _is(r, "lenet5", False, (128, 512)),
        "time_ratio",
        1.00,
        "max",
    ),
    ("LeNet-5 eager ≤ 1.10 at batch 32", lambda r: _is(r, "lenet5", False, (32,)), "time_ratio", 1.10, "max"),
    (
        "MLP eager ≤ 1.00 at batches 128 and 512",
        lambda r: _is(r, "mlp800x800", False, (128, 512)),
        "time_ratio",
        1.00,
        "max",
    ),
    ("MLP eager ≤ 1.10 at batch 32", lambda r: _is(r, "mlp800x800", False, (32,)), "time_ratio", 1.10, "max"),
    (
        "compiled manual ≤ 1.00 compiled autograd",
        lambda r: bool(r.get("compiled")) and "time_ratio" in r,
        "time_ratio",
        1.00,
        "max",
    ),
    (
        "MLP at batch 512: manual share of the machine's matmul rate ≥ 0.90",
        lambda r: r["model"] == "mlp800x800" and r["batch"] == 512 and "machine_share" in r,
        "machine_share",
        0.90,
        "min",
    ),
]

#: The LSTM's targets, manual time / torch.nn.LSTM's, by batch.
LSTM_TARGETS = {32: 1.20, 128: 1.00, 512: 1.00}

#: The per-sample benchmark's targets (``experiments/bench_per_sample.py``).
CLIP_TARGET = 1.30
PEER_PER_SAMPLE = ("backpack_batchgrad", "torch_func_vmap", "opacus_hooks_grad_sample")
PER_SAMPLE_METHODS = (
    ("plain_autograd", "plain autograd step (the denominator)"),
    ("manualbp_clip", "**manualbp_clip** (whole DP-SGD step)"),
    ("opacus_ghost", "opacus_ghost (whole DP-SGD step)"),
    ("opacus_hooks", "opacus_hooks (whole DP-SGD step)"),
    ("manualbp_grad_sample", "**manualbp_grad_sample** (per-sample gradients)"),
    ("backpack_batchgrad", "backpack_batchgrad (per-sample gradients)"),
    ("torch_func_vmap", "torch_func_vmap (per-sample gradients)"),
    ("opacus_hooks_grad_sample", "Opacus hooks, per-sample gradients only"),
    ("plain_manual", "plain manual step (extra row)"),
    ("manualbp_clip_without_noise", "manualbp_clip without the noise (extra row)"),
)


def _is(row: dict, model: str, compiled: bool, batches: Sequence[int]) -> bool:
    return row["model"] == model and bool(row.get("compiled")) == compiled and row["batch"] in batches


# --------------------------------------------------------------------------------------------------
# Markdown pieces


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown (GFM) table; ``|`` in a cell escaped."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _load_range(pairs: Iterable[Sequence[float]]) -> str | None:
    """``1.33-1.80`` from [before, after] pairs (or single values) of 1-minute load averages."""
    values = [float(v) for pair in pairs for v in (pair if isinstance(pair, (list, tuple)) else [pair])]
    if not values:
        return None
    low, high = min(values), max(values)
    return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"


def machine_line(
    cpu: str | None,
    cores: int | str | None = None,
    threads: int | str | None = None,
    torch: str | None = None,
    date: str | None = None,
    load: str | None = None,
    label: str = "Measured on",
) -> str:
    """One sentence naming the machine, in the same form for every table; what the JSON lacks says "not recorded"."""
    parts = [f"**{cpu}**" if cpu else "**machine not recorded**"]
    if cores is not None:
        parts.append(f"{cores} cores")
    if threads is not None:
        parts.append(f"{threads} torch thread{'' if str(threads) == '1' else 's'}")
    text = f"{label} " + ", ".join(parts)
    text += f"; torch {torch}" if torch else "; torch version not recorded"
    text += f"; {date}" if date else "; date not recorded"
    text += f"; 1-minute load average {load}" if load else "; load average not recorded"
    return text + "."


def _date_range(dates: Iterable[str | None]) -> str | None:
    days = sorted({d[:10] for d in dates if d})
    if not days:
        return None
    return f"measured {days[0]} (UTC)" if len(days) == 1 else f"measured {days[0]} to {days[-1]} (UTC)"


def _meta_line(meta: dict, label: str = "Measured on") -> str:
    """The machine sentence from a ``_common.machine_meta`` entry (with ``loadavg`` at the start and ``loadavg_after``)."""
    loads = [meta["loadavg"][0]] if meta.get("loadavg") else []
    if meta.get("loadavg_after"):
        loads.append(meta["loadavg_after"][0])
    load = _load_range([loads]) if loads else None
    if load and len(loads) == 2:
        load = f"{loads[0]:.2f} at the start, {loads[1]:.2f} at the end"
    return machine_line(
        meta.get("cpu"),
        meta.get("cores"),
        meta.get("threads"),
        meta.get("torch"),
        _date_range([meta.get("date")]),
        load,
        label,
    )


def _rows_line(rows: Sequence[dict], label: str = "Measured on") -> str:
    """The machine sentence of ``bench.py``'s rows (each row names its device, threads, torch and load)."""
    measured = [r for r in rows if "device_name" in r] or list(rows)

    def one(key: str) -> Any:
        values = sorted({str(r[key]) for r in measured if r.get(key) is not None})
        return ", ".join(values) if values else None

    return machine_line(
        one("device_name"),
        one("cpu_count"),
        one("threads"),
        one("torch"),
        _date_range(r.get("date") for r in measured),
        _load_range(r["loadavg_1min"] for r in measured if r.get("loadavg_1min")),
        label,
    )


def regenerate(command: str) -> str:
    return f"Regenerate: `{command}`"


def _command(name: str, data: object) -> str:
    meta = data.get("meta") if isinstance(data, dict) else None
    return (meta or {}).get("command") or COMMANDS[name]


def _missing(name: str) -> str:
    return f"*Not measured yet*: `experiments/results/{name}` is missing. {regenerate(COMMANDS[name])}\n"


def _read(results: Path, name: str) -> Any:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# Speed: manual against autograd


def speed(results: Path) -> str:
    """bench_cpu.json: every configuration's training step, eager and compiled, with the first version's ratio."""
    rows = _read(results, "bench_cpu.json")
    if rows is None:
        return _missing("bench_cpu.json")
    baseline = _read(results, "bench_cpu_baseline.json") or []
    first = {(r["model"], r["batch"]): r["time_ratio"] for r in baseline if not r.get("compiled")}
    body = []
    for r in rows:
        mode = "compiled" if r.get("compiled") else "eager"
        if r.get("compile_error"):
            body.append(
                [MODEL_NAMES.get(r["model"], r["model"]), r["batch"], mode, "compile failed", r["compile_error"]]
            )
            body[-1] += [""] * 6  # the table's 11 columns
            continue
        ratio = _num(r["time_ratio"])
        if mode == "eager" and (r["model"], r["batch"]) in first:
            ratio += f" ({first[r['model'], r['batch']]:.2f})"
        mib = 2**20
        saved = f"{r['manual_saved_bytes'] / mib:.2f} / {r['autograd_saved_bytes'] / mib:.2f} ({r['saved_bytes_ratio']:.2f})"
        share = f"{r['machine_gflops']:.0f} ({r['machine_share']:.2f})" if r.get("machine_gflops") else ""
        compile_s = (
            f"{r['manual_compile_s']:.1f} / {r['autograd_compile_s']:.1f}"
            if r.get("manual_compile_s") is not None
            else ""
        )
        body.append(
            [
                MODEL_NAMES.get(r["model"], r["model"]),
                r["batch"],
                mode,
                _num(r["manual_ms"]),
                _num(r["autograd_ms"]),
                ratio,
                _num(r.get("pair_ratio_median")),
                saved,
                f"{r['gflops']:.0f}",
                share,
                compile_s,
            ]
        )
    header = [
        "model",
        "batch",
        "mode",
        "manual ms",
        "autograd ms",
        "time ratio (first version)",
        "median of per-step ratios",
        "saved for backward, manual / autograd MiB (ratio)",
        "manual GFLOP/s",
        "machine GFLOP/s (manual's share)",
        "compile s, manual / autograd",
    ]
    reps = sorted({r["reps"] for r in rows if "reps" in r})
    parts = [
        _rows_line(rows) + f" Medians of {', '.join(map(str, reps))} interleaved steps per backend, float32.",
        table(header, body),
    ]
    if baseline:
        parts.append(
            "In brackets, the time ratio of the first version of every op (`experiments/results/bench_cpu_baseline.json`, "
            "kept as it was measured: that code is gone), " + _rows_line(baseline, label="measured on")
        )
    parts.append(regenerate(_command("bench_cpu.json", rows)))
    return "\n\n".join(parts) + "\n"


def _target_result(rows: Sequence[dict], value: str, bound: float, kind: str) -> tuple[str, str]:
    ok = [(r[value] <= bound) if kind == "max" else (r[value] >= bound) for r in rows]
    measured = ", ".join(
        f"{MODEL_NAMES.get(r['model'], r['model'])} {'compiled ' if r.get('compiled') else ''}{r['batch']}: {r[value]:.2f}"
        for r in rows
    )
    if all(ok):
        verdict = "met"
    elif any(ok):
        verdict = f"met on {sum(ok)} of {len(ok)} rows"
    else:
        verdict = "not met"
    return verdict, measured


def speed_targets(results: Path) -> str:
    """The speed targets (issue 30) against bench_cpu.json, each met or not, with the values measured."""
    rows = _read(results, "bench_cpu.json")
    if rows is None:
        return _missing("bench_cpu.json")
    body = []
    for description, which, value, bound, kind in SPEED_TARGETS:
        chosen = [r for r in rows if which(r) and r.get(value) is not None]
        if not chosen:
            body.append([description, "not measured", ""])
            continue
        body.append([description, *_target_result(chosen, value, bound, kind)])
    parts = [
        _rows_line(rows)
        + " The ratios of the table above, against the targets of issue 30 (performance, third round).",
        table(["target", "result", "measured"], body),
        regenerate(_command("bench_cpu.json", rows)),
    ]
    return "\n\n".join(parts) + "\n"


def speed_recurrent(results: Path) -> str:
    """bench_cpu_recurrent.json: the row-by-row LSTM and GRU classifiers against torch.nn's."""
    rows = _read(results, "bench_cpu_recurrent.json")
    if rows is None:
        return _missing("bench_cpu_recurrent.json")
    body = []
    for r in rows:
        target = ""
        if r["model"] == "lstm" and r["batch"] in LSTM_TARGETS:
            bound = LSTM_TARGETS[r["batch"]]
            target = f"≤ {bound:.2f}: {'met' if r['time_ratio'] <= bound else 'not met'}"
        body.append(
            [
                MODEL_NAMES.get(r["model"], r["model"]),
                r["batch"],
                _num(r["manual_ms"]),
                _num(r["autograd_ms"]),
                _num(r["time_ratio"]),
                _num(r.get("pair_ratio_median")),
                _num(r["saved_bytes_ratio"]),
                target,
            ]
        )
    header = [
        "model",
        "batch",
        "manual ms",
        "torch.nn ms",
        "time ratio",
        "median of per-step ratios",
        "saved bytes, manual / torch.nn",
        "target (time ratio)",
    ]
    parts = [
        _rows_line(rows) + " Sequence 28, input 28, hidden 128; a training step, medians of interleaved steps.",
        table(header, body),
        regenerate(_command("bench_cpu_recurrent.json", rows)),
    ]
    return "\n\n".join(parts) + "\n"


def conv_backward(results: Path) -> str:
    """conv_backward_timing.json: LeNet-5's two convolutions' backward, im2col against convolution primitives."""
    data = _read(results, "conv_backward_timing.json")
    if data is None:
        return _missing("conv_backward_timing.json")
    meta = data.get("meta")
    line = _meta_line(meta) if meta else machine_line(None, None, data.get("threads"), data.get("torch"))
    body = [
        [
            layer,
            _num(ms["im2col"]),
            _num(ms["convprim"]),
            _num(ms["torch autograd"]),
            _num(ms["im2col"] / ms["convprim"]),
        ]
        for layer, ms in data["median_ms"].items()
    ]
    header = ["layer", "im2col ms", "convolution primitives ms (kept)", "torch autograd ms", "im2col / primitives"]
    parts = [
        line + f" Medians of {data.get('reps')} interleaved backward passes.",
        table(header, body),
        regenerate(_command("conv_backward_timing.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Per-sample gradients and DP-SGD


def per_sample(results: Path) -> str:
    """bench_per_sample.json: one column per (model, batch), one row per method, ms (ratio to a plain step)."""
    data = _read(results, "bench_per_sample.json")
    if data is None:
        return _missing("bench_per_sample.json")
    meta, rows = data["meta"], data["rows"]
    configs = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    cell = {(r["model"], r["batch"], r["method"]): r for r in rows}
    methods = [(m, label) for m, label in PER_SAMPLE_METHODS if any((*c, m) in cell for c in configs)]
    methods += [(m, m) for m in dict.fromkeys(r["method"] for r in rows) if m not in dict(PER_SAMPLE_METHODS)]
    body = []
    for method, label in methods:
        cells = []
        for config in configs:
            r = cell.get((*config, method))
            cells.append("" if r is None else f"{r['ms']:.1f} ({r['ratio_to_plain']:.2f})")
        body.append([label, *cells])
    # the targets, per configuration
    clip_row, sample_row = (
        ["target: manualbp_clip ≤ 1.30x plain"],
        ["target: manualbp_grad_sample faster than every peer"],
    )
    for config in configs:
        clip = cell.get((*config, "manualbp_clip"))
        clip_row.append("" if clip is None else ("met" if clip["ratio_to_plain"] <= CLIP_TARGET else "not met"))
        mine = cell.get((*config, "manualbp_grad_sample"))
        peers = [cell[(*config, p)]["ms"] for p in PEER_PER_SAMPLE if (*config, p) in cell]
        if mine is None or not peers:
            sample_row.append("")
        else:
            fastest = min(peers)
            verdict = "met" if mine["ms"] < fastest else "not met"
            sample_row.append(f"{verdict} ({fastest / mine['ms']:.2f}x the fastest peer's speed)")
    body += [clip_row, sample_row]
    header = ["method", *(f"{MODEL_NAMES.get(m, m)}, batch {b}" for m, b in configs)]
    configs_meta = meta.get("configs") or []
    load = _load_range(
        [meta["loadavg_1min"]] if meta.get("loadavg_1min") else [c["loadavg_1min"] for c in configs_meta]
    )
    versions = ", ".join(f"{k} {meta[k]}" for k in ("opacus", "backpack") if meta.get(k))
    line = machine_line(
        meta.get("machine"),
        meta.get("cpu_count"),
        meta.get("threads"),
        meta.get("torch"),
        _date_range([meta.get("date")]),
        load,
    )
    parts = [
        line + f" {versions.capitalize()}." if versions else line,
        f"Medians in ms of {meta.get('reps')} interleaved calls of each method; in brackets, the ratio to the plain "
        "autograd step of the same model and batch.",
        table(header, body),
        regenerate(_command("bench_per_sample.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


def dp_compare(results: Path) -> str:
    """dp_compare_mnist.json: DP-SGD on the MNIST subset, ``manualbp fit --model.dp.*`` against Opacus."""
    data = _read(results, "dp_compare_mnist.json")
    if data is None:
        return _missing("dp_compare_mnist.json")
    settings = data.get("settings", {})
    body = []
    sides = (("manualbp", "`manualbp fit --model.dp.*`"), ("opacus", "Opacus `PrivacyEngine` (hooks)"))
    for key, label in sides:
        side = data.get(key)
        if side is None:
            continue
        seconds = side.get("train_seconds", side.get("train_seconds_from_file_times"))
        body.append(
            [
                label,
                _num(side["test_acc_best_val_epoch"], 4),
                _num(side["test_acc_last_epoch"], 4),
                _num(side["epsilon"], 3),
                _num(seconds, 0),
            ]
        )
    header = [
        "run",
        "test accuracy (best validation epoch)",
        "test accuracy (last epoch)",
        f"ε at δ = {settings.get('delta', '')}",
        "training s",
    ]
    meta = data.get("meta")
    line = _meta_line(meta) if meta else machine_line(None)
    recipe = (
        f"mlp(800), Adam lr {settings.get('lr')}, {settings.get('epochs')} epochs, σ = {settings.get('noise_multiplier')}, "
        f"C = {settings.get('max_grad_norm')}, seed {settings.get('seed')}; the same Poisson batches and noise on both sides."
    )
    parts = [line + " " + recipe, table(header, body), regenerate(_command("dp_compare_mnist.json", data))]
    return "\n\n".join(parts) + "\n"


def dp_noise(results: Path) -> str:
    """bench_dp_noise.json: the cost of the noise and of ``secure_mode`` on mlp(800, 800)."""
    data = _read(results, "bench_dp_noise.json")
    if data is None:
        return _missing("bench_dp_noise.json")
    body = [[r["case"], _num(r["median_ms"], 1), _num(r["best_ms"], 1)] for r in data["rows"]]
    reps = sorted({r["reps"] for r in data["rows"]})
    parts = [
        _meta_line(data["meta"])
        + f" {data['parameters']:,} parameters; {', '.join(map(str, reps))} interleaved calls of each case. On a "
        "shared machine the best time is the one to read: the median counts the other processes too.",
        table(["case", "median ms", "best ms"], body),
        regenerate(_command("bench_dp_noise.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Accuracy, verification timing


def accuracy(results: Path) -> str:
    """accuracy.json: test accuracy of the ``manualbp fit`` runs, both backends, with their training time."""
    data = _read(results, "accuracy.json")
    if data is None:
        return _missing("accuracy.json")
    body = [
        [
            f"`{r['command']}`",
            r["data"],
            r["backend"],
            _num(r["test_acc"], 4),
            _num(r["fit_seconds"], 1),
            _num(r["wall_seconds"], 1),
            _num(r.get("cpu_seconds"), 1),
            _load_range([r["loadavg_1min"]]) or "",
        ]
        for r in data["rows"]
    ]
    header = ["command", "data", "backend", "test_acc", "fit s", "whole command s", "CPU s", "1-minute load"]
    note = (
        " Seed 0, Adam, batches of 64 on the digits and 128 on MNIST (the defaults); test_acc of the checkpoint "
        "with the best val_acc; *fit s* from the start of the fit to the end of its last epoch, *whole command s* "
        "the process from start to exit, *CPU s* the CPU time it used."
    )
    if data["meta"].get("complete") is False:
        planned = data["meta"].get("planned", len(data["meta"].get("options", {}).get("rows", [])) * 2)
        note += f" **Partial run**: {len(data['rows'])} of the {planned} rows planned were measured."
    parts = [
        _meta_line(data["meta"]) + note,
        table(header, body),
        regenerate(_command("accuracy.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


#: What each row of verify_timing.json runs, in words.
VERIFY_ROWS = {
    "own_function": "`verify()` on a Function of your own (a cube, one sample), every check",
    "own_function --exhaustive": "the same with `exhaustive=True`",
    "manualbp verify --op conv2d": "`manualbp verify --op conv2d`",
    "manualbp verify --op conv2d --exhaustive": "`manualbp verify --op conv2d --exhaustive`",
    "manualbp verify": "`manualbp verify`: every built-in op case",
}


def verify_timing(results: Path) -> str:
    """verify_timing.json: wall-clock seconds of the verification battery, each a fresh process."""
    data = _read(results, "verify_timing.json")
    if data is None:
        return _missing("verify_timing.json")
    if data.get("meta"):
        line = _meta_line(data["meta"])
    else:
        machine = data.get("machine", {})
        loads = [r["load_before"] for r in data["rows"] if r.get("load_before") is not None]
        line = machine_line(
            machine.get("cpu"), machine.get("cores"), None, machine.get("torch"), None, _load_range(loads)
        )
    body = []
    for r in data["rows"]:
        seconds = r["seconds"]
        shown = f"{seconds:.1f}" if seconds < 60 else f"{seconds:.1f} ({int(seconds // 60)} min {seconds % 60:.0f} s)"
        body.append(
            [
                VERIFY_ROWS.get(r["row"], f"`{r['row']}`"),
                shown,
                _num(r.get("load_before")),
                r.get("summary") or "passed",
            ]
        )
    parts = [
        line + " Each row is a new Python process, timed from start to exit.",
        table(["run", "seconds", "1-minute load before", "result"], body),
        regenerate(_command("verify_timing.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Transformers


def attention(results: Path) -> str:
    """bench_attention.json: the attention op's saved bytes, backward peak and time against torch's two CPU paths."""
    data = _read(results, "bench_attention.json")
    if data is None:
        return _missing("bench_attention.json")
    mib = 1 << 20
    body = [
        [
            r["size"],
            r["method"],
            _num(r["saved_bytes"] / mib),
            _num(r["peak_backward_bytes"] / mib),
            _num(r["ms"], 1),
        ]
        for r in data["rows"]
        if r["method"] != "summary"
    ]
    summaries = [r for r in data["rows"] if r["method"] == "summary"]
    targets = [
        [
            s["size"],
            _num(s["saved_bytes_manual_over_flash"]),
            "met" if s["saved_target_met"] else "not met",
            _num(s["peak_backward_manual_over_math"]),
            {True: "met", False: "not met", None: "(stated at L = 2048)"}[s["peak_target_met"]],
        ]
        for s in summaries
    ]
    parts = [
        _meta_line(data["meta"])
        + " One head group of batch 1, 4 heads of 64 features, float32; L = S. *Saved* counts what the forward keeps "
        "for the backward (each storage once), *backward peak* the most memory the backward holds beyond it; the "
        "times are medians of interleaved forward and backward passes.",
        table(["L = S", "method", "saved MiB", "backward peak MiB", "forward + backward ms"], body),
        "The targets: saved bytes at most the flash path's, and a backward peak at most 0.25 of the math path's at "
        "L = 2048.",
        table(["L = S", "saved / flash", "saved target", "backward peak / math", "peak target"], targets),
        regenerate(_command("bench_attention.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


def vit(results: Path) -> str:
    """bench_vit.json: the ``--model.arch=vit`` network's training step, per-sample gradients and DP-SGD step,
    manualbp against autograd, torch.func and Opacus, with the targets."""
    data = _read(results, "bench_vit.json")
    if data is None:
        return _missing("bench_vit.json")
    body = [
        [
            r["section"],
            r["method"],
            "failed: " + str(r["error"])[:80] if r.get("error") else _num(r.get("ms"), 1),
            "" if r.get("error") else _num(r.get("ratio")),
        ]
        for r in data["rows"]
    ]
    targets = [[t["target"], "met" if t["met"] else "not met", _num(t["value"])] for t in data.get("targets", [])]
    parts = [
        _meta_line(data["meta"])
        + " Batch 128 of (1, 28, 28) images; medians of interleaved repetitions; *ratio* to the section's first row.",
        table(["section", "method", "median ms", "ratio"], body),
        table(["target", "result", "measured ratio"], targets),
        regenerate(_command("bench_vit.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


def zoo(results: Path) -> str:
    """zoo.json: every torchvision classification model of at most 100M parameters, converted, against the original
    (float64: what stays torch.nn, the worst relative difference of the gradients in eval and train mode)."""
    data = _read(results, "zoo.json")
    if data is None:
        return _missing("zoo.json")
    rows = data["rows"]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["model"], "", "failed: " + str(r["error"])[:80], "", "", ""])
            continue
        left = ", ".join(f"{k} x{v}" for k, v in r["left_to_torch"].items()) or "nothing"
        verdict = "equal" if r["equal"] else "**different**"
        body.append(
            [
                r["model"],
                _num(r["parameters"] / 1e6, 1),
                left,
                f"{r['eval']['gradients']:.1e}",
                f"{r['train']['gradients']:.1e}",
                verdict,
            ]
        )
    done = [r for r in rows if not r.get("error")]
    tolerance = data["meta"].get("options", {}).get("tolerance", 1e-8)
    summary = (
        f"{len(rows)} models: {sum(bool(r['fully_manual']) for r in done)} fully manual, "
        f"{sum(bool(r['equal']) for r in done)} equal to the original within {tolerance:g} (relative, float64), "
        f"{len(rows) - len(done)} failed."
    )
    parts = [
        _meta_line(data["meta"]) + " " + summary,
        table(["model", "M params", "left to torch.nn", "grad diff eval", "grad diff train", "result"], body),
        regenerate(_command("zoo.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


def _ms_and_peak(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("status") != "ok":
        return str(row.get("status", ""))
    peak = row.get("peak_mib")
    return f"{row['ms']:.1f}" + ("" if peak is None else f" ({peak:.0f} MiB)")


def curvature(results: Path) -> str:
    """bench_curvature.json: each quantity's step (forward and backward) with manualbp, BackPACK and curvlinops,
    median ms and peak MiB, and manualbp's ratio to BackPACK's time; the equality checks before timing."""
    data = _read(results, "bench_curvature.json")
    if data is None:
        return _missing("bench_curvature.json")
    cells: dict[tuple, dict[str, dict]] = {}
    for row in data["rows"]:
        cells.setdefault((row["model"], row["batch"], row["quantity"]), {})[row["method"]] = row
    body = []
    for (model, batch, quantity), methods in cells.items():
        if quantity is None:
            continue
        plain = cells.get((model, batch, None), {}).get("plain_autograd")
        ours, theirs = methods.get("manualbp"), methods.get("backpack")
        ratio = ""
        if ours and theirs and ours.get("status") == "ok" and theirs.get("status") == "ok":
            ratio = f"{ours['ms'] / theirs['ms']:.2f}"
        body.append(
            [
                model,
                batch,
                quantity,
                _ms_and_peak(ours),
                _ms_and_peak(theirs),
                _ms_and_peak(methods.get("curvlinops")),
                ratio,
                _ms_and_peak(plain),
            ]
        )
    checks = data.get("checks", [])
    matched = sum(bool(c.get("match")) for c in checks)
    summary = f"Checked before timing: {matched} of {len(checks)} comparisons with BackPACK and curvlinops equal."
    header = ["model", "batch", "quantity", "manualbp", "BackPACK", "curvlinops", "manualbp / BackPACK", "plain step"]
    parts = [
        _meta_line(data["meta"]) + " Median ms of a step (peak MiB). " + summary,
        table(header, body),
        regenerate(_command("bench_curvature.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


def kfac(results: Path) -> str:
    """kfac_mnist.json: LeNet-5 on the MNIST subset with SGD, Adam and SGD preconditioned by K-FAC (the factors
    from ``manualbp.curvature``): median steps and seconds to the target validation accuracy over the seeds."""
    data = _read(results, "kfac_mnist.json")
    if data is None:
        return _missing("kfac_mnist.json")
    target = data["meta"].get("options", {}).get("target")
    body = [
        [
            r["optimizer"],
            r["lr"],
            f"{r['reached']}/{r['seeds']}",
            f"{r['median_steps_to_target']} ({'/'.join(str(v) for v in r['steps_to_target'])})",
            _num(r["median_seconds_to_target"], 1),
            _num(r["step_ms"], 1),
            r["median_best_val_acc"],
            r["median_test_acc"],
        ]
        for r in data["summary"]
    ]
    header = [
        "optimizer",
        "lr",
        "reached",
        f"steps to {target} (each seed)",
        "s to it",
        "ms a step",
        "best val",
        "test",
    ]
    parts = [
        _meta_line(data["meta"]) + " Medians over the seeds.",
        table(header, body),
        regenerate(_command("kfac_mnist.json", data)),
    ]
    return "\n\n".join(parts) + "\n"


#: file name -> (the JSON it reads, the function writing it).
SECTIONS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "speed.md.inc": ("bench_cpu.json", speed),
    "speed_targets.md.inc": ("bench_cpu.json", speed_targets),
    "speed_recurrent.md.inc": ("bench_cpu_recurrent.json", speed_recurrent),
    "conv_backward.md.inc": ("conv_backward_timing.json", conv_backward),
    "per_sample.md.inc": ("bench_per_sample.json", per_sample),
    "dp_compare.md.inc": ("dp_compare_mnist.json", dp_compare),
    "dp_noise.md.inc": ("bench_dp_noise.json", dp_noise),
    "accuracy.md.inc": ("accuracy.json", accuracy),
    "verify_timing.md.inc": ("verify_timing.json", verify_timing),
    "attention.md.inc": ("bench_attention.json", attention),
    "vit.md.inc": ("bench_vit.json", vit),
    "zoo.md.inc": ("zoo.json", zoo),
    "curvature.md.inc": ("bench_curvature.json", curvature),
    "kfac.md.inc": ("kfac_mnist.json", kfac),
}


def generate(out: Path, results: Path = RESULTS) -> dict[str, Path]:
    """Write the results tables (Markdown), one file per table group of ``SECTIONS``, into ``out``, from the JSON
    files in ``results``; a file whose text is unchanged is not rewritten (Sphinx rebuilds what changed on disk).
    Returns {file name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.md.inc"):  # a table group renamed or dropped since the last build
        if stale.name not in SECTIONS:
            stale.unlink()
    written = {}
    for name, (_, make) in SECTIONS.items():
        text = make(Path(results))
        path = out / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written[name] = path
    return written
