"""The results page's tables (docs/_ext/results.py) are generated from experiments/results/*.json: each names the
machine it was measured on and shows the JSON's numbers, so a table cannot silently go stale. No Sphinx needed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
PAGE = ROOT / "docs" / "results.md"


@pytest.fixture(scope="module")
def results():
    """docs/_ext/results.py, imported by path (docs/_ext is no package)."""
    spec = importlib.util.spec_from_file_location("manualbp_docs_results", ROOT / "docs" / "_ext" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(results, tmp_path_factory):
    """{file name: text} of the tables generated from the repository's JSON files."""
    out = tmp_path_factory.mktemp("results")
    written = results.generate(out, RESULTS)
    return {name: path.read_text() for name, path in written.items()}


def _json(name: str):
    return json.loads((RESULTS / name).read_text())


def _machine(name: str) -> str:
    """The CPU that the JSON names, wherever its script records it."""
    data = _json(name)
    if isinstance(data, list):  # bench.py's rows
        return data[0]["device_name"]
    meta = data.get("meta", {})
    return meta.get("cpu") or meta.get("machine") or data["machine"]["cpu"]


def _line_with(text: str, *parts: str) -> str:
    """The table line holding every one of ``parts``; fails when there is none."""
    lines = [line for line in text.splitlines() if line.startswith("|") and all(p in line for p in parts)]
    assert lines, f"no table row holds {parts}:\n{text}"
    return lines[0]


def test_every_section_file_is_written_names_its_machine_and_how_to_regenerate_it(results, generated):
    assert set(generated) == set(results.SECTIONS)
    for name, (source, _) in results.SECTIONS.items():
        text = generated[name]
        assert (RESULTS / source).is_file(), f"{source} is missing: {text}"
        assert "Not measured yet" not in text and "machine not recorded" not in text, text
        assert f"Measured on **{_machine(source)}**" in text, text
        assert "torch 2." in text and "Regenerate: `python experiments/" in text, text
        assert re.search(r"^\|---\|", text, re.M), f"{name} has no table"


def test_speed_tables_show_the_json_values(generated):
    for row in _json("bench_cpu.json"):
        mode = "compiled" if row["compiled"] else "eager"
        _line_with(
            generated["speed.md.inc"],
            f"| {row['batch']} | {mode} |",
            f"{row['manual_ms']:.2f}",
            f"{row['time_ratio']:.2f}",
        )
    first = _json("bench_cpu_baseline.json")[0]
    assert f"({first['time_ratio']:.2f})" in generated["speed.md.inc"]
    assert _json("bench_cpu_baseline.json")[0]["device_name"] in generated["speed.md.inc"]
    lenet_32 = next(
        r for r in _json("bench_cpu.json") if (r["model"], r["batch"], r["compiled"]) == ("lenet5", 32, False)
    )
    _line_with(generated["speed_targets.md.inc"], "LeNet-5 eager ≤ 1.10 at batch 32", f"{lenet_32['time_ratio']:.2f}")
    for row in _json("bench_cpu_recurrent.json"):
        _line_with(
            generated["speed_recurrent.md.inc"], f"| {row['model']} | {row['batch']} |", f"{row['manual_ms']:.2f}"
        )
    for layer, ms in _json("conv_backward_timing.json")["median_ms"].items():
        _line_with(generated["conv_backward.md.inc"], layer, f"{ms['convprim']:.2f}")


def test_per_sample_and_dp_tables_show_the_json_values(generated):
    for row in _json("bench_per_sample.json")["rows"]:
        assert f"{row['ms']:.1f} ({row['ratio_to_plain']:.2f})" in generated["per_sample.md.inc"], row
    compare = _json("dp_compare_mnist.json")
    _line_with(generated["dp_compare.md.inc"], "Opacus", f"{compare['opacus']['test_acc_best_val_epoch']:.4f}")
    _line_with(generated["dp_compare.md.inc"], "manualbp fit", f"{compare['manualbp']['epsilon']:.3f}")
    for row in _json("bench_dp_noise.json")["rows"]:
        _line_with(generated["dp_noise.md.inc"], row["case"], f"{row['best_ms']:.1f}")


def test_accuracy_and_verify_tables_show_the_json_values(generated):
    accuracy = _json("accuracy.json")
    assert accuracy["rows"], "accuracy.json has no rows"
    for row in accuracy["rows"]:
        _line_with(generated["accuracy.md.inc"], row["command"], f"| {row['backend']} |", f"{row['test_acc']:.4f}")
    for row in _json("verify_timing.json")["rows"]:
        _line_with(generated["verify_timing.md.inc"], f"{row['seconds']:.1f}", row["summary"] or "passed")


def test_a_changed_json_changes_its_table_and_a_missing_one_says_so(results, tmp_path):
    source = tmp_path / "results"
    shutil.copytree(RESULTS, source, ignore=shutil.ignore_patterns("*.png", "*.gif", "*.csv"))
    accuracy = json.loads((source / "accuracy.json").read_text())
    accuracy["rows"][0]["test_acc"] = 0.1234
    accuracy["meta"]["cpu"] = "Imaginary CPU 9000"
    (source / "accuracy.json").write_text(json.dumps(accuracy))
    (source / "verify_timing.json").unlink()
    out = tmp_path / "out"
    (out).mkdir()
    (out / "dropped_section.md.inc").write_text("stale")
    written = results.generate(out, source)
    text = written["accuracy.md.inc"].read_text()
    assert "0.1234" in text and "Measured on **Imaginary CPU 9000**" in text
    missing = written["verify_timing.md.inc"].read_text()
    assert "Not measured yet" in missing and "python experiments/verify_timing.py" in missing
    assert not (out / "dropped_section.md.inc").exists()


def test_a_json_without_a_machine_says_not_recorded(results, tmp_path):
    source = tmp_path / "results"
    source.mkdir()
    (source / "conv_backward_timing.json").write_text(
        json.dumps(
            {
                "torch": "2.14.1",
                "threads": 1,
                "reps": 3,
                "median_ms": {"conv": {"im2col": 2, "convprim": 1, "torch autograd": 1}},
            }
        )
    )
    text = results.conv_backward(source)
    assert "machine not recorded" in text and "date not recorded" in text and "| conv | 2.00 | 1.00 |" in text


def test_the_page_includes_every_generated_file_under_its_section(results):
    page = PAGE.read_text()
    included = re.findall(r"^```\{include\} _generated/results/(\S+)$", page, re.M)
    assert sorted(included) == sorted(results.SECTIONS)
    headings = re.findall(r"^## (.+)$", page, re.M)
    assert headings == [
        "Speed: manual against autograd",
        "Per-sample gradients and DP-SGD",
        "Accuracy",
        "Verification timing",
        "Transformers",
        "torchvision's classification zoo, converted",
        "Curvature",
    ]
    # each generated file sits under the section its JSON belongs to
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    where = {
        name: section.splitlines()[0] for section in sections for name in re.findall(r"results/(\S+\.md\.inc)", section)
    }
    assert where["speed.md.inc"] == where["conv_backward.md.inc"] == "Speed: manual against autograd"
    assert where["per_sample.md.inc"] == where["dp_noise.md.inc"] == "Per-sample gradients and DP-SGD"
    assert where["accuracy.md.inc"] == "Accuracy" and where["verify_timing.md.inc"] == "Verification timing"
    assert where["attention.md.inc"] == where["vit.md.inc"] == "Transformers"
    assert where["zoo.md.inc"] == "torchvision's classification zoo, converted"
    assert where["curvature.md.inc"] == where["kfac.md.inc"] == "Curvature"
