#!/usr/bin/env python
"""Benchmark ``inception_kernels.ops.conv2d`` (fused epilogue) vs cuDNN + eager epilogue and torch.compile.

Standalone script kept for targeted runs (and as gpu_check.sh's fallback); the one-command suite is
``inception-kernels bench`` (``inception_kernels/bench/``), which covers this and more.

For every Inception convolution shape below, at each batch size and dtype, this script

1. checks ours (and, for information, each baseline) against an fp32-upcast, TF32-off reference on the
   benchmark's own inputs: the forward output and the gradients of x, weight, bias (and the residual), with
   relative error ``||a - b|| / ||b||``. A failed check is reported as **FAIL** and that shape gets no speed
   ratio; an exception in ours is caught, reported with its message, and the run goes on;
2. times forward and forward+backward of
   * ``ours``        -- ``inception_kernels.ops.conv2d`` with the epilogue fused,
   * ``cudnn``       -- ``reference.conv2d``: ``F.conv2d`` on channels_last inputs (cuDNN) + eager epilogue,
   * ``compile``     -- ``torch.compile(reference.conv2d, dynamic=False)`` (mode default),
   * ``compile_max`` -- the same with mode max-autotune (only with ``--max-autotune``; slow to compile);
3. writes ``bench_conv.json`` (all numbers and the environment) and ``bench_conv.md`` (speedup table
   t_baseline / t_ours, absolute times, TFLOP/s) to ``--out`` after every configuration, and prints the
   markdown at the end.

Timing: ``triton.testing.do_bench`` (CUDA events around each call, the L2 cache flushed before each call,
warm-up outside the numbers, median of the repeats). Calls rotate among >= 3 independent input sets when one
set is smaller than 100 MB. Each (shape, batch, dtype, implementation, pass) is timed in two rounds, the
rounds interleaved across implementations; the reported time is the mean of the two medians and the spread
is ``(max - min) / min`` of the two. "fwd" is the forward pass of a training step (inputs require grad) so
that one compiled graph serves both passes; "fwd+bwd" is that forward plus ``torch.autograd.grad`` for every
input that requires grad. A second timing (off with ``--no-cudagraph``) replays the same rotating calls from
a CUDA graph (``triton.testing.do_bench_cudagraph``): GPU time without host (Python/launch) overhead, which
dominates the small batch-32 layers. FLOPs: ``2*N*K*P*Q*C*R*S`` forward, three times that forward+backward.

Usage:  python benchmarks/bench_conv.py [--quick] [--batches 32 128] [--dtypes bf16 fp32] [--shapes 17x17 ...]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run as a script from a checkout without installing

# the helpers this script shares with the suite (inception-kernels bench), which grew out of it
from inception_kernels.bench.common import tf32  # noqa: E402
from inception_kernels.bench.env import environment, slug  # noqa: E402
from inception_kernels.bench.kernels import closures as make_closures  # noqa: E402
from inception_kernels.bench.timing import num_sets, rel_err, summarize, sync  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------
BN_RELU = "bn_relu"  # folded BN: scale[k], bias[k], then ReLU
RES_RELU = "residual_relu"  # relu(residual + 0.17 * (conv + bias[k])), no scale
RESIDUAL_SCALE = 0.17


@dataclass(frozen=True)
class Shape:
    name: str
    C: int
    K: int
    H: int
    W: int
    R: int
    S: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    epilogue: str = BN_RELU

    @property
    def out_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        P = (self.H + top + bottom - self.R) // self.stride[0] + 1
        Q = (self.W + left + right - self.S) // self.stride[1] + 1
        return P, Q

    def flops_fwd(self, n: int) -> int:
        P, Q = self.out_hw
        return 2 * n * self.K * P * Q * self.C * self.R * self.S

    def flops_fwdbwd(self, n: int) -> int:
        return 3 * self.flops_fwd(n)


def _shape(hw, rs, ck, pad, stride=1, epilogue=BN_RELU, tag=""):
    (H, W), (R, S), (C, K) = hw, rs, ck
    if isinstance(pad, int):
        pad = (pad, pad)
    if len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)
    sfx = f"s{st[0]}" if st != (1, 1) else ""
    name = f"{H}x{W}_{R}x{S}{sfx}_{C}-{K}{tag}"
    return Shape(name, C, K, H, W, R, S, st, tuple(pad), epilogue)


SHAPES: tuple[Shape, ...] = (
    # Inception-v3 / v4 17x17 factorised 7x7 blocks and their 1x1 reductions.
    _shape((17, 17), (1, 7), (128, 128), (0, 3)),
    _shape((17, 17), (7, 1), (128, 192), (3, 0)),
    _shape((17, 17), (1, 7), (160, 160), (0, 3)),
    _shape((17, 17), (7, 1), (160, 192), (3, 0)),
    _shape((17, 17), (1, 7), (192, 192), (0, 3)),
    _shape((17, 17), (7, 1), (192, 192), (3, 0)),
    _shape((17, 17), (1, 1), (768, 192), 0),
    # 35x35 blocks.
    _shape((35, 35), (3, 3), (96, 96), 1),
    _shape((35, 35), (5, 5), (48, 64), 2),
    # 8x8 blocks.
    _shape((8, 8), (1, 3), (384, 384), (0, 1)),
    _shape((8, 8), (3, 1), (384, 384), (1, 0)),
    _shape((8, 8), (3, 3), (448, 384), 1),
    # Stem: 3x3 stride 2, valid, 3 -> 32 at 299x299.
    _shape((299, 299), (3, 3), (3, 32), 0, stride=2, tag="_stem"),
    # Inception-ResNet residual 1x1 up-projection with the scaled residual add.
    _shape((35, 35), (1, 1), (128, 320), 0, epilogue=RES_RELU, tag="_res"),
)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# Relative-error thresholds against the fp32 (TF32 off) reference; fp32 runs allow TF32.
THRESHOLDS = {"bf16": 2e-2, "fp16": 1e-2, "fp32": 5e-3}
ROTATE_BELOW_BYTES = 100 * 2**20
MAX_SETS = 16

IMPL_LABELS = {
    "ours": "ours (Triton, fused)",
    "cudnn": "cuDNN + eager epilogue",
    "compile": "torch.compile (default)",
    "compile_max": "torch.compile (max-autotune)",
}
BASELINES = ("cudnn", "compile", "compile_max")
PASSES = ("fwd", "fwdbwd")


def select_shapes(filters: Sequence[str] | None) -> list[Shape]:
    if not filters:
        return list(SHAPES)
    return [s for s in SHAPES if any(f.lower() in s.name.lower() for f in filters)]


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------
def set_bytes(shape: Shape, n: int, dtype: torch.dtype) -> int:
    """Bytes one call touches: x, weight, scale/bias, residual, the output and grad_out."""
    P, Q = shape.out_hw
    e = torch.empty((), dtype=dtype).element_size()
    elems = n * shape.C * shape.H * shape.W + shape.K * shape.C * shape.R * shape.S + 2 * shape.K
    elems += 2 * n * shape.K * P * Q  # output + grad_out
    if shape.epilogue == RES_RELU:
        elems += n * shape.K * P * Q
    return elems * e


def make_inputs(shape: Shape, n: int, dtype: torch.dtype, device, seed: int) -> dict:
    """One input set. Leaves that get gradients (x, weight, bias, residual) require grad; scale (folded BN
    constant) does not."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    P, Q = shape.out_hw

    def rnd(*size, std=1.0):
        return (torch.randn(*size, generator=g) * std).to(device=device, dtype=dtype)

    x = rnd(n, shape.C, shape.H, shape.W).contiguous(memory_format=torch.channels_last)
    fan_in = shape.C * shape.R * shape.S
    w = rnd(shape.K, shape.C, shape.R, shape.S, std=math.sqrt(2.0 / fan_in))
    bias = rnd(shape.K, std=0.1)
    inp = {"x": x, "w": w, "bias": bias, "scale": None, "residual": None}
    if shape.epilogue == BN_RELU:
        inp["scale"] = (torch.rand(shape.K, generator=g) + 0.5).to(device=device, dtype=dtype)
    else:
        inp["residual"] = rnd(n, shape.K, P, Q).contiguous(memory_format=torch.channels_last)
    for k in ("x", "w", "bias", "residual"):
        if inp[k] is not None:
            inp[k].requires_grad_(True)
    inp["grad_out"] = rnd(n, shape.K, P, Q).contiguous(memory_format=torch.channels_last)
    return inp


