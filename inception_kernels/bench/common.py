"""Shared pieces of the GPU suite: the result record, ratios, the time budget, compile helpers."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
COMPILE_MODES = {"compile": None, "compile_max": "max-autotune-no-cudagraphs"}


def new_record(section: str, name: str, params: dict, *, flops=None, min_bytes=None, items=None) -> dict:
    """One benchmarked configuration. ``flops`` / ``min_bytes``: {pass: per call}; ``items``: images per call."""
    return {
        "section": section,
        "name": name,
        "params": dict(params),
        "flops": dict(flops or {}),
        "min_bytes": dict(min_bytes or {}),
        "items": items,
        "check": {"status": "NOT RUN"},
        "baseline_checks": {},
        "times": {},
        "memory": {},
        "skipped": {},
        "ratios": {},
        "excluded": False,
    }


def finalize(rec: dict, pairs: Sequence[tuple[str, str]], ceilings: dict | None = None) -> dict:
    """Derive from ``rec["times"]``: ``ratios[f"{ours}_vs_{base}"][pass] = t_base / t_ours`` (speed of ours over
    the baseline: higher is better), only when ours passed its correctness check (else ``excluded``);
    ``tflops`` / ``pct_peak`` (of the measured bf16 matmul peak) per impl and pass; for records without FLOPs
    (memory-bound ops) ``gbs`` / ``pct_bw`` over their minimal bytes (of the measured copy bandwidth); ``img_s``
    when ``items``."""
    ok = rec["check"].get("status") == "PASS"
    rec["excluded"] = not ok
    times = rec["times"]

    def ms(impl, p):
        t = times.get(impl, {}).get(p, {})
        return t.get("ms") if isinstance(t, dict) else None

    ratios = {}
    for o, b in pairs:
        if b not in times:
            continue  # baseline not run (not planned, skipped or errored: reported elsewhere)
        passes = set(times.get(o, {})) | set(times.get(b, {}))
        ratios[f"{o}_vs_{b}"] = {
            p: (ms(b, p) / ms(o, p) if ok and ms(o, p) and ms(b, p) else None) for p in sorted(passes)
        }
    rec["ratios"] = ratios
    peak = (ceilings or {}).get("bf16_tflops")
    bw = (ceilings or {}).get("copy_gbs")
    rec["tflops"], rec["pct_peak"], rec["img_s"], rec["gbs"], rec["pct_bw"] = {}, {}, {}, {}, {}
    for impl, passes in times.items():
        if impl.startswith("ours") and not ok:
            continue  # never a speed figure for a wrong result
        for p in passes:
            t = ms(impl, p)
            if not t:
                continue
            fl = rec["flops"].get(p)
            if fl:
                tf = fl / (t * 1e-3) / 1e12
                rec["tflops"].setdefault(impl, {})[p] = tf
                if peak:
                    rec["pct_peak"].setdefault(impl, {})[p] = 100.0 * tf / peak
            nb = rec["min_bytes"].get(p)
            if nb and not fl:  # memory-bound op: achieved bandwidth over its minimal bytes
                gbs = nb / (t * 1e-3) / 1e9
                rec["gbs"].setdefault(impl, {})[p] = gbs
                if bw:
                    rec["pct_bw"].setdefault(impl, {})[p] = 100.0 * gbs / bw
            if rec.get("items"):
                rec["img_s"].setdefault(impl, {})[p] = rec["items"] / (t * 1e-3)
    if not ok:
        for impl in [i for i in times if i.startswith("ours")]:
            times[impl] = {p: {"excluded": "failed correctness check"} for p in times[impl]}
    return rec


def geomean(vals) -> float | None:
    vals = [v for v in vals if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


class Budget:
    """Wall-clock budget of a section: ``left()`` seconds remain; ``allows(cost_s)`` says whether an item that
    may take ``cost_s`` still fits. Skipped items are recorded with the reason, never silently dropped. ``clock``:
    seconds (default ``time.perf_counter``; a :class:`~.timing.FakeClock` in dry runs)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = seconds, clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def allows(self, cost_s: float = 0.0) -> bool:
        return self.left() > cost_s


def configure_dynamo() -> None:
    try:
        import torch._dynamo.config as dcfg
    except Exception:  # pragma: no cover
        return
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64),
                        ("accumulated_recompile_limit", 1024), ("accumulated_cache_size_limit", 1024)):  # fmt: skip
        if hasattr(dcfg, name):
            with contextlib.suppress(Exception):
                setattr(dcfg, name, value)


def reset_dynamo() -> None:
    """Drop Dynamo's caches between configurations (each compiles its own functions; the recompile limits
    count per code object, and the reference closures share theirs)."""
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def torch_compiler(fn, mode: str | None):
    """The default compiler of the suite: ``torch.compile(fn, mode=mode, dynamic=False)``."""
    kw = {"dynamic": False} if mode is None else {"dynamic": False, "mode": mode}
    return torch.compile(fn, **kw)


def identity_compiler(fn, mode: str | None):
    """Stand-in for ``torch.compile`` in tests and dry runs (no compiler needed)."""
    return fn


@contextlib.contextmanager
def tf32(enabled: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def autocast(device, dtype=torch.bfloat16, enabled: bool = True):
    dev = torch.device(device)
    if not enabled or dev.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def graphed(fn: Callable[[], object], device) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph (warm-up on a side stream first); returns the replay. Off CUDA (fake
    timing runs) ``fn`` itself is returned."""
    if torch.device(device).type != "cuda":
        return fn
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay
