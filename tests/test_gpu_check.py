"""experiments/gpu_check.sh is sound without a GPU: its syntax (and shellcheck's verdict where it is installed), its
budgets, a dry run's summary; and the pieces it runs that are new work on the CPU: time_to_accuracy.py on a few
made-up MNIST images, bench.py under bfloat16 autocast."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_data import make_mnist

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
SCRIPT = EXPERIMENTS / "gpu_check.sh"
STAGES = [
    "environment",
    "install",
    "verify",
    "tests",
    "bench_fp32",
    "bench_bf16",
    "fit_16-mixed",
    "fit_bf16-mixed",
    "time_to_acc",
]


def test_the_script_is_executable_bash_without_syntax_errors():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_nothing():
    subprocess.run(["shellcheck", str(SCRIPT)], check=True)


def test_the_budgets_fit_in_eight_minutes_and_the_header_states_them():
    text = SCRIPT.read_text()
    budgets = {name: int(budget) for name, budget in re.findall(r'run_stage "?([\w$-]+)"? (\d+) ', text)}
    budgets = {name.replace("fit_$precision", "fit"): budget for name, budget in budgets.items()}
    total = sum(budgets.values()) + budgets["fit"]  # the fit stage runs twice (16-mixed, bf16-mixed)
    assert total <= 480, budgets
    assert int(re.search(r'TOTAL_BUDGET="\$\{TOTAL_BUDGET:-(\d+)\}"', text).group(1)) <= 480
    for stage in STAGES:
        name = "fit" if stage.startswith("fit_") else stage
        assert re.search(rf"^# {re.escape(stage)}\s+{budgets[name]} s ", text, re.MULTILINE), stage


def test_a_dry_run_writes_every_stages_log_and_the_summary(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["exit_code"] == 0 and not s["timed_out"] for s in summary["stages"])
    for stage in STAGES:
        assert (tmp_path / f"{stage}.log").read_text().startswith("$ "), stage
    verify_log = (tmp_path / "verify.log").read_text()
    assert "--device cuda" in verify_log and "--check gradcheck" in verify_log and "--check compile " not in verify_log
    assert "--autocast bf16" in (tmp_path / "bench_bf16.log").read_text()
    assert "--trainer.precision=16-mixed" in (tmp_path / "fit_16-mixed.log").read_text()
    assert (tmp_path / "summary.txt").is_file()


@pytest.fixture
def experiments(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    for name in ("time_to_accuracy", "bench", "_common"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_time_to_accuracy_on_the_cpu(experiments, tmp_path):
    import time_to_accuracy

    make_mnist(tmp_path, n_train=64, n_test=20)
    out = tmp_path / "tta.json"
    common = ["--root", str(tmp_path), "--device", "cpu", "--batch", "16", "--eval-every", "2", "--warmup", "1"]
    result = time_to_accuracy.main([*common, "--max-steps", "4", "--target", "0.0", "--json", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    runs = result["runs"]
    assert [r["backend"] for r in runs] == ["manual", "autograd"]
    for run in runs:  # reached at the first evaluation
        assert run["steps_to_target"] == 2 and run["seconds_to_target"] > 0 and len(run["curve"]) == 1
    assert result["summary"]["time_ratio"] > 0 and result["meta"]["options"]["device"] == "cpu"
    # the same weights, batches and arithmetic: the same accuracies
    assert runs[0]["curve"][0]["accuracy"] == runs[1]["curve"][0]["accuracy"]

    never = time_to_accuracy.main([*common, "--max-steps", "4", "--target", "1.01", "--runs", "2"])
    assert [r["backend"] for r in never["runs"]] == ["manual", "autograd", "autograd", "manual"]
    assert all(r["steps_to_target"] is None and r["steps"] == 4 and len(r["curve"]) == 2 for r in never["runs"])
    assert never["summary"]["manual"]["reached"] == 0 and never["summary"]["time_ratio"] is None


def test_time_to_accuracy_says_where_mnist_is_missing(experiments, tmp_path, capsys):
    import time_to_accuracy

    with pytest.raises(SystemExit):
        time_to_accuracy.main(["--root", str(tmp_path)])
    assert "no MNIST under --root" in capsys.readouterr().err


def test_bench_under_bfloat16_autocast_records_it(experiments, tmp_path):
    import bench

    out = tmp_path / "bench.json"
    argv = ["--models", "mlp800x800", "--batches", "4", "--device", "cpu", "--reps", "2", "--warmup", "1"]
    rows = bench.main([*argv, "--matmul-size", "32", "--matmul-reps", "1", "--autocast", "bf16", "--json", str(out)])
    assert [row["autocast"] for row in json.loads(out.read_text())] == ["bf16"]
    assert rows[0]["manual_ms"] > 0 and not rows[0].get("same_step_error")
