"""Checkpoints: atomic writes, RNG state capture and restore, and the checks that a checkpoint fits a run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from .errors import ConfigError


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``: the data goes to a temporary file
    in the same directory, is flushed and fsync'ed, then renamed over ``path`` (``os.replace`` is atomic on POSIX
    and Windows). A kill mid-write leaves the previous ``path`` intact (and at worst a stray temporary file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def rng_state() -> dict:
    state = dict(torch=torch.get_rng_state(), python=random.getstate())
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's dependencies here
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ConfigError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise ConfigError(f"{str(path)!r} is not an inception-kernels training checkpoint")
    return ckpt


def check_compatible(
    ckpt: dict, model_name: str, model_kwargs: dict, num_classes: int, path: str = ""
) -> None:
    """Stop with a clear message when a checkpoint was made for another model, other options or classes."""
    where = f" {path!r}" if path else ""
    if ckpt["model_name"] != model_name:
        raise ConfigError(
            f"checkpoint{where} is a {ckpt['model_name']!r} model, this run builds {model_name!r}"
        )
    if ckpt.get("num_classes") != num_classes:
        raise ConfigError(
            f"checkpoint{where} has {ckpt.get('num_classes')} classes, the data has {num_classes}"
        )
    if ckpt.get("model_kwargs", {}) != model_kwargs:
        raise ConfigError(f"checkpoint{where} was built with model options {ckpt.get('model_kwargs')}, "
                         f"this run uses {model_kwargs}")  # fmt: skip
