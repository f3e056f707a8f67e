"""PNG plots (matplotlib, Agg): speed-up bars per shape / block / network, and rooflines."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import _row_key  # noqa: E402


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speedup_bars(recs: list[dict], title: str, out_dir: str, name: str, max_pairs: int = 6) -> str | None:
    """Grouped bars: one group per configuration, one bar per (ours vs baseline, pass); log scale, line at 1.
    A failed configuration is marked in red."""
    cols = []
    for r in recs:
        for pair, by_pass in r.get("ratios", {}).items():
            for p in by_pass:
                if (pair, p) not in cols:
                    cols.append((pair, p))
    if any("@graph" in pair for pair, _ in cols):  # GPU time (CUDA-graph replay) compares the kernels
        cols = [(pair, p) for pair, p in cols if "@graph" in pair]
    cols = cols[: max_pairs * 2]
    if not recs or not cols:
        return None
    labels = [f"{r['name']}\n{_row_key(r)}" for r in recs]
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(recs) * max(1, len(cols) / 3)), 4.5))
    for j, (pair, p) in enumerate(cols):
        xs, ys = [], []
        for i, r in enumerate(recs):
            v = r.get("ratios", {}).get(pair, {}).get(p)
            if v:
                xs.append(i + (j - (len(cols) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width, label=f"{p}: {pair.replace('_vs_', ' vs ')}")
    for i, r in enumerate(recs):
        if r["check"].get("status") in ("FAIL", "ERROR"):
            ax.text(i, 1.0, r["check"]["status"], color="red", ha="center", va="bottom", fontweight="bold")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(recs)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed of ours ÷ baseline (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out_dir, name)


def _roof(ax, peak_tflops: float, bw_tbs: float, ai_lo=0.5, ai_hi=5000.0):
    import numpy as np

    ai = np.logspace(np.log10(ai_lo), np.log10(ai_hi), 200)
    ax.plot(ai, np.minimum(peak_tflops, ai * bw_tbs), "k-", lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / minimal byte)")
    ax.set_ylabel("TFLOP/s")


def gpu_plots(out_dir: str, results: dict) -> list[str]:
    files = []
    for sec, title in (("kernels", "conv2d kernels"), ("blocks", "blocks"), ("networks", "networks")):
        recs = [r for r in results.get(sec, []) if not r.get("skipped", {}).get("all")]
        f = speedup_bars(recs, f"{title}: ours ÷ baseline", out_dir, f"speedup_{sec}.png")
        if f:
            files.append(f)
    c = results.get("ceilings") or {}
    kern = results.get("kernels", [])
    if c.get("bf16_tflops") and c.get("copy_gbs") and kern:
        fig, ax = plt.subplots(figsize=(7, 5))
        _roof(ax, c["bf16_tflops"], c["copy_gbs"] / 1e3)
        for r in kern:
            for p, marker in (("fwd", "o"), ("fwdbwd", "s")):
                mb, fl = r.get("min_bytes", {}).get(p), r.get("flops", {}).get(p)
                tf = r.get("tflops", {}).get("ours@graph", r.get("tflops", {}).get("ours", {})).get(p)
                if mb and fl and tf:
                    ax.scatter(fl / mb, tf, marker=marker, s=18)
                    ax.annotate(r["name"], (fl / mb, tf), fontsize=5)
                elif mb and fl and r["check"].get("status") in ("FAIL", "ERROR"):
                    ax.scatter(fl / mb, c["bf16_tflops"] / 100, marker="x", color="red")
        ax.set_title("ours on the measured roofline (o fwd, □ fwd+bwd; x failed check)")
        files.append(_save(fig, out_dir, "roofline.png"))
    return files


def static_plots(out_dir: str, results: dict) -> list[str]:
    spec = results["meta"]["spec"]
    nets = results["networks"]
    fig, ax = plt.subplots(figsize=(7, 5))
    _roof(ax, spec["bf16_tflops"], spec["bandwidth_tbs"], ai_lo=0.1)
    for r in nets:
        xs, ys = [], []
        for ly in r["layers"]:
            if not ly["macs"]:
                continue
            b = (32 * ly["act_elems"] + ly["weight_elems"]) * 2
            ai = 2 * ly["macs"] * 32 / b
            xs.append(ai)
            ys.append(min(spec["bf16_tflops"], ai * spec["bandwidth_tbs"]))
        ax.scatter(xs, ys, s=10, label=r["name"], alpha=0.7)
    ax.set_title(f"layers at batch 32 on the {spec['name']} roofline (attainable bound)")
    ax.legend(fontsize=7)
    files = [_save(fig, out_dir, "static_roofline.png")]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["name"] for r in nets]
    x = range(len(nets))
    a1.bar([i - 0.2 for i in x], [r["launches_per_forward"] for r in nets], 0.4, label="ours")
    a1.bar([i + 0.2 for i in x], [r["eager_ops_per_forward"] for r in nets], 0.4, label="eager reference")
    a1.set_title("kernels per eval forward")
    a2.bar(
        [i - 0.2 for i in x], [r["saved_activation_bytes_per_image"] / 2**20 for r in nets], 0.4, label="ours"
    )
    a2.bar([i + 0.2 for i in x], [r["reference_saved_activation_bytes_per_image"] / 2**20 for r in nets], 0.4,
           label="reference")  # fmt: skip
    a2.set_title("saved activations, MiB per image (fp32)")
    for a in (a1, a2):
        a.set_xticks(list(x))
        a.set_xticklabels(names, rotation=20, fontsize=8)
        a.legend(fontsize=7)
    files.append(_save(fig, out_dir, "static_counts.png"))
    return files
