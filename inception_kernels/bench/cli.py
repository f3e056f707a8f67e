"""Arguments and entry point of ``inception-kernels bench`` (wired into :mod:`inception_kernels.cli`)."""

from __future__ import annotations

import argparse
import os
import sys

from .common import DTYPES
from .env import REPO_ROOT
from .memory import MEMORY_GOAL
from .zoo import NETWORKS

BENCH_DESCRIPTION = """\
One command, a complete picture (results.json, report.md with ratio tables -- ours ÷ baseline in speed, higher
is better -- and PNG plots):

  inception-kernels bench [--quick] [--out DIR]   on a CUDA GPU: ceilings (copy bandwidth, bf16 matmul), kernels
                                                  vs cuDNN + eager and torch.compile, blocks and networks vs
                                                  torchvision / timm eager and torch.compile; time-budgeted for
                                                  < 8 min on one H100 (--quick < 3 min; not yet run on a GPU).
                                                  Default DIR: benchmarks/results/<gpu>-<date>/
  inception-kernels bench --static [--out DIR]    anywhere (CPU): MACs and minimal bytes per layer, roofline floors
                                                  for an H100, launches per forward vs eager, saved activations per
                                                  image in training, the AOT resource table (sm_90
                                                  bf16 by default). Default DIR:
                                                  benchmarks/results/static/
  inception-kernels bench --dry-run --out DIR     the GPU suite's code paths on the CPU at toy sizes with a fake
                                                  timer (every number made up; the report says so)
  inception-kernels bench --memory [--networks inception_v3 googlenet] [--size 75] [--batches 2] [--goal 0.5]
                                                  anywhere: saved activations per image of one training step, ours
                                                  (fused path really run; the Triton interpreter on a CPU) vs
                                                  torchvision / timm, fp32; exit 1 above the goal ratio. With --out
                                                  DIR also DIR/memory.json
  inception-kernels bench --list                  the kernel shapes, memory-bound ops, blocks and networks

A targeted GPU run: any of --shapes, --networks, --batches, --train-batches, --dtypes, --no-compile,
--max-autotune, --no-graph, --rounds, --warmup-ms, --rep-ms, --seed replaces that choice of the full plan (of the
quick plan with --quick) and lifts the time budget, e.g.

  inception-kernels bench --shapes 17x17 _res --batches 32 128 --dtypes bf16 fp32 --max-autotune
  inception-kernels bench --networks inception_v3 googlenet --batches 1 32 --train-batches 64 --no-compile

--shapes alone runs the ceilings and the kernel section, --networks alone the ceilings and the networks
(--sections overrides).
"""


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the < 3 min subset (GPU suite)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--static", action="store_true", help="CPU-only static report (no GPU needed)")
    p.add_argument("--dry-run", action="store_true", help="GPU suite structure on the CPU with fake times")
    p.add_argument("--sections", nargs="+", default=None, choices=["ceilings", "kernels", "blocks", "networks"],
                   help="GPU suite: run only these sections")  # fmt: skip
    p.add_argument("--no-aot", action="store_true", help="--static: skip the AOT resource table")
    p.add_argument(
        "--aot-arch", type=int, nargs="+", default=[90], help="--static: AOT architectures (default sm_90)"
    )
    p.add_argument("--aot-dtype", nargs="+", default=["bf16"], choices=["fp32", "bf16", "fp16"],
                   help="--static: AOT dtypes (default bf16, the fast path)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list what a targeted run can select, then exit")
    p.add_argument("--memory", action="store_true", help="the saved-activation table (CPU or GPU)")
    p.add_argument("--size", type=int, default=75, help="--memory: input height = width (default 75, v3's minimum)")
    p.add_argument("--goal", type=float, default=MEMORY_GOAL,
                   help="--memory: exit 1 if a ratio ours/reference exceeds this (0 disables)")  # fmt: skip
    t = p.add_argument_group("targeted run (GPU suite; --networks and --batches also for --memory)")
    t.add_argument("--shapes", nargs="+", metavar="SUBSTRING",
                   help="only the conv shapes / memory-bound ops whose name contains one of these (see --list)")  # fmt: skip
    t.add_argument("--networks", nargs="+", choices=list(NETWORKS), help="only these networks")
    t.add_argument("--batches", type=int, nargs="+",
                   help="batch sizes of the kernels and the network eval rows (the first: the block batch)")  # fmt: skip
    t.add_argument("--train-batches", type=int, nargs="+", help="batch sizes of the network train steps")
    t.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="kernel dtypes (fp32 allows TF32)")
    t.add_argument("--no-compile", action="store_true", help="no torch.compile baseline")
    t.add_argument("--max-autotune", action="store_true",
                   help="also torch.compile max-autotune (no CUDA graphs) for every selected item (slow to compile)")  # fmt: skip
    t.add_argument("--compile-cudagraphs", action="store_true",
                   help="with --max-autotune: mode='max-autotune' itself (CUDA graphs on)")  # fmt: skip
    t.add_argument("--no-graph", action="store_true", help="no CUDA-graph replay timing (events only)")
    t.add_argument("--rounds", type=int, help="rounds each configuration is timed (default 2)")
    t.add_argument("--warmup-ms", type=float, help="do_bench warm-up per measurement")
    t.add_argument("--rep-ms", type=float, help="do_bench repetition time per measurement")
    t.add_argument("--seed", type=int, default=0, help="seed of the kernel input sets")