def grad_keys(inp: dict) -> list[str]:
    return [k for k in ("x", "w", "bias", "residual") if inp.get(k) is not None and inp[k].requires_grad]


# ----------------------------------------------------------------------------------------------------------
# Implementations
# ----------------------------------------------------------------------------------------------------------
def load_ops():
    """(ours conv2d, reference module), imported lazily: --help and importing this module need neither a
    GPU nor a working package."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from inception_kernels.ops import conv2d, reference

    return conv2d, reference


def _epilogue_kwargs(shape: Shape) -> dict:
    if shape.epilogue == BN_RELU:
        return {"activation": "relu", "residual_scale": 1.0}
    return {"activation": "relu", "residual_scale": RESIDUAL_SCALE}


def make_ours(shape: Shape, conv2d) -> Callable[[dict], torch.Tensor]:
    ep = _epilogue_kwargs(shape)

    def ours(inp):
        return conv2d(
            inp["x"], inp["w"], stride=shape.stride, padding=shape.padding, scale=inp["scale"],
            bias=inp["bias"], residual=inp["residual"], **ep,
        )  # fmt: skip

    return ours


def make_reference(shape: Shape, reference, *, pre_activation: bool = False) -> Callable[..., torch.Tensor]:
    """Positional-tensor form (what torch.compile sees): fn(x, w, scale, bias, residual). With
    ``pre_activation`` the activation is left out (the oracle's z)."""
    ep = _epilogue_kwargs(shape)
    if pre_activation:
        ep = {**ep, "activation": None}
    stride, padding = tuple(shape.stride), tuple(shape.padding)

    def ref(x, w, scale, bias, residual):
        return reference.conv2d(
            x, w, stride=stride, padding=padding, scale=scale, bias=bias, residual=residual, **ep
        )

    return ref


def on_dict(fn) -> Callable[[dict], torch.Tensor]:
    return lambda inp: fn(inp["x"], inp["w"], inp["scale"], inp["bias"], inp["residual"])


def configure_dynamo() -> None:
    try:
        import torch._dynamo.config as dcfg
    except Exception:  # pragma: no cover
        return
    for name, value in (
        ("recompile_limit", 64),
        ("cache_size_limit", 64),
        ("accumulated_recompile_limit", 1024),
        ("accumulated_cache_size_limit", 1024),
    ):
        if hasattr(dcfg, name):
            try:
                setattr(dcfg, name, value)
            except Exception:
                pass


def reset_dynamo() -> None:
    try:
        torch._dynamo.reset()
    except Exception:  # pragma: no cover
        pass


COMPILE_MODES = {"compile": None, "compile_max": "max-autotune-no-cudagraphs"}


def build_impls(shape: Shape, impl_names: Sequence[str], conv2d, reference, compile_modes=None) -> dict:
    compile_modes = compile_modes or COMPILE_MODES
    impls = {}
    ref = make_reference(shape, reference)
    for name in impl_names:
        if name == "ours":
            impls[name] = make_ours(shape, conv2d)
        elif name == "cudnn":
            impls[name] = on_dict(ref)
        elif name in compile_modes:
            mode = compile_modes[name]
            kw = {"dynamic": False} if mode is None else {"dynamic": False, "mode": mode}
            impls[name] = on_dict(torch.compile(ref, **kw))
        else:
            raise ValueError(f"unknown implementation {name!r}")
    return impls


# ----------------------------------------------------------------------------------------------------------
# Correctness check
# ----------------------------------------------------------------------------------------------------------
def run_pass(fn, inp: dict, keys: Sequence[str]):
    """Forward and gradients of the given leaves for grad_out."""
    y = fn(inp)
    grads = torch.autograd.grad(y, [inp[k] for k in keys], inp["grad_out"])
    return y, dict(zip(keys, grads))


class Oracle:
    """The fp32-upcast, TF32-off reference on one input set.

    Forward: ``y = act(z)`` with ``z`` the reference pre-activation. Gradients are checked through the checked
    implementation's own ReLU mask ``[y_impl > 0]``: a pre-activation within rounding (TF32, bf16 epilogue) of
    zero may land on either side, and that choice is the forward's, already covered by the y check; counting it
    again in the gradients would flag correct backward passes (cuDNN's with TF32 included) at ~1e-2. The
    gradients through the reference's own mask are recorded too (``rel_err_ref_mask``, informational)."""

    def __init__(self, shape: Shape, reference, inp: dict, keys: Sequence[str]):
        self.keys = list(keys)
        self.relu = _epilogue_kwargs(shape)["activation"] == "relu"
        up = {}
        for k, v in inp.items():
            if v is None:
                up[k] = None
                continue
            t = v.detach().float()
            if k in ("x", "residual", "grad_out"):
                t = t.contiguous(memory_format=torch.channels_last)
            up[k] = t.requires_grad_(k in self.keys)
        self.up = up
        with tf32(False):
            self.z = on_dict(make_reference(shape, reference, pre_activation=True))(up)
        zd = self.z.detach()
        self.y = torch.relu(zd) if self.relu else zd
        self._ref_mask_grads = None

    def grads(self, y_impl: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Reference gradients through ``[y_impl > 0]`` (``None``: the reference's own mask)."""
        g = self.up["grad_out"]
        if self.relu:
            y = self.y if y_impl is None else y_impl.detach().float()
            g = g * (y > 0)
        with tf32(False):
            gr = torch.autograd.grad(self.z, [self.up[k] for k in self.keys], g, retain_graph=True)
        return {k: t.detach() for k, t in zip(self.keys, gr)}

    def ref_mask_grads(self) -> dict[str, torch.Tensor]:
        if self._ref_mask_grads is None:
            self._ref_mask_grads = self.grads(None)
        return self._ref_mask_grads


def check_impl(fn, inp: dict, keys: Sequence[str], oracle: Oracle, threshold: float) -> dict:
    """Relative errors of fn's output and grads vs the oracle; status PASS / FAIL / ERROR."""
    t0 = time.perf_counter()
    try:
        y, grads = run_pass(fn, inp, keys)
        sync(y.device)
    except Exception as e:  # noqa: BLE001 - reported, the run goes on
        return {
            "status": "ERROR",
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
            "first_call_s": time.perf_counter() - t0,
        }
    first_call_s = time.perf_counter() - t0
    out = {"threshold": threshold, "first_call_s": first_call_s}
    if tuple(y.shape) != tuple(oracle.y.shape):
        out.update(status="FAIL", error=f"output shape {tuple(y.shape)} != expected {tuple(oracle.y.shape)}")
        return out
    errs = {"y": rel_err(y, oracle.y)}
    g_ref = oracle.grads(y)
    for k in keys:
        errs[f"d{k}"] = rel_err(grads[k], g_ref[k])
    bad = {k: v for k, v in errs.items() if not (v <= threshold)}  # NaN fails too
    out.update(status="FAIL" if bad else "PASS", rel_err=errs)
    if oracle.relu:
        out["relu_mask_mismatch"] = ((y.detach().float() > 0) != (oracle.y > 0)).float().mean().item()
        g_own = oracle.ref_mask_grads()
        out["rel_err_ref_mask"] = {f"d{k}": rel_err(grads[k], g_own[k]) for k in keys}
    if bad:
        out["error"] = ", ".join(f"{k} rel err {v:.3g} > {threshold:g}" for k, v in bad.items())
    return out


def do_bench_timer(warmup_ms: float, rep_ms: float) -> Callable[[Callable[[], None]], float]:
    """Median ms of fn by triton.testing.do_bench (CUDA events, L2 flushed before every call)."""
    from triton.testing import do_bench

    def timer(fn):
        try:
            return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
        except TypeError:  # very old triton: no return_mode
            return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5])[0])

    return timer


