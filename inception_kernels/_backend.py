"""What this process can run: Triton (compiled or the CPU interpreter), the CUDA C++ extension.

Facts only; the choice of an implementation is made in one place, :mod:`inception_kernels.ops.dispatch`
(``INCEPTION_KERNELS_BACKEND=auto|triton|cudnn|cuda|reference``, scopes, tuning tables, defaults, the rule).
"""

from __future__ import annotations

import os

import torch

# Op families whose CUDA C++ version ``auto`` prefers on CUDA tensors, each with the results file that showed it
# faster. Empty: no GPU benchmark of the csrc/ kernels has been run yet (benchmarks/results/ has none), so every
# memory-bound op stays on Triton under ``auto``.
AUTO_CUDA: dict[str, str] = {}

# Op families that have a CUDA C++ implementation in csrc/ (registered as torch.ops.inception_kernels_cuda.*).
CUDA_OPS = ("bn_stats", "bn_act", "pool2d", "scaled_residual")


_ENV_KEYS: dict[str, object] = {}


def getenv(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)`` at a tenth of its cost: the launch path reads a few switches per kernel
    (the backend, the autotune and interpreter switches), and each ``os.environ.get`` encodes the key and decodes
    the value in Python (about 2 µs on a 2-core VM, 2 ms per training step of Inception-v3). This reads the mapping
    ``os.environ`` keeps up to date itself (``os.environ[k] = v``, ``del``, ``monkeypatch.setenv``,
    ``mock.patch.dict``), so a change takes effect at the next read, as before; an ``os.environ`` replaced by an
    object without that mapping is read through ``get``."""
    env = os.environ
    data = getattr(env, "_data", None)
    if data is None or type(env) is not os._Environ:
        return env.get(name, default)
    key = _ENV_KEYS.get(name)
    if key is None:
        key = _ENV_KEYS[name] = env.encodekey(name)
    raw = data.get(key)
    return default if raw is None else env.decodevalue(raw)


def autotune_enabled() -> bool:
    """``INCEPTION_KERNELS_AUTOTUNE=1``: the dispatch layer times the implementations of a new shape on first sight
    (on a GPU), and the Triton launchers time every surviving tile config per shape (slow first call, best speed);
    otherwise one heuristic config per shape (no timing, one compile)."""
    return getenv("INCEPTION_KERNELS_AUTOTUNE", "0") not in ("", "0")


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return getenv("TRITON_INTERPRET", "0") not in ("", "0")


try:  # once per process: Triton is optional (macOS / Windows CPU users run the reference backend)
    import triton as _triton  # noqa: F401

    TRITON_IMPORT_ERROR: str | None = None
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by tests/test_no_triton.py
    TRITON_IMPORT_ERROR = f"{type(_exc).__name__}: {_exc}"


def triton_available() -> bool:
    return TRITON_IMPORT_ERROR is None


def triton_can_run(t: torch.Tensor) -> bool:
    """Can our Triton kernels run on tensors that live where ``t`` lives?"""
    if not triton_available():
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and interpreter_active()


def check_interpretable(x: torch.Tensor) -> None:
    """Refuse what the Triton interpreter would compute wrongly: it has no bfloat16 arithmetic."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and interpreter_active():
        raise NotImplementedError(
            "the Triton interpreter has no bfloat16 arithmetic (its results would be wrong): run bfloat16 on a "
            "GPU, or use float32/float16, or INCEPTION_KERNELS_BACKEND=reference"
        )


def cuda_extension_ready() -> tuple[bool, str]:
    """(whether ``inception_kernels._C`` is loaded, why not)."""
    try:
        from .ops import _cuda
    except ImportError as e:  # pragma: no cover - the loader module ships with the package
        return False, f"the CUDA C++ loader is missing ({e})"
    if _cuda.available():
        return True, ""
    return False, _cuda.why_unavailable()
