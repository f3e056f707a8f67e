"""Network benchmark: googlenet, inception_v3, inception_v4, inception_resnet_v2 -- ours vs the torchvision / timm
model.

* eval at batch 1 / 32 / 256: ours (bf16 weights and activations, channels_last, block engine), ours replayed
  from a CUDA graph (``ours@graph``), the reference in eager NCHW and eager channels_last (bf16 autocast), and
  ``torch.compile`` of the channels_last reference (default; max-autotune where the budget allows);
* train step (forward + backward, no optimizer) at batch 64 / 128: ours vs eager channels_last and compile.

Per implementation: median latency (ms per call), img/s, peak working memory (MiB above the resident weights and
inputs, CUDA allocator), achieved TFLOP/s (2·MACs per image forward, 3× that for a train step) and % of the
measured bf16 matmul peak. Correctness, on the benchmark's own first input set: ours' logits against the fp32
reference (eval; train mode with batch statistics too: logits and the classifier's weight gradient), rel. error <=
max(3e-2 eval / 5e-2 train, 2× the error of the reference itself under bf16 autocast).
"""

from __future__ import annotations

import copy
import time

import torch

from ..utils import count_macs, rel_err
from . import zoo
from .blocks import randomize_
from .common import (
    COMPILE_MODES,
    Budget,
    autocast,
    finalize,
    graphed,
    identity_compiler,
    new_record,
    reset_dynamo,
)
from .kernels import progress
from .memory import peak_memory
from .timing import Rotator, check_error, check_result, measure, num_sets, sync, tolerances

BASELINES = ("eager_nchw", "eager_cl", "compile", "compile_max")
THRESHOLDS = {"eval": 3e-2, "train": 5e-2}