def cudagraph_timer(rep_ms: float) -> Callable[[Callable[[], None]], float]:
    """Median ms per call of fn replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``): host
    overhead removed, no L2 flush (the input rotation still spreads the calls over > 100 MB)."""
    from triton.testing import do_bench_cudagraph

    def timer(fn):
        try:
            return float(do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        except Exception:
            try:  # leave no half-finished capture behind for the next measurement
                torch.cuda.synchronize()
            except Exception:
                pass
            raise

    return timer


def time_impls(closures: dict[str, dict[str, Callable]], timer, rounds: int = 2) -> dict:
    """{impl: {pass: summary}}; rounds interleaved across implementations and passes. A failure while timing
    one (impl, pass) is recorded as {"error": ...} and the others go on."""
    raw: dict[str, dict[str, list[float]]] = {i: {p: [] for p in c} for i, c in closures.items()}
    errors: dict[str, dict[str, str]] = {}
    for _ in range(rounds):
        for impl, passes in closures.items():
            for p, fn in passes.items():
                if p in errors.get(impl, {}):
                    continue
                try:
                    raw[impl][p].append(timer(fn))
                except Exception as e:  # noqa: BLE001
                    errors.setdefault(impl, {})[p] = f"{type(e).__name__}: {e}"[:1000]
    out: dict[str, dict] = {}
    for impl, passes in raw.items():
        out[impl] = {}
        for p, vals in passes.items():
            if p in errors.get(impl, {}):
                out[impl][p] = {"error": errors[impl][p]}
            elif vals:
                out[impl][p] = summarize(vals)
    return out


def tflops(flops: int, ms: float | None) -> float | None:
    if ms is None or not ms > 0:
        return None
    return flops / (ms * 1e-3) / 1e12


def derive(rec: dict) -> None:
    """Fill speedups (t_baseline / t_ours; only when ours passed its check) and TFLOP/s for the event timings
    (``times`` -> ``speedup``, ``tflops``) and the CUDA-graph timings (``times_graph`` -> ``speedup_graph``,
    ``tflops_graph``)."""
    ours_ok = rec.get("check", {}).get("ours", {}).get("status") == "PASS"
    rec["ours_status"] = rec.get("check", {}).get("ours", {}).get("status", "NOT RUN")
    fl = {"fwd": rec["flops_fwd"], "fwdbwd": rec["flops_fwdbwd"]}
    for src, sp_key, tf_key in (
        ("times", "speedup", "tflops"),
        ("times_graph", "speedup_graph", "tflops_graph"),
    ):
        times = rec.get(src)
        if times is None:
            continue

        def ms(impl, p, times=times):
            return times.get(impl, {}).get(p, {}).get("ms")

        speed = {}
        for b in BASELINES:
            for p in PASSES:
                to, tb = ms("ours", p), ms(b, p)
                speed[f"{p}_vs_{b}"] = tb / to if (ours_ok and to and tb) else None
        rec[sp_key] = speed
        rec[tf_key] = {
            impl: {p: tflops(fl[p], ms(impl, p)) for p in PASSES}
            for impl in times
            if impl != "ours" or ours_ok
        }


def run_config(
    shape: Shape,
    n: int,
    dtype_name: str,
    device,
    impl_names: Sequence[str],
    conv2d,
    reference,
    timer,
    *,
    rounds: int = 2,
    seed: int = 0,
    compile_modes=None,
    graph_timer=None,
) -> dict:
    """Check and time every implementation for one (shape, batch, dtype) with ``timer`` (and ``graph_timer``
    when given). Never raises for a failure of one implementation; the record says what happened."""
    dtype = DTYPES[dtype_name]
    t_start = time.perf_counter()
    P, Q = shape.out_hw
    rec = {
        "shape": shape.name,
        "spec": {**asdict(shape), "P": P, "Q": Q},
        "batch": n,
        "dtype": dtype_name,
        "flops_fwd": shape.flops_fwd(n),
        "flops_fwdbwd": shape.flops_fwdbwd(n),
        "check": {},
        "times": {},
    }
    nb = set_bytes(shape, n, dtype)
    k_sets = num_sets(nb)
    rec["set_bytes"], rec["input_sets"] = nb, k_sets
    sets = [make_inputs(shape, n, dtype, device, seed + i) for i in range(k_sets)]
    keys = grad_keys(sets[0])
    reset_dynamo()
    with tf32(dtype == torch.float32):
        impls = build_impls(shape, impl_names, conv2d, reference, compile_modes)
        orc = Oracle(shape, reference, sets[0], keys)
        thr = THRESHOLDS[dtype_name]
        for name, fn in impls.items():
            rec["check"][name] = check_impl(fn, sets[0], keys, orc, thr)
        del orc
        timed = {}
        for name, fn in impls.items():
            st = rec["check"][name]["status"]
            # Never time a wrong (or crashing) result of ours; a baseline that errors cannot be timed either.
            if st == "ERROR" or (name == "ours" and st != "PASS"):
                continue
            timed[name] = make_closures(fn, sets, keys)
        rec["times"] = time_impls(timed, timer, rounds=rounds)
        if graph_timer is not None:
            rec["times_graph"] = time_impls(timed, graph_timer, rounds=rounds)
    derive(rec)
    del sets, impls, timed
    rec["wall_s"] = time.perf_counter() - t_start
    return rec


# ----------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------
def _fx(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _fms(t: dict | None) -> str:
    if not t:
        return "—"
    if "error" in t:
        return "error"
    return f"{t['ms']:.3f}"


def _ftf(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def geomean(vals: Sequence[float]) -> float | None:
    vals = [v for v in vals if v is not None and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _err_summary(chk: dict) -> str:
    errs = chk.get("rel_err") or {}
    return " ".join(f"{k}={v:.1e}" for k, v in errs.items())


TIMING_KINDS = (
    # (times key, speedup key, tflops key, title)
    (
        "times",
        "speedup",
        "tflops",
        "latency: do_bench, CUDA events per call, L2 flushed, host overhead included",
    ),
    ("times_graph", "speedup_graph", "tflops_graph", "GPU time: CUDA-graph replay, host overhead removed"),
)


def _speedup_table(records, base, sp_key) -> list[str]:
    L = []
    cols = [f"{p_lbl} vs {b}" for p_lbl in ("fwd", "f+b") for b in base]
    L.append("| shape | N | dtype | check | " + " | ".join(cols) + " |")
    L.append("|---|---:|---|---|" + "---:|" * len(cols))
    groups: dict[tuple, dict[str, list]] = {}
    for r in records:
        sp = r.get(sp_key, {})
        vals = [sp.get(f"{p}_vs_{b}") for p in PASSES for b in base]
        status = r.get("ours_status", "?")
        status_cell = "PASS" if status == "PASS" else f"**{status}**"
        L.append(
            f"| {r['shape']} | {r['batch']} | {r['dtype']} | {status_cell} | "
            + " | ".join(_fx(v) for v in vals)
            + " |"
        )
        g = groups.setdefault((r["dtype"], r["batch"]), {c: [] for c in cols})
        for c, v in zip(cols, vals):
            g[c].append(v)
    for (dt, n), g in groups.items():
        L.append(f"| **geomean** | {n} | {dt} | | " + " | ".join(_fx(geomean(g[c])) for c in cols) + " |")
    return L


def _absolute_table(records, impls, base, t_key, tf_key) -> list[str]:
    L = []
    hdr = [f"{i} fwd" for i in impls] + [f"{i} f+b" for i in impls]
    hdr += ["ours TF/s fwd / f+b"] + [f"{b} TF/s fwd / f+b" for b in base]
    L.append("| shape | N | dtype | GFLOP fwd | " + " | ".join(hdr) + " | max spread |")
    L.append("|---|---:|---|---:|" + "---:|" * (len(hdr) + 1))
    for r in records:
        times = r.get(t_key, {})
        tf = r.get(tf_key, {})
        cells = [_fms(times.get(i, {}).get(p)) for p in PASSES for i in impls]
        cells += [
            f"{_ftf(tf.get(i, {}).get('fwd'))} / {_ftf(tf.get(i, {}).get('fwdbwd'))}" for i in ["ours", *base]
        ]
        spreads = [t.get("spread_pct") for ps in times.values() for t in ps.values() if "spread_pct" in t]
        spread = f"{max(spreads):.0f}%" if spreads else "—"
        L.append(
            f"| {r['shape']} | {r['batch']} | {r['dtype']} | {r['flops_fwd'] / 1e9:.2f} | "
            + " | ".join(cells)
            + f" | {spread} |"
        )
    return L


def render_markdown(meta: dict, records: Sequence[dict], impl_names: Sequence[str]) -> str:
    base = [b for b in BASELINES if b in impl_names]
    impls = list(impl_names)
    L = []
    L.append(f"# conv2d benchmark — {meta.get('gpu_name', '?')} — {meta.get('date', '')}")
    L.append("")
    L.append(
        f"torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
        f"cuDNN {meta.get('cudnn')}, driver {meta.get('driver')}, commit {meta.get('git_commit')}"
        f"{' (dirty)' if meta.get('git_dirty') else ''}, backend {meta.get('backend_resolved', meta.get('backend'))}."
    )
    L.append("")
    L.append(
        "Speedup = t_baseline / t_ours (higher is better; >1 means ours is faster). Each time is the mean of "
        "2 rounds, each the median of many calls rotating over >= 3 input sets when a set is < 100 MB. "
        "fwd = training-mode forward; f+b = forward + autograd.grad of x, w, bias (and residual). "
        "cudnn = F.conv2d (channels_last) + eager epilogue; compile = torch.compile of that "
        f"({', '.join(f'{k}: {v}' for k, v in meta.get('compile_modes', {}).items())}). "
        "fp32 runs allow TF32 everywhere. Epilogue: folded BN (scale, bias) + ReLU; `_res`: "
        "relu(residual + 0.17·(conv + bias)). FLOPs 2·N·K·P·Q·C·R·S (fwd), 3x for f+b. "
        "Two timings: *latency* (do_bench, events around each call) includes the host (Python, dispatch, "
        "launch) time whenever that exceeds the GPU time, as it does for most batch-32 layers here; *GPU time* "
        "(CUDA-graph replay) removes it and compares the kernels."
    )
    L.append("")
    bad = [r for r in records if r.get("ours_status") != "PASS"]
    if bad:
        L.append("## FAILURES (ours) — no speed ratios for these")
        L.append("")
        for r in bad:
            chk = r.get("check", {}).get("ours", {})
            msg = chk.get("error") or r.get("error") or ""
            L.append(
                f"- **{r.get('ours_status', 'ERROR')}** `{r['shape']}` N={r['batch']} {r['dtype']}: {msg}"
            )
        L.append("")
    warn = []
    for r in records:
        for b in base:
            chk = r.get("check", {}).get(b)
            if chk and chk.get("status") == "ERROR":
                warn.append(
                    f"- baseline {b} ERROR `{r['shape']}` N={r['batch']} {r['dtype']}: {chk.get('error', '')}"
                )
            elif chk and chk.get("status") != "PASS":
                warn.append(
                    f"- baseline {b} over the threshold (informational) `{r['shape']}` N={r['batch']} "
                    f"{r['dtype']}: {chk.get('error', '')}"
                )
        for t_key, *_ in TIMING_KINDS:
            for impl, passes in r.get(t_key, {}).items():
                for p, t in passes.items():
                    if "error" in t:
                        warn.append(
                            f"- timing error ({t_key}) {impl}/{p} `{r['shape']}` N={r['batch']} {r['dtype']}: "
                            f"{t['error'][:300]}"
                        )
    if warn:
        L.append("## Baseline checks / timing problems")
        L.append("")
        L.extend(warn)
        L.append("")

    present = [k for k in TIMING_KINDS if any(k[0] in r for r in records)] or [TIMING_KINDS[0]]
    for _t, sp_key, _, title in present:
        L.append(f"## Speedup of ours — {title}")
        L.append("")
        L.extend(_speedup_table(records, base, sp_key))
        L.append("")
    for t_key, _, tf_key, title in present:
        L.append(f"## Times (ms) and TFLOP/s — {title}")
        L.append("")
        L.extend(_absolute_table(records, impls, base, t_key, tf_key))
        L.append("")
    L.append("## Correctness (rel. error vs fp32 reference, TF32 off; ours)")
    L.append("")
    L.append(
        "Gradients are compared through each implementation's own ReLU mask (see `Oracle`); *mask flips* is "
        "the fraction of outputs whose sign (y > 0) differs from the reference."
    )
    L.append("")
    L.append("| shape | N | dtype | status | errors | mask flips | first call s (ours / compile) |")
    L.append("|---|---:|---|---|---|---:|---|")
    for r in records:
        chk = r.get("check", {})
        o = chk.get("ours", {})
        fc = [chk.get(i, {}).get("first_call_s") for i in ("ours", "compile")]
        fcs = " / ".join("—" if v is None else f"{v:.1f}" for v in fc)
        err = _err_summary(o) or (o.get("error") or r.get("error") or "")[:120]
        mm = o.get("relu_mask_mismatch")
        mms = "—" if mm is None else f"{mm:.1e}"
        L.append(
            f"| {r['shape']} | {r['batch']} | {r['dtype']} | {o.get('status', '?')} | {err} | {mms} | {fcs} |"
        )
    L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark inception_kernels conv2d (fused epilogue) vs cuDNN + eager and torch.compile. "
        "Needs a CUDA GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 32, bf16, fewer repeats (about 2 minutes on an H100 including compiles)",
    )
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="batch sizes (default 32 128; quick: 32)"
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=sorted(DTYPES),
        default=None,
        help="dtypes (default bf16 fp32; quick: bf16); fp32 runs allow TF32",
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="SUBSTRING",
        help="only shapes whose name contains one of these substrings; see --list",
    )
    p.add_argument("--list", action="store_true", help="list the shapes and exit")
    p.add_argument(
        "--max-autotune",
        action="store_true",
        help="also time torch.compile mode=max-autotune (CUDA graphs off, like the other "
        "implementations; slow to compile)",
    )
    p.add_argument(
        "--compile-cudagraphs",
        action="store_true",
        help="with --max-autotune use mode='max-autotune' itself (CUDA graphs on)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument(
        "--warmup-ms", type=float, default=None, help="do_bench warm-up per measurement (25; quick 10)"
    )
    p.add_argument(
        "--rep-ms", type=float, default=None, help="do_bench repetition time per measurement (100; quick 40)"
    )
    p.add_argument(
        "--no-cudagraph",
        action="store_true",
        help="skip the second timing (CUDA-graph replay, host overhead removed)",
    )
    p.add_argument("--rounds", type=int, default=2, help="times each configuration is measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="output folder (default benchmarks/results/<gpu-name-slug>-<YYYY-MM-DD>/)"
    )
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = [32] if args.quick else [32, 128]
    if args.dtypes is None:
        args.dtypes = ["bf16"] if args.quick else ["bf16", "fp32"]
    if args.warmup_ms is None:
        args.warmup_ms = 10.0 if args.quick else 25.0
    if args.rep_ms is None:
        args.rep_ms = 40.0 if args.quick else 100.0
    return args


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def write_results(out_dir: str, meta: dict, config: dict, records: list, impl_names) -> str:
    os.makedirs(out_dir, exist_ok=True)
    md = render_markdown(meta, records, impl_names)
    blob = {"meta": meta, "config": config, "results": records}
    tmp = os.path.join(out_dir, "bench_conv.json.tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(blob), f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "bench_conv.json"))
    with open(os.path.join(out_dir, "bench_conv.md"), "w") as f:
        f.write(md + "\n")
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes = select_shapes(args.shapes)
    if args.list:
        for s in SHAPES:
            P, Q = s.out_hw
            print(
                f"{s.name:28s} C={s.C:<4d} K={s.K:<4d} {s.H}x{s.W} -> {P}x{Q} kernel {s.R}x{s.S} "
                f"stride {s.stride} pad {s.padding} {s.epilogue}"
            )
        return 0
    if not shapes:
        print(f"bench_conv.py: no shape matches {args.shapes}; use --list", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "bench_conv.py: no CUDA GPU available -- this benchmark needs a CUDA GPU "
            "(see --help; run benchmarks/gpu_check.sh on a GPU machine).",
            file=sys.stderr,
        )
        return 3

    device = torch.device("cuda", torch.cuda.current_device())
    conv2d, reference = load_ops()
    configure_dynamo()
    try:
        torch.set_float32_matmul_precision("high")
    except Exception:
        pass

    impl_names = ["ours", "cudnn"]
    compile_modes = dict(COMPILE_MODES)
    if args.compile_cudagraphs:
        compile_modes["compile_max"] = "max-autotune"
    if not args.no_compile:
        impl_names.append("compile")
        if args.max_autotune:
            impl_names.append("compile_max")

    meta = environment(device)
    try:
        from inception_kernels import _backend

        meta["backend_resolved"] = _backend.resolve(torch.empty(0, device=device))
    except Exception as e:  # noqa: BLE001
        meta["backend_resolved"] = f"unknown ({type(e).__name__}: {e})"
    if meta["backend_resolved"] != "triton":
        print(
            f"WARNING: ours resolves to backend {meta['backend_resolved']!r}, not 'triton' "
            "(INCEPTION_KERNELS_BACKEND)",
            file=sys.stderr,
        )
    meta["compile_modes"] = {k: (v or "default") for k, v in compile_modes.items() if k in impl_names}
    day = _dt.date.today().isoformat()
    out_dir = args.out or os.path.join(REPO_ROOT, "benchmarks", "results", f"{slug(meta['gpu_name'] or 'cpu')}-{day}")
    config = {k: v for k, v in vars(args).items()}
    config["shapes_run"] = [s.name for s in shapes]
    config["impls"] = impl_names
    timer = do_bench_timer(args.warmup_ms, args.rep_ms)
    graph_timer = None if args.no_cudagraph else cudagraph_timer(max(args.rep_ms / 2, 10.0))

    print(
        f"bench_conv: {meta['gpu_name']} torch {meta['torch']} triton {meta['triton']}; "
        f"{len(shapes)} shapes x batches {args.batches} x {args.dtypes}; impls {impl_names}; out {out_dir}",
        flush=True,
    )
    records: list[dict] = []
    total = len(shapes) * len(args.batches) * len(args.dtypes)
    t0 = time.perf_counter()
    i = 0
    for dt in args.dtypes:
        for n in args.batches:
            for shape in shapes:
                i += 1
                head = f"[{i}/{total}] {shape.name} N={n} {dt}"
                try:
                    rec = run_config(
                        shape,
                        n,
                        dt,
                        device,
                        impl_names,
                        conv2d,
                        reference,
                        timer,
                        rounds=args.rounds,
                        seed=args.seed,
                        compile_modes=compile_modes,
                        graph_timer=graph_timer,
                    )
                except Exception as e:  # noqa: BLE001 - e.g. OOM building inputs; keep going
                    rec = {
                        "shape": shape.name,
                        "batch": n,
                        "dtype": dt,
                        "flops_fwd": shape.flops_fwd(n),
                        "flops_fwdbwd": shape.flops_fwdbwd(n),
                        "check": {},
                        "times": {},
                        "error": f"{type(e).__name__}: {e}"[:2000],
                        "traceback": traceback.format_exc()[-4000:],
                    }
                    derive(rec)
                    rec["ours_status"] = "ERROR"
                finally:
                    torch.cuda.empty_cache()
                records.append(rec)
                print(progress_line(head, rec), flush=True)
                write_results(out_dir, meta, config, records, impl_names)
    meta["total_wall_s"] = time.perf_counter() - t0
    md = write_results(out_dir, meta, config, records, impl_names)
    print()
    print(md)
    print(f"results: {out_dir}/bench_conv.json, bench_conv.md ({meta['total_wall_s']:.0f} s)")
    return 0


def progress_line(head: str, rec: dict) -> str:
    chk = rec.get("check", {}).get("ours", {})
    st = rec.get("ours_status", "?")
    parts = [f"{head}: ours {st}"]
    if st != "PASS":
        parts.append(f"({chk.get('error') or rec.get('error', '')})"[:300])
    for t_key, sp_key, label in (("times", "speedup", "events"), ("times_graph", "speedup_graph", "graph")):
        times = rec.get(t_key)
        if not times:
            continue
        for p in PASSES:
            cells = [f"{impl} {ps[p]['ms']:.3f}" for impl, ps in times.items() if "ms" in ps.get(p, {})]
            if cells:
                parts.append(f"| {label} {p} ms: " + ", ".join(cells))
        f = [f"{k} {v:.2f}x" for k, v in rec.get(sp_key, {}).items() if v is not None]
        if f:
            parts.append(f"| {label} speedup: " + ", ".join(f))
    parts.append(f"| {rec.get('wall_s', 0):.1f}s")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
