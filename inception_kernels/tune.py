"""Measure which conv implementation is fastest for each layer of a model on this GPU, and explain the choices.

``inception-kernels tune --model inception_v3 --batch 128 --dtype bf16 --train`` (or :func:`tune_model`):

1. runs the model once (forward, and backward with ``--train``) recording every conv problem the dispatch layer
   is asked about (:func:`inception_kernels.ops.dispatch.recording`), with the layer that asked;
2. for each distinct problem and direction, runs every implementation that supports it on fresh random inputs
   and checks it against the fp64 reference first (an implementation that fails the check is reported and never
   chosen), then times it (CUDA events, ``bench.timing.EventTimer``: warm-up, L2 flushed, median);
3. writes the winners to the GPU's tuning table (``dispatch.cache_path``; ``INCEPTION_KERNELS_CACHE_DIR``
   overrides the folder), which ``auto`` reads from then on, and returns / prints the table.

``--show`` (:func:`explain`) only runs step 1 and says which implementation every layer will run and why.
``INCEPTION_KERNELS_AUTOTUNE=1`` measures a problem the first time a model meets it (:func:`measure_and_store`).
Timers are injectable (``timer=``), so the whole path runs on a CPU in the tests with a fake timer.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .ops import dispatch

# (inception_kernels.ops is imported inside the functions: the command line must be able to choose the Triton
# interpreter after importing this module and before any kernel is defined)
# Relative error (vs the fp64 reference) an implementation must stay under to be timed at all. bf16/fp16 round
# the output (2^-8 / 2^-11 relative); fp32 may run TF32 on a GPU (2^-11 per product).
CHECK_TOL = {torch.float32: 5e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    layer: str
    family: str
    problem: dispatch.ConvProblem
    times_ms: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # implementation -> why it was not timed
    winner: str | None = None

    def as_entry(self) -> dict:
        return {"impl": self.winner, "times_ms": self.times_ms, "layer": self.layer,
                **({"failed": self.failed} if self.failed else {})}  # fmt: skip


class WallTimer:
    """Median wall time of ``repeat`` calls after one warm-up (a CPU; synchronizes a GPU around each call)."""

    name = "wall clock (time.perf_counter, median)"

    def __init__(self, repeat: int = 5):
        self.repeat = repeat

    def __call__(self, fn: Callable[[], object], label: str = "") -> float:
        fn()
        times = []
        for _ in range(self.repeat):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]


def default_timer(device: torch.device):
    if device.type == "cuda":
        from .bench.timing import EventTimer

        return EventTimer()
    return WallTimer()


# ----------------------------------------------------------------------------------------------------------
# Step 1: the problems of a model
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _layer_names(model: nn.Module):
    """While active, the top of ``dispatch.LAYER_STACK`` names the innermost module running its forward."""
    from .ops import dispatch

    stack = dispatch.LAYER_STACK
    depth = len(stack)
    hooks = []

    def enter(name):
        return lambda mod, args: stack.append(name or "<model>")

    def leave(mod, args, out):
        stack.pop()  # returns None: the module's output stays as it is

    for name, mod in model.named_modules():
        hooks.append(mod.register_forward_pre_hook(enter(name)))
        hooks.append(mod.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        del stack[depth:]


def record_model(
    model: nn.Module, x: torch.Tensor, train: bool = False
) -> list[tuple[str, str, object, object]]:
    """(layer, family, problem, choice) of every dispatch decision one forward (+ backward if ``train``) makes.

    Backward problems are named after the forward layer of the same geometry."""
    from .ops import dispatch

    model.train(train)
    with _layer_names(model), dispatch.recording() as log:
        with contextlib.nullcontext() if train else torch.no_grad():
            out = model(x)
            if train:
                logits = out[0] if isinstance(out, tuple) else out
                logits.float().sum().backward()
    geometry = {}
    for family, problem, _, layer in log:
        if family == "conv_fwd":
            geometry.setdefault(dispatch.backward_problem(problem), layer)
    return [
        (layer or geometry.get(problem, "<backward>") if family in dispatch.CONV_FAMILIES else layer, family, problem,
         choice)
        for family, problem, choice, layer in log
    ]  # fmt: skip


def explain(model: nn.Module, x: torch.Tensor, train: bool = False) -> list[dict]:
    """Which implementation each layer runs on input ``x`` and why (one row per distinct conv problem and
    direction, in execution order). Runs the model once."""
    from .ops import dispatch

    rows, seen = [], set()
    for layer, family, problem, choice in record_model(model, x, train):
        if family not in dispatch.CONV_FAMILIES or (family, problem) in seen:
            continue
        seen.add((family, problem))
        rows.append({"layer": layer, "family": family, "shape": dispatch.describe(family, problem),
                     "impl": choice.impl, "why": choice.why, "key": problem.key(family)})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------------
# Step 2: measure one problem
# ----------------------------------------------------------------------------------------------------------
def _inputs(problem: dispatch.ConvProblem, family: str, device: torch.device, gen: torch.Generator) -> dict:
    from .ops import _tile

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=problem.dtype)

    p = problem
    P, Q = p.out_hw
    inp = {
        "x": rnd(p.N, p.C, p.H, p.W).contiguous(memory_format=torch.channels_last),
        "weight": rnd(p.K, p.C, p.R, p.S, scale=(p.C * p.R * p.S) ** -0.5),
        "scale": (torch.rand(p.K, generator=gen) + 0.5).to(device) if p.scale else None,
        "bias": torch.randn(p.K, generator=gen).to(device) if p.bias else None,
        "residual": rnd(p.N, p.K, P, Q).contiguous(memory_format=torch.channels_last) if p.residual else None,
    }
    if family != "conv_fwd":
        inp["gp"] = rnd(p.N, p.K, P, Q).contiguous(memory_format=torch.channels_last)
    if family == "conv_fwd" and p.out2:
        k1 = max(1, p.K // 2)
        inp["out"] = _tile.new_cl((p.N, k1, P, Q), inp["x"])
        inp["out2"] = _tile.new_cl((p.N, p.K - k1, P, Q), inp["x"])
    if family == "conv_fwd" and p.stats:
        inp["stats"] = True
    return inp


def _runner(
    family: str, impl: dispatch.Impl, problem: dispatch.ConvProblem, inp: dict
) -> Callable[[], object]:
    from .ops import conv_triton

    st, pad = problem.stride, problem.padding
    if family == "conv_fwd":
        M = problem.N * problem.out_hw[0] * problem.out_hw[1]

        def run():
            stats = conv_triton.stats_partials(M, problem.K, inp["x"].device) if inp.get("stats") else None
            y = impl.fn(inp["x"], inp["weight"], inp["scale"], inp["bias"], inp["residual"], st, pad, 0.3,
                        problem.relu, inp.get("out"), inp.get("out2"), stats)  # fmt: skip
            return (y, inp["out2"]) if inp.get("out2") is not None else (y,)

        return run
    if family == "conv_dgrad":
        return lambda: impl.fn(inp["gp"], inp["x"], inp["weight"], inp["scale"], st, pad)
    return lambda: impl.fn(inp["gp"], inp["x"], inp["weight"], st, pad)


def _parts(result) -> tuple:
    """A runner's result as a tuple of float64 tensors (the split-destination forward returns both parts)."""
    return tuple(t.double() for t in (result if isinstance(result, tuple) else (result,)))


