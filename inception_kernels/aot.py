"""Ahead-of-time compile check of every registered Triton kernel, without a GPU.

Every :class:`~inception_kernels.ops._registry.KernelSpec` is compiled for every autotune config, dtype and
target architecture (default sm_80 and sm_90a) with ``triton.compile`` on an ``ASTSource``, the way
``triton.tools.compile`` does it. Each compile gives one row::

    kernel, config, arch, dtype, registers, spill_bytes, shared_bytes, mma_instructions, ok, error

``registers`` and ``spill_bytes`` come from ``cuobjdump --dump-resource-usage`` on the cubin (``REG`` and
``STACK``: the per-thread stack frame, which is where ptxas puts spilled registers, and what the driver later
reports to Triton as ``n_spills``); ``shared_bytes`` is the compiled kernel's ``shared`` metadata (the
dynamic shared memory it must be launched with); ``mma_instructions`` counts the ``HMMA`` (sm_80) and
``HGMMA`` (sm_90a wgmma) lines of the SASS. A row fails (``ok=False``) when the compile raises, or when the
kernel needs more shared memory than the architecture has, since it could then never launch there.

Usage::

    python -m inception_kernels.aot [--arch 80 90] [--dtype fp32 bf16 fp16] [--kernel SUBSTRING] [--json PATH]

The exit status is non-zero when any row failed (2 when no kernel matched).

Each compile builds a fresh ``JITFunction`` from the undecorated kernel function, so the module-level kernels
may be interpreter objects. ``TRITON_INTERPRET=1`` is fine too: once ``triton.language`` has been imported
under it, Triton's own ``@jit`` helpers (``tl.cdiv``, ``tl.sum``, ...) are interpreter objects as well and this
process cannot compile, so :func:`compile_all` then runs the compiles in fresh Python processes without it.
Results land in Triton's cache (``~/.triton/cache``): a rerun costs mainly the ``cuobjdump`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

FIELDS = (
    "kernel",
    "config",
    "arch",
    "dtype",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "mma_instructions",
    "ok",
    "error",
)

DEFAULT_ARCHES = (80, 90)
DEFAULT_DTYPES = ("fp32", "bf16", "fp16")

# Largest dynamic shared memory one block may opt into, per compute capability (CUDA programming guide,
# "Technical Specifications per Compute Capability").
MAX_SHARED_BYTES = {
    70: 98304,
    75: 65536,
    80: 166912,
    86: 101376,
    87: 166912,
    89: 101376,
    90: 232448,
    100: 232448,
    120: 101376,
}

_SCALAR_TYPES = {
    "i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64",
    "fp8e4nv", "fp8e5", "fp8e4b15", "fp16", "bf16", "fp32", "fp64",
}  # fmt: skip

_MMA_RE = re.compile(r"\bH(?:G)?MMA\b")
_REG_RE = re.compile(r"\bREG:(\d+)")
_STACK_RE = re.compile(r"\bSTACK:(\d+)")


# ----------------------------------------------------------------------------------------------------------
# Building the compile inputs
# ----------------------------------------------------------------------------------------------------------
def config_name(config) -> str:
    """A short name for a ``triton.Config``: ``BLOCK_M=128, BLOCK_N=64, BLOCK_C=32`` -> ``BM128_BN64_BC32_w4_s3``.

    Each meta-parameter is abbreviated to the initials of its ``_``-separated words (``GROUP_M`` -> ``GM``);
    when two of a config's names would abbreviate alike, the full names are used.
    """
    kwargs = dict(config.kwargs)
    abbrev = {k: "".join(part[:1] for part in k.split("_") if part) or k for k in kwargs}
    if len(set(abbrev.values())) != len(abbrev):
        abbrev = {k: k for k in kwargs}
    parts = [f"{abbrev[k]}{_value_str(v)}" for k, v in kwargs.items()]
    parts.append(f"w{config.num_warps}")
    parts.append(f"s{config.num_stages}")
    if getattr(config, "num_ctas", 1) not in (None, 1):
        parts.append(f"c{config.num_ctas}")
    if getattr(config, "maxnreg", None) is not None:
        parts.append(f"r{config.maxnreg}")
    return "_".join(parts)


def _value_str(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


def _is_type_string(v) -> bool:
    """A Triton type such as ``"*bf16"`` or ``"i32"``; ``"i32:16"`` is an integer known to be a multiple of 16
    (what the JIT infers at run time for, e.g., channels_last strides when the channel count is)."""
    if isinstance(v, str) and v.endswith(":16"):
        v = v[:-3]
    if isinstance(v, str) and v.startswith(
        "tensordesc<"
    ):  # host TMA descriptor, e.g. "tensordesc<bf16[64, 64]>"
        return True
    return isinstance(v, str) and (v.startswith("*") or v in _SCALAR_TYPES)


def _kernel_fn(fn):
    """The plain Python function of ``fn``, unwrapping a ``JITFunction`` / ``InterpretedFunction`` / autotuner."""
    seen = 0
    while not isinstance(fn, types.FunctionType) and hasattr(fn, "fn") and seen < 8:
        fn = fn.fn
        seen += 1
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"not a Python kernel function: {fn!r}")
    return fn


def _referenced_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _referenced_names(const)
    return names


def fresh_jit(fn, _memo: dict | None = None, _jit_kwargs: dict | None = None):
    """A new ``triton.runtime.jit.JITFunction`` for the plain function ``fn``.

    Under ``TRITON_INTERPRET=1`` the ``@triton.jit`` helpers a kernel calls are ``InterpretedFunction`` objects
    in its module globals, which the compiler cannot call; the new ``JITFunction`` gets a copy of the globals
    in which each such helper is replaced by a fresh ``JITFunction`` of its own (recursively). Helpers reached
    through a module attribute (``helpers.fn``) or a closure are not rewritten.
    """
    from triton.runtime.jit import JITFunction

    memo = {} if _memo is None else _memo
    fn = _kernel_fn(fn)
    if fn in memo:
        return memo[fn]
    accepted = inspect.signature(JITFunction.__init__).parameters
    kwargs = {k: v for k, v in (_jit_kwargs or {}).items() if k in accepted and k != "fn"}
    jit_fn = JITFunction(fn, **kwargs)
    memo[fn] = jit_fn
    replaced = {}
    for name in _referenced_names(fn.__code__):
        val = fn.__globals__.get(name)
        if val is None or isinstance(val, JITFunction):
            continue
        if type(val).__name__ == "InterpretedFunction" and isinstance(
            getattr(val, "fn", None), types.FunctionType
        ):
            replaced[name] = fresh_jit(val.fn, memo, getattr(val, "kwargs", None))
    if replaced:
        jit_fn.__globals__ = {**fn.__globals__, **replaced}
    return jit_fn


def build_signature(jit_fn, config, arg_values: dict) -> tuple[dict, dict, dict]:
    """The ``(signature, constexprs, pointer_params)`` of one compile, in the ``ASTSource`` format of Triton >= 3.3.

    ``signature`` maps every parameter name to its Triton type, or ``"constexpr"``; ``constexprs`` maps every
    constexpr parameter to its value. A parameter annotated ``tl.constexpr`` takes its value from the config
    kwargs or ``arg_values``; any other parameter takes a type string from ``arg_values`` (a non-type value,
    e.g. ``None``, makes it a specialised constant, as the JIT does).
    """
    params = list(jit_fn.params)
    names = [p.name for p in params]
    meta = dict(config.kwargs)
    unknown = sorted((set(meta) | set(arg_values)) - set(names))
    if unknown:
        raise ValueError(f"arg_types/config name parameters the kernel does not have: {', '.join(unknown)}")
    both = sorted(set(meta) & set(arg_values))
    if both:
        raise ValueError(f"parameters given by both the config and arg_types: {', '.join(both)}")
    sig_params = inspect.signature(jit_fn.fn).parameters
    signature, constexprs, pointers = {}, {}, []
    for i, p in enumerate(params):
        name = p.name
        if name in meta:
            val = meta[name]
        elif name in arg_values:
            val = arg_values[name]
        elif sig_params[name].default is not inspect.Parameter.empty:
            val = sig_params[name].default
        else:
            raise ValueError(f"no type or value for parameter {name!r}")
        if not p.is_constexpr and _is_type_string(val):
            divisible = val.startswith("*") or val.endswith(":16")
            val = val.removesuffix(":16")
            signature[name] = val
            if divisible:
                pointers.append(i)  # 16-divisibility attribute, as the JIT gives aligned pointers
        else:
            signature[name] = "constexpr"
            constexprs[name] = val
    return signature, constexprs, pointers


def _make_source(jit_fn, signature: dict, constexprs: dict, pointers: list[int], backend):
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:
        # Triton >= 3.3: constexprs in the signature as "constexpr", attrs {(index,): [[name, value]]}.
        parse_attr = getattr(backend, "parse_attr", None)
        align = parse_attr("D") if parse_attr is not None else [["tt.divisibility", 16]]
        attrs = {(i,): align for i in pointers} if align else {}
        return ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)
    # Triton <= 3.2: the signature lists the runtime parameters only; constants are keyed by name.
    runtime_sig = {k: v for k, v in signature.items() if v != "constexpr"}
    return ASTSource(fn=jit_fn, signature=runtime_sig, constants=constexprs)


@contextlib.contextmanager
def interpreter_off():
    """Temporarily switch off ``TRITON_INTERPRET`` (the environment variable and the ``triton.knobs`` override)."""
    saved_env = os.environ.pop("TRITON_INTERPRET", None)
    runtime = None
    saved_knob = None
    try:
        from triton import knobs

        runtime = knobs.runtime
        saved_knob = runtime.__dict__.pop("interpret", None)
    except (ImportError, AttributeError):
        runtime = None
    try:
        yield
    finally:
        if saved_env is not None:
            os.environ["TRITON_INTERPRET"] = saved_env
        if runtime is not None and saved_knob is not None:
            runtime.__dict__["interpret"] = saved_knob


# ----------------------------------------------------------------------------------------------------------
# Inspecting the cubin
# ----------------------------------------------------------------------------------------------------------
def _nvidia_tool(name: str) -> str:
    try:
        from triton import knobs

        tool = getattr(knobs.nvidia, name)
        if tool is not None:
            return tool.path
    except (ImportError, AttributeError):
        pass
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if os.path.exists(path):
        return path
    raise RuntimeError(f"cannot find {name} (Triton's bundled CUDA tools)")


def disassemble(cubin: bytes) -> str:
    """``cuobjdump --dump-resource-usage --dump-sass`` of a cubin (Triton's bundled ``cuobjdump``)."""
    with tempfile.TemporaryDirectory(prefix="ik_aot_") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        proc = subprocess.run(
            [_nvidia_tool("cuobjdump"), "--dump-resource-usage", "--dump-sass", path],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"cuobjdump failed: {lines[0] if lines else proc.returncode}")
    return proc.stdout


def _stats_of(out: str) -> tuple[int, int, int]:
    regs = _REG_RE.search(out)
    stack = _STACK_RE.search(out)
    if regs is None or stack is None:
        raise RuntimeError("cuobjdump printed no resource usage")
    mma = sum(1 for line in out.splitlines() if _MMA_RE.search(line))
    return int(regs.group(1)), int(stack.group(1)), mma


# ----------------------------------------------------------------------------------------------------------
# Static speed proxy (DESIGN.md section 4, item 4): the instruction mix of the SASS
# ----------------------------------------------------------------------------------------------------------
_SASS_LINE_RE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);"
)
_BRA_TARGET_RE = re.compile(r"0x([0-9a-f]+)")
_MMA_SHAPE_RE = re.compile(r"\.(\d+)x(\d+)x(\d+)")
# Integer / address arithmetic of the vector datapath (what address generation and masks cost per warp).
INT_OPS = frozenset(
    "IMAD IADD3 IADD IADD32I LEA ISETP SHF LOP3 LOP SEL IABS IMNMX VIADD VIMNMX PRMT SGXT BMSK IMUL ISCADD "
    "FLO POPC BREV I2F F2I".split()
)
# The same on the uniform (scalar, one per warp) datapath: cheap, counted apart.
UNIFORM_INT_OPS = frozenset("UIMAD UIADD3 ULEA UISETP USHF ULOP3 USEL UPRMT UIABS UIMNMX USGXT UBMSK".split())
TC_OPS = ("HGMMA", "HMMA")
COPY_OPS = ("UTMALDG", "LDGSTS", "LDG", "LDSM", "STG")
PROXY_FIELDS = ("tc", "utmaldg", "ldgsts", "ldg", "int", "loop_instr", "loop_tc", "tc_op", "loop_int", "loop_uint",
                "loop_copies", "int_per_tc", "macs_per_tc")  # fmt: skip


