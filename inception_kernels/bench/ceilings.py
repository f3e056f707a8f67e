"""The ceilings every later figure is a fraction of, measured in the same run: device-to-device copy bandwidth
(bytes read + written per second) and the TFLOP/s of a large bf16 matmul."""

from __future__ import annotations

import torch

from .timing import measure


def measure_ceilings(device, timer, *, copy_mib: int = 1024, matmul_n: int = 8192, rounds: int = 2) -> dict:
    """``{"copy_gbs", "bf16_tflops", "copy": {...}, "matmul": {...}}``. ``copy_mib``: size of the copied tensor
    (well above L2); ``matmul_n``: an n×n×n bf16 GEMM (2·n³ FLOPs)."""
    dev = torch.device(device)
    n_el = copy_mib * 2**20 // 2
    src = torch.empty(n_el, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    a = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    c = torch.empty(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    times = measure(
        {"copy": {"run": lambda: dst.copy_(src)}, "matmul": {"run": lambda: torch.mm(a, b, out=c)}},
        timer,
        rounds=rounds,
        label="ceilings",
    )
    out: dict = {"copy": {"bytes": 2 * src.numel() * 2, **times["copy"]["run"]},
                 "matmul": {"n": matmul_n, "flops": 2 * matmul_n**3, **times["matmul"]["run"]}}  # fmt: skip
    cp, mm = out["copy"], out["matmul"]
    out["copy_gbs"] = cp["bytes"] / (cp["ms"] * 1e-3) / 1e9 if "ms" in cp else None
    out["bf16_tflops"] = mm["flops"] / (mm["ms"] * 1e-3) / 1e12 if "ms" in mm else None
    return out
