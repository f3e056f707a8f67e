#!/usr/bin/env bash
# One-call check on a fresh GPU machine (torch + triton preinstalled, no internet), hard-capped at 9 minutes:
#   pip install --no-deps --no-build-isolation -e .   (never touches the installed torch/triton)
#   then python -m inception_kernels.bench.gpucheck, which runs, in order of value, each step writing its results
#   before the next starts (see inception_kernels/bench/gpucheck.py):
#     setup (versions, GPU smoke test) -> headline (inception_v3) -> networks -> remaining tests -> kernel sections
#   A step that would not fit the deadline is skipped and the skip recorded.
# Output (at most 5 files, the device tool returns 8): ${OUT:-benchmarks/results/gpu-check-<date>}/
#   gpu_check.json, gpu_check.md, gpu_check.log, suite/results.json, suite/report.md
# Environment: OUT (folder), PYTHON (default python3), DEADLINE (s in all, default 540), TEST_WORKERS (pytest-xdist
#   processes, default 8), DRY_RUN=1 (CPU: every step's code path with a fake clock and fake times).
# Exit status: 0 when every step that ran found no problem, 1 otherwise.
set -uo pipefail

T0=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-check-$(date +%Y-%m-%d)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
export OUT PYTHONUNBUFFERED=1

ARGS=(--out "$OUT" --t0 "$T0" --deadline "${DEADLINE:-540}")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
    ARGS=(--out "$OUT" --dry-run)
else
    echo "== pip install --no-deps --no-build-isolation -e ."
    "$PY" -m pip install --no-deps --no-build-isolation -e . >/tmp/gpu_check_pip.log 2>&1
    PIP_RC=$?
    tail -n 3 /tmp/gpu_check_pip.log
    if [[ $PIP_RC -ne 0 ]]; then
        echo "pip install failed (rc=$PIP_RC); using PYTHONPATH=$(pwd)"
    fi
    ARGS+=(--pip-rc "$PIP_RC")
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m inception_kernels.bench.gpucheck "${ARGS[@]}"
