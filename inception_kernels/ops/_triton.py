"""``triton`` and ``triton.language`` for the kernel modules, or, where Triton is not installed (macOS / Windows CPU
users), stand-ins that let those modules import while every launch says why it cannot run.

Without Triton the package, its models and the ``reference`` backend work as usual; the dispatch layer never picks
a Triton route (its reasons say "triton is not installed"), and forcing one raises that reason. The stand-ins
cover what the kernel modules evaluate at import time: ``triton.jit`` / ``triton.autotune`` (decorators whose
kernels raise on launch), ``triton.Config`` (a record of its arguments), ``triton.cdiv`` and names of
``triton.language`` used as annotations or constants (inert markers).
"""

from __future__ import annotations

import math

from .. import _backend

AVAILABLE = _backend.triton_available()
IMPORT_ERROR = _backend.TRITON_IMPORT_ERROR

if AVAILABLE:
    import triton
    import triton.language as tl
else:  # pragma: no cover - exercised in a subprocess by tests/test_no_triton.py

    def _missing_message() -> str:
        return (
            "Triton is not installed, so our Triton kernels cannot run "
            f"({IMPORT_ERROR}); install it (`pip install triton`, Linux with a CUDA GPU) or use "
            "INCEPTION_KERNELS_BACKEND=reference"
        )

    class _MissingKernel:
        """What ``@triton.jit`` gives without Triton: holds the Python source function; launching it raises."""

        def __init__(self, fn):
            self.fn = fn
            self.__name__ = getattr(fn, "__name__", "kernel")
            self.__doc__ = getattr(fn, "__doc__", None)

        def __getitem__(self, grid):
            raise RuntimeError(_missing_message())

        def __call__(self, *args, **kwargs):
            raise RuntimeError(_missing_message())

    class _Config:
        """``triton.Config``'s fields, so tile tables and their pruning rules still import."""

        def __init__(self, kwargs, num_warps=4, num_stages=3, **extra):
            self.kwargs = dict(kwargs)
            self.num_warps = num_warps
            self.num_stages = num_stages
            self.extra = extra

        def __repr__(self) -> str:
            return f"Config({self.kwargs}, num_warps={self.num_warps}, num_stages={self.num_stages})"

    def _as_missing(kernel):
        """What a kernel decorator gives without Triton (decorators stack: jit, then autotune / heuristics)."""
        return kernel if isinstance(kernel, _MissingKernel) else _MissingKernel(kernel)

    class _Marker:
        """An inert ``triton.language`` name (``tl.constexpr``, ``tl.int32``, ...)."""

        def __init__(self, name: str):
            self._name = name

        def __repr__(self) -> str:
            return f"tl.{self._name}"

        def __getattr__(self, name: str):
            return _Marker(f"{self._name}.{name}")

        def __call__(self, *args, **kwargs):
            raise RuntimeError(_missing_message())

    class _Language:
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Marker(name)

    class _Triton:
        Config = _Config
        language = _Language()

        @staticmethod
        def jit(fn=None, **kwargs):
            return _as_missing if fn is None else _as_missing(fn)

        @staticmethod
        def autotune(*args, **kwargs):
            return _as_missing

        heuristics = autotune

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 if n <= 1 else 2 ** math.ceil(math.log2(n))

        def __getattr__(self, name: str):
            raise RuntimeError(f"triton.{name}: " + _missing_message())

    triton = _Triton()
    tl = triton.language

__all__ = ["AVAILABLE", "IMPORT_ERROR", "tl", "triton"]
