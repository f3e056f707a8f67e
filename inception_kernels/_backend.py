"""Which implementation runs an op: ``INCEPTION_KERNELS_BACKEND=auto|triton|cuda|reference``.

* ``reference`` -- plain PyTorch (the oracle; autograd by PyTorch itself), any device.
* ``triton``    -- our Triton kernels. On CUDA tensors they run on the GPU; on CPU tensors only when
  ``TRITON_INTERPRET=1`` was set before :mod:`inception_kernels` was imported (the interpreter).
* ``cuda``      -- the CUDA C++ kernels of ``csrc/`` (``inception_kernels._C``) for the ops that have one
  (batch norm, pooling, residual add); ops without a CUDA C++ version (the convolution) use Triton. Raises a
  clear error when the extension is not built or the tensor is not on a CUDA device.
* ``auto``      -- the fastest available for the tensor's device: reference on CPU; on CUDA, Triton, except the
  ops listed in :data:`AUTO_CUDA` (where a committed GPU benchmark showed the CUDA C++ version faster).

The variable is read at every call, so tests and users may switch it at run time.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "cuda", "reference")

# Ops whose CUDA C++ version ``auto`` prefers on CUDA tensors, each with the results file that showed it faster.
# Empty: no GPU benchmark of the csrc/ kernels has been run yet (benchmarks/results/ has none), so every op
# stays on Triton under ``auto``.
AUTO_CUDA: dict[str, str] = {}

# Ops that have a CUDA C++ implementation in csrc/ (registered as torch.ops.inception_kernels_cuda.*).
CUDA_OPS = ("bn_stats", "bn_act", "pool2d", "scaled_residual")


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a Linux dependency
        return False
    return True


def requested_backend() -> str:
    name = os.environ.get("INCEPTION_KERNELS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"INCEPTION_KERNELS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def triton_can_run(t: torch.Tensor) -> bool:
    """Can our Triton kernels run on tensors that live where ``t`` lives?"""
    if not triton_available():
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and interpreter_active()


def _cuda_extension_ready() -> tuple[bool, str]:
    try:
        from .ops import _cuda
    except ImportError as e:  # pragma: no cover - the loader module ships with the package
        return False, f"the CUDA C++ loader is missing ({e})"
    if _cuda.available():
        return True, ""
    return False, _cuda.why_unavailable()


def resolve(t: torch.Tensor, op: str | None = None) -> str:
    """The backend that serves ``op`` on tensors like ``t``: ``"triton"``, ``"cuda"`` or ``"reference"``.

    ``op`` names an op family of :data:`CUDA_OPS`; ops without a CUDA C++ version pass None.
    """
    name = requested_backend()
    if name == "reference":
        return "reference"
    if name == "cuda" and op in CUDA_OPS:
        if t.device.type != "cuda":
            raise RuntimeError(f"INCEPTION_KERNELS_BACKEND=cuda needs CUDA tensors; {op} got a {t.device.type} one")
        ok, why = _cuda_extension_ready()
        if not ok:
            raise RuntimeError(f"INCEPTION_KERNELS_BACKEND=cuda but the CUDA C++ extension is unavailable: {why}")
        return "cuda"
    if name in ("triton", "cuda"):
        if not triton_can_run(t):
            raise RuntimeError(
                f"INCEPTION_KERNELS_BACKEND={name} but Triton cannot run on "
                f"{t.device.type} tensors here (CPU needs TRITON_INTERPRET=1 set before import)"
            )
        return "triton"
    # auto
    if t.device.type == "cuda" and triton_available():
        if op in AUTO_CUDA and _cuda_extension_ready()[0]:
            return "cuda"
        return "triton"
    return "reference"
