# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PKGS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo check test test-slow lint aot bench bench-static gpu-check csrc wheel-smoke

$(VENV)/.installed: setup.py pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PKGS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Main job on its built-in default: trains a narrow Inception-v3 on scikit-learn's digits (CPU: ~4 min, >= 95 %).
demo: $(VENV)/.installed
	$(BIN)/inception-kernels train

# Kernel self-check: conv cases through our kernels vs fp64 (interpreter without a GPU) + AOT compile table.
check: $(VENV)/.installed
	$(BIN)/inception-kernels check

# CPU test suite (Triton interpreter, reference oracle, AOT compiles for sm_80/sm_90), plus lint; the tests marked
# `slow` (a minute or more each in the interpreter: whole-network training steps, torch.compile of whole models,
# the AOT compile of every package kernel) run in `make test-slow`. CI (.ci/run) runs both. PYTEST_WORKERS: xdist.
PYTEST_WORKERS ?= auto
test: $(VENV)/.installed
	$(BIN)/ruff check inception_kernels tests benchmarks
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) -m "not slow"

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) -m slow

aot: $(VENV)/.installed
	$(BIN)/python -m inception_kernels.aot --arch 80 90

# Benchmark suite on a CUDA GPU (results + report + plots under benchmarks/results/<gpu>-<date>/).
bench: $(VENV)/.installed
	$(BIN)/inception-kernels bench

# CPU-only static report (multiply-adds, floors, launches, saved activations, AOT table): benchmarks/results/static/.
bench-static: $(VENV)/.installed
	$(BIN)/inception-kernels bench --static

# CUDA C++ extension (csrc/): setup.py build of inception_kernels._C (SASS for CSRC_ARCHS + PTX for the newest),
# standalone CMake build + ctest, then tests/test_csrc.py. Prints why and does nothing where there is no nvcc.
# Knobs: CUDA_HOME, CSRC_ARCHS="80;90", CMAKE_ARCHS="8.0;9.0+PTX", MAX_JOBS (default 1). See .ci/csrc.sh.
csrc: $(VENV)/.installed
	VENV=$(VENV) bash .ci/csrc.sh

# `python -m build` (sdist, then the wheel from it) and the wheel installed in a fresh venv outside the repo (torch
# from the same place as above): without extras `inception-kernels train` names the extra; with [train] it runs.
wheel-smoke: $(VENV)/.installed
	VENV=$(VENV) TORCH_PKGS="$(TORCH_PKGS)" bash .ci/wheel_smoke.sh

# On a GPU machine (torch/triton preinstalled, no internet): install without touching torch, GPU tests, quick bench.
gpu-check:
	bash benchmarks/gpu_check.sh