def parse_sass(sass: str) -> list[tuple[int, str, str, str]]:
    """``(address, opcode, modifiers, operands)`` of every instruction of a ``cuobjdump --dump-sass`` listing."""
    out = []
    for line in sass.splitlines():
        m = _SASS_LINE_RE.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2), m.group(3), m.group(4)))
    return out


def _macs_per_warp(op: str, mods: str) -> int:
    """Multiply-accumulates one warp issues with one tensor-core instruction: HMMA m16n8k16 (``.16816``) or
    ``.1688`` per warp; HGMMA m64nNk16 per warpgroup of 4 warps."""
    if op == "HGMMA":
        m = _MMA_SHAPE_RE.search(mods)
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) // 4 if m else 0
    digits = mods.split(".")[1] if mods.count(".") else ""
    shapes = {"16816": 16 * 8 * 16, "1688": 16 * 8 * 8, "884": 8 * 8 * 4}
    return shapes.get(digits, 0)


def sass_proxy(sass: str) -> dict:
    """Instruction mix of a kernel's SASS, whole and in its mainloop.

    Whole kernel: tensor-core instructions (``tc``: HGMMA + HMMA), bulk tensor copies (UTMALDG), async copies
    (LDGSTS), plain global loads (LDG) and vector-datapath integer instructions (``int``: IMAD, IADD3, LEA, ISETP,
    SHF, LOP3, SEL, ...). Mainloop: the innermost backward-branch loop holding the most tensor-core instructions
    (its body runs once per reduction step); ``loop_int`` / ``loop_tc`` = ``int_per_tc`` is the proxy, together
    with ``macs_per_tc`` (multiply-accumulates per warp per tensor-core instruction, to compare tile shapes: one
    HGMMA.64x256x16 does 8x the work of an HMMA.16816). Static counts, not a timing.
    """
    ins = parse_sass(sass)
    counts: dict[str, int] = {}
    for _, op, _, _ in ins:
        counts[op] = counts.get(op, 0) + 1
    loops = []
    for addr, op, _, operands in ins:
        if op == "BRA":
            m = _BRA_TARGET_RE.search(operands)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))

    def body(lo, hi):
        return [i for i in ins if lo <= i[0] <= hi]

    best = None
    for lo, hi in loops:
        tc = sum(1 for i in body(lo, hi) if i[1] in TC_OPS)
        if tc == 0:
            continue
        inner = not any(lo <= a < b <= hi and (a, b) != (lo, hi) and any(
            i[1] in TC_OPS for i in body(a, b)) for a, b in loops)  # fmt: skip
        key = (inner, tc, -(hi - lo))
        if best is None or key > best[0]:
            best = (key, lo, hi)
    loop = body(best[1], best[2]) if best else ins
    loop_tc = [i for i in loop if i[1] in TC_OPS]
    loop_int = sum(1 for i in loop if i[1] in INT_OPS)
    macs = [_macs_per_warp(i[1], i[2]) for i in loop_tc]
    return {
        "tc": sum(counts.get(op, 0) for op in TC_OPS),
        "utmaldg": counts.get("UTMALDG", 0),
        "ldgsts": counts.get("LDGSTS", 0),
        "ldg": counts.get("LDG", 0),
        "int": sum(v for k, v in counts.items() if k in INT_OPS),
        "loop_instr": len(loop),
        "loop_tc": len(loop_tc),
        "tc_op": "HGMMA" if any(i[1] == "HGMMA" for i in loop_tc) else ("HMMA" if loop_tc else "-"),
        "loop_int": loop_int,
        "loop_uint": sum(1 for i in loop if i[1] in UNIFORM_INT_OPS),
        "loop_copies": sum(1 for i in loop if i[1] in COPY_OPS),
        "int_per_tc": round(loop_int / len(loop_tc), 2) if loop_tc else None,
        "macs_per_tc": round(sum(macs) / len(macs)) if macs else None,
    }


