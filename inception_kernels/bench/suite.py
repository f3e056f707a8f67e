"""The GPU suite: ceilings, kernels, blocks, networks -> ``results.json``, ``report.md``, plots.

Time budget (one H100; compile times dominate): every section has a wall-clock budget, capped by a suite
deadline (full 450 s, quick 165 s), and once it is spent records the configurations (or compile baselines) it did
not run as *skipped* (with the reason) instead of overrunning. An item started inside the budget finishes, so a
section may overrun by one item.

The suite has not run on a GPU yet: the section budgets below are designed, not measured.

* full  (< 8 min): ceilings; 14 kernel shapes bf16 batch 32 + 6 representative shapes fp32(TF32), compile
  default everywhere and max-autotune on 3 shapes (~120 s); the memory-bound ops (pool2d, batch_norm_act,
  scaled_residual: 7 shapes bf16, ~35 s); 3 blocks batch 32 eval + train with max-autotune
  where the budget allows (~100 s); 4 networks eval batch 1 / 32 / 256 (+ CUDA graph) and train 64 / 128, compile
  default at eval batch 32 and train 64 (~200 s); no max-autotune for whole networks (minutes of
  autotuning each: over the budget).
* quick (< 3 min): ceilings (smaller); 6 representative conv shapes and 3 memory-bound op shapes bf16; 3 blocks eval + train (no max-autotune);
  inception_v3 eval batch 1 / 32 (compile at 32) and train 64 (no compile).
"""

from __future__ import annotations

import os
import time

import torch

from . import zoo
from .blocks import run_blocks
from .ceilings import measure_ceilings
from .common import Budget, configure_dynamo, torch_compiler
from .env import default_out_dir, environment
from .kernels import REPRESENTATIVE, SHAPES, run_kernels, select
from .memops import QUICK as MEM_QUICK
from .memops import run_memops
from .memops import select as select_mem
from .networks import run_networks
from .timing import EventTimer, FakeTimer, GraphTimer

SECTIONS = ("ceilings", "kernels", "blocks", "networks")

PLANS = {
    "full": {
        "ceilings": {"copy_mib": 1024, "matmul_n": 8192},
        "kernels": {"shapes": [s.name for s in SHAPES], "batches": (32,), "dtypes": ("bf16", "fp32"),
                    "fp32_shapes": REPRESENTATIVE, "compile_max_shapes": REPRESENTATIVE[:3], "budget_s": 120},
        "memops": {"cases": None, "batches": (32,), "dtypes": ("bf16",), "compile_max_cases": MEM_QUICK[-1:],
                   "budget_s": 35},
        "blocks": {"batch": 32, "compile_max": True, "budget_s": 100},
        "networks": {"names": tuple(zoo.NETWORKS), "eval_batches": (1, 32, 256), "train_batches": (64, 128),
                     "compile_batches": (32,), "compile_train": True, "compile_max_batches": (), "budget_s": 200},
        "event_ms": (25.0, 100.0),
        "graph_ms": 50.0,
        "deadline_s": 450,
    },
    "quick": {
        "ceilings": {"copy_mib": 512, "matmul_n": 8192},
        "kernels": {"shapes": REPRESENTATIVE, "batches": (32,), "dtypes": ("bf16",), "fp32_shapes": (),
                    "compile_max_shapes": (), "budget_s": 45},
        "memops": {"cases": MEM_QUICK, "batches": (32,), "dtypes": ("bf16",), "compile_max_cases": (),
                   "budget_s": 15},
        "blocks": {"batch": 32, "compile_max": False, "budget_s": 45},
        "networks": {"names": ("inception_v3",), "eval_batches": (1, 32), "train_batches": (64,),
                     "compile_batches": (32,), "compile_train": False, "compile_max_batches": (), "budget_s": 75},
        "event_ms": (10.0, 40.0),
        "graph_ms": 20.0,
        "deadline_s": 165,
    },
    # CPU structure test (fake timer, reference backend, toy sizes): every code path, seconds not minutes.
    "tiny": {
        "ceilings": {"copy_mib": 1, "matmul_n": 64},
        "kernels": {"shapes": REPRESENTATIVE[:3] + REPRESENTATIVE[-1:], "batches": (2,), "dtypes": ("bf16", "fp32"),
                    "fp32_shapes": REPRESENTATIVE[:1], "compile_max_shapes": REPRESENTATIVE[:1], "budget_s": None},
        "memops": {"cases": ("35x35_maxpool3s2_288", "35x35_bn_relu_288", "35x35_residual_320"), "batches": (2,),
                   "dtypes": ("fp32",), "compile_max_cases": ("35x35_bn_relu_288",), "budget_s": None},
        "blocks": {"batch": 2, "size": 5, "compile_max": True, "labels": ("v3_Mixed_6b", "irv2_Block17"),
                   "ours_dtype": torch.float32, "budget_s": None},
        "networks": {"names": ("googlenet",), "size": 64, "eval_batches": (1, 2), "train_batches": (2,),
                     "compile_batches": (2,), "compile_train": True, "compile_max_batches": (2,), "ours_dtype": torch.float32,
                     "budget_s": None},
        "event_ms": (1.0, 1.0),
        "graph_ms": 1.0,
    },
}  # fmt: skip


