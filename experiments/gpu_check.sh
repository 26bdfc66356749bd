#!/usr/bin/env bash
# The GPU check: everything manualbp claims about CUDA, measured in one run of at most 8 minutes on a CUDA machine
# that has nothing but this repository and ../shared (no internet).
#
#     OUT=/path/to/empty/folder bash experiments/gpu_check.sh      # from the repository root
#
# Writes into $OUT (default ./gpu_check_out): one <stage>.log per stage, summary.json (each stage's exit code,
# seconds and budget; the stages run whatever the earlier ones gave: set -u, not set -e), summary.txt (the same,
# one line a stage), nvidia-smi.txt and device.txt (torch.cuda.get_device_name()), and the stages' own files.
#
# stage         budget  what it does
# environment     30 s  nvidia-smi, python, pip, torch/torchvision/lightning versions, the CUDA device's name
# install         70 s  pip install -e ".[dev]"; without an index (no internet) the same --no-build-isolation,
#                       then --no-build-isolation --no-deps (the dependencies must be there already); each try
#                       is logged with its exit code
# verify          90 s  manualbp verify --device cuda over the whole registry, every check but the graph-capture
#                       ones (compile, compile_dynamic, export_dynamic: seconds a case), 8 processes;
#                       verify_cuda.json (one row per case x check)
# tests          110 s  pytest -k cuda -m "not slow" -n 8 over tests/: every device-parametrised test's [cuda]
#                       variant (tests/conftest.py's DEVICES) and the tests named for CUDA; pytest_cuda.xml
# bench_fp32      40 s  experiments/bench.py --device cuda, float32 (TF32 as torch leaves it), mlp800x800,
#                       lenet5, lstm, gru at batches 32, 128, 512: bench_cuda_fp32.json
# bench_bf16      40 s  the same under bfloat16 autocast (--autocast bf16): bench_cuda_bf16.json
# fit_16-mixed    30 s  manualbp fit, LeNet-5 on the digits, one epoch, --trainer.precision=16-mixed on the GPU;
#                       logs and checkpoints under fit_16-mixed/
# fit_bf16-mixed  30 s  the same with bf16-mixed: fit_bf16-mixed/
# time_to_acc     40 s  experiments/time_to_accuracy.py: LeNet-5 to 97% test accuracy on ../shared/data/mnist,
#                       data preloaded on the GPU, manual and autograd, 3 runs each: time_to_accuracy.json
#                ----
#                480 s  plus the script's own seconds; a stage never runs past the 8-minute deadline
#                       (TOTAL_BUDGET, seconds from the start): its timeout is cut to what is left, and a stage
#                       with under 5 s left is recorded as skipped (exit code null).
#
# GPU_CHECK_DRY_RUN=1 prints each stage's command into its log instead of running it (the test-suite checks the
# plumbing this way on a machine without a GPU). PYTHON picks the interpreter (default: python).
set -u

OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python}"
TOTAL_BUDGET="${TOTAL_BUDGET:-480}"
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
SHARED="${SHARED:-../shared}"
export OUT PYTHON
# the `manualbp` command through the interpreter, so it runs even where pip could not install the console script
MANUALBP=("$PYTHON" -c "import sys; from manualbp.cli import main; sys.exit(main())")
mkdir -p "$OUT"
START=$(date +%s)
SUMMARY_LINES="$OUT/.summary.tsv"
: >"$SUMMARY_LINES"

# run_stage NAME BUDGET COMMAND...: COMMAND under `timeout`, stdout and stderr into $OUT/NAME.log; records the
# exit code (124: past its budget) and the seconds
run_stage() {
    local name="$1" budget="$2"
    shift 2
    local now left limit code seconds started
    now=$(date +%s)
    left=$((TOTAL_BUDGET - (now - START)))
    limit=$((budget < left ? budget : left))
    if ((limit < 5)); then
        echo "skipped: ${left} s left of the ${TOTAL_BUDGET} s budget" >"$OUT/$name.log"
        printf '%s\t%s\t%s\t%s\n' "$name" "null" "0" "$budget" >>"$SUMMARY_LINES"
        echo "[gpu_check] $name: skipped (${left} s left)"
        return
    fi
    echo "[gpu_check] $name: budget ${budget} s, timeout ${limit} s"
    started=$(date +%s.%N)
    {
        echo "\$ $*"
        echo "(timeout ${limit} s)"
    } >"$OUT/$name.log"
    if [[ "$DRY_RUN" == "1" ]]; then
        code=0
    else
        if declare -F "$1" >/dev/null; then  # a function of this script: run in a child bash that has it
            timeout --kill-after=5 "$limit" bash -c "$(declare -f "$1"); $*" >>"$OUT/$name.log" 2>&1
        else
            timeout --kill-after=5 "$limit" "$@" >>"$OUT/$name.log" 2>&1
        fi
        code=$?
    fi
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "exit code $code after $seconds s" >>"$OUT/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$seconds" "$budget" >>"$SUMMARY_LINES"
    echo "[gpu_check] $name: exit code $code, $seconds s"
}

