"""Network benchmark: our block-engine models vs the torchvision / timm originals (GPU only).

Standalone script kept for targeted runs (and as gpu_check.sh's fallback); the one-command suite is
``inception-kernels bench`` (``inception_kernels/bench/``), which covers this and more.

For googlenet, inception_v3 (torchvision) and inception_v4, inception_resnet_v2 (timm):

* eval throughput (img/s) and latency at batch 1 / 32 / 256, peak memory;
* train step (forward + backward, no optimizer) throughput at batch 64;
* implementations: ours (bf16 weights and activations, channels_last, block engine on our kernels), the reference
  model in eager NCHW and eager channels_last (both bf16 autocast), and ``torch.compile`` of the channels_last
  reference (default mode; ``--max-autotune`` adds mode="max-autotune-no-cudagraphs");
* ours at batch 1 also under CUDA-graph replay.

Before timing, ours is checked against the reference on the same weights and inputs (eval, relative error of the
logits < 3e-2 in bf16); a failed check is reported and that network's ratios are left out. Results go to
``benchmarks/results/<gpu>-<date>/bench_models.{json,md}``.

    python benchmarks/bench_models.py [--quick] [--models inception_v3 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SOURCES = {
    "googlenet": ("torchvision", "googlenet"),
    "inception_v3": ("torchvision", "inception_v3"),
    "inception_v4": ("timm", "inception_v4"),
    "inception_resnet_v2": ("timm", "inception_resnet_v2"),
}
INPUT = {"googlenet": 224, "inception_v3": 299, "inception_v4": 299, "inception_resnet_v2": 299}


def reference_model(name: str) -> torch.nn.Module:
    lib, fn = SOURCES[name]
    if lib == "torchvision":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return getattr(torchvision.models, fn)(weights=None, **kwargs)
    import timm

    return timm.create_model(fn, pretrained=False)


def our_model(name: str, ref: torch.nn.Module) -> torch.nn.Module:
    from inception_kernels.models import create_model

    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    ours = create_model(name, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def median_ms(fn, warmup: int = 5, iters: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def graph_ms(fn, iters: int = 50) -> float:
    """Median time of a CUDA-graph replay of ``fn`` (warm-up and capture outside the numbers)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return median_ms(g.replay, warmup=3, iters=iters)


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_network(name: str, batches, train_batch: int, compile_modes, iters: int) -> dict:
    dev = torch.device("cuda")
    ref = reference_model(name).to(dev).eval()
    ours = our_model(name, ref).to(dev).to(torch.bfloat16).eval()
    ref_cl = reference_model(name).to(dev).eval()
    ref_cl.load_state_dict(ref.state_dict())
    ref_cl = ref_cl.to(memory_format=torch.channels_last)
    size = INPUT[name]
    rec = {"model": name, "input": size, "eval": {}, "train": {}, "check": {}}
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

    x = torch.randn(8, 3, size, size, device=dev)
    with torch.no_grad():
        with autocast():
            want = ref(x).float()
        got = ours(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
    err = rel_err(got, want)
    rec["check"] = {"rel_err_logits": err, "ok": err < 3e-2}
    if not rec["check"]["ok"]:
        return rec

    compiled = {mode: torch.compile(ref_cl, mode=mode) for mode in compile_modes}
    for n in batches:
        xb = torch.randn(n, 3, size, size, device=dev)
        xb_cl = xb.contiguous(memory_format=torch.channels_last)
        xb_ours = xb_cl.to(torch.bfloat16)
        impls = {
            "ours": lambda xb_ours=xb_ours: ours(xb_ours),
            "eager_nchw": lambda xb=xb: ref(xb),
            "eager_cl": lambda xb_cl=xb_cl: ref_cl(xb_cl),
        }
        for mode, m in compiled.items():
            impls[f"compile_{mode}"] = lambda m=m, xb_cl=xb_cl: m(xb_cl)
        row = {}
        for key, fn in impls.items():
            torch.cuda.reset_peak_memory_stats()
            ctx = contextlib.nullcontext() if key == "ours" else autocast()
            try:
                with torch.no_grad(), ctx:
                    ms = median_ms(fn, iters=iters)
                row[key] = {
                    "ms": ms,
                    "img_s": n / ms * 1e3,
                    "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                }
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                row[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        if n == 1:
            try:
                with torch.no_grad():
                    row["ours_cudagraph"] = {"ms": graph_ms(impls["ours"], iters=iters)}
            except Exception as e:  # noqa: BLE001
                row["ours_cudagraph"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        rec["eval"][n] = row

    # train step: forward + backward (no optimizer), batch train_batch
    ours.train()
    ref_cl.train()
    xb = torch.randn(train_batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    xb_ours = xb.to(torch.bfloat16)

    def step_ours():
        ours(xb_ours).float().sum().backward()

    def step_ref():
        with autocast():
            out = ref_cl(xb)
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    row = {}
    for key, fn in {"ours": step_ours, "eager_cl": step_ref}.items():
        torch.cuda.reset_peak_memory_stats()
        try:
            ms = median_ms(fn, warmup=3, iters=max(5, iters // 2))
            row[key] = {
                "ms": ms,
                "img_s": train_batch / ms * 1e3,
                "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
        except Exception as e:  # noqa: BLE001
            row[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
    rec["train"][train_batch] = row
    return rec


def render(meta: dict, records: list) -> str:
    lines = [f"# Network benchmark — {meta['gpu']} — {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}. Speed-up = baseline time ÷ ours (higher is better).",
             "Ours runs in bf16 (weights and activations); the references in bf16 autocast.", ""]  # fmt: skip
    for rec in records:
        lines.append(f"## {rec['model']} ({rec['input']}²) — check: rel. err {rec['check'].get('rel_err_logits', float('nan')):.1e} "
                     f"{'PASS' if rec['check'].get('ok') else 'FAIL (excluded)'}")  # fmt: skip
        if not rec["check"].get("ok"):
            continue
        lines += [
            "",
            "| mode | batch | impl | ms | img/s | peak MB | ours speed-up |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for mode in ("eval", "train"):
            for n, row in rec[mode].items():
                t_ours = row.get("ours", {}).get("ms")
                for impl, r in row.items():
                    if "error" in r:
                        lines.append(f"| {mode} | {n} | {impl} | error: {r['error']} | | | |")
                        continue
                    sp = f"{r['ms'] / t_ours:.2f}x" if t_ours and impl != "ours" else ""
                    lines.append(f"| {mode} | {n} | {impl} | {r['ms']:.3f} | {r.get('img_s', 0):.0f} | "
                                 f"{r.get('peak_mb', 0):.0f} | {sp} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="inception_v3 only, batches 1 and 32, fewer iterations"
    )
    p.add_argument("--models", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--max-autotune", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_models.py: no CUDA GPU here; nothing measured")
        return 3
    from inception_kernels.bench.env import environment, slug

    if args.quick:
        args.models, args.batches = ["inception_v3"], [1, 32]
    modes = (
        [] if args.no_compile else ["default"] + (["max-autotune-no-cudagraphs"] if args.max_autotune else [])
    )
    meta = environment(torch.device("cuda"))
    meta.setdefault("gpu", torch.cuda.get_device_name())
    meta.setdefault("date", datetime.date.today().isoformat())
    meta.setdefault("torch", torch.__version__)
    out = args.out or os.path.join(
        "benchmarks", "results", f"{slug(meta['gpu'])}-{datetime.date.today().isoformat()}"
    )
    os.makedirs(out, exist_ok=True)
    records = []
    for name in args.models:
        t0 = time.time()
        try:
            rec = bench_network(name, args.batches, args.train_batch, modes, iters=10 if args.quick else 20)
        except Exception as e:  # noqa: BLE001
            rec = {"model": name, "input": INPUT[name], "check": {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]},
                   "eval": {}, "train": {}}  # fmt: skip
        rec["seconds"] = time.time() - t0
        records.append(rec)
        with open(os.path.join(out, "bench_models.json"), "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1, default=str)
    md = render(meta, records)
    with open(os.path.join(out, "bench_models.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
