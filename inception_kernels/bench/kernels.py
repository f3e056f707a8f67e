"""Kernel benchmark: ``ops.conv2d`` (fused epilogue) on Inception's real layer shapes vs cuDNN + eager epilogue
and ``torch.compile`` (default, max-autotune) of the same reference, forward and forward+backward.

Implementations (one function ``fn(inp)`` each):
* ``ours``        -- ``inception_kernels.ops.conv2d`` with folded BN scale/bias + ReLU (or the scaled residual)
  in its epilogue;
* ``cudnn``       -- ``ops.reference.conv2d``: ``F.conv2d`` on channels_last (cuDNN) + the epilogue in eager ops;
* ``compile``     -- ``torch.compile`` of that reference (mode default), ``compile_max`` -- max-autotune (no CUDA
  graphs, like the others).

Correctness on the benchmark's own inputs (first input set): forward output and every gradient against the
fp32, TF32-off reference; the gradients flow through ours' own ReLU mask (a pre-activation within rounding of 0
may land on either side; that choice is the forward's and is checked there). Recorded for information: the
fraction of outputs whose sign differs from the reference (``relu_mask_mismatch``) and the gradient errors through
the reference's own mask (``rel_err_ref_mask``). A FAIL or ERROR of ours is
reported and that configuration gets no speed figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..utils import rel_err
from .common import COMPILE_MODES, DTYPES, Budget, finalize, identity_compiler, new_record, reset_dynamo, tf32
from .timing import Rotator, check_error, check_result, grad_errors, measure, num_sets, run_with_grads, upcast

RESIDUAL_SCALE = 0.17
THRESHOLDS = {"bf16": 2e-2, "fp16": 1e-2, "fp32": 5e-3}
PASSES = ("fwd", "fwdbwd")
BASELINES = ("cudnn", "compile", "compile_max")
# Our op on each conv route of the dispatch layer, beside ``ours`` (= what ``auto`` chooses per shape).
ROUTES = ("triton", "cudnn")


@dataclass(frozen=True)
class ConvShape:
    name: str
    C: int
    K: int
    H: int
    W: int
    R: int
    S: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    residual: bool = False  # relu(residual + 0.17·(conv + bias)) instead of relu(conv·scale + bias)

    @property
    def out_hw(self) -> tuple[int, int]:
        from ..ops._args import conv_out_hw

        return conv_out_hw(self.H, self.W, self.R, self.S, self.stride, self.padding)

    def flops(self, n: int) -> dict:
        P, Q = self.out_hw
        f = 2 * n * self.K * P * Q * self.C * self.R * self.S
        return {"fwd": f, "fwdbwd": 3 * f}

    def min_bytes(self, n: int, elem: int) -> dict:
        """fwd: x, w read once, y written once (+ residual read); fwdbwd adds grad_out and y (mask) read, x and w
        read again, dx and dw written (+ dresidual)."""
        P, Q = self.out_hw
        x, w, y = n * self.C * self.H * self.W, self.K * self.C * self.R * self.S, n * self.K * P * Q
        fwd = x + w + y + (y if self.residual else 0)
        bwd = 2 * y + 2 * x + 2 * w + (y if self.residual else 0)
        return {"fwd": fwd * elem, "fwdbwd": (fwd + bwd) * elem}

    def tiny(self) -> ConvShape:
        """The same kernel geometry at toy sizes (CPU structure tests)."""
        return ConvShape(self.name, min(self.C, 6), min(self.K, 8), min(self.H, 7), min(self.W, 7), self.R,
                         self.S, self.stride, self.padding, self.residual)  # fmt: skip


def _shape(hw, rs, ck, pad, stride=1, residual=False, tag=""):
    (H, W), (R, S), (C, K) = hw, rs, ck
    pad = (pad, pad) if isinstance(pad, int) else pad
    pad = (pad[0], pad[0], pad[1], pad[1]) if len(pad) == 2 else pad
    st = (stride, stride)
    sfx = f"s{stride}" if stride != 1 else ""
    return ConvShape(f"{H}x{W}_{R}x{S}{sfx}_{C}-{K}{tag}", C, K, H, W, R, S, st, tuple(pad), residual)


SHAPES: tuple[ConvShape, ...] = (
    _shape((17, 17), (1, 7), (128, 128), (0, 3)),  # v3 Mixed_6b 7x7 factorized
    _shape((17, 17), (7, 1), (128, 192), (3, 0)),
    _shape((17, 17), (1, 7), (160, 160), (0, 3)),  # v3 Mixed_6c/d
    _shape((17, 17), (7, 1), (160, 192), (3, 0)),
    _shape((17, 17), (1, 7), (192, 192), (0, 3)),  # v3 Mixed_6e, v4 Inception-B
    _shape((17, 17), (7, 1), (192, 192), (3, 0)),
    _shape((17, 17), (1, 1), (768, 192), 0),  # v3 17x17 1x1 reductions
    _shape((35, 35), (3, 3), (96, 96), 1),  # v3/v4 35x35 blocks
    _shape((35, 35), (5, 5), (48, 64), 2),  # v3 Mixed_5b 5x5
    _shape((8, 8), (1, 3), (384, 384), (0, 1)),  # v3 Mixed_7b/c
    _shape((8, 8), (3, 1), (384, 384), (1, 0)),
    _shape((8, 8), (3, 3), (448, 384), 1),
    _shape((299, 299), (3, 3), (3, 32), 0, stride=2, tag="_stem"),  # first conv, C=3
    _shape((35, 35), (1, 1), (128, 320), 0, residual=True, tag="_res"),  # IRv2 block35 up-projection
)
# --quick, and the fp32 / max-autotune subsets of the full run: one of each kind.
REPRESENTATIVE = ("17x17_1x7_192-192", "17x17_1x1_768-192", "35x35_3x3_96-96", "8x8_3x3_448-384",
                  "299x299_3x3s2_3-32_stem", "35x35_1x1_128-320_res")  # fmt: skip


def select(names=None) -> list[ConvShape]:
    """The shapes named (in :data:`SHAPES` order); ``None``: all of them."""
    return list(SHAPES) if names is None else [s for s in SHAPES if s.name in names]


# ----------------------------------------------------------------------------------------------------------
def make_inputs(shape: ConvShape, n: int, dtype, device, seed: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    P, Q = shape.out_hw

    def rnd(*size, std=1.0):
        return (torch.randn(*size, generator=g) * std).to(device=device, dtype=dtype)

    cl = torch.channels_last
    inp = {
        "x": rnd(n, shape.C, shape.H, shape.W).contiguous(memory_format=cl),
        "w": rnd(shape.K, shape.C, shape.R, shape.S, std=math.sqrt(2.0 / (shape.C * shape.R * shape.S))),
        "bias": rnd(shape.K, std=0.1),
        "scale": None,
        "residual": None,
        "grad_out": rnd(n, shape.K, P, Q).contiguous(memory_format=cl),
    }
    if shape.residual:
        inp["residual"] = rnd(n, shape.K, P, Q).contiguous(memory_format=cl)
    else:
        inp["scale"] = (torch.rand(shape.K, generator=g) + 0.5).to(device=device, dtype=dtype)
    for k in ("x", "w", "bias", "residual"):
        if inp[k] is not None:
            inp[k].requires_grad_(True)
    return inp


def grad_keys(inp: dict) -> list[str]:
    return [k for k in ("x", "w", "bias", "residual") if inp.get(k) is not None]


def _epilogue(shape: ConvShape) -> dict:
    return {"activation": "relu", "residual_scale": RESIDUAL_SCALE if shape.residual else 1.0}


def ours_fn(shape: ConvShape):
    from ..ops import conv2d

    ep = _epilogue(shape)

    def ours(inp):
        return conv2d(inp["x"], inp["w"], stride=shape.stride, padding=shape.padding, scale=inp["scale"],
                      bias=inp["bias"], residual=inp["residual"], **ep)  # fmt: skip

    return ours


def reference_fn(shape: ConvShape, pre_activation: bool = False):
    """Positional form ``f(x, w, scale, bias, residual)`` (what torch.compile traces)."""
    from ..ops import reference

    ep = _epilogue(shape)
    if pre_activation:
        ep["activation"] = None
    stride, padding = tuple(shape.stride), tuple(shape.padding)

    def ref(x, w, scale, bias, residual):
        return reference.conv2d(x, w, stride=stride, padding=padding, scale=scale, bias=bias, residual=residual,
                                **ep)  # fmt: skip

    return ref


def _on_dict(fn):
    return lambda inp: fn(inp["x"], inp["w"], inp["scale"], inp["bias"], inp["residual"])


def check(fn, shape: ConvShape, inp: dict, threshold: float) -> dict:
    """Relative errors of fn's output and gradients against the fp32 (TF32 off) reference."""
    keys = grad_keys(inp)
    try:
        y, grads = run_with_grads(fn, inp, keys)
    except Exception as e:  # noqa: BLE001
        return check_error(e)
    up = upcast(inp, keys)
    with tf32(False):
        z = _on_dict(reference_fn(shape, pre_activation=True))(up)
        want = torch.relu(z.detach())
        mask, ref_mask = y.detach().float() > 0, want > 0
        g_ref = torch.autograd.grad(z, [up[k] for k in keys], up["grad_out"] * mask, retain_graph=True)
        g_ref_mask = torch.autograd.grad(z, [up[k] for k in keys], up["grad_out"] * ref_mask)
    rec = check_result(grad_errors(y, grads, want, g_ref, keys, "y"), threshold)
    # informational: how many outputs land on the other side of the ReLU, and the gradient errors through the
    # reference's own mask (what a check that ignored the forward's rounding would see)
    if mask.shape == ref_mask.shape:
        rec["relu_mask_mismatch"] = float((mask != ref_mask).float().mean())
    rec["rel_err_ref_mask"] = {f"d{k}": rel_err(g, r) for k, g, r in zip(keys, grads, g_ref_mask)}
    return rec