def _no_dropout(model):
    """Dropout off (p=0) in a copy used for the train-mode check: the two models draw different masks."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def network_macs(name: str, size: int) -> int:
    return count_macs(zoo.our_model(name, "meta"), size)


def bench_network(name: str, device, timers, *, eval_batches=(1, 32, 256), train_batches=(64,), size=None,
                  compile_batches=(32,), compile_train: bool = True, compile_max_batches=(), compiler=None, ours_dtype=torch.bfloat16,
                  rounds: int = 2, ceilings=None, budget: Budget | None = None, graph: bool = True,
                  log=print) -> list[dict]:  # fmt: skip
    """One record per (mode, batch). ``compile_batches``: eval batches that also get ``torch.compile`` (each is
    a separate compile, ``dynamic=False``); ``compile_max_batches``: those that also get max-autotune;
    ``graph=False``: no ``ours@graph`` (our eval forward replayed from a CUDA graph)."""
    compiler = compiler or identity_compiler
    reset_dynamo()
    budget = budget or Budget(None)
    dev = torch.device(device)
    cl = torch.channels_last
    size = size or zoo.native_size(name)
    macs = network_macs(name, size)
    with torch.device(dev):
        ref = zoo.reference_model(name)
    # He-normal weights and near-identity BN statistics: activations keep their scale through the whole network
    # (the libraries' own inits shrink them towards 0 in eval, which would make the logits check vacuous)
    randomize_(ref).eval()
    ours = zoo.our_model(name, "meta").to_empty(device=dev)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours = ours.to(ours_dtype).to(memory_format=cl).eval()  # channels_last weights: read as they are
    ref_cl = copy.deepcopy(ref).to(memory_format=cl)
    ac = autocast(dev, enabled=ours_dtype != torch.float32)  # fp32 runs (CPU structure tests): no autocast
    recs = []
    compiled: dict[tuple, object] = {}

    def compiled_ref(mode_key, n, train):
        key = (mode_key, n, train)
        if key not in compiled:

            def f(x):
                with ac:
                    return ref_cl(x)

            compiled[key] = compiler(f, COMPILE_MODES[mode_key])
        return compiled[key]

    # ------------------------------------------------------------------ eval
    for n in eval_batches:
        t0 = time.perf_counter()
        rec = new_record("networks", name, {"mode": "eval", "batch": n, "size": size},
                         flops={"eval": 2 * macs * n}, items=n)  # fmt: skip
        recs.append(rec)
        if not budget.allows(10):
            rec["skipped"]["all"] = "time budget of the networks section spent"
            continue
        k = num_sets(n * 3 * size * size * 4)
        xs = [torch.randn(n, 3, size, size, device=dev) for _ in range(k)]
        try:
            with torch.no_grad():
                want = _logits(ref(xs[0]))
                got = _logits(ours(xs[0].to(ours_dtype).contiguous(memory_format=cl)))
                with ac:
                    want_ac = _logits(ref_cl(xs[0].contiguous(memory_format=cl)))
            sync(dev)
            if not bool(torch.isfinite(want).all()) or float(want.abs().max()) == 0.0:
                raise RuntimeError(
                    "degenerate reference logits (all zero or not finite): the check would be vacuous"
                )
            ref_errs = {"logits": rel_err(want_ac, want)}
            rec["check"] = check_result(
                {"logits": rel_err(got, want)}, tolerances(THRESHOLDS["eval"], ref_errs)
            )
            rec["check"]["reference_autocast_rel_err"] = ref_errs
        except Exception as e:  # noqa: BLE001
            rec["check"] = check_error(e)
        impls = {}
        if rec["check"]["status"] == "PASS":
            xo = Rotator([x.to(ours_dtype).contiguous(memory_format=cl) for x in xs])
            impls["ours"] = lambda xo=xo: ours(xo())
            try:
                x_static = xo()
                if graph:
                    with torch.no_grad():  # captured without autograd, like the eval calls
                        impls["ours@graph"] = graphed(lambda x_static=x_static: ours(x_static), dev)
            except Exception as e:  # noqa: BLE001
                rec["baseline_checks"]["ours@graph"] = check_error(e)
        xn, xc = Rotator(xs), Rotator([x.contiguous(memory_format=cl) for x in xs])

        def eager(m, rot):
            def f():
                with ac:
                    return m(rot())

            return f

        impls["eager_nchw"] = eager(ref, xn)
        impls["eager_cl"] = eager(ref_cl, xc)
        for mode_key, batches in (("compile", compile_batches), ("compile_max", compile_max_batches)):
            if n not in batches:
                continue
            if not budget.allows(120 if mode_key == "compile_max" else 45):
                rec["skipped"][mode_key] = "time budget"
                continue
            fn = compiled_ref(mode_key, n, False)
            impls[mode_key] = lambda fn=fn, xc=xc: fn(xc())
        _time_and_finalize(rec, impls, "eval", timers, rounds, dev, ceilings, train=False)
        rec["wall_s"] = time.perf_counter() - t0
        log(progress(rec))

    # ------------------------------------------------------------------ train
    for n in train_batches:
        t0 = time.perf_counter()
        rec = new_record("networks", name, {"mode": "train", "batch": n, "size": size},
                         flops={"train": 6 * macs * n}, items=n)  # fmt: skip
        recs.append(rec)
        if not budget.allows(10):
            rec["skipped"]["all"] = "time budget of the networks section spent"
            continue
        x = torch.randn(n, 3, size, size, device=dev)
        xc = x.contiguous(memory_format=cl)
        xb = xc.to(ours_dtype)
        try:
            ref_f = _no_dropout(copy.deepcopy(ref).float().train())
            want = _logits(ref_f(x))
            ours_c = _no_dropout(copy.deepcopy(ours).train())
            got = _logits(ours_c(xb))
            gw = torch.randn_like(want)
            want.backward(gw)
            got.backward(gw.to(got.dtype))
            ref_ac = _no_dropout(copy.deepcopy(ref).train())
            with ac:
                got_ac = _logits(ref_ac(xc))
            got_ac.backward(gw.to(got_ac.dtype))

            def fc_grad(m):  # the classifier's weight: the last 2-D parameter
                return next(p for p in reversed(list(m.parameters())) if p.dim() == 2).grad

            sync(dev)
            errs = {"logits": rel_err(got, want), "d_classifier": rel_err(fc_grad(ours_c), fc_grad(ref_f))}
            ref_errs = {
                "logits": rel_err(got_ac, want),
                "d_classifier": rel_err(fc_grad(ref_ac), fc_grad(ref_f)),
            }
            rec["check"] = check_result(errs, tolerances(THRESHOLDS["train"], ref_errs))
            rec["check"]["reference_autocast_rel_err"] = ref_errs
            del ref_f, ours_c, ref_ac
        except Exception as e:  # noqa: BLE001
            rec["check"] = check_error(e)
        impls = {}

        def step(m, inp, use_ac):
            def f():
                with ac if use_ac else _null():
                    out = _logits(m(inp))
                out.float().sum().backward()

            return f

        if rec["check"]["status"] == "PASS":
            impls["ours"] = step(ours, xb, False)
        impls["eager_cl"] = step(ref_cl, xc, True)
        if compile_train and n == train_batches[0]:  # one train compile per network (budget)
            if budget.allows(60):
                fn = compiled_ref("compile", n, True)

                def cstep(fn=fn, xc=xc):
                    _logits(fn(xc)).float().sum().backward()

                impls["compile"] = cstep
            else:
                rec["skipped"]["compile"] = "time budget"
        ours.train()  # train mode for the timed steps (not switched inside them)
        ref_cl.train()
        _time_and_finalize(rec, impls, "train", timers, rounds, dev, ceilings, train=True)
        rec["wall_s"] = time.perf_counter() - t0
        ours.eval()
        ref_cl.eval()
        log(progress(rec))
    for m in (ours, ref_cl, ref):
        m.zero_grad(set_to_none=True)
    return recs


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _time_and_finalize(rec, impls, p, timers, rounds, dev, ceilings, train: bool):
    timer = next((t for t in timers if getattr(t, "kind", "events") == "events"), timers[0])
    closures = {}
    for name, fn in impls.items():
        try:  # first call (compile, lazy init) outside the numbers; an error excludes this impl only
            with torch.no_grad() if not train else _null():
                fn()
                sync(dev)
                with peak_memory(dev) as mem:  # a second call: working memory above the resident state
                    fn()
            rec["memory"][name] = {p: mem["peak_mb"]}
        except Exception as e:  # noqa: BLE001
            rec["baseline_checks"][name] = check_error(e)
            continue

        def run(fn=fn):
            if train:
                fn()
            else:
                with torch.no_grad():
                    fn()

        closures[name] = {p: run}
    res = measure(
        closures, timer, rounds=rounds, label=f"networks/{rec['name']}/{p}/{rec['params']['batch']}"
    )
    rec["times"].update(res)
    pairs = [(o, b) for o in ("ours", "ours@graph") for b in BASELINES]
    finalize(rec, pairs, ceilings)
    for r in rec["times"].values():
        t = r.get(p, {})
        if "ms" in t:
            t["latency_ms"] = t["ms"]


def run_networks(device, timers, *, names=tuple(zoo.NETWORKS), budget: Budget | None = None, log=print,
                 **kwargs) -> list[dict]:  # fmt: skip
    recs = []
    for name in names:
        try:
            recs.extend(bench_network(name, device, timers, budget=budget, log=log, **kwargs))
        except Exception as e:  # noqa: BLE001
            rec = new_record("networks", name, {"mode": "eval", "batch": None})
            rec["check"] = check_error(e)
            finalize(rec, [])
            recs.append(rec)
            log(progress(rec))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return recs
