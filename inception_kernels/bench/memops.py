"""Memory-bound fused ops on Inception's real shapes: ``ops.pool2d``, ``ops.batch_norm_act`` (training mode) and
``ops.scaled_residual``, forward and forward+backward, vs the eager PyTorch reference (``ops.reference``) and
``torch.compile`` of it (default, max-autotune).

These ops move bytes and do almost no arithmetic: besides the ratios, each record carries its minimal bytes
(every input read once, every output written once) and the achieved GB/s and % of the measured copy bandwidth.
Correctness on the benchmark's own first input set: output and input gradients (and BN's weight/bias gradients)
against the fp32 reference, same thresholds as the convolutions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .common import COMPILE_MODES, DTYPES, Budget, finalize, identity_compiler, new_record, reset_dynamo
from .kernels import THRESHOLDS, check_and_time, progress, timer_suffixes
from .timing import check_error, check_result, grad_errors, num_sets, run_with_grads, upcast

BASELINES = ("eager", "compile", "compile_max")


@dataclass(frozen=True)
class MemCase:
    name: str
    op: str  # maxpool / avgpool / bn_relu / residual
    C: int
    H: int
    W: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    scale: float = 0.17

    def out_hw(self) -> tuple[int, int]:
        if self.op in ("maxpool", "avgpool"):
            return ((self.H + 2 * self.padding - self.kernel) // self.stride + 1,
                    (self.W + 2 * self.padding - self.kernel) // self.stride + 1)  # fmt: skip
        return self.H, self.W

    def min_bytes(self, n: int, elem: int) -> dict:
        x = n * self.C * self.H * self.W
        y = n * self.C * math.prod(self.out_hw())
        if self.op == "residual":  # read x, y; write out | read g, out (mask); write dx, dy
            return {"fwd": 3 * x * elem, "fwdbwd": (3 * x + 4 * x) * elem}
        if self.op == "bn_relu":  # stats read + apply read + write | read g, x; write dx (2 passes over g, x)
            return {"fwd": 3 * x * elem, "fwdbwd": (3 * x + 5 * x) * elem}
        return {"fwd": (x + y) * elem, "fwdbwd": (x + y + y + x) * elem}

    def tiny(self) -> MemCase:
        return MemCase(self.name, self.op, min(self.C, 8), min(self.H, 9), min(self.W, 9), self.kernel,
                       self.stride, self.padding, self.scale)  # fmt: skip


CASES: tuple[MemCase, ...] = (
    MemCase("147x147_maxpool3s2_64", "maxpool", 64, 147, 147, 3, 2),  # v3 / v4 stem
    MemCase("35x35_avgpool3_288", "avgpool", 288, 35, 35, 3, 1, 1),  # v3 Mixed_5d pool branch
    MemCase("35x35_maxpool3s2_288", "maxpool", 288, 35, 35, 3, 2),  # v3 Mixed_6a reduction
    MemCase("35x35_bn_relu_288", "bn_relu", 288, 35, 35),  # training BN + ReLU, 35x35 grid
    MemCase("17x17_bn_relu_768", "bn_relu", 768, 17, 17),  # 17x17 grid
    MemCase("35x35_residual_320", "residual", 320, 35, 35, scale=0.17),  # IRv2 block35 merge
    MemCase("17x17_residual_1088", "residual", 1088, 17, 17, scale=0.10),  # IRv2 block17 merge
)
QUICK = ("35x35_avgpool3_288", "35x35_bn_relu_288", "35x35_residual_320")


def make_inputs(case: MemCase, n: int, dtype, device, seed: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    cl = torch.channels_last

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=g) * scale + shift).to(device=device, dtype=dtype)

    P, Q = case.out_hw()
    inp = {"x": rnd(n, case.C, case.H, case.W).contiguous(memory_format=cl).requires_grad_(True),
           "grad_out": rnd(n, case.C, P, Q).contiguous(memory_format=cl)}  # fmt: skip
    if case.op == "residual":
        inp["y"] = rnd(n, case.C, case.H, case.W).contiguous(memory_format=cl).requires_grad_(True)
    if case.op == "bn_relu":
        inp["weight"] = rnd(case.C, scale=0.2, shift=1.0).float().requires_grad_(True)
        inp["bias"] = rnd(case.C, scale=0.1).float().requires_grad_(True)
    return inp


def grad_keys(inp: dict) -> list[str]:
    return [k for k in ("x", "y", "weight", "bias") if k in inp]


def reference_fn(case: MemCase):
    """Positional form ``f(x, y_or_weight, bias)`` (what torch.compile traces)."""
    from ..ops import reference

    k, s, p = (case.kernel,) * 2, (case.stride,) * 2, (case.padding,) * 2
    if case.op in ("maxpool", "avgpool"):
        kind = "max" if case.op == "maxpool" else "avg"
        return lambda x, a=None, b=None: reference.pool2d(x, kind, k, s, p)
    if case.op == "residual":
        return lambda x, y, b=None: reference.scaled_residual(x, y, case.scale, True)
    # BN batch statistics without running stats (the fused op's statistics are the measured part)
    return lambda x, w, b: reference.batch_norm_act(x, w, b, None, None, 0.1, 1e-3, True)


def ours_fn(case: MemCase):
    from .. import ops

    k, s, p = (case.kernel,) * 2, (case.stride,) * 2, (case.padding,) * 2
    if case.op in ("maxpool", "avgpool"):
        kind = "max" if case.op == "maxpool" else "avg"
        return lambda inp: ops.pool2d(inp["x"], kind, k, s, p)
    if case.op == "residual":
        return lambda inp: ops.scaled_residual(inp["x"], inp["y"], case.scale, True)
    return lambda inp: ops.batch_norm_act(inp["x"], inp["weight"], inp["bias"], None, None, 0.1, 1e-3, True)


def _on_dict(fn, case: MemCase):
    if case.op == "residual":
        return lambda inp: fn(inp["x"], inp["y"], None)
    if case.op == "bn_relu":
        return lambda inp: fn(inp["x"], inp["weight"], inp["bias"])
    return lambda inp: fn(inp["x"], None, None)


def check(fn, case: MemCase, inp: dict, threshold: float) -> dict:
    keys = grad_keys(inp)
    try:
        out, grads = run_with_grads(fn, inp, keys)
    except Exception as e:  # noqa: BLE001
        return check_error(e)
    up = upcast(inp, keys)
    want = _on_dict(reference_fn(case), case)(up)
    g_ref = torch.autograd.grad(want, [up[k] for k in keys], up["grad_out"])
    return check_result(grad_errors(out, grads, want, g_ref, keys, "out"), threshold)


def bench_case(case: MemCase, n: int, dtype_name: str, device, timers, *, impls=("ours", "eager", "compile"),
               compiler=None, rounds: int = 2, ceilings=None, seed: int = 0) -> dict:  # fmt: skip
    compiler = compiler or identity_compiler
    reset_dynamo()
    dtype = DTYPES[dtype_name]
    elem = torch.empty((), dtype=dtype).element_size()
    mb = case.min_bytes(n, elem)
    rec = new_record("kernels", case.name, {"batch": n, "dtype": dtype_name, "op": case.op}, min_bytes=mb)
    t0 = time.perf_counter()
    k_sets = num_sets(mb["fwdbwd"])
    sets = [make_inputs(case, n, dtype, device, seed + i) for i in range(k_sets)]
    rec["params"]["input_sets"] = k_sets
    keys = grad_keys(sets[0])
    fns = {}
    for name in impls:
        try:
            if name == "ours":
                fns[name] = ours_fn(case)
            elif name == "eager":
                fns[name] = _on_dict(reference_fn(case), case)
            else:
                fns[name] = _on_dict(compiler(reference_fn(case), COMPILE_MODES[name]), case)
        except Exception as e:  # noqa: BLE001
            rec["baseline_checks"][name] = check_error(e)
    check_and_time(rec, fns, lambda fn: check(fn, case, sets[0], THRESHOLDS[dtype_name]), sets, keys, timers,
                   rounds=rounds, label=f"kernels/{case.name}/{n}/{dtype_name}")  # fmt: skip
    finalize(rec, [(f"ours{s}", f"{b}{s}") for s in timer_suffixes(timers) for b in BASELINES], ceilings)
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def run_memops(device, timers, *, cases, batches=(32,), dtypes=("bf16",), compile_max_cases=(), compiler=None,
               budget: Budget | None = None, rounds: int = 2, ceilings=None, tiny: bool = False,
               compile: bool = True, seed: int = 0, log=print) -> list[dict]:  # fmt: skip
    """Every (case, batch, dtype), as :func:`.kernels.run_kernels` does for the conv shapes."""
    budget = budget or Budget(None)
    recs = []
    for dt in dtypes:
        for n in batches:
            for case in cases:
                if not budget.allows(5):
                    rec = new_record("kernels", case.name, {"batch": n, "dtype": dt, "op": case.op})
                    rec["skipped"]["all"] = "time budget of the kernels section spent"
                    recs.append(rec)
                    continue
                impls = ["ours", "eager"] + (["compile"] if compile else [])
                if compile and case.name in compile_max_cases and budget.allows(40):
                    impls.append("compile_max")
                try:
                    rec = bench_case(case.tiny() if tiny else case, n, dt, device, timers, impls=impls,
                                     compiler=compiler, rounds=rounds, ceilings=ceilings, seed=seed)  # fmt: skip
                except Exception as e:  # noqa: BLE001
                    rec = new_record("kernels", case.name, {"batch": n, "dtype": dt, "op": case.op})
                    rec["check"] = check_error(e)
                    finalize(rec, [], ceilings)
                recs.append(rec)
                log(progress(rec))
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
    return recs


def select(names=None) -> list[MemCase]:
    return list(CASES) if names is None else [c for c in CASES if c.name in names]
