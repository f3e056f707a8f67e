"""The CUDA C++ extension ``inception_kernels._C`` (sources in ``csrc/``), loaded lazily.

Importing the extension registers ``torch.ops.inception_kernels_cuda.<op>`` (CUDA kernels only; see
``csrc/bindings.cpp`` for the schemas and ``csrc/ops.h`` for the contracts). This module also registers their fake
(meta) implementations, so the ops trace under ``torch.compile`` and run on ``meta`` tensors.

    from inception_kernels.ops import _cuda
    if _cuda.available():                      # built, loaded, and a CUDA device present
        ops = _cuda.ops()                      # == torch.ops.inception_kernels_cuda
        mean, var = ops.bn_stats(x)
    else:
        print(_cuda.why_unavailable())

The extension is built by ``setup.py`` when nvcc and a CUDA build of torch are present at install time
(``pip install --no-build-isolation -e .``; ``make csrc``), and by ``CMakeLists.txt`` as a plain shared library
(load it with :func:`load_library`).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess

import torch

from . import _args

NAMESPACE = "inception_kernels_cuda"

#: The ops of the extension and their schemas (kept equal to csrc/bindings.cpp by tests/test_csrc.py).
SCHEMAS = {
    "bn_stats": "bn_stats(Tensor x) -> (Tensor mean, Tensor var)",
    "bn_act_fwd": "bn_act_fwd(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, bool relu, "
    "Tensor(a!) out) -> ()",
    "bn_act_bwd": "bn_act_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
    "bool relu) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    "pool2d_fwd": "pool2d_fwd(Tensor x, int kind, int[2] kernel, int[2] stride, int[2] padding, bool ceil_mode, "
    "bool count_include_pad, Tensor(a!) out) -> Tensor",
    "pool2d_bwd": "pool2d_bwd(Tensor grad_out, Tensor indices, int kind, int[2] kernel, int[2] stride, "
    "int[2] padding, bool ceil_mode, bool count_include_pad, int[] input_size) -> Tensor",
    "scaled_residual_fwd": "scaled_residual_fwd(Tensor x, Tensor y, float scale, bool relu, Tensor(a!) out) -> ()",
    "scaled_residual_bwd": "scaled_residual_bwd(Tensor grad_out, Tensor out, float scale, bool relu) "
    "-> (Tensor grad_x, Tensor grad_y)",
}

POOL_MAX, POOL_AVG = 0, 1

_load_error: str | None = None
_loaded = False


def _load() -> bool:
    global _loaded, _load_error
    if _loaded or _load_error is not None:
        return _loaded
    if os.environ.get("INCEPTION_KERNELS_DISABLE_CUDA_EXT", "").strip() in ("1", "true", "yes"):
        _load_error = "disabled by INCEPTION_KERNELS_DISABLE_CUDA_EXT"
        return False
    try:
        importlib.import_module("inception_kernels._C")
    except ImportError as e:
        _load_error = (
            f"the CUDA C++ extension inception_kernels._C is not built or does not load ({e}); build it with "
            "`pip install --no-build-isolation -e .` (needs nvcc and a CUDA build of torch) or `make csrc`"
        )
        return False
    _register_fakes()
    _loaded = True
    return True


def loaded() -> bool:
    """Whether the extension is built and its ops are registered (a GPU is not needed for this)."""
    return _load()


def available() -> bool:
    """Whether the CUDA C++ ops can run: the extension loads and a CUDA device is present."""
    return _load() and torch.cuda.is_available()


def why_unavailable() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    if not _load():
        return _load_error or "unknown"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return ""


def ops():
    """``torch.ops.inception_kernels_cuda`` (loads the extension; raises RuntimeError if it cannot)."""
    if not _load():
        raise RuntimeError(why_unavailable())
    return getattr(torch.ops, NAMESPACE)


def library_path() -> str | None:
    """Path of the loaded extension's shared library, or None."""
    if not _load():
        return None
    import inception_kernels._C as ext

    return ext.__file__


def load_library(path: str) -> None:
    """Load a standalone build (CMake's ``libinception_kernels_cuda.so``) instead of the Python extension."""
    global _loaded, _load_error
    torch.ops.load_library(path)
    if not _loaded:
        _register_fakes()
    _loaded, _load_error = True, None


# ---------------------------------------------------------------------------------------------------------------
# Shapes (also the fake implementations)
# ---------------------------------------------------------------------------------------------------------------
def _cl(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last)


_fakes_registered = False


