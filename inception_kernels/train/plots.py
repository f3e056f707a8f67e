"""PNG curves of a run (matplotlib, no display needed): loss, accuracy and learning rate."""

from __future__ import annotations

import csv
from pathlib import Path


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _col(rows, key):
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def plot_run(out_dir: str | Path) -> list[Path]:
    """Write ``loss.png``, ``accuracy.png`` and ``lr.png`` from ``steps.csv`` / ``epochs.csv`` in ``out_dir``;
    returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    steps, epochs = _read(out_dir / "steps.csv"), _read(out_dir / "epochs.csv")
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot(_col(steps, "step"), _col(steps, "loss"), lw=0.8, alpha=0.6, label="train (per step)")
    if epochs:
        ax.plot(_col(epochs, "step"), _col(epochs, "train_loss"), "o-", label="train (epoch mean)")
        ax.plot(_col(epochs, "step"), _col(epochs, "val_loss"), "s-", label="val (cross-entropy)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(out_dir / "loss.png")
    fig.tight_layout()
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    if epochs:
        e = _col(epochs, "epoch")
        ax.plot(e, _col(epochs, "top1"), "o-", label="val top-1")
        ax.plot(e, _col(epochs, "top5"), "^-", label="val top-5")
        ema1 = _col(epochs, "ema_top1")
        if len(ema1) == len(e):
            ax.plot(e, ema1, "s--", label="val top-1 (EMA)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(out_dir / "accuracy.png")
    fig.tight_layout()
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot(_col(steps, "step"), _col(steps, "lr"))
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    written.append(out_dir / "lr.png")
    fig.tight_layout()
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