TARGETED = ("shapes", "networks", "batches", "train_batches", "dtypes", "no_compile", "max_autotune", "no_graph",
            "rounds", "warmup_ms", "rep_ms")  # fmt: skip


def targeted(args) -> bool:
    return any(getattr(args, k) for k in TARGETED) or args.seed != 0


def plan_from_args(args) -> tuple[dict, tuple[str, ...]]:
    """The targeted plan and the sections to run (see the command's description)."""
    from .suite import SECTIONS, targeted_plan

    plan = targeted_plan("quick" if args.quick else "full", shapes=args.shapes, networks=args.networks,
                         batches=args.batches, train_batches=args.train_batches, dtypes=args.dtypes,
                         compile=not args.no_compile, max_autotune=args.max_autotune, graph=not args.no_graph,
                         rounds=args.rounds, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, seed=args.seed)  # fmt: skip
    if args.sections:
        return plan, tuple(args.sections)
    if args.shapes or args.networks:
        return plan, ("ceilings",) + (("kernels",) if args.shapes else ()) + (("networks",) if args.networks else ())
    return plan, SECTIONS


def compiler_from_args(args):
    """``torch.compile`` as the suite calls it; ``--compile-cudagraphs``: max-autotune with CUDA graphs on."""
    from .common import torch_compiler

    if not args.compile_cudagraphs:
        return torch_compiler
    return lambda fn, mode: torch_compiler(fn, "max-autotune" if mode == "max-autotune-no-cudagraphs" else mode)


def run_bench(args) -> int:
    if args.list:
        from .suite import list_targets

        print(list_targets())
        return 0
    if args.memory:
        from .memory import run_memory

        res = run_memory(args.out, networks=tuple(args.networks or ("inception_v3",)), size=args.size,
                         batches=tuple(args.batches or (2,)))  # fmt: skip
        if args.goal and any(r["ratio"] > args.goal for r in res["rows"]):
            print(f"bench --memory: a ratio is above the goal {args.goal}", file=sys.stderr)
            return 1
        return 0
    if args.static:
        from .static import run_static

        out = args.out or os.path.join(REPO_ROOT, "benchmarks", "results", "static")
        res = run_static(out, networks=tuple(args.networks or NETWORKS), aot=not args.no_aot, aot_arches=args.aot_arch, aot_dtypes=args.aot_dtype,
                         plots=not args.no_plots)  # fmt: skip
        bad = [r for r in res.get("aot", {}).get("rows", []) if not r.get("ok")]
        print(f"bench --static: {out}/report.md ({res['meta']['total_wall_s']:.0f} s)")
        return 1 if bad else 0
    if args.dry_run:
        import tempfile

        from .suite import dry_run

        out = args.out or tempfile.mkdtemp(prefix="inception-kernels-dry-run-")
        dry_run(out, plots=not args.no_plots)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("inception-kernels bench: no CUDA GPU here -- nothing measured. Use --static for the CPU report "
              "(or --dry-run to exercise the suite with fake times).", file=sys.stderr)  # fmt: skip
        return 3
    from .suite import SECTIONS, run_suite

    if targeted(args):
        plan, sections = plan_from_args(args)
        res = run_suite(args.out, plan=plan, sections=sections, compiler=compiler_from_args(args),
                        plots=not args.no_plots)  # fmt: skip
    else:
        res = run_suite(args.out, quick=args.quick, sections=tuple(args.sections or SECTIONS),
                        compiler=compiler_from_args(args), plots=not args.no_plots)  # fmt: skip
    failed = [r for sec in ("kernels", "blocks", "networks") for r in res.get(sec, [])
              if r["check"].get("status") in ("FAIL", "ERROR")]  # fmt: skip
    return 1 if failed else 0