def closures(fn, sets, keys) -> dict:
    nf, nb = Rotator(sets), Rotator(sets)

    def fwd():
        fn(nf())

    def fwdbwd():
        inp = nb()
        y = fn(inp)
        torch.autograd.grad(y, [inp[k] for k in keys], inp["grad_out"])

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def bench_shape(shape: ConvShape, n: int, dtype_name: str, device, timers, *, impls=("ours", "cudnn", "compile"),
                compiler=None, rounds: int = 2, ceilings=None, seed: int = 0) -> dict:  # fmt: skip
    """Check and time one (shape, batch, dtype) with every timer (``[EventTimer, GraphTimer]`` on a GPU); graph
    timings go under ``"<impl>@graph"``."""
    compiler = compiler or identity_compiler
    reset_dynamo()
    dtype = DTYPES[dtype_name]
    elem = torch.empty((), dtype=dtype).element_size()
    rec = new_record("kernels", shape.name, {"batch": n, "dtype": dtype_name},
                     flops=shape.flops(n), min_bytes=shape.min_bytes(n, elem))  # fmt: skip
    rec["params"]["spec"] = {**asdict(shape), "P": shape.out_hw[0], "Q": shape.out_hw[1]}
    t0 = time.perf_counter()
    k_sets = num_sets(shape.min_bytes(n, elem)["fwd"] + 2 * n * shape.K * math.prod(shape.out_hw) * elem)
    sets = [make_inputs(shape, n, dtype, device, seed + i) for i in range(k_sets)]
    rec["params"]["input_sets"] = k_sets
    keys = grad_keys(sets[0])
    thr = THRESHOLDS[dtype_name]
    with tf32(dtype == torch.float32):
        fns = {}
        ref = reference_fn(shape)
        for name in impls:
            try:
                if name == "ours":
                    fns[name] = ours_fn(shape)
                elif name.startswith("ours_"):
                    fns[name] = _on_route(ours_fn(shape), name.removeprefix("ours_"))
                elif name == "cudnn":
                    fns[name] = _on_dict(ref)
                else:
                    fns[name] = _on_dict(compiler(ref, COMPILE_MODES[name]))
            except Exception as e:  # noqa: BLE001
                rec["baseline_checks"][name] = check_error(e)
        check_and_time(rec, fns, lambda fn: check(fn, shape, sets[0], thr), sets, keys, timers, rounds=rounds,
                       label=f"kernels/{shape.name}/{n}/{dtype_name}")  # fmt: skip
    ours = ["ours"] + [n for n in impls if n.startswith("ours_")]
    finalize(rec, [(f"{o}{s}", f"{b}{s}") for s in timer_suffixes(timers) for o in ours for b in BASELINES],
             ceilings)  # fmt: skip
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def _on_route(fn, route: str):
    """``fn`` with the dispatch layer forced to one conv route (forward and, through autograd, backward)."""
    from ..ops import dispatch

    def run(inp):
        with dispatch.use_backend(route):
            return fn(inp)

    return run


