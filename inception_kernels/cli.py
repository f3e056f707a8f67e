"""``inception-kernels`` command line.

    inception-kernels check [--no-aot] [--arch 80 90] [--dtype fp32 bf16 fp16] [--json PATH]
    inception-kernels bench [--quick] [--out DIR] [--static] [--dry-run] [--memory] [--list] [targeted run options]

``check`` is the self-check: it runs convolution cases (forward and every gradient) through our kernels -- the
compiled kernels on a CUDA GPU, the Triton interpreter on a machine without one -- against the fp64 reference,
then compiles every Triton kernel × config ahead of time for the requested GPU architectures and prints the
resource table (registers, spills, shared memory, tensor-core instructions). Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# (name, N, C, H, W, K, (R, S), stride, padding, residual)
CHECK_CASES = [
    ("googlenet stem 7x7/2, C=3", 1, 3, 13, 13, 8, (7, 7), 2, 3, False),
    ("v3 3x3/2 valid, odd input", 2, 5, 9, 9, 6, (3, 3), 2, 0, False),
    ("v3 1x7 factorized", 2, 10, 7, 7, 12, (1, 7), 1, (0, 3), False),
    ("v3 7x1 factorized", 1, 12, 7, 7, 10, (7, 1), 1, (3, 0), False),
    ("5x5, C,K not multiples of 16", 1, 20, 6, 6, 37, (5, 5), 1, 2, False),
    ("IRv2 1x1 up-projection + residual", 2, 24, 5, 5, 17, (1, 1), 1, 0, True),
    ("H=W=1", 3, 6, 1, 1, 5, (3, 3), 1, 1, False),
]


def run_conv_checks(device) -> tuple[list[dict], bool]:
    import torch

    from .ops import _args, conv2d, reference
    from .utils import rel_err

    rows, ok_all = [], True
    tol = 2e-5 if device.type == "cpu" else 1e-4
    for name, N, C, H, W, K, (R, S), stride, padding, has_res in CHECK_CASES:
        st, pad = _args.pair(stride, "stride"), _args.conv_padding(padding)
        x = torch.randn(N, C, H, W, device=device).to(memory_format=torch.channels_last)
        w = torch.randn(K, C, R, S, device=device) / math.sqrt(C * R * S)
        sc = torch.rand(K, device=device) + 0.5
        b = torch.randn(K, device=device)
        shape = _args.conv_out_shape(x.shape, w.shape, st, pad)
        res = torch.randn(shape, device=device).to(memory_format=torch.channels_last) if has_res else None
        rs = 0.17 if has_res else 1.0
        leaves = [t for t in (x, w, sc, b, res) if t is not None]
        t0 = time.perf_counter()
        ours_in = [t.detach().clone().requires_grad_() for t in leaves]
        ref_in = [t.detach().double().requires_grad_() for t in leaves]

        def call(fn, ts, st=st, pad=pad, rs=rs):
            xx, ww, ss, bb, *rr = ts
            return fn(xx, ww, stride=st, padding=pad, scale=ss, bias=bb, activation="relu",
                      residual=rr[0] if rr else None, residual_scale=rs)  # fmt: skip

        y = call(conv2d, ours_in)
        y_ref = call(reference.conv2d, ref_in)
        g = torch.randn(y.shape, device=device).to(memory_format=torch.channels_last)
        gs = torch.autograd.grad(y, ours_in, g)
        gs_ref = torch.autograd.grad(y_ref, ref_in, g.double())
        fwd = rel_err(y, y_ref)
        bwd = max(rel_err(a, b) for a, b in zip(gs, gs_ref))
        ok = fwd < tol and bwd < tol and not y.isnan().any()
        ok_all &= bool(ok)
        rows.append(dict(case=name, shape=f"{N}x{C}x{H}x{W} -> K={K} {R}x{S}/{st[0]}", fwd_err=fwd, grad_err=bwd,
                         seconds=time.perf_counter() - t0, ok=bool(ok)))  # fmt: skip
    return rows, ok_all


def _print_conv_table(rows, where: str) -> None:
    print(f"conv2d self-check ({where}; relative error vs the fp64 reference, forward and worst gradient)")
    print(f"{'case':38s} {'shape':28s} {'fwd err':>9s} {'grad err':>9s} {'time':>6s}  result")
    for r in rows:
        print(f"{r['case']:38s} {r['shape']:28s} {r['fwd_err']:9.1e} {r['grad_err']:9.1e} {r['seconds']:5.1f}s  "
              f"{'ok' if r['ok'] else 'FAIL'}")  # fmt: skip


def cmd_check(args) -> int:
    import torch

    if torch.cuda.is_available():
        device, where = torch.device("cuda"), f"compiled kernels on {torch.cuda.get_device_name()}"
    else:
        device, where = torch.device("cpu"), "Triton interpreter on the CPU"
    os.environ["INCEPTION_KERNELS_BACKEND"] = "triton"
    torch.manual_seed(args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little"))
    rows, ok = run_conv_checks(device)
    _print_conv_table(rows, where)
    if not args.no_aot:
        from . import aot

        t0 = time.perf_counter()
        aot_rows = aot.compile_all(arches=tuple(args.arch), dtypes=tuple(args.dtype))
        print()
        print(f"ahead-of-time compile of every kernel x config ({time.perf_counter() - t0:.0f} s)")
        print(aot.format_table(aot_rows))
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump({"conv_checks": rows, "aot": aot_rows}, f, indent=1)
        ok &= all(r["ok"] for r in aot_rows)
    print()
    print("self-check: " + ("all ok" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inception-kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="self-check: kernels vs the fp64 reference, then the AOT compile table")
    p.add_argument("--no-aot", action="store_true", help="skip the ahead-of-time compile table")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="GPU architectures to compile for")
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--seed", type=int, help="random seed (default: fresh)")
    from .train import cli as train_cli

    p = sub.add_parser("train", help="train a model (no arguments: the built-in digits demo, minutes on a CPU)",
                       description=train_cli.TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    train_cli.add_train_arguments(p)
    p = sub.add_parser("eval", help="evaluate checkpoints: 1/10/12/144-crop top-1/top-5, EMA, ensembles",
                       description=train_cli.EVAL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    train_cli.add_eval_arguments(p)
    from .bench import cli as bench_cli

    p = sub.add_parser("bench", help="benchmark suite (GPU), or --static (CPU): report, results.json, plots",
                       description=bench_cli.BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    bench_cli.add_bench_arguments(p)
    from . import tune

    p = sub.add_parser("tune", help="measure the fastest implementation of every conv layer of a model (GPU)",
                       description=tune.TUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    tune.add_tune_arguments(p)
    args = parser.parse_args(argv)
    if args.command == "tune":
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        return tune.run_tune(args)
    if args.command == "train":
        return train_cli.run_friendly("train", train_cli.run_train, args)
    if args.command == "eval":
        return train_cli.run_friendly("eval", train_cli.run_eval, args)
    if args.command == "bench":
        if args.memory:  # ours really runs: without a GPU in the Triton interpreter (chosen before kernels exist)
            import torch

            if not torch.cuda.is_available():
                os.environ.setdefault("TRITON_INTERPRET", "1")
        return train_cli.run_friendly("bench", bench_cli.run_bench, args)
    # Without a GPU the kernels run in the Triton interpreter, which must be chosen before they are defined.
    if args.command == "check":
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        return cmd_check(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
