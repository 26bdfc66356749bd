"""The experiment scripts experiments/bench.py and experiments/parity.py, each run in a tiny configuration."""

from __future__ import annotations

import csv
import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

REQUIRED_BENCH_KEYS = {
    "model",
    "batch",
    "device",
    "manual_ms",
    "autograd_ms",
    "time_ratio",
    "manual_saved_bytes",
    "autograd_saved_bytes",
    "saved_bytes_ratio",
    "gflops",
    "machine_gflops",
    "machine_share",
    "compiled",
}


@pytest.fixture
def experiments(monkeypatch):
    """Import an experiment script by name, with experiments/ on sys.path (as when run as a script)."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))

    def load(name: str):
        return importlib.import_module(name)

    yield load
    for name in ("bench", "bench_per_sample", "bench_dp_noise", "parity", "_common"):
        sys.modules.pop(name, None)


def test_bench_tiny_run_writes_rows_with_required_keys(experiments, tmp_path, capsys):
    bench = experiments("bench")
    out = tmp_path / "bench.json"
    argv = ["--models", "lenet5", "--batches", "4", "--device", "cpu", "--reps", "3", "--warmup", "1"]
    argv += ["--matmul-size", "128", "--matmul-reps", "2", "--json", str(out)]
    bench.main(argv)
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    (row,) = rows
    assert set(row) >= REQUIRED_BENCH_KEYS
    assert (row["model"], row["batch"], row["device"]) == ("lenet5", 4, "cpu")
    for key in ("manual_ms", "autograd_ms", "time_ratio", "saved_bytes_ratio", "gflops", "machine_gflops"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["time_ratio"] == pytest.approx(row["manual_ms"] / row["autograd_ms"])
    assert row["manual_saved_bytes"] > 0 and row["autograd_saved_bytes"] > 0
    # the manual lenet5 fuses ReLU into max pooling (the indices and its output, which the next layer keeps
    # anyway, instead of the ReLU output as well): at most half of autograd's bytes, and at least the input batch
    assert row["manual_saved_bytes"] >= 4 * 1 * 28 * 28 * 4
    assert 0.1 < row["saved_bytes_ratio"] <= 0.5
    assert row["manual_ms_p25"] <= row["manual_ms"] <= row["manual_ms_p75"]
    # the machine rate: sampled --matmul-reps times during the row's timing, the best sample reported
    assert row["compiled"] is False
    assert row["machine_samples"] == 2
    assert 0 < row["machine_gflops_min"] <= row["machine_gflops_median"] <= row["machine_gflops"]
    assert row["machine_share"] == pytest.approx(row["gflops"] / row["machine_gflops"])
    assert row["autograd_machine_share"] == pytest.approx(row["autograd_gflops"] / row["machine_gflops"])
    assert row["manual_compile_s"] is None and row["autograd_compile_s"] is None
    assert "lenet5" in capsys.readouterr().out


@pytest.mark.parametrize("reps, samples", [(3, 2), (200, 10), (5, 1), (2, 5)])
def test_bench_machine_rate_samples_spread_over_the_timing_loop(experiments, reps, samples):
    bench = experiments("bench")
    positions = bench.probe_positions(reps, samples)
    assert len(positions) == samples and positions == sorted(positions)
    assert all(0 <= p <= reps for p in positions)
    if samples >= 2:  # one before the first timed repetition, one after the last
        assert (positions[0], positions[-1]) == (0, reps)
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_interleaved(fns, reps, 1, torch.device("cpu"), lambda: calls.append("mm"), samples)
    assert [len(times[k]) for k in ("a", "b", bench.PROBE)] == [reps, reps, samples]
    # warm-up, one untimed probe, then after the samples at each place inside the loop one untimed call of each step
    inside = len({p for p in positions if p < reps})
    assert calls.count("a") == calls.count("b") == 1 + reps + inside
    assert calls.count("mm") == 1 + samples


@pytest.mark.slow
def test_bench_compile_adds_a_compiled_row_with_compile_times_apart(experiments, tmp_path, capsys):
    bench = experiments("bench")
    out = tmp_path / "bench_compile.json"
    argv = ["--models", "mlp800x800", "--batches", "4", "--device", "cpu", "--reps", "3", "--warmup", "1"]
    argv += ["--matmul-size", "128", "--matmul-reps", "2", "--compile", "--json", str(out)]
    bench.main(argv)
    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch"], r["compiled"]) for r in rows] == [
        ("mlp800x800", 4, False),
        ("mlp800x800", 4, True),
    ]
    eager, compiled = rows
    assert set(compiled) >= REQUIRED_BENCH_KEYS
    for key in ("manual_ms", "autograd_ms", "time_ratio", "saved_bytes_ratio", "gflops", "machine_gflops"):
        assert math.isfinite(compiled[key]) and compiled[key] > 0, key
    assert compiled["time_ratio"] == pytest.approx(compiled["manual_ms"] / compiled["autograd_ms"])
    assert compiled["machine_share"] == pytest.approx(compiled["gflops"] / compiled["machine_gflops"])
    assert compiled["flops_per_step"] == eager["flops_per_step"]
    assert compiled["manual_saved_bytes"] > 0 and compiled["autograd_saved_bytes"] > 0
    # the compiling first step is timed on its own, and not among the timed steps: compiling takes
    # seconds, a step of this network milliseconds
    for backend in ("manual", "autograd"):
        compile_s = compiled[f"{backend}_compile_s"]
        assert math.isfinite(compile_s) and compile_s > 0
        assert compile_s * 1e3 > compiled[f"{backend}_ms_p75"]
        assert compiled[f"{backend}_graphs"] == 1 and compiled[f"{backend}_graph_breaks"] == 0
    assert eager["manual_compile_s"] is None
    table = capsys.readouterr().out
    assert " comp " in table and " eager " in table


def test_bench_per_sample_tiny_run_writes_a_row_per_method(experiments, tmp_path, capsys):
    bench = experiments("bench_per_sample")
    out = tmp_path / "per_sample.json"
    bench.main(["--models", "lenet5", "--batches", "4", "--reps", "2", "--warmup", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["method"] for r in rows] == list(bench.METHODS)
    assert {
        "plain_autograd",
        "manualbp_grad_sample",
        "manualbp_clip",
        "opacus_hooks",
        "opacus_ghost",
        "backpack_batchgrad",
        "torch_func_vmap",
    } <= set(bench.METHODS)
    plain = next(r["ms"] for r in rows if r["method"] == "plain_autograd")
    for row in rows:
        assert {"model", "batch", "method", "ms", "ratio_to_plain"} <= set(row)
        assert (row["model"], row["batch"]) == ("lenet5", 4)
        assert math.isfinite(row["ms"]) and row["ms"] > 0
        assert row["ratio_to_plain"] == pytest.approx(row["ms"] / plain)
    assert "manualbp_clip" in capsys.readouterr().out


def test_bench_dp_noise_tiny_run_writes_its_cases_and_the_machine(experiments, tmp_path, capsys):
    bench = experiments("bench_dp_noise")
    out = tmp_path / "dp_noise.json"
    result = bench.main(["--reps", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    cases = [r["case"] for r in result["rows"]]
    generators = [case for case in cases if case.startswith("generator: ")]
    assert "generator: torch normal_ float32" in generators and len(generators) >= 8, generators
    assert {
        "noise, default",
        "noise, secure_mode",
        "step, batch 128, secure_mode",
        "step, batch 128, noise prefetched",
        "os.urandom, 32 bytes a parameter",
    } <= set(cases)
    for row in result["rows"]:
        assert row["reps"] == 1 and 0 < row["best_ms"] <= row["median_ms"], row
    assert result["parameters"] == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    meta = result["meta"]
    assert meta["cpu"] and meta["cores"] >= 1 and meta["torch"] and meta["date"] and len(meta["loadavg"]) == 3
    assert meta["command"] == f"python experiments/bench_dp_noise.py --reps 1 --json {out}"
    assert "secure_mode" in capsys.readouterr().out


def test_bench_compile_failure_gives_a_row_that_says_so_and_the_run_goes_on(experiments, tmp_path, monkeypatch, capsys):
    bench = experiments("bench")
    measure = bench.bench_config

    def bench_config(model_name, batch, device, reps, warmup, probe=None, probe_samples=10, compiled=False, **kw):
        if compiled:  # as compile_pair reports a model whose compiling first step raised
            raise bench.CompileFailed("autograd model: TypeError: boom", {"manual_compile_s": 1.5})
        return measure(model_name, batch, device, reps, warmup, probe, probe_samples, compiled, **kw)

    monkeypatch.setattr(bench, "bench_config", bench_config)
    out = tmp_path / "bench_failed.json"
    argv = ["--models", "lenet5", "--batches", "4", "2", "--device", "cpu", "--reps", "2", "--warmup", "1"]
    bench.main([*argv, "--matmul-size", "64", "--matmul-reps", "1", "--compile", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["batch"], r["compiled"]) for r in rows] == [(4, False), (4, True), (2, False), (2, True)]
    expected = {
        "model": "lenet5",
        "batch": 4,
        "device": "cpu",
        "compiled": True,
        "compile_error": "autograd model: TypeError: boom",
        "manual_compile_s": 1.5,
    }
    assert expected.items() <= rows[1].items() and "manual_ms" not in rows[1]
    assert rows[2]["manual_ms"] > 0
    assert "compile failed: autograd model: TypeError: boom" in capsys.readouterr().out


@pytest.fixture
def torch_threads():
    """Restores torch's CPU thread count after a test that sets it (``bench.py --threads``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_rows_of_the_recurrent_classifiers(experiments, tmp_path, torch_threads):
    bench = experiments("bench")
    out = tmp_path / "bench_recurrent.json"
    argv = ["--models", "lstm", "gru", "--batches", "2", "--device", "cpu", "--reps", "2", "--warmup", "1"]
    # one thread: 28 small steps, each a sync point for torch's thread pool, crawl when other processes share the cores
    argv += ["--threads", "1", "--matmul-size", "64", "--matmul-reps", "2", "--json", str(out)]
    bench.main(argv)
    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch"]) for r in rows] == [("lstm", 2), ("gru", 2)]
    for row, gates in zip(rows, (4, 3)):
        assert set(row) >= REQUIRED_BENCH_KEYS
        for key in ("manual_ms", "autograd_ms", "time_ratio", "saved_bytes_ratio", "gflops"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        # the input projections and recurrent matmuls of 28 steps, forward and backward (no input gradient),
        # are counted: at least the forward's 2·N·T·gates·hidden·(input + hidden) FLOPs, twice
        assert row["flops_per_step"] >= 2 * 2 * 2 * 28 * gates * 128 * (28 + 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_tiny_run_on_cuda(experiments, tmp_path):
    bench = experiments("bench")
    out = tmp_path / "bench_cuda.json"
    argv = ["--models", "mlp800x800", "lenet5", "lstm", "gru", "--batches", "8", "--device", "cuda", "--reps", "3"]
    argv += ["--warmup", "1", "--matmul-size", "256", "--matmul-reps", "2", "--json", str(out)]
    bench.main(argv)
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["mlp800x800", "lenet5", "lstm", "gru"]
    assert {r["device"] for r in rows} == {"cuda"}
    for row in rows:
        assert set(row) >= REQUIRED_BENCH_KEYS
        assert row["manual_ms"] > 0 and row["autograd_ms"] > 0 and row["machine_gflops"] > 0
        assert row["manual_saved_bytes"] > 0 and row["autograd_saved_bytes"] > 0


def test_saved_for_backward_counts_each_storage_once_and_skips_parameters(experiments):
    bench = experiments("bench")
    weight = torch.nn.Parameter(torch.randn(3, 5))
    model = torch.nn.Sequential(torch.nn.Flatten())
    model.register_parameter("w", weight)

    def forward(x):  # mm saves x and w; x * x saves x twice: x is charged once, w not at all
        return (x.flatten(1) @ weight.t()).sum() + (x * x).sum()

    x = torch.randn(4, 5, requires_grad=True)
    model.forward = forward
    saved = bench.saved_for_backward(model, lambda out, _: out, x, None)
    assert saved["bytes"] == x.untyped_storage().nbytes()
    assert saved["storages"] == 1


def test_step_flops_counts_linear_training_step(experiments):
    bench = experiments("bench")
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    flops = bench.step_flops(model, torch.nn.functional.cross_entropy, x, y)
    # forward 2·N·in·out; backward: grad of W (2·N·in·out), no grad of x (x does not require grad)
    assert flops == 2 * (2 * 5 * 6 * 3)
    assert model.weight.grad is None


@pytest.mark.parametrize("arch", ["mlp", "lstm"])
def test_parity_tiny_run_on_digits(experiments, tmp_path, capsys, arch):
    parity = experiments("parity")
    out_dir = tmp_path / "results"
    result = parity.main(["--arch", arch, "--epochs", "1", "--max-steps", "6", "--out", str(out_dir), "--name", "tiny"])
    png, csv_path = out_dir / "tiny.png", out_dir / "tiny.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "manual_loss", "autograd_loss", "abs_diff"]
    assert len(rows) == 6
    manual = torch.tensor([float(r["manual_loss"]) for r in rows], dtype=torch.float64)
    autograd = torch.tensor([float(r["autograd_loss"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(manual, autograd, rtol=1e-4, atol=0)
    assert manual[-1] < manual[0]  # it trains
    assert result["max_rel_diff"] < 1e-4
    printed = capsys.readouterr().out
    assert "largest absolute loss difference" in printed and "largest relative loss difference" in printed