def _upcast(inp: dict) -> dict:
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}


def measure(family: str, problem: dispatch.ConvProblem, device: torch.device, timer=None, layer: str = "",
            seed: int = 0) -> Row:  # fmt: skip
    """Check, then time, every implementation of ``family`` that supports ``problem``; the fastest that passed
    its check wins. ``reference`` is the oracle, not a candidate (it would only be chosen if nothing else runs)."""
    from .ops import dispatch

    timer = timer or default_timer(device)
    row = Row(layer, family, problem)
    impls = dispatch.implementations(family)
    gen = torch.Generator().manual_seed(seed)
    inp = _inputs(problem, family, device, gen)
    want = _parts(_runner(family, impls["reference"], problem, _upcast(inp))())
    for name, impl in impls.items():
        if name == "reference":
            continue
        why = impl.reasons(problem)
        if why:
            row.failed[name] = "; ".join(why)
            continue
        run = _runner(family, impl, problem, inp)
        try:
            got = run()
        except Exception as e:  # an implementation that crashes on this problem is never chosen
            row.failed[name] = f"{type(e).__name__}: {e}"
            continue
        got = _parts(got)
        diff = sum((g.double() - w).norm() ** 2 for g, w in zip(got, want)) ** 0.5
        err = (diff / (sum(w.norm() ** 2 for w in want) ** 0.5).clamp_min(1e-30)).item()
        if not err <= CHECK_TOL[problem.dtype]:
            row.failed[name] = f"check failed: relative error {err:.2e} > {CHECK_TOL[problem.dtype]:.0e}"
            continue
        row.times_ms[name] = float(timer(run, f"{family}/{name}/{problem.key(family)}"))
    if row.times_ms:
        row.winner = min(row.times_ms, key=row.times_ms.get)
    return row


def _meta() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__,
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def measure_and_store(family: str, problem: dispatch.ConvProblem) -> None:
    """``INCEPTION_KERNELS_AUTOTUNE=1``: measure a problem met for the first time and add it to the table.
    Skipped (the rule decides this once) while a CUDA graph is being captured."""
    from .ops import dispatch

    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    device = torch.device("cuda", torch.cuda.current_device())
    with dispatch.use_backend("auto"):
        row = measure(family, problem, device)
    if row.winner is not None:
        dispatch.write_table(problem.device, {problem.key(family): row.as_entry()}, _meta())