write_summary() {
    "$PYTHON" - "$SUMMARY_LINES" "$OUT" "$START" <<'EOF' || awk '{ print }' "$SUMMARY_LINES" >"$OUT/summary.txt"
import json, sys, time
from pathlib import Path

lines, out, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
stages = []
for line in lines.read_text().splitlines():
    name, code, seconds, budget = line.split("\t")
    stages.append(
        {"stage": name, "exit_code": None if code == "null" else int(code), "seconds": float(seconds),
         "budget_s": int(budget), "timed_out": code in ("124", "137")}
    )
summary = {"total_seconds": round(time.time() - start, 1), "stages": stages}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
text = [f"{s['stage']:<15} exit {s['exit_code']!s:>4}  {s['seconds']:7.1f} s of {s['budget_s']} s" for s in stages]
(out / "summary.txt").write_text("\n".join(text + [f"total {summary['total_seconds']} s"]) + "\n")
EOF
}

# --- environment -------------------------------------------------------------------------------------------------
environment() {
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed or is missing" >>"$OUT/nvidia-smi.txt"
    cat "$OUT/nvidia-smi.txt"
    "$PYTHON" --version
    "$PYTHON" -m pip --version
    echo "nproc: $(nproc)"
    "$PYTHON" - "$OUT/device.txt" <<'EOF'
import sys
import torch

name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
open(sys.argv[1], "w").write(name + "\n")
print("device:", name, "| cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for name in ("torchvision", "pytorch_lightning", "torchmetrics", "jsonargparse"):
    try:
        module = __import__(name)
        print(name, module.__version__)
    except Exception as error:
        print(name, "not importable:", error)
EOF
}

# --- install -----------------------------------------------------------------------------------------------------
install() {
    local code
    echo "== try 1: pip install -e .[dev]"
    "$PYTHON" -m pip install --disable-pip-version-check -e ".[dev]"
    code=$?
    echo "== try 1: exit code $code"
    if ((code != 0)); then
        echo "== try 2: pip install --no-build-isolation -e .[dev] (no index: the build backend from the environment)"
        "$PYTHON" -m pip install --disable-pip-version-check --no-index --no-build-isolation -e ".[dev]"
        code=$?
        echo "== try 2: exit code $code"
    fi
    if ((code != 0)); then
        echo "== try 3: pip install --no-build-isolation --no-deps -e . (the dependencies as they are installed)"
        "$PYTHON" -m pip install --disable-pip-version-check --no-index --no-build-isolation --no-deps -e .
        code=$?
        echo "== try 3: exit code $code"
    fi
    echo "== what is missing of the dependencies:"
    "$PYTHON" -m pip check || true
    "$PYTHON" -c "import manualbp, torch; print('manualbp', manualbp.__version__, 'from', manualbp.__file__)"
}

mnist_missing() {
    [[ ! -d "$SHARED/data/mnist/MNIST/raw" ]]
}

run_stage environment 30 environment
run_stage install 70 install
# every default check on CUDA but the graph-capture ones (seconds a case: the slow tier)
VERIFY_CHECKS=$("$PYTHON" -c "from manualbp.verify import GRAPH_CAPTURE_CHECKS as G, available_checks as a
print(' '.join('--check ' + c for c in a('cuda') if c not in G))" 2>/dev/null)
# shellcheck disable=SC2086  # VERIFY_CHECKS is a list of words
run_stage verify 90 "${MANUALBP[@]}" verify --device cuda --jobs 8 $VERIFY_CHECKS --json "$OUT/verify_cuda.json"
run_stage tests 110 "$PYTHON" -m pytest tests -k cuda -m "not slow" -n 8 -q -p no:cacheprovider \
    --junitxml="$OUT/pytest_cuda.xml"
run_stage bench_fp32 40 "$PYTHON" experiments/bench.py --device cuda --reps 50 --warmup 10 --matmul-reps 3 \
    --json "$OUT/bench_cuda_fp32.json"
run_stage bench_bf16 40 "$PYTHON" experiments/bench.py --device cuda --reps 50 --warmup 10 --matmul-reps 3 \
    --autocast bf16 --json "$OUT/bench_cuda_bf16.json"
for precision in 16-mixed bf16-mixed; do
    run_stage "fit_$precision" 30 "${MANUALBP[@]}" fit --model.arch=lenet5 --trainer.accelerator=gpu \
        --trainer.devices=1 --trainer.precision="$precision" --trainer.max_epochs=1 \
        --trainer.enable_progress_bar=false --trainer.default_root_dir="$OUT/fit_$precision"
done
if mnist_missing && [[ "$DRY_RUN" != "1" ]]; then
    echo "no MNIST under $SHARED/data/mnist" >"$OUT/time_to_acc.log"
    printf '%s\t%s\t%s\t%s\n' time_to_acc 2 0 40 >>"$SUMMARY_LINES"
else
    run_stage time_to_acc 40 "$PYTHON" experiments/time_to_accuracy.py --root "$SHARED/data/mnist" --device cuda \
        --target 0.97 --runs 3 --max-seconds 10 --json "$OUT/time_to_accuracy.json"
fi
write_summary
rm -f "$SUMMARY_LINES"
cat "$OUT/summary.txt" 2>/dev/null
echo "[gpu_check] done in $(($(date +%s) - START)) s; results in $OUT"