def match_names(patterns) -> tuple[list[str], list[str]]:
    """``(conv shape names, memory-bound op case names)`` that contain one of ``patterns`` (case-insensitive
    substrings; see ``inception-kernels bench --list``)."""
    from .memops import CASES

    pats = [p.lower() for p in patterns]

    def hit(name):
        return any(p in name.lower() for p in pats)

    return [s.name for s in SHAPES if hit(s.name)], [c.name for c in CASES if hit(c.name)]


def targeted_plan(base: str = "full", *, shapes=None, networks=None, batches=None, train_batches=None,
                  dtypes=None, compile: bool = True, max_autotune: bool = False, graph: bool = True,
                  rounds: int | None = None, warmup_ms: float | None = None, rep_ms: float | None = None,
                  seed: int = 0) -> dict:  # fmt: skip
    """A plan for a targeted run (``inception-kernels bench --shapes ... --networks ... --batches ...``): the
    ``base`` plan (``full`` or ``quick``) with what was asked for replacing its choices, and no time budget (a
    targeted run measures everything it was asked for).

    ``shapes``: substrings of conv shape / memory-bound op names (:func:`match_names`; ValueError if none
    matches); ``networks``: names of :data:`.zoo.NETWORKS`; ``batches``: kernel batches, network eval batches and
    (the first) the block batch; ``train_batches``: network train batches; ``dtypes``: kernel dtypes (every
    selected shape in each, fp32 included); ``compile=False``: no ``torch.compile`` baseline anywhere;
    ``max_autotune``: max-autotune for every selected shape, block and compiled network batch; ``graph=False``: no
    CUDA-graph replay (neither the kernels' graph timer nor the networks' ``ours@graph``); ``rounds`` / ``warmup_ms`` / ``rep_ms``: the measurement protocol; ``seed``: of the kernel
    input sets."""
    P = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PLANS[base].items()}
    P["name"] = f"targeted ({base})"
    P["deadline_s"] = None
    kern, mem, blk, net = P["kernels"], P["memops"], P["blocks"], P["networks"]
    for sec in (kern, mem, blk, net):
        sec["budget_s"] = None
    if shapes:
        conv_names, mem_names = match_names(shapes)
        if not conv_names and not mem_names:
            raise ValueError(f"no kernel shape matches {list(shapes)} (see `inception-kernels bench --list`)")
        kern["shapes"], mem["cases"] = conv_names, mem_names
    if shapes or dtypes:
        kern["fp32_shapes"] = None  # every selected shape in every dtype asked for
    if dtypes:
        kern["dtypes"] = mem["dtypes"] = tuple(dtypes)
    if batches:
        kern["batches"] = mem["batches"] = net["eval_batches"] = tuple(batches)
        blk["batch"] = batches[0]
        net["compile_batches"] = tuple(b for b in net["compile_batches"] if b in batches) or tuple(batches[:1])
    if train_batches:
        net["train_batches"] = tuple(train_batches)
    if networks:
        unknown = [n for n in networks if n not in zoo.NETWORKS]
        if unknown:
            raise ValueError(f"unknown network(s) {unknown}; choose from {list(zoo.NETWORKS)}")
        net["names"] = tuple(networks)
    if max_autotune:
        kern["compile_max_shapes"] = tuple(kern["shapes"])
        mem["compile_max_cases"] = tuple(mem["cases"] or ())
        blk["compile_max"] = True
        net["compile_max_batches"] = tuple(net["compile_batches"])
    if not compile:
        for sec in (kern, mem, blk):
            sec["compile"] = False
        net.update(compile_batches=(), compile_train=False, compile_max_batches=())
    for sec in (kern, mem):
        sec["seed"] = seed
    if rounds is not None:
        for sec in (kern, mem, blk, net):
            sec["rounds"] = rounds
    warm, rep = P["event_ms"]
    P["event_ms"] = (warm if warmup_ms is None else warmup_ms, rep if rep_ms is None else rep_ms)
    if not graph:
        P["graph_ms"] = None
        net["graph"] = False
    return P