# ----------------------------------------------------------------------------------------------------------
# Step 3: a whole model
# ----------------------------------------------------------------------------------------------------------
def tune_model(model: nn.Module, x: torch.Tensor, train: bool = False, timer=None, write: bool = True,
               progress: Callable[[Row], None] | None = None) -> list[Row]:  # fmt: skip
    """Measure every distinct conv problem of ``model`` on input ``x`` (forward, plus dgrad and wgrad when
    ``train``), write the winners to this device's tuning table (``write``) and return the rows."""
    from .ops import dispatch

    recorded = record_model(model, x, train)
    rows, seen = [], set()
    for layer, family, problem, _ in recorded:
        if family not in dispatch.CONV_FAMILIES or (family, problem) in seen:
            continue
        seen.add((family, problem))
        row = measure(family, problem, x.device, timer, layer)
        rows.append(row)
        if progress is not None:
            progress(row)
    if write:
        entries = {r.problem.key(r.family): r.as_entry() for r in rows if r.winner is not None}
        if entries:
            dispatch.write_table(dispatch.device_tag(x.device), entries, _meta())
    return rows


def format_rows(rows: list[Row]) -> str:
    from .ops import dispatch

    names = sorted({n for r in rows for n in (*r.times_ms, *r.failed)})
    head = "| layer | op | shape | " + " | ".join(f"{n} ms" for n in names) + " | winner |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for r in rows:
        cells = [
            f"{r.times_ms[n]:.4f}" if n in r.times_ms else ("n/a" if n in r.failed else "") for n in names
        ]
        lines.append(f"| {r.layer} | {r.family} | {dispatch.describe(r.family, r.problem).split(None, 1)[1]} | "
                     + " | ".join(cells) + f" | {r.winner or '-'} |")  # fmt: skip
    return "\n".join(lines)


def format_explain(rows: list[dict]) -> str:
    lines = ["| layer | op | shape | runs | why |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['family']} | {r['shape'].split(None, 1)[1]} | {r['impl']} | {r['why']} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Command line: inception-kernels tune
# ----------------------------------------------------------------------------------------------------------
TUNE_DESCRIPTION = (
    __doc__.split("\n\n")[0]
    + """

Examples:
  inception-kernels tune --model inception_v3 --batch 128 --dtype bf16 --train   # measure, write the table
  inception-kernels tune --show --model inception_v3 --batch 128 --dtype bf16     # what runs, and why
Without a GPU the kernels run in the Triton interpreter on tiny problems (use --width and --image-size); its
wall times say nothing about a GPU. --fake-timer runs the whole path with made-up times (a dry run)."""
)


def add_tune_arguments(p) -> None:
    p.add_argument("--model", required=True, help="a name of inception_kernels.models.list_models()")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--train", action="store_true", help="also measure dgrad and wgrad (a training step)")
    p.add_argument("--image-size", type=int, help="input height = width (default: the network's native size)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the network (tiny CPU runs)")
    p.add_argument("--show", action="store_true", help="only explain which implementation each layer runs")
    p.add_argument(
        "--fake-timer", action="store_true", help="dry run: deterministic made-up times, NOT timings"
    )
    p.add_argument("--markdown", help="also write the table here")


def _build(args):
    from .bench.zoo import NETWORKS
    from .models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.image_size or (NETWORKS[args.model][2] if args.model in NETWORKS else 299)
    kwargs = {"width_mult": args.width} if args.width != 1.0 else {}
    try:
        model = create_model(args.model, **kwargs)
    except TypeError as e:
        raise ValueError(f"--width: {args.model} has no width multiplier ({e})") from None
    model = model.to(device).to(memory_format=torch.channels_last)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.bfloat16:
        print("tune: the Triton interpreter has no bfloat16 arithmetic; using fp32 on this CPU")
        dtype = torch.float32
    model = model.to(dtype)
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    return model, x, device


def run_tune(args) -> int:
    from .ops import dispatch

    if not torch.cuda.is_available():
        print("tune: no CUDA GPU here; the kernels run in the Triton interpreter (CPU), so measured times are "
              "interpreter times, not GPU figures")  # fmt: skip
    try:
        model, x, device = _build(args)
    except ValueError as e:
        print(f"tune: {e}")
        return 2
    # without a GPU `auto` is the plain-PyTorch reference, which asks no questions: record our route instead
    scope = (
        dispatch.use_backend("triton") if device.type == "cpu" and dispatch.requested() == "auto" else None
    )
    with dispatch.use_backend(None) if scope is None else scope:
        if args.show:
            rows = explain(model, x, train=args.train)
            text = format_explain(rows) if rows else "(no conv runs on our kernels here)"
        else:
            from .bench.timing import FakeTimer

            timer = FakeTimer() if args.fake_timer else None

            def progress(r: Row) -> None:
                times = ", ".join(f"{k} {v:.4f} ms" for k, v in r.times_ms.items())
                print(f"  {r.layer:28s} {dispatch.describe(r.family, r.problem)}: {times} -> {r.winner}")

            rows = tune_model(
                model, x, train=args.train, timer=timer, write=not args.fake_timer, progress=progress
            )
            text = format_rows(rows)
            where = dispatch.cache_path(dispatch.device_tag(device))
            print(f"\n{len(rows)} problems; " + ("fake timer: table not written" if args.fake_timer else
                                                   f"table written: {where}"))  # fmt: skip
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0
