"""Which implementation runs an op: ``INCEPTION_KERNELS_BACKEND=auto|triton|cuda|reference``.

* ``reference`` -- plain PyTorch (the oracle; autograd by PyTorch itself), any device.
* ``triton``    -- our Triton kernels. On CUDA tensors they run on the GPU; on CPU tensors only when
  ``TRITON_INTERPRET=1`` was set before :mod:`inception_kernels` was imported (the interpreter).
* ``cuda``      -- CUDA C++ kernels (arrive with the ``csrc/`` extension); today this raises.
* ``auto``      -- the fastest available for the tensor's device: Triton on CUDA, reference on CPU.

The variable is read at every call, so tests and users may switch it at run time.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "cuda", "reference")


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


def resolve(t: torch.Tensor) -> str:
    """The backend that serves an op whose main input is ``t``: ``"triton"`` or ``"reference"``."""
    name = requested_backend()
    if name == "reference":
        return "reference"
    if name == "cuda":
        raise NotImplementedError(
            "INCEPTION_KERNELS_BACKEND=cuda: the CUDA C++ extension is not built in this version; "
            "use auto, triton or reference"
        )
    if name == "triton":
        if not triton_can_run(t):
            raise RuntimeError(
                "INCEPTION_KERNELS_BACKEND=triton but Triton cannot run on "
                f"{t.device.type} tensors here (CPU needs TRITON_INTERPRET=1 set before import)"
            )
        return "triton"
    # auto
    if t.device.type == "cuda" and triton_available():
        return "triton"
    return "reference"