def list_targets() -> str:
    """What a targeted run can select: conv shapes, memory-bound op cases, blocks, networks."""
    from .memops import CASES

    lines = ["conv2d shapes (--shapes SUBSTRING):"]
    for s in SHAPES:
        P, Q = s.out_hw
        lines.append(f"  {s.name:28s} C={s.C:<4d} K={s.K:<4d} {s.H}x{s.W} -> {P}x{Q} kernel {s.R}x{s.S} "
                     f"stride {s.stride} pad {s.padding} {'residual' if s.residual else 'bn_relu'}")  # fmt: skip
    lines.append("memory-bound ops (--shapes SUBSTRING):")
    lines += [f"  {c.name:28s} {c.op}" for c in CASES]
    lines.append("blocks:")
    lines += [f"  {label:28s} {net}.{path}" for label, (net, path, _, _) in zoo.BLOCKS.items()]
    lines.append("networks (--networks NAME):")
    lines += [f"  {n:28s} {lib}.{fn}, {size}x{size}" for n, (lib, fn, size) in zoo.NETWORKS.items()]
    return "\n".join(lines)


def run_suite(out_dir: str | None = None, *, quick: bool = False, plan: str | None = None, device=None,
              timers=None, compiler=None, sections=SECTIONS, plots: bool = True, log=print) -> dict:  # fmt: skip
    """Run the suite and write its results to ``out_dir`` (default ``benchmarks/results/<gpu>-<date>/``).

    ``timers``: timing backends (default: CUDA events + CUDA-graph replay); ``compiler``: ``f(fn, mode)``
    (default ``torch.compile``). The ``tiny`` plan with a :class:`~.timing.FakeTimer` and
    :func:`~.common.identity_compiler` runs the whole structure on a CPU."""
    from . import report

    if isinstance(plan, dict):  # a custom plan (tests): the keys of PLANS["tiny"]
        plan_name, P = plan.get("name", "custom"), plan
    else:
        plan_name = plan or ("quick" if quick else "full")
        P = PLANS[plan_name]
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the benchmark suite needs a CUDA GPU (try `inception-kernels bench --static`)")
    if timers is None:  # a plan with graph_ms None (targeted --no-graph): CUDA events only
        timers = [EventTimer(*P["event_ms"])] + ([GraphTimer(P["graph_ms"])] if P.get("graph_ms") else [])
    compiler = compiler or torch_compiler
    configure_dynamo()
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")
    t0 = time.perf_counter()
    meta = environment(dev)
    meta.update(mode=plan_name, timer=" + ".join(t.name for t in timers), sections=list(sections),
                plan={k: v for k, v in P.items()}, fake_timer=any(isinstance(t, FakeTimer) for t in timers))  # fmt: skip
    try:
        from .. import _backend

        meta["backend_resolved"] = _backend.resolve(torch.empty(0, device=dev))
    except Exception as e:  # noqa: BLE001
        meta["backend_resolved"] = f"unknown ({type(e).__name__})"
    out_dir = out_dir or default_out_dir(meta)
    results: dict = {"meta": meta}

    def save(final: bool = False):  # after every section (a crash keeps what was measured); plots at the end
        meta["total_wall_s"] = time.perf_counter() - t0
        report.write_gpu(out_dir, results, plots=plots and final)

    if "ceilings" in sections:
        results["ceilings"] = measure_ceilings(dev, timers[0], **P["ceilings"])
        log(f"[ceilings] copy {results['ceilings']['copy_gbs']:.0f} GB/s, bf16 matmul "
            f"{results['ceilings']['bf16_tflops']:.1f} TFLOP/s")  # fmt: skip
    ceil = results.get("ceilings")
    deadline = P.get("deadline_s")

    def section_budget(seconds):  # the section's own budget, capped by what the suite's deadline leaves
        if deadline is None:
            return Budget(seconds)
        left = deadline - (time.perf_counter() - t0)
        return Budget(left if seconds is None else min(seconds, left))

    tiny = P.get("tiny_shapes", plan_name == "tiny")
    if "kernels" in sections:
        k = dict(P["kernels"])
        budget = section_budget(k.pop("budget_s"))
        results["kernels"] = run_kernels(dev, timers, shapes=select(k.pop("shapes")), compiler=compiler, budget=budget,
                                         ceilings=ceil, tiny=tiny, log=log, **k)  # fmt: skip
        m = dict(P.get("memops") or {})
        if m:
            budget = section_budget(m.pop("budget_s", None))
            results["kernels"] += run_memops(dev, timers, cases=select_mem(m.pop("cases")), compiler=compiler,
                                             budget=budget, ceilings=ceil, tiny=tiny, log=log, **m)  # fmt: skip
        save()
    if "blocks" in sections:
        b = dict(P["blocks"])
        budget = section_budget(b.pop("budget_s"))
        results["blocks"] = run_blocks(
            dev, timers, compiler=compiler, budget=budget, ceilings=ceil, log=log, **b
        )
        save()
    if "networks" in sections:
        n = dict(P["networks"])
        budget = section_budget(n.pop("budget_s"))
        results["networks"] = run_networks(
            dev, timers, compiler=compiler, budget=budget, ceilings=ceil, log=log, **n
        )
    save(final=True)
    log(f"bench: results in {out_dir} ({meta['total_wall_s']:.0f} s)")
    return results


def dry_run(out_dir: str, plots: bool = True, log=print) -> dict:
    """The whole suite on the CPU at toy sizes: reference backend, fake timer, no compiler. Exercises the code
    paths and the report; every number in it is made up (the report says so)."""
    old = os.environ.get("INCEPTION_KERNELS_BACKEND")
    os.environ["INCEPTION_KERNELS_BACKEND"] = "reference"
    try:
        from .common import identity_compiler

        timers = [FakeTimer(), FakeTimer(kind="graph", ours_factor=0.4)]
        return run_suite(out_dir, plan="tiny", device="cpu", timers=timers, compiler=identity_compiler,
                         plots=plots, log=log)  # fmt: skip
    finally:
        if old is None:
            os.environ.pop("INCEPTION_KERNELS_BACKEND", None)
        else:
            os.environ["INCEPTION_KERNELS_BACKEND"] = old
