"""The stamp every results file carries: date, GPU, driver, torch / triton / CUDA / cuDNN versions, git commit."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except Exception:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100' (the results folder's prefix, as in ``h100-2026-11-25``)."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return m.group(1).lower() if m else slug(name)


def environment(device) -> dict:
    """The stamp for ``device`` (None or a CPU device: no GPU fields)."""
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "host": platform.node(),
        "backend": os.environ.get("INCEPTION_KERNELS_BACKEND", "auto"),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        meta["gpu_name"] = props.name
        meta["gpu_sms"] = props.multi_processor_count
        meta["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
        meta["gpu_cc"] = f"{props.major}.{props.minor}"
        drv = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        meta["driver"] = drv.splitlines()[0].strip() if drv else None
    else:
        meta["gpu_name"] = None
        meta["driver"] = None
        meta["cpu"] = platform.processor() or platform.machine()
    meta["git_commit"] = _run(["git", "rev-parse", "HEAD"])
    st = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    meta["git_dirty"] = bool(st) if st is not None else None
    return meta


def default_out_dir(meta: dict) -> str:
    day = _dt.date.today().isoformat()
    name = meta.get("gpu_name") or "cpu"
    return os.path.join(REPO_ROOT, "benchmarks", "results", f"{gpu_slug(name)}-{day}")
