#!/usr/bin/env bash
# Wheel smoke test (`make wheel-smoke`, run by .ci/run): `python -m build` makes the sdist, then the wheel from the
# sdist (so a file missing from the sdist fails here); the wheel goes into a fresh venv outside the repository
# (no source tree on the path), first without extras -- `inception-kernels train` must name the extra to install
# -- then with [train]: the package data is found and `inception-kernels train` runs a shortened built-in default.
# Knobs: VENV (the dev venv holding `build`; default .venv), TORCH_PKGS (torch pins, as the Makefile installs them).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
TORCH_PKGS="${TORCH_PKGS:-torch==2.14.1 torchvision==0.29.1}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ik-wheel-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
say() { echo "wheel-smoke: $*"; }

"$VENV/bin/python" -m build --outdir "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
shopt -s nullglob
sdists=("$WORK"/dist/*.tar.gz) wheels=("$WORK"/dist/*.whl)
[ ${#sdists[@]} = 1 ] && [ ${#wheels[@]} = 1 ] || { say "expected one sdist and one wheel, got: $(ls "$WORK/dist")"; exit 1; }
SDIST="${sdists[0]}" WHEEL="${wheels[0]}"
say "built $(basename "$SDIST") and $(basename "$WHEEL") in $(( $(date +%s) - t0 )) s"
tar -tzf "$SDIST" > "$WORK/sdist.txt"
for f in setup.py pyproject.toml README.md CMakeLists.txt csrc/bindings.cpp csrc/batchnorm.cu csrc/pool.cu \
         csrc/residual.cu csrc/common.cuh csrc/ops.h inception_kernels/ops/shipped_defaults.json; do
    grep -qx "[^/]*/$f" "$WORK/sdist.txt" || { say "sdist lacks $f"; exit 1; }
done
"$VENV/bin/python" - "$WHEEL" "$REPO" <<'PY'
import pathlib, sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
repo = pathlib.Path(sys.argv[2])
# every file of the package in the repository (tracked sources and data) is in the wheel
want = {str(p.relative_to(repo)) for p in (repo / "inception_kernels").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")}
missing = sorted(want - names)
assert not missing, f"wheel lacks {missing}"
print(f"wheel-smoke: the wheel holds all {len(want)} package files")
PY

cd "$WORK"  # outside the repository: nothing of the source tree is importable from here
"$VENV/bin/python" -c 'import sys; print(sys._base_executable)' > base_python
"$(cat base_python)" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
"$PIP" install -q --upgrade pip
# shellcheck disable=SC2086
"$PIP" install -q $TORCH_PKGS
"$PIP" install -q "$WHEEL"
TRAIN=("$WORK/venv/bin/inception-kernels" train --width-mult 0.125 --limit-train 64 --limit-val 32 --epochs 1
       --batch-size 16 --threads 1 -q --no-plots -o "$WORK/run")
set +e
"${TRAIN[@]}" > no_extra.log 2>&1
rc=$?
set -e
if [ "$rc" != 1 ] || ! grep -q 'pip install "inception-kernels\[train\]"' no_extra.log; then
    say "without the [train] extra, inception-kernels train should exit 1 naming the extra; got rc=$rc:"
    cat no_extra.log
    exit 1
fi
say "without extras: $(grep -m1 'inception-kernels\[train\]' no_extra.log)"
"$PIP" install -q "$WHEEL[train]"
"$WORK/venv/bin/python" - "$REPO" <<'PY'
import json, pathlib, sys
import inception_kernels
from inception_kernels.ops import dispatch
where = pathlib.Path(inception_kernels.__file__).resolve()
assert pathlib.Path(sys.argv[1]) not in where.parents, f"imported from the source tree: {where}"
assert "site-packages" in where.parts, where
assert dispatch._SHIPPED_FILE.is_file(), dispatch._SHIPPED_FILE
json.loads(dispatch._SHIPPED_FILE.read_text())
print(f"wheel-smoke: import inception_kernels from {where.parent}; {dispatch._SHIPPED_FILE.name} found")
PY
"${TRAIN[@]}"
for f in last.pt best.pt steps.csv epochs.csv config.yaml; do
    [ -f "$WORK/run/$f" ] || { say "the run wrote no $f"; exit 1; }
done
say "ok in $(( $(date +%s) - t0 )) s"
