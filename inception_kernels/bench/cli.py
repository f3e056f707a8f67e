"""Arguments and entry point of ``inception-kernels bench`` (wired into :mod:`inception_kernels.cli`)."""

from __future__ import annotations

import argparse
import os
import sys

from .env import REPO_ROOT

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


def run_bench(args) -> int:
    if args.static:
        from .static import run_static

        out = args.out or os.path.join(REPO_ROOT, "benchmarks", "results", "static")
        res = run_static(out, aot=not args.no_aot, aot_arches=args.aot_arch, aot_dtypes=args.aot_dtype,
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

    res = run_suite(
        args.out, quick=args.quick, sections=tuple(args.sections or SECTIONS), plots=not args.no_plots
    )
    failed = [r for sec in ("kernels", "blocks", "networks") for r in res.get(sec, [])
              if r["check"].get("status") in ("FAIL", "ERROR")]  # fmt: skip
    return 1 if failed else 0
