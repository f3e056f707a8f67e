"""The headline table: whole networks, ours on every dispatch route against eager PyTorch and ``torch.compile``.

Per network (inception_v3 at 299² first; googlenet, inception_v4, inception_resnet_v2 as time allows), channels_last,
bf16, one row per implementation:

* ``eager``            -- the torchvision / timm model, fp32 weights under bf16 autocast;
* ``compile``          -- ``torch.compile`` (default mode) of that model;
* ``ours[<route>]``    -- ``inception_kernels.optimize(model)`` with ``INCEPTION_KERNELS_BACKEND=<route>`` for every
  call (routes: :data:`ROUTES`, data-driven; a route that raises is recorded as ``route unavailable: <reason>``).
  Ours runs as the eager row does: fp32 weights and input under bf16 autocast, which our ops follow
  (``ops.amp``: every conv in bf16, the BN / epilogue parameters in fp32; an eval plan keeps its weight cast and
  packed, eager autocast without its weight cache casts every weight on every call);
* ``ours[<route>]+compile`` -- ``torch.compile`` of that.

Columns: eval img/s at batch 256 (CUDA events, host included), latency at batch 1 (events) and its CUDA-graph
replay (the eval forward captured with a static input by :func:`~.common.graphed`), training img/s at batch 128
(forward + cross-entropy + backward + SGD-momentum step) and the peak working memory of a step, the first call's
time of every measurement (Triton JIT, torch.compile), and the correctness checks, at the measured batch sizes: the
eval logits of the same weights against the fp32 eager model, and for training the loss and the gradient norm of one
step (before any optimizer step) against the fp32 model in train mode, rel. error <= max(3e-2 eval / 5e-2 train, 2× the error of eager bf16 autocast itself).

Time: every measurement has a cost estimate (first-call compile times dominate; the estimates are replaced by the
measured first-call times of the same family as they come in); one that would not fit the budget is skipped and
the skip recorded. Under a :class:`~.timing.FakeClock` (dry run) the clock moves by the estimates.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..utils import rel_err
from . import zoo
from .blocks import randomize_
from .common import Budget, graphed, identity_compiler, reset_dynamo, tf32
from .memory import peak_memory
from .networks import THRESHOLDS, _logits, _no_dropout
from .timing import FakeClock, Rotator, check_error, check_result, measure, num_sets, sync, tolerances

ROUTES = ("auto", "cudnn", "triton")  # values of INCEPTION_KERNELS_BACKEND for ours, in order of value
KINDS = ("eval", "latency", "train")
ENV = "INCEPTION_KERNELS_BACKEND"

PLANS = {
    # batch sizes of the issue; size None = the network's native input size
    "gpu": {"size": None, "eval_batch": 256, "latency_batch": 1, "train_batch": 128,
            "dtype": torch.bfloat16, "rounds": 2},
    # CPU dry run: toy sizes (inception_v3 needs >= 75²), every code path, seconds not minutes
    "dry": {"size": {"googlenet": 32, "inception_v3": 75, "inception_v4": 75, "inception_resnet_v2": 75},
            "eval_batch": 2, "latency_batch": 1, "train_batch": 2, "dtype": torch.float32,
            "rounds": 1},  # fp32 (no autocast): CPU bf16 is slow
}  # fmt: skip

# First-guess seconds (check + first call + timing) per (family, kind) on an H100/H200; each is replaced by what the
# last measurement of its family took.
ESTIMATES = {
    ("eager", "eval"): 10, ("eager", "latency"): 5, ("eager", "train"): 12,
    ("ours", "eval"): 45, ("ours", "latency"): 20, ("ours", "train"): 60,
    ("compile", "eval"): 70, ("compile", "latency"): 45, ("compile", "train"): 110,
    ("ours+compile", "eval"): 70, ("ours+compile", "latency"): 45, ("ours+compile", "train"): 110,
}  # fmt: skip
TIMING_S = 3.0  # the timed part of a measurement (warm-up + 2 rounds) on top of its first call
MIN_NETWORK_S = 60.0  # a network whose eager and ours eval rows would not fit is skipped whole


def row_names(routes) -> list[str]:
    return ["eager", *(f"ours[{r}]" for r in routes), "compile", *(f"ours[{r}]+compile" for r in routes)]


def family(row: str) -> str:
    if row.startswith("ours"):
        return "ours+compile" if row.endswith("+compile") else "ours"
    return row


def route_of(row: str) -> str | None:
    return row[row.index("[") + 1 : row.index("]")] if row.startswith("ours[") else None


@contextlib.contextmanager
def route_env(route: str | None):
    """``INCEPTION_KERNELS_BACKEND=route`` inside the block (ours reads it at every call); restored after."""
    if route is None:
        yield
        return
    old = os.environ.get(ENV)
    os.environ[ENV] = route
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def _grad_norm(model) -> torch.Tensor:
    gs = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(gs).norm() if gs else torch.tensor(float("nan"))


def _loss(model, x, y, ac):
    with ac:
        out = _logits(model(x))
    return F.cross_entropy(out.float(), y)


class _Network:
    """Models, inputs and fp32 references of one network; rows are built on first use."""

    def __init__(self, name, plan, device, compiler, routes):
        self.name, self.plan, self.dev, self.compiler, self.routes = (
            name,
            plan,
            torch.device(device),
            compiler,
            routes,
        )
        size = plan["size"]
        self.size = (size.get(name) if isinstance(size, dict) else size) or zoo.native_size(name)
        self.dtype = plan["dtype"]
        self.cl = torch.channels_last
        # no autocast weight cache: the eval forward is captured in a CUDA graph (the PyTorch docs' advice)
        amp = self.dtype != torch.float32 and self.dev.type in ("cuda", "cpu")
        self.ac = (
            torch.autocast(self.dev.type, self.dtype, cache_enabled=False)
            if amp
            else contextlib.nullcontext()
        )
        with torch.device(self.dev):
            ref = zoo.reference_model(name)
        self.ref = randomize_(ref).eval()  # fp32, NCHW: the correctness reference
        g = torch.Generator(device="cpu").manual_seed(1)
        # checked at the measured batch sizes: a compiled row then compiles no extra shape for its check
        s, ne, nt = self.size, plan["eval_batch"], plan["train_batch"]
        self.x_check = torch.randn(ne, 3, s, s, generator=g).to(self.dev)
        self.x_train = torch.randn(nt, 3, s, s, generator=g).to(self.dev)
        self.y_train = torch.randint(0, 1000, (nt,), generator=g).to(self.dev)
        with torch.no_grad(), tf32(False):
            self.want_logits = _logits(self.ref(self.x_check)).float()
        sync(self.dev)
        if not bool(torch.isfinite(self.want_logits).all()) or float(self.want_logits.abs().max()) == 0.0:
            raise RuntimeError("degenerate fp32 reference logits: the checks would be vacuous")
        train_ref = _no_dropout(copy.deepcopy(self.ref)).train()
        with tf32(False):
            loss = _loss(train_ref, self.x_train, self.y_train, contextlib.nullcontext())
            loss.backward()
        self.want_loss, self.want_gnorm = loss.detach(), _grad_norm(train_ref)
        del train_ref
        self.models: dict[tuple[str, str], object] = {}
        self.ref_errs: dict[str, dict] = {}

    # ------------------------------------------------------------------ models
    def build(self, row: str, train: bool):
        """The model of ``row`` for eval or train (each a fresh copy of the reference weights)."""
        key = (row, "train" if train else "eval")
        if key in self.models:
            return self.models[key]
        m = _no_dropout(copy.deepcopy(self.ref)) if train else copy.deepcopy(self.ref)
        fam = family(row)
        # every row channels_last, weights included (ours then reads each weight as it is: no per-step copy)
        m = m.to(memory_format=self.cl)
        if fam.startswith("ours"):
            from ..convert import optimize

            with route_env(route_of(row)):
                m = optimize(m, inplace=True)
        m = m.train() if train else m.eval()
        if fam.endswith("compile"):
            m = self.compiler(m, None)
        self.models[key] = m
        return m

    def inputs(self, row, n, sets=True):
        k = num_sets(n * 3 * self.size * self.size * 4) if sets else 1
        g = torch.Generator(device="cpu").manual_seed(2)
        xs = [torch.randn(n, 3, self.size, self.size, generator=g) for _ in range(k)]
        return [x.to(self.dev).contiguous(memory_format=self.cl) for x in xs]

    def ctx(self, row):
        """Every row runs fp32 weights and input under the same autocast (none for an fp32 plan)."""
        return self.ac

    # ------------------------------------------------------------------ checks
    def check_eval(self, row) -> dict:
        m = self.build(row, train=False)
        x = self.x_check.contiguous(memory_format=self.cl)
        with torch.no_grad(), self.ctx(row):
            got = _logits(m(x)).float()
        sync(self.dev)
        errs = {"logits": rel_err(got, self.want_logits)}
        if row == "eager":
            self.ref_errs["eval"] = dict(errs)
        rec = check_result(errs, tolerances(THRESHOLDS["eval"], self.ref_errs.get("eval", errs)))
        rec["reference_autocast_rel_err"] = self.ref_errs.get("eval")
        return rec

    def check_train(self, row, m) -> dict:
        """One forward + backward of the train model from the reference weights (before any optimizer step)."""
        x = self.x_train.contiguous(memory_format=self.cl)
        m.zero_grad(set_to_none=True)
        loss = _loss(m, x, self.y_train, self.ctx(row))
        loss.backward()
        sync(self.dev)
        errs = {
            "loss": rel_err(loss.detach(), self.want_loss),
            "grad_norm": rel_err(_grad_norm(m), self.want_gnorm),
        }
        m.zero_grad(set_to_none=True)
        if row == "eager":
            self.ref_errs["train"] = dict(errs)
        rec = check_result(errs, tolerances(THRESHOLDS["train"], self.ref_errs.get("train", errs)))
        rec["reference_autocast_rel_err"] = self.ref_errs.get("train")
        return rec


def _first_call(fn, dev) -> float:
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def _ms(res: dict, impl: str, p: str):
    r = res.get(impl, {}).get(p, {})
    if "error" in r:
        raise RuntimeError(r["error"])
    return r.get("ms")


def _measure_eval(net: _Network, row, timer, rec):
    n = net.plan["eval_batch"]
    m = net.build(row, train=False)
    rot = Rotator(net.inputs(row, n))

    def fn():
        with torch.no_grad(), net.ctx(row):
            return m(rot())

    rec["first_call_s"]["eval"] = _first_call(fn, net.dev)
    res = measure(
        {row: {"eval": fn}}, timer, rounds=net.plan["rounds"], label=f"headline/{net.name}/eval/{row}"
    )
    ms = _ms(res, row, "eval")
    rec["eval_ms"], rec["eval_img_s"] = ms, (n / (ms * 1e-3) if ms else None)


def _measure_latency(net: _Network, row, timer, rec):
    n = net.plan["latency_batch"]
    m = net.build(row, train=False)
    x = net.inputs(row, n, sets=False)[0]  # one static input: what a CUDA graph replays

    def fn():
        with torch.no_grad(), net.ctx(row):
            return m(x)

    rec["first_call_s"]["latency"] = _first_call(fn, net.dev)
    res = measure({row: {"latency": fn}}, timer, rounds=net.plan["rounds"],
                  label=f"headline/{net.name}/latency/{row}")  # fmt: skip
    rec["latency_ms"] = _ms(res, row, "latency")
    try:
        replay = graphed(fn, net.dev)
        res = measure({f"{row}@graph": {"latency": replay}}, timer, rounds=net.plan["rounds"],
                      label=f"headline/{net.name}/latency/{row}@graph")  # fmt: skip
        rec["latency_graph_ms"] = _ms(res, f"{row}@graph", "latency")
    except Exception as e:  # noqa: BLE001 - the eager latency stays
        rec["errors"]["latency_graph"] = f"{type(e).__name__}: {e}"[:500]
        sync_quiet(net.dev)


def sync_quiet(dev):
    with contextlib.suppress(Exception):
        sync(dev)


def _measure_train(net: _Network, row, timer, rec):
    n = net.plan["train_batch"]
    m = net.build(row, train=True)
    rec["check_train"] = net.check_train(row, m)
    if rec["check_train"]["status"] != "PASS":
        return  # never a speed figure for a wrong result
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    x = net.inputs(row, n, sets=False)[0]
    y = torch.randint(0, 1000, (n,), generator=torch.Generator(device="cpu").manual_seed(3)).to(net.dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = _loss(m, x, y, net.ctx(row))
        loss.backward()
        opt.step()

    rec["first_call_s"]["train"] = _first_call(step, net.dev)
    with peak_memory(net.dev) as mem:
        step()
    rec["train_peak_mib"] = mem["peak_mb"]
    res = measure(
        {row: {"train": step}}, timer, rounds=net.plan["rounds"], label=f"headline/{net.name}/train/{row}"
    )
    ms = _ms(res, row, "train")
    rec["train_ms"], rec["train_img_s"] = ms, (n / (ms * 1e-3) if ms else None)


MEASURE: dict[str, Callable] = {"eval": _measure_eval, "latency": _measure_latency, "train": _measure_train}


def new_row(row: str) -> dict:
    return {"impl": row, "route": route_of(row), "status": "pending", "check_eval": {"status": "NOT RUN"},
            "check_train": {"status": "NOT RUN"}, "eval_img_s": None, "eval_ms": None, "latency_ms": None,
            "latency_graph_ms": None, "train_img_s": None, "train_ms": None, "train_peak_mib": None,
            "first_call_s": {}, "task_s": {}, "skipped": {}, "errors": {}}  # fmt: skip


def run_network(name: str, device, timer, *, plan: dict, routes=ROUTES, compiler=None, budget: Budget | None = None,
                clock=None, sink: Callable[[dict], None] | None = None, log=print) -> dict:  # fmt: skip
    """The headline rows of one network; ``sink(result)`` after every measurement (incremental writing)."""
    compiler = compiler or identity_compiler
    clock = clock or time.perf_counter
    budget = budget or Budget(None, clock)
    sink = sink or (lambda r: None)
    est = dict(ESTIMATES)
    res = {"network": name, "status": "running", "rows": {}, "skipped": {}, "estimates_s": {},
           "config": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in plan.items()}}  # fmt: skip
    if not budget.allows(MIN_NETWORK_S):
        res["status"] = f"skipped: would not fit (needs >= {MIN_NETWORK_S:.0f} s, {budget.left():.0f} s left)"
        sink(res)
        return res
    t0 = clock()
    reset_dynamo()
    try:
        net = _Network(name, plan, device, compiler, routes)
    except Exception as e:  # noqa: BLE001
        res["status"] = "ERROR: " + check_error(e)["error"]
        sink(res)
        return res
    res["config"]["size"] = net.size
    rows = {r: new_row(r) for r in row_names(routes)}
    res["rows"] = rows
    fake = isinstance(clock, FakeClock)
    groups = [
        [r for r in rows if family(r) in ("eager", "ours")],
        [r for r in rows if family(r).endswith("compile")],
    ]
    tasks = [(row, kind) for group in groups for kind in KINDS for row in group]  # ours vs eager first
    for row, kind in tasks:
        rec = rows[row]
        base = rec["impl"].split("+")[0]
        if rec["status"].startswith("route unavailable") or rec["check_eval"]["status"] in (
            "FAIL",
            "ERROR",
        ):
            continue
        if base != row and not rows[base]["status"].startswith("ok"):
            rec["status"] = f"skipped: {base} is {rows[base]['status'].split(':')[0]}"
            continue
        cost = est[(family(row), kind)] + (0.0 if fake else TIMING_S)
        if not budget.allows(cost):
            rec["skipped"][kind] = f"would not fit: ~{cost:.0f} s needed, {budget.left():.0f} s left"
            log(f"[headline] {name} {row} {kind}: skipped ({rec['skipped'][kind]})")
            sink(res)
            continue
        tk = clock()
        try:
            with route_env(route_of(row)):
                if rec["check_eval"]["status"] == "NOT RUN":
                    try:
                        rec["check_eval"] = net.check_eval(row)
                    except Exception as e:  # noqa: BLE001
                        if route_of(row) is not None and row == base:
                            rec["status"] = f"route unavailable: {type(e).__name__}: {e}"[:500]
                        else:
                            rec["check_eval"] = check_error(e)
                            rec["status"] = "ERROR"
                        raise
                    rec["status"] = "ok" if rec["check_eval"]["status"] == "PASS" else "check failed"
                if rec["check_eval"]["status"] == "PASS":
                    MEASURE[kind](net, row, timer, rec)
        except Exception as e:  # noqa: BLE001 - recorded, the table goes on
            if not rec["status"].startswith("route unavailable") and rec["status"] != "ERROR":
                rec["errors"][kind] = f"{type(e).__name__}: {e}"[:500]
            if torch.device(device).type == "cuda":
                sync_quiet(device)
                torch.cuda.empty_cache()
        first = rec["first_call_s"].get(kind)
        if fake and not rec["status"].startswith("route unavailable"):
            clock.advance(cost)
        took = clock() - tk
        if not fake and first is not None:  # what this measurement took (check, compile, timing) replaces the
            est[(family(row), kind)] = max(took, 1.0)  # estimate of its family
        res["estimates_s"] = {f"{f}/{k}": v for (f, k), v in est.items()}
        rec["task_s"][kind] = took
        rec["wall_s"] = rec.get("wall_s", 0.0) + took
        log(f"[headline] {name} {row} {kind}: {progress_cell(rec, kind)}")
        sink(res)
    res["status"] = "done"
    res["wall_s"] = clock() - t0
    del net
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    sink(res)
    return res


def progress_cell(rec: dict, kind: str) -> str:
    if kind in rec["errors"]:
        return "ERROR " + rec["errors"][kind][:200]
    if rec["status"].startswith("route unavailable"):
        return rec["status"]
    vals = {
        "eval": ("eval_img_s", "img/s"),
        "latency": ("latency_ms", "ms"),
        "train": ("train_img_s", "img/s"),
    }
    key, unit = vals[kind]
    v = rec.get(key)
    return (
        f"{v:.4g} {unit} ({rec['task_s'].get(kind, float('nan')):.1f} s incl. check and first call)"
        if v
        else rec["status"]
    )


# ------------------------------------------------------------------------------------------------ markdown
def _n(v, fmt="{:.0f}"):
    return fmt.format(v) if isinstance(v, (int, float)) and v is not None else "–"


def _cell(rec, key, kind, fmt="{:.0f}"):
    if kind in rec["skipped"]:
        return "skipped"
    if kind in rec["errors"]:
        return "ERROR"
    return _n(rec.get(key), fmt)


def _ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def markdown(res: dict, fake: bool = False) -> list[str]:
    """One network's table (ours ÷ eager: speed ratio, higher is better)."""
    cfg = res.get("config", {})
    lines = [f"### {res['network']} ({cfg.get('size')}², eval batch {cfg.get('eval_batch')}, latency batch "
             f"{cfg.get('latency_batch')}, train batch {cfg.get('train_batch')}, {cfg.get('dtype')}, channels_last)"
             + (" — FAKE TIMES (dry run)" if fake else ""), ""]  # fmt: skip
    if not res.get("rows"):
        return [*lines, f"{res.get('status')}", ""]
    lines += ["| impl | status | eval check | train check | eval img/s | × eager | lat ms | lat graph ms | "
              "train img/s | × eager | train peak MiB | s taken incl. compile (eval/lat/train) |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    eager = res["rows"].get("eager", {})
    notes = []
    for row, r in res["rows"].items():
        fc = "/".join(_n(r.get("task_s", {}).get(k), "{:.1f}") for k in KINDS)
        status = r["status"] if not r["status"].startswith("route unavailable") else "route unavailable"
        lines.append(
            f"| {row} | {status} | {r['check_eval']['status']} | {r['check_train']['status']} | "
            f"{_cell(r, 'eval_img_s', 'eval')} | {_ratio(r.get('eval_img_s'), eager.get('eval_img_s'))} | "
            f"{_cell(r, 'latency_ms', 'latency', '{:.2f}')} | {_n(r.get('latency_graph_ms'), '{:.2f}')} | "
            f"{_cell(r, 'train_img_s', 'train')} | {_ratio(r.get('train_img_s'), eager.get('train_img_s'))} | "
            f"{_n(r.get('train_peak_mib'))} | {fc} |"
        )
        if r["status"].startswith("route unavailable"):
            notes.append(f"- {row}: {r['status']}")
        notes += [f"- {row} {k}: skipped ({v})" for k, v in r["skipped"].items()]
        notes += [f"- {row} {k}: {v}" for k, v in r["errors"].items()]
        for c in ("check_eval", "check_train"):
            if r[c].get("status") in ("FAIL", "ERROR"):
                notes.append(f"- {row} {c}: {r[c].get('error')}")
    return [*lines, "", *notes, ""] if notes else [*lines, ""]