# ----------------------------------------------------------------------------------------------------------
# One compile
# ----------------------------------------------------------------------------------------------------------
def _error_line(e: BaseException, fn=None) -> str:
    """One line: the exception type and the first line of its message (for a Triton ``CompilationError``, the
    kernel source location and the underlying error instead of the source excerpt)."""
    name = type(e).__name__
    node = getattr(e, "node", None)
    if hasattr(e, "error_message") and node is not None:  # triton CompilationError
        msg = e.error_message or (repr(e.__cause__) if e.__cause__ is not None else "")
        where = ""
        if hasattr(node, "lineno"):
            where = f" at {node.lineno}:{node.col_offset}"
            with contextlib.suppress(Exception):  # line numbers count from the kernel's ``def``
                fn = _kernel_fn(fn)
                first = inspect.getsourcelines(fn)[1]
                where = f" at {os.path.basename(inspect.getsourcefile(fn))}:{first + node.lineno - 1}:{node.col_offset}"
        lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
        return f"{name}{where}: {lines[0] if lines else ''}".rstrip(": ")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{name}: {lines[0]}" if lines else name


def arg_values(spec, config, dtype: str) -> dict:
    """``spec.arg_types(dtype)``, or ``spec.arg_types(dtype, config)`` when it takes a second positional parameter
    (types that depend on the config, such as a tensor descriptor's block shape)."""
    params = [
        p
        for p in inspect.signature(spec.arg_types).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return dict(spec.arg_types(dtype, config) if len(params) >= 2 else spec.arg_types(dtype))


def applies(spec, config, dtype: str, arch: int) -> bool:
    """Whether the launcher can run ``config`` of ``spec`` for ``dtype`` on ``arch`` (``KernelSpec.applies``)."""
    fn = getattr(spec, "applies", None)
    return True if fn is None else bool(fn(config, dtype, int(arch)))


def compile_kernel(spec, config, dtype: str, arch: int):
    """``triton.compile`` one (kernel, config, dtype, arch) for ``GPUTarget("cuda", arch, 32)``; raises on failure.

    Returns Triton's ``CompiledKernel`` (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``, ...). The
    process must not have imported ``triton.language`` under ``TRITON_INTERPRET=1``.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    if _language_interpreted():
        raise RuntimeError(
            "triton.language was imported with TRITON_INTERPRET=1, so this process cannot compile; "
            "compile_all() compiles in fresh processes then"
        )
    target = GPUTarget("cuda", int(arch), 32)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if getattr(config, "num_ctas", 1) not in (None, 1):
        options["num_ctas"] = config.num_ctas
    if getattr(config, "maxnreg", None) is not None:
        options["maxnreg"] = config.maxnreg
    with interpreter_off():
        jit_fn = fresh_jit(spec.fn)
        signature, constexprs, pointers = build_signature(jit_fn, config, arg_values(spec, config, dtype))
        src = _make_source(jit_fn, signature, constexprs, pointers, make_backend(target))
        return triton.compile(src, target=target, options=options)


def compile_one(spec, config, dtype: str, arch: int) -> dict:
    """Compile one (kernel, config, dtype, arch) and return its row (never raises)."""
    row = dict.fromkeys(FIELDS)
    row.update(kernel=spec.name, config="?", arch=int(arch), dtype=dtype, ok=False)
    try:
        row["config"] = config_name(config)
        # ptxas failures print the whole PTX to stdout: keep it out of the table.
        with contextlib.redirect_stdout(io.StringIO()):
            compiled = compile_kernel(spec, config, dtype, arch)
        row["shared_bytes"] = int(compiled.metadata.shared)
        sass = disassemble(compiled.asm["cubin"])
        row["registers"], row["spill_bytes"], row["mma_instructions"] = _stats_of(sass)
        row["proxy"] = sass_proxy(sass)
        limit = MAX_SHARED_BYTES.get(int(arch))
        if limit is not None and row["shared_bytes"] > limit:
            row["error"] = (
                f"OutOfResources: shared memory {row['shared_bytes']} B > sm_{arch} limit {limit} B"
            )
        else:
            row["ok"] = True
    except Exception as e:  # noqa: BLE001 - a failed compile is a row, not a crash
        row["error"] = _error_line(e, spec.fn)
    return row


# ----------------------------------------------------------------------------------------------------------
# All compiles
# ----------------------------------------------------------------------------------------------------------
def registered_kernels() -> list:
    """The registry, filled by importing :mod:`inception_kernels.ops`."""
    import inception_kernels.ops  # noqa: F401 - registers the kernels
    from inception_kernels.ops import _registry

    return list(_registry.KERNELS)


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "off", "no")


def interpreter_active() -> bool:
    """Whether Triton's interpreter is (or was, when ``triton.language`` was imported) on in this process.

    Then ``triton.language``'s own ``@jit`` functions (``tl.cdiv``, ``tl.sum``, ...) are ``InterpretedFunction``
    objects, which the compiler cannot use, so the compiles must run in fresh processes.
    """
    if _truthy_env("TRITON_INTERPRET"):
        return True
    knobs = getattr(sys.modules.get("triton"), "knobs", None)
    if knobs is not None and getattr(knobs.runtime, "interpret", False):
        return True
    return _language_interpreted()


def _language_interpreted() -> bool:
    standard = sys.modules.get("triton.language.standard")
    return standard is not None and type(getattr(standard, "cdiv", None)).__name__ == "InterpretedFunction"


# In-process / forked workers: the specs are a module global that forked workers inherit.
_POOL_SPECS: list = []


def _pool_compile(job: tuple[int, int, str, int]) -> dict:
    si, ci, dtype, arch = job
    spec = _POOL_SPECS[si]
    return compile_one(spec, spec.configs[ci], dtype, arch)


def _run_in_process(specs: list, jobs: list, n: int) -> list[dict]:
    global _POOL_SPECS
    _POOL_SPECS = specs
    try:
        if n > 1 and "fork" in multiprocessing.get_all_start_methods():
            # fork: the workers inherit the specs (their functions need not be importable or picklable).
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
                return list(pool.map(_pool_compile, jobs))
        return [_pool_compile(job) for job in jobs]
    finally:
        _POOL_SPECS = []


# Fresh-process workers: each spec travels as the address of a module-level object.
def _spec_address(spec) -> dict:
    fn = _kernel_fn(spec.fn)
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    return {"name": spec.name, "module": fn.__module__, "qualname": fn.__qualname__, "path": path}


def _importable(spec) -> bool:
    """Whether a fresh process can find ``spec`` by importing its function's module (judged from this process)."""
    try:
        addr = _spec_address(spec)
    except TypeError:
        return False
    module = sys.modules.get(addr["module"])
    if addr["module"] == "__main__" or module is None:
        return False
    registry = sys.modules.get("inception_kernels.ops._registry")
    registered = list(registry.KERNELS) if registry is not None else []
    return any(spec is obj for obj in [*vars(module).values(), *registered])


def _is_spec(obj) -> bool:
    return all(hasattr(obj, a) for a in ("name", "fn", "configs", "arg_types")) and not isinstance(obj, type)


def _resolve_spec(addr: dict):
    import importlib
    import importlib.util

    def matches(obj) -> bool:
        if not _is_spec(obj) or obj.name != addr["name"]:
            return False
        try:
            fn = _kernel_fn(obj.fn)
        except TypeError:
            return False
        return fn.__qualname__ == addr["qualname"]

    module = None
    if addr["module"] != "__main__":
        try:
            module = importlib.import_module(addr["module"])
        except ImportError:
            module = None
    if module is None and addr["path"]:
        mod_name = "_inception_kernels_aot_" + re.sub(r"\W", "_", addr["module"])
        loader_spec = importlib.util.spec_from_file_location(mod_name, addr["path"])
        if loader_spec is not None and loader_spec.loader is not None:
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            loader_spec.loader.exec_module(module)
    candidates = []
    if module is not None:
        for val in vars(module).values():
            candidates.extend(val if isinstance(val, (list, tuple)) else [val])
    registry = sys.modules.get("inception_kernels.ops._registry")
    if registry is not None:
        candidates.extend(registry.KERNELS)
    for obj in candidates:
        if matches(obj):
            return obj
    raise LookupError(
        f"KernelSpec {addr['name']!r} ({addr['module']}.{addr['qualname']}) not found in a fresh process: "
        "with the Triton interpreter on, specs must be module-level objects or registered on import"
    )


def _worker_main(job_path: str, out_path: str) -> int:
    """Fresh-process entry point: compile the jobs of ``job_path``, write the rows to ``out_path``."""
    with open(job_path) as f:
        work = json.load(f)
    rows = []
    resolved: dict[int, object] = {}
    for job in work["jobs"]:
        si, ci, dtype, arch = job
        addr = work["specs"][si]
        try:
            if si not in resolved:
                resolved[si] = _resolve_spec(addr)
            spec = resolved[si]
            rows.append(compile_one(spec, spec.configs[ci], dtype, arch))
        except Exception as e:  # noqa: BLE001
            rows.append(_failed_row(addr["name"], "?", arch, dtype, _error_line(e)))
        with open(out_path, "w") as f:  # rewritten after each compile: a crash loses only the current one
            json.dump(rows, f)
    return 0


def _failed_row(kernel: str, config: str, arch: int, dtype: str, error: str) -> dict:
    row = dict.fromkeys(FIELDS)
    row.update(kernel=kernel, config=config, arch=int(arch), dtype=dtype, ok=False, error=error)
    return row


def _run_in_fresh_processes(specs: list, jobs: list, n: int) -> list[dict]:
    addresses = [_spec_address(s) for s in specs]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    chunks = [list(range(i, len(jobs), n)) for i in range(n)]  # round robin: each worker gets every kernel
    results: list[dict | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="ik_aot_") as tmp:
        procs = []
        for w, chunk in enumerate(chunks):
            job_path = os.path.join(tmp, f"jobs{w}.json")
            out_path = os.path.join(tmp, f"rows{w}.json")
            with open(job_path, "w") as f:
                json.dump({"specs": addresses, "jobs": [jobs[i] for i in chunk]}, f)
            err_path = os.path.join(tmp, f"stderr{w}.txt")
            cmd = [sys.executable, "-m", "inception_kernels.aot", "--_worker", job_path, out_path]
            with open(err_path, "w") as err:
                proc = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
                )
            procs.append((chunk, out_path, err_path, proc))
        for chunk, out_path, err_path, proc in procs:
            proc.wait()
            rows = []
            if os.path.exists(out_path):
                with open(out_path) as f:
                    rows = json.load(f)
            with open(err_path, errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            crash = f"worker process exited with {proc.returncode}: {lines[-1] if lines else ''}".strip()
            for k, i in enumerate(chunk):
                si, ci, dtype, arch = jobs[i]
                if k < len(rows):
                    results[i] = rows[k]
                else:
                    spec = specs[si]
                    results[i] = _failed_row(spec.name, config_name(spec.configs[ci]), arch, dtype, crash)
    return results  # type: ignore[return-value]


def compile_all(
    arches: Iterable[int] = DEFAULT_ARCHES,
    dtypes: Iterable[str] = DEFAULT_DTYPES,
    name_filter: str | None = None,
    *,
    specs: Sequence | None = None,
    jobs: int | None = None,
) -> list[dict]:
    """Compile every kernel x config x dtype x arch; one row (a dict with the keys :data:`FIELDS`) each.

    ``name_filter`` keeps the kernels whose name contains it. ``specs`` replaces the registry (tests);
    ``jobs`` is the number of worker processes (default: the CPU count, at most 8). Rows come back in
    kernel, config, dtype, arch order. Combinations a spec's ``applies`` rejects (configs that do not fit an
    architecture at that element size, TMA variants below sm_90) are not compiled and give no row.

    With ``jobs=1`` the compiles run in this process. Otherwise they run in fresh Python processes, which import
    each spec again: that needs a spec that is a module-level object of an importable module, or is registered
    when its module is imported (as the package's kernels are); other specs go to forked workers instead. When
    the Triton interpreter is on here (``TRITON_INTERPRET=1``) the compiles always run in fresh processes
    without it, and a spec they cannot import gives a failed row.
    """
    arches, dtypes = [int(a) for a in arches], list(dtypes)
    specs = registered_kernels() if specs is None else list(specs)
    if name_filter:
        specs = [s for s in specs if name_filter in s.name]
    jobs_list = [
        (si, ci, dtype, arch)
        for si, spec in enumerate(specs)
        for ci in range(len(spec.configs))
        for dtype in dtypes
        for arch in arches
        if applies(spec, spec.configs[ci], dtype, arch)
    ]
    if not jobs_list:
        return []
    n = default_jobs() if jobs is None else max(1, int(jobs))
    n = min(n, len(jobs_list))
    if interpreter_active() or (n > 1 and all(_importable(s) for s in specs)):
        return _run_in_fresh_processes(specs, jobs_list, n)
    return _run_in_process(specs, jobs_list, n)


_PROXY_COLUMNS = ("tc_op", "loop_tc", "loop_int", "int_per_tc", "utmaldg", "ldgsts")


def format_table(rows: Sequence[dict], proxy: bool = False) -> str:
    """The rows as an aligned text table, one line each (errors last, unpadded); with ``proxy``, the mainloop
    instruction mix of :func:`sass_proxy` before the error column."""
    headers = ("kernel", "config", "arch", "dtype", "regs", "spill", "shared", "mma", "ok", "error")
    if proxy:
        rows = [{**r, **{f"p_{k}": (r.get("proxy") or {}).get(k) for k in _PROXY_COLUMNS}} for r in rows]
        headers = headers[:-1] + _PROXY_COLUMNS + headers[-1:]
    fields = FIELDS[:-1] + tuple(f"p_{k}" for k in _PROXY_COLUMNS) + FIELDS[-1:] if proxy else FIELDS

    def cell(row, field):
        v = row.get(field)
        if field == "ok":
            return "ok" if v else "FAIL"
        if field == "arch":
            return f"sm_{v}"
        if field == "error":
            return v or ""
        return "-" if v is None else str(v)

    table = [headers] + [tuple(cell(r, f) for f in fields) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers) - 1)]
    right = {2, 4, 5, 6, 7} | (set(range(10, 10 + len(_PROXY_COLUMNS))) if proxy else set())  # numbers
    out = []
    for line in table:
        cells = [
            line[i].rjust(widths[i]) if i in right else line[i].ljust(widths[i]) for i in range(len(widths))
        ]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def write_json(rows: Sequence[dict], path: str, proxy: bool = False) -> None:
    keys = (*FIELDS, "proxy") if proxy else FIELDS
    with open(path, "w") as f:
        json.dump([{k: r.get(k) for k in keys} for r in rows], f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------------
# v1 vs v2 on the Inception layer shapes: each shape's heuristic config, compiled with the JIT's specializations
# ----------------------------------------------------------------------------------------------------------
H100_SMS = 132


def _jit_int_type(v: int):
    """What the JIT makes of an integer argument: the constant 1, a 16-divisible i32, or a plain i32."""
    if v == 1:
        return 1
    return "i32:16" if v % 16 == 0 else "i32"


def _shape_arg_values(shape, batch: int, dt: str) -> dict:
    """Run-time values of the forward kernels' integer arguments for one layer (contiguous NHWC tensors)."""
    N, C, H, W, K = batch, shape.C, shape.H, shape.W, shape.K
    P, Q = shape.out_hw
    ints = dict(N=N, C=C, H=H, W=W, K=K, P=P, Q=Q, sxn=H * W * C, sxc=1, sxh=W * C, sxw=C,
                son=P * Q * K, sok=1, sop=Q * K, soq=K, srn=P * Q * K, srk=1, srp=Q * K, srq=K,
                s2n=P * Q * K, s2k=1, s2p=Q * K, s2q=K, stride_h=shape.stride[0], stride_w=shape.stride[1],
                pad_t=shape.padding[0], pad_l=shape.padding[2], k_split=K)  # fmt: skip
    types = {k: _jit_int_type(v) for k, v in ints.items()}
    types.update({k: f"*{dt}" for k in ("x_ptr", "w_ptr", "out_ptr", "res_ptr", "out2_ptr")})
    types.update({k: "*fp32" for k in ("scale_ptr", "bias_ptr", "st_cnt_ptr", "st_mean_ptr", "st_m2_ptr")})
    types.update(res_scale="fp32", R=shape.R, S=shape.S, HAS_SCALE=not shape.residual, HAS_BIAS=True,
                 HAS_RES=shape.residual, RELU=True, HAS_OUT2=False, STATS=False,
                 DOT_PRECISION="tf32" if dt == "fp32" else "ieee")  # fmt: skip
    return types


def compare_v2_rows(batch: int = 32, dtype: str = "bf16", arch: int = 90, sms: int = H100_SMS, jobs=None):
    """For each of the 14 Inception layer shapes (``inception_kernels.bench.kernels.SHAPES``): v1 and v2 forward
    kernels with the config each launcher's heuristic picks for ``batch`` on a GPU with ``sms`` SMs, compiled for
    ``arch`` with the JIT's integer specializations and v2's descriptor plan; one row per (shape, version), and a
    ``v2p`` row for v2's persistent twin of that config where the space has one (``conv_v2.persistent_twin``).
    ``grid`` is the launch's program count (``tiles`` output tiles)."""
    import triton.language as tl

    from inception_kernels.bench.kernels import SHAPES
    from inception_kernels.ops import conv_kernels, conv_v2
    from inception_kernels.ops._registry import KernelSpec

    eb = 4 if dtype == "fp32" else 2
    specs, meta = [], []
    for shape in SHAPES:
        P, Q = shape.out_hw
        dims = (("BLOCK_M", batch * P * Q), ("BLOCK_N", shape.K), ("BLOCK_C", shape.C))
        base = {**_shape_arg_values(shape, batch, dtype), "IDX_T": tl.int32}
        c1 = conv_kernels.heuristic_config("fwd", dims, eb, 1, sms)
        t1 = {k: v for k, v in base.items() if k in inspect.signature(conv_kernels._conv_fwd).parameters}
        specs.append(KernelSpec(f"v1:{shape.name}", conv_kernels._conv_fwd, (c1,), lambda dt, *, t=t1: t))
        (tiles1,) = conv_v2.launch_grid(c1, dims[0][1], shape.K, eb, sms)  # a program per tile, as v1's grid
        meta.append((shape.name, "v1", c1, "-", tiles1, tiles1))
        c2 = conv_v2.heuristic_config_v2(dims, eb, sms, arch)
        kw = c2.kwargs
        tma = arch >= 90
        b_desc = tma and (shape.K * eb) % 16 == 0
        a_desc = b_desc and (shape.R, shape.S, shape.stride, shape.padding) == (1, 1, (1, 1), (0, 0, 0, 0))
        a_desc = a_desc and (shape.C * eb) % 16 == 0
        t2 = {**base, "A_DESC": a_desc, "B_DESC": b_desc, "EVEN_C": shape.C % kw["BLOCK_C"] == 0,
              "x_desc": conv_v2._desc_type(dtype, (kw["BLOCK_M"], kw["BLOCK_C"])) if a_desc else f"*{dtype}",
              "w_desc": conv_v2._desc_type(dtype, (1, kw["BLOCK_C"], kw["BLOCK_N"])) if b_desc else f"*{dtype}"}  # fmt: skip
        desc = ("A+B" if a_desc else "B") if b_desc else "-"
        (tiles2,) = conv_v2.launch_grid(c2, dims[0][1], shape.K, eb, sms, arch)
        for version, cfg in (("v2", c2), ("v2p", conv_v2.persistent_twin(c2, eb, arch))):
            if cfg is not None:
                (grid,) = conv_v2.launch_grid(cfg, dims[0][1], shape.K, eb, sms, arch)
                specs.append(KernelSpec(f"{version}:{shape.name}", conv_v2._conv_fwd_v2, (cfg,), lambda dt, *, t=t2: t))
                meta.append((shape.name, version, cfg, desc, grid, tiles2))
    rows = compile_all(arches=(arch,), dtypes=(dtype,), specs=specs, jobs=jobs)
    for row, (name, version, cfg, desc, grid, tiles) in zip(rows, meta, strict=True):
        row.update(shape=name, version=version, tma=desc, config=config_name(cfg), batch=batch, grid=grid,
                   tiles=tiles, warps=cfg.num_warps,
                   tile=[cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_C")])  # fmt: skip
    return rows


# Dense 16-bit tensor-core rate of one sm_90 SM (H100 SXM: 989 TFLOP/s = 132 SMs x 1.83 GHz x 2048 FMA/clock).
SM90_FMA_PER_CLOCK = 2048


def _issue_ratio(row: dict) -> str:
    """Issue slots one SM sub-partition spends on the mainloop per reduction step (warps/4 warps x loop
    instructions, one instruction per clock) over the clocks the tensor cores need for the step's
    BLOCK_M·BLOCK_N·BLOCK_C multiply-adds at the sm_90 16-bit peak. Near or above 1 the loop cannot keep the
    tensor cores busy even with perfect latency hiding; a static bound for 16-bit HGMMA loops, not a timing."""
    p = row.get("proxy") or {}
    if not p.get("loop_tc") or p.get("tc_op") != "HGMMA" or not row.get("tile"):
        return "-"
    bm, bn, bc = row["tile"]
    return f"{row['warps'] / 4 * p['loop_instr'] / (bm * bn * bc / SM90_FMA_PER_CLOCK):.2f}"


def format_compare(rows: Sequence[dict]) -> str:
    """The v1-vs-v2 rows as a markdown table (mainloop instruction mix per warp and per reduction step); ``grid``:
    programs, or programs/tiles for a persistent launch."""
    head = ("| shape | ver | config | TMA | grid | regs | spill | smem KB | TC op | loop TC | loop int | int/TC | "
            "int/kMAC | loop instr | issue/MMA |")  # fmt: skip
    out = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        p = r.get("proxy") or {}
        if not r["ok"]:
            out.append(f"| {r['shape']} | {r['version']} | {r['config']} | {r['tma']} | FAIL: {r['error']} |")
            continue
        kmac = p["loop_tc"] * p["macs_per_tc"] / 1024 if p.get("loop_tc") else 0
        per_kmac = f"{p['loop_int'] / kmac:.2f}" if kmac else "-"
        grid = str(r["grid"]) if r["grid"] == r["tiles"] else f"{r['grid']}/{r['tiles']}"
        out.append(
            f"| {r['shape']} | {r['version']} | {r['config']} | {r['tma']} | {grid} | {r['registers']} | "
            f"{r['spill_bytes']} | "
            f"{r['shared_bytes'] / 1024:.0f} | {p.get('tc_op')} | {p.get('loop_tc')} | "
            f"{p.get('loop_int')} | {p.get('int_per_tc')} | {per_kmac} | {p.get('loop_instr')} | "
            f"{_issue_ratio(r)} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        return _worker_main(*argv[1:3])
    parser = argparse.ArgumentParser(
        prog="python -m inception_kernels.aot",
        description="Compile every registered Triton kernel ahead of time (no GPU needed) and report "
        "registers, spills, shared memory and tensor-core instructions.",
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=list(DEFAULT_ARCHES), help="compute capabilities"
    )
    parser.add_argument("--dtype", nargs="+", default=list(DEFAULT_DTYPES), choices=DEFAULT_DTYPES)
    parser.add_argument(
        "--kernel", default=None, metavar="NAME_SUBSTRING", help="only kernels whose name has it"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as a JSON list")
    parser.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument(
        "--compare-v2", action="store_true",
        help="v1 vs v2 forward kernels on the 14 Inception layer shapes (heuristic config each, first --arch and "
        "--dtype, --batch), with the SASS instruction-mix proxy, as a markdown table",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=32, help="batch size for --compare-v2")
    parser.add_argument(
        "--sms", type=int, default=H100_SMS, help="SM count the heuristics fill (--compare-v2)"
    )
    parser.add_argument(
        "--proxy", action="store_true", help="add the SASS instruction-mix columns to the table"
    )
    args = parser.parse_args(argv)
    if args.compare_v2:
        dtype = args.dtype[0] if args.dtype != list(DEFAULT_DTYPES) else "bf16"
        arch = args.arch[-1] if args.arch != list(DEFAULT_ARCHES) else 90
        rows = compare_v2_rows(args.batch, dtype, arch, args.sms, jobs=args.jobs)
        print(
            f"v1 vs v2 forward, batch {args.batch}, {dtype}, sm_{arch}, heuristic configs for {args.sms} SMs\n"
        )
        print(format_compare(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 1 if any(not r["ok"] for r in rows) else 0

    start = time.perf_counter()
    rows = compile_all(args.arch, args.dtype, args.kernel, jobs=args.jobs)
    elapsed = time.perf_counter() - start
    if args.json:
        write_json(rows, args.json, proxy=args.proxy)
    if not rows:
        print(f"no kernels matched (filter {args.kernel!r})", file=sys.stderr)
        return 2
    print(format_table(rows, proxy=args.proxy))
    failed = sum(not r["ok"] for r in rows)
    print(
        f"\n{len(rows)} compiles, {failed} failed, {elapsed:.1f} s "
        f"({elapsed / len(rows):.2f} s per compile, {args.jobs or default_jobs()} jobs)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
