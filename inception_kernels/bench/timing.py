"""Timing backends and the measurement protocol of DESIGN.md §5.

A timer is a callable ``timer(fn, label) -> ms``: the median time of one call of ``fn`` (a closure that takes no
argument and rotates over several input sets itself), warm-up outside the number. Backends:

* :class:`EventTimer`  -- ``triton.testing.do_bench``: CUDA events around each call, the L2 cache flushed before
  each call, warm-up, the median of the repeats (host time included whenever it exceeds the GPU time);
* :class:`GraphTimer`  -- ``triton.testing.do_bench_cudagraph``: the calls replayed from a CUDA graph, so the
  number is GPU time without host (Python, dispatch, launch) overhead;
* :class:`FakeTimer`   -- no GPU: calls ``fn`` once (the code path runs) and returns a deterministic time from a
  table (or a hash of the label); the test suite drives the whole GPU report through it.

:func:`measure` times every (implementation, pass) of one configuration ``rounds`` times (default 2), rounds
interleaved across implementations, and reports the mean of the rounds with their spread ``(max-min)/min``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from ..utils import rel_err

ROTATE_BELOW_BYTES = 100 * 2**20  # rotate input sets until one round of calls touches >= 100 MB (> L2)
MAX_SETS = 8


class EventTimer:
    name = "cuda-events (triton.testing.do_bench, L2 flushed, median)"
    kind = "events"

    def __init__(self, warmup_ms: float = 25.0, rep_ms: float = 100.0):
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def __call__(self, fn: Callable[[], object], label: str = "") -> float:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))


class GraphTimer:
    name = "cuda-graph replay (triton.testing.do_bench_cudagraph, median)"
    kind = "graph"

    def __init__(self, rep_ms: float = 50.0):
        self.rep_ms = rep_ms

    def __call__(self, fn: Callable[[], object], label: str = "") -> float:
        from triton.testing import do_bench_cudagraph

        try:
            return float(do_bench_cudagraph(fn, rep=self.rep_ms, return_mode="median"))
        except Exception:
            torch.cuda.synchronize()  # leave no half-finished capture behind
            raise


class FakeTimer:
    """Deterministic stand-in for tests and dry runs: ``times`` maps a label substring to ms (first match in
    insertion order wins); otherwise the time is ``base_ms`` scaled by a hash of the label into [0.5, 1.5), and
    labels of implementations named ``ours*`` get ``ours_factor`` times that. Every call runs ``fn`` once."""

    name = "fake (no GPU: deterministic made-up times, NOT measurements)"

    def __init__(self, times: dict[str, float] | None = None, base_ms: float = 1.0, ours_factor: float = 0.5,
                 kind: str = "events"):  # fmt: skip
        self.times = dict(times or {})
        self.base_ms, self.ours_factor, self.kind = base_ms, ours_factor, kind
        self.calls: list[str] = []

    def __call__(self, fn: Callable[[], object], label: str = "") -> float:
        fn()
        self.calls.append(label)
        for key, ms in self.times.items():
            if key in label:
                return float(ms)
        h = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16) / 2**32
        ms = self.base_ms * (0.5 + h)
        impl = label.split("/")[-2] if label.count("/") >= 1 else ""
        return ms * (self.ours_factor if impl.startswith("ours") else 1.0)


class FakeClock:
    """A clock for dry runs: ``clock()`` returns seconds that move only by ``advance(s)`` (the time a step would
    take on a GPU), so the time-budget and skip logic run deterministically on a CPU."""

    def __init__(self, t0: float = 0.0):
        self.t = float(t0)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, float(seconds))


def num_sets(nbytes: int, threshold: int = ROTATE_BELOW_BYTES, max_sets: int = MAX_SETS) -> int:
    """Input sets to rotate over: 1 when one set is >= ``threshold`` bytes, else enough to exceed it, >= 3."""
    if nbytes >= threshold:
        return 1
    return int(min(max(3, math.ceil(threshold / max(nbytes, 1))), max_sets))


class Rotator:
    """Cycles through input sets, one per call."""

    def __init__(self, sets: Sequence):
        self.sets, self.i = list(sets), 0

    def __call__(self):
        s = self.sets[self.i]
        self.i = (self.i + 1) % len(self.sets)
        return s


def summarize(rounds: Sequence[float]) -> dict:
    lo, hi = min(rounds), max(rounds)
    return {
        "rounds_ms": [float(r) for r in rounds],
        "ms": float(sum(rounds) / len(rounds)),
        "spread_pct": 100.0 * (hi - lo) / lo if lo > 0 else None,
    }


def measure(
    closures: dict[str, dict[str, Callable[[], object]]], timer, rounds: int = 2, label: str = ""
) -> dict:
    """``{impl: {pass: summary | {"error": msg}}}``. ``closures[impl][pass]`` is a no-argument callable; the
    label handed to the timer is ``f"{label}/{impl}/{pass}"``. A failure of one (impl, pass) is recorded and the
    others go on."""
    raw: dict[str, dict[str, list[float]]] = {i: {p: [] for p in ps} for i, ps in closures.items()}
    errors: dict[tuple[str, str], str] = {}
    for _ in range(rounds):
        for impl, passes in closures.items():
            for p, fn in passes.items():
                if (impl, p) in errors:
                    continue
                try:
                    raw[impl][p].append(timer(fn, f"{label}/{impl}/{p}"))
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    errors[(impl, p)] = f"{type(e).__name__}: {e}"[:500]
    out: dict[str, dict] = {}
    for impl, passes in raw.items():
        out[impl] = {}
        for p, vals in passes.items():
            if (impl, p) in errors:
                out[impl][p] = {"error": errors[(impl, p)]}
            elif vals:
                out[impl][p] = summarize(vals)
    return out


def run_with_grads(fn, inp: dict, keys) -> tuple[torch.Tensor, tuple]:
    """``fn(inp)`` and its gradients w.r.t. ``inp[k]`` for ``keys`` (upstream gradient ``inp["grad_out"]``),
    synchronized so that an asynchronous kernel error surfaces here."""
    out = fn(inp)
    grads = torch.autograd.grad(out, [inp[k] for k in keys], inp["grad_out"])
    sync(out.device)
    return out, grads


def upcast(inp: dict, keys) -> dict:
    """fp32 leaf copies of an input set (``keys`` require grad): what the reference runs on."""
    return {k: (None if v is None else v.detach().float().requires_grad_(k in keys)) for k, v in inp.items()}


def grad_errors(out, grads, want, want_grads, keys, out_name: str) -> dict[str, float]:
    """Relative errors of an output and its input gradients against the reference's."""
    errs = {out_name: rel_err(out, want)}
    errs.update({f"d{k}": rel_err(g, r) for k, g, r in zip(keys, grads, want_grads)})
    return errs


def check_result(errors: dict[str, float], threshold: float | dict[str, float]) -> dict:
    """Correctness record from named relative errors: PASS when every one is <= its threshold (a float for all,
    or one per name); NaN fails."""
    thr = threshold if isinstance(threshold, dict) else {k: threshold for k in errors}
    bad = {k: v for k, v in errors.items() if not (v <= thr[k])}
    rec = {"status": "FAIL" if bad else "PASS", "rel_err": errors, "threshold": threshold}
    if bad:
        rec["error"] = ", ".join(f"{k} rel. err {v:.3g} > {thr[k]:g}" for k, v in bad.items())
    return rec


def tolerances(base: float | dict[str, float], reference_errors: dict[str, float]) -> dict[str, float]:
    """Per-name thresholds ``max(base, 2 × the reference's own error in the same dtype)`` (flash-attention's rule:
    ours may be at most twice as far from the fp32 truth as PyTorch's same-dtype computation)."""
    b = base if isinstance(base, dict) else {k: base for k in reference_errors}
    return {k: max(b[k], 2.0 * v) if v == v else b[k] for k, v in reference_errors.items()}


def check_error(e: BaseException) -> dict:
    return {"status": "ERROR", "error": f"{type(e).__name__}: {e}"[:1000]}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