def check_and_time(rec: dict, fns: dict, check_one, sets, keys, timers, *, rounds: int, label: str) -> None:
    """Check every implementation (``check_one(fn)``: ours into ``rec["check"]``, baselines into
    ``rec["baseline_checks"]``), then time forward and forward+backward of each that may be timed -- never a wrong
    or crashing result of ours -- with every timer (a graph timer's times go under ``"<impl>@graph"``)."""
    for name, fn in fns.items():
        c = check_one(fn)
        if name == "ours":
            rec["check"] = c
        else:
            rec["baseline_checks"][name] = c
    timed = {}
    for name, fn in fns.items():
        st = rec["check"]["status"] if name == "ours" else rec["baseline_checks"][name]["status"]
        if st == "ERROR" or (name.startswith("ours") and st != "PASS"):
            continue
        timed[name] = closures(fn, sets, keys)
    for timer, sfx in zip(timers, timer_suffixes(timers)):
        res = measure(timed, timer, rounds=rounds, label=f"{label}{sfx}")
        rec["times"].update({f"{k}{sfx}": v for k, v in res.items()})


def timer_suffixes(timers) -> list[str]:
    return ["" if getattr(t, "kind", "events") == "events" else f"@{t.kind}" for t in timers]


def run_kernels(device, timers, *, shapes, batches=(32,), dtypes=("bf16",), compile_max_shapes=(),
                fp32_shapes=None, compiler=None, budget: Budget | None = None, rounds: int = 2, ceilings=None,
                tiny: bool = False, compile: bool = True, seed: int = 0, log=print) -> list[dict]:  # fmt: skip
    """Every (shape, batch, dtype); fp32 only for ``fp32_shapes`` (None: all), compile_max only for
    ``compile_max_shapes``; ``compile=False``: no ``torch.compile`` baseline at all. ``seed``: of the first input
    set (set ``i`` uses ``seed + i``). Past the budget the remaining configurations are recorded as skipped."""
    budget = budget or Budget(None)
    recs = []
    for dt in dtypes:
        for n in batches:
            for shape in shapes:
                if dt == "fp32" and fp32_shapes is not None and shape.name not in fp32_shapes:
                    continue
                impls = ["ours", *(f"ours_{r}" for r in ROUTES), "cudnn"] + (["compile"] if compile else [])
                if compile and shape.name in compile_max_shapes and budget.allows(60):
                    impls.append("compile_max")
                s = shape.tiny() if tiny else shape
                if not budget.allows(5):
                    rec = new_record("kernels", shape.name, {"batch": n, "dtype": dt})
                    rec["skipped"]["all"] = "time budget of the kernels section spent"
                    recs.append(rec)
                    continue
                try:
                    rec = bench_shape(s, n, dt, device, timers, impls=impls, compiler=compiler, rounds=rounds,
                                      ceilings=ceilings, seed=seed)  # fmt: skip
                except Exception as e:  # noqa: BLE001 - e.g. out of memory building inputs
                    rec = new_record("kernels", shape.name, {"batch": n, "dtype": dt})
                    rec["check"] = check_error(e)
                    finalize(rec, [], ceilings)
                if compile and "compile_max" not in impls and shape.name in compile_max_shapes:
                    rec["skipped"]["compile_max"] = "time budget"
                recs.append(rec)
                log(progress(rec))
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
    return recs


def progress(rec: dict) -> str:
    p = rec["params"]
    head = f"[{rec['section']}] {rec['name']} {' '.join(f'{k}={v}' for k, v in p.items() if k != 'spec')}"
    st = rec["check"].get("status")
    parts = [f"{head}: {st}"]
    if st != "PASS":
        parts.append(str(rec["check"].get("error", ""))[:200])
    for pair, by_pass in rec.get("ratios", {}).items():
        cells = [f"{q} {v:.2f}x" for q, v in by_pass.items() if v is not None]
        if cells:
            parts.append(f"{pair}: " + ", ".join(cells))
    return " | ".join(parts)
