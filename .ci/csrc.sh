#!/usr/bin/env bash
# `make csrc`: build the CUDA C++ extension (csrc/) both ways and test what a machine without a GPU can test.
#   1. setup.py: `pip install --no-build-isolation --no-deps -e .` builds inception_kernels._C (SASS for
#      CSRC_ARCHS, PTX for the newest) -- required to succeed here (INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1);
#   2. CMake: configure + build libinception_kernels_cuda.so and the ctest executable (CMAKE_ARCHS), run ctest
#      (the GPU test reports itself skipped without a GPU);
#   3. pytest tests/test_csrc.py (registration, fakes, SASS per arch + resource table; GPU tests where there is one).
# Without nvcc it prints why and exits 0 (the package is pure Python there).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BIN=$PWD/$VENV/bin
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CSRC_ARCHS=${CSRC_ARCHS:-80;90}
CMAKE_ARCHS=${CMAKE_ARCHS:-8.0;9.0+PTX}
CSRC_BUILD=${CSRC_BUILD:-build/cmake}

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "make csrc: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME): CUDA C++ build SKIPPED"
  exit 0
fi
export PATH="$BIN:$PATH" CUDA_HOME MAX_JOBS=${MAX_JOBS:-1}
export INCEPTION_KERNELS_CUDA_ARCHS="$CSRC_ARCHS" INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1

# CUDA C++20 (torch's headers) needs CMake >= 3.27; ninja makes torch's extension build incremental and parallel.
"$BIN/pip" install -q "cmake>=3.27" ninja

t0=$(date +%s)
"$BIN/pip" install -q --no-build-isolation --no-deps -e .
t1=$(date +%s)
echo "make csrc: setup.py build of inception_kernels._C for sm {$CSRC_ARCHS}: $((t1 - t0)) s (MAX_JOBS=$MAX_JOBS)"

mkdir -p "$(dirname "$CSRC_BUILD")"  # the configure log lives next to the build folder (fresh clones have no build/)
cmake -S . -B "$CSRC_BUILD" -G Ninja -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DPython3_EXECUTABLE="$BIN/python" -DTORCH_CUDA_ARCH_LIST="$CMAKE_ARCHS" \
  -DIK_RESOURCE_USAGE=ON >"$CSRC_BUILD.configure.log" 2>&1 || { cat "$CSRC_BUILD.configure.log"; exit 1; }
t2=$(date +%s)
cmake --build "$CSRC_BUILD" -j "$MAX_JOBS" >"$CSRC_BUILD.build.log" 2>&1 || { cat "$CSRC_BUILD.build.log"; exit 1; }
t3=$(date +%s)
echo "make csrc: CMake configure $((t2 - t1)) s, build ($CMAKE_ARCHS, -j $MAX_JOBS) $((t3 - t2)) s"
echo "make csrc: ptxas spills (from $CSRC_BUILD.build.log):"
grep -E "spill" "$CSRC_BUILD.build.log" | sort | uniq -c | sort -rn | head -5 || true
ctest --test-dir "$CSRC_BUILD" --output-on-failure

"$BIN/python" -m pytest -q -ra tests/test_csrc.py