def _register_fakes() -> None:
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    lib = NAMESPACE

    @torch.library.register_fake(f"{lib}::bn_stats")
    def _(x):
        c = x.shape[1]
        return x.new_empty((c,), dtype=torch.float32), x.new_empty((c,), dtype=torch.float32)

    @torch.library.register_fake(f"{lib}::bn_act_fwd")
    def _(x, mean, invstd, weight, bias, relu, out):
        return None

    @torch.library.register_fake(f"{lib}::bn_act_bwd")
    def _(grad_out, x, mean, invstd, weight, bias, relu):
        c = x.shape[1]
        return (
            _cl(x.shape, x.dtype, x.device),
            x.new_empty((c,), dtype=torch.float32),
            x.new_empty((c,), dtype=torch.float32),
        )

    @torch.library.register_fake(f"{lib}::pool2d_fwd")
    def _(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out):
        if kind != POOL_MAX:
            return x.new_empty((0,), dtype=torch.int8)
        n, c, h, w = x.shape
        p = _args.window_out_size(h, kernel[0], stride[0], padding[0], ceil_mode)
        q = _args.window_out_size(w, kernel[1], stride[1], padding[1], ceil_mode)
        return _cl((n, c, p, q), torch.int8, x.device)

    @torch.library.register_fake(f"{lib}::pool2d_bwd")
    def _(grad_out, indices, kind, kernel, stride, padding, ceil_mode, count_include_pad, input_size):
        n, c = grad_out.shape[:2]
        h, w = input_size[-2:]
        return _cl((n, c, h, w), grad_out.dtype, grad_out.device)

    @torch.library.register_fake(f"{lib}::scaled_residual_fwd")
    def _(x, y, scale, relu, out):
        return None

    @torch.library.register_fake(f"{lib}::scaled_residual_bwd")
    def _(grad_out, out, scale, relu):
        return _cl(grad_out.shape, grad_out.dtype, grad_out.device), _cl(
            grad_out.shape, grad_out.dtype, grad_out.device
        )


# ---------------------------------------------------------------------------------------------------------------
# What was compiled: SASS archs and per-kernel resources of a built library (cuobjdump)
# ---------------------------------------------------------------------------------------------------------------
def find_cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit (CUDA_HOME, /usr/local/cuda, PATH) or the copy Triton ships."""
    cands = [
        os.path.join(d, "bin", "cuobjdump") for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if d
    ]
    cands.append(shutil.which("cuobjdump"))
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def compiled_archs(path: str) -> dict[str, list[str]]:
    """``{"sass": ["sm_80", ...], "ptx": ["sm_90", ...]}`` of a shared library (cuobjdump --list-elf/--list-ptx)."""
    tool = find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit or triton's copy)")
    res = {}
    for key, flag in (("sass", "--list-elf"), ("ptx", "--list-ptx")):
        out = subprocess.run([tool, flag, path], capture_output=True, text=True).stdout
        res[key] = sorted(set(re.findall(r"\.(sm_\d+[af]?)\.(?:cubin|ptx)", out)))
    return res


def resource_table(path: str) -> list[dict]:
    """One row per (arch, kernel instantiation): registers, stack bytes (spills and call frames), shared memory.

    Parsed from ``cuobjdump -res-usage``; kernel names demangled and shortened, e.g.
    ``bn_act_fwd_kernel<c10::BFloat16, 8>``.
    """
    tool = find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit or triton's copy)")
    out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    rows, arch, fn = [], None, None
    for line in out.splitlines():
        m = re.search(r"arch = (sm_\d+[af]?)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            fn = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and fn is not None:
            rows.append(
                {
                    "arch": arch,
                    "mangled": fn,
                    "regs": int(m.group(1)),
                    "stack": int(m.group(2)),
                    "shared": int(m.group(3)),
                    "local": int(m.group(4)),
                }
            )
            fn = None
    for row, name in zip(rows, _demangle([r["mangled"] for r in rows])):
        name = re.sub(r"^void ", "", name)
        name = re.sub(r"inception_kernels::(\(anonymous namespace\)::)?", "", name)
        name = re.sub(r"\(.*\)$", "", name)
        row["kernel"] = name
    return rows


def format_resource_table(rows: list[dict]) -> str:
    lines = [f"{'arch':6} {'regs':>4} {'stack':>5} {'smem':>5}  kernel"]
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"])):
        lines.append(f"{r['arch']:6} {r['regs']:>4} {r['stack']:>5} {r['shared']:>5}  {r['kernel']}")
    return "\n".join(lines)


@functools.cache
def _main_table() -> str:  # pragma: no cover - convenience for `python -m inception_kernels.ops._cuda`
    path = library_path()
    if path is None:
        return why_unavailable()
    return f"{path}\n{compiled_archs(path)}\n{format_resource_table(resource_table(path))}"


if __name__ == "__main__":  # pragma: no cover
    print(_main_table())
