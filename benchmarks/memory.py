"""Saved-activation bytes per image of one training step: our fused training path vs torchvision's inception_v3.

    python benchmarks/memory.py [--size 75] [--batch 2] [--models inception_v3 ...] [--json PATH]

"Saved" = the unique storages the autograd graph of one forward keeps for backward, parameters and buffers
excluded (``inception_kernels.bench.memory.saved_activation_bytes``). Ours runs the fused training path: on a
machine without a GPU through the Triton interpreter (set here before anything imports Triton), so it runs in CI.
Both models see the same input size and batch, in fp32 and train mode, without aux heads (inception_v3's
aux head needs 299x299 in training). The issue-4 goal is ours ≤ 0.5×
torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("INCEPTION_KERNELS_BACKEND", "triton")

# name -> (reference builder, module path inside the reference package)
REFERENCES = {
    "inception_v3": lambda: __import__("torchvision").models.inception_v3(
        weights=None, aux_logits=False, init_weights=False
    ),
    "googlenet": lambda: __import__("torchvision").models.googlenet(
        weights=None, aux_logits=False, init_weights=False
    ),
}


def measure(name: str, size: int, batch: int, device: torch.device) -> dict:
    from inception_kernels.bench.memory import saved_activation_bytes
    from inception_kernels.models import create_model

    torch.manual_seed(0)
    ours = create_model(name, aux_logits=False).to(device).train()
    ref = REFERENCES[name]().to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    t0 = time.perf_counter()
    ours_bytes = saved_activation_bytes(ours, x.contiguous(memory_format=torch.channels_last))
    t_ours = time.perf_counter() - t0
    ref_bytes = saved_activation_bytes(ref, x)
    return {
        "model": name,
        "input_size": size,
        "batch": batch,
        "dtype": "float32",
        "device": str(device),
        "ours_saved_bytes_per_image": ours_bytes / batch,
        "reference_saved_bytes_per_image": ref_bytes / batch,
        "ratio": ours_bytes / ref_bytes,
        "ours_seconds": t_ours,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["inception_v3"], choices=sorted(REFERENCES))
    ap.add_argument("--size", type=int, default=75, help="input height = width (default: v3's minimum, 75)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--goal", type=float, default=0.5, help="exit 1 if a ratio exceeds this (0 disables)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure(m, args.size, args.batch, device) for m in args.models]
    print(
        f"saved activations per image, one training step, fp32, {args.size}x{args.size}, batch {args.batch}"
    )
    print(f"{'model':14s} {'ours MB':>9s} {'torchvision MB':>15s} {'ours/tv':>8s}")
    for r in rows:
        print(f"{r['model']:14s} {r['ours_saved_bytes_per_image'] / 1e6:9.2f} "
              f"{r['reference_saved_bytes_per_image'] / 1e6:15.2f} {r['ratio']:8.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.goal and any(r["ratio"] > args.goal for r in rows):
        print(f"ratio above the goal {args.goal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
