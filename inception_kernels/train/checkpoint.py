"""Checkpoints: atomic writes with a rotated previous copy, a content digest checked on load, RNG state capture and
restore, the search for a run directory's newest good checkpoint, and the checks that a checkpoint fits a run.

A run directory holds ``last.pt`` (the newest checkpoint) and ``last.prev.pt`` (the one before it): each write goes
to a temporary file, is fsync'ed, then the old ``last.pt`` is renamed to ``last.prev.pt`` and the new file to
``last.pt``. Every checkpoint carries a SHA-256 digest of its contents (every tensor's bytes, every other value's
``repr``), so a truncated file (``torch.load`` fails) and a silently corrupted one (the digest differs) are both
refused, and :func:`latest_checkpoint` falls back to ``last.prev.pt``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import sys
from pathlib import Path

import torch

from .errors import ConfigError

LAST, PREVIOUS = "last.pt", "last.prev.pt"
DIGEST_KEY = "integrity"
REQUIRED_KEYS = ("model", "model_name", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "config")


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, incomplete or failing its digest."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (e.g. a full disk); the previous checkpoint is intact and the run stopped."""


def atomic_save(obj, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``: the data goes to a temporary file
    in the same directory, is flushed and fsync'ed, then renamed over ``path`` (``os.replace`` is atomic on POSIX
    and Windows). A kill or an error mid-write (a full disk: ``OSError(ENOSPC)``) leaves the previous ``path``
    intact; on an error the temporary file is removed and the error re-raised. With ``previous``, an existing
    ``path`` is first renamed to ``previous`` (so two good generations are kept)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the renames themselves durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left in ``run_dir``."""
    for p in Path(run_dir).glob(".*.pt.tmp-*"):
        if not p.name.endswith(f".tmp-{os.getpid()}"):
            p.unlink(missing_ok=True)


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            h.update(repr(k).encode())
            _digest(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    elif type(obj).__module__ == "numpy" and hasattr(obj, "tobytes"):
        h.update(f"N{obj.dtype}{getattr(obj, 'shape', ())}".encode())
        h.update(obj.tobytes())
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def content_digest(state: dict) -> str:
    """SHA-256 over a checkpoint's contents except its own digest entry (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != DIGEST_KEY}, h)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """:func:`atomic_save` of ``state`` with its :func:`content_digest` added (checked by :func:`read_checkpoint`)."""
    atomic_save({**state, DIGEST_KEY: dict(sha256=content_digest(state))}, path, previous)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a training checkpoint; raises :class:`CorruptCheckpoint` saying what is wrong (missing,
    unreadable or truncated, not a training checkpoint, incomplete, digest mismatch). Checkpoints written before
    digests existed load without the digest check."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"{str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        size = path.stat().st_size
        raise CorruptCheckpoint(f"cannot read {str(path)!r} ({size} bytes; truncated or corrupt?): "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e  # fmt: skip
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise CorruptCheckpoint(f"{str(path)!r} is not an inception-kernels training checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CorruptCheckpoint(f"{str(path)!r} is incomplete: no {', '.join(missing)}")
    stored = (ckpt.get(DIGEST_KEY) or {}).get("sha256")
    if stored is not None and stored != content_digest(ckpt):
        raise CorruptCheckpoint(f"{str(path)!r} is corrupt: its contents differ from its digest")
    return ckpt


def latest_checkpoint(run_dir: str | os.PathLike, log=None) -> tuple[Path, dict] | None:
    """The newest good checkpoint of a run directory: ``last.pt``, or ``last.prev.pt`` when ``last.pt`` is missing
    or refused (each refusal is reported through ``log``, default stderr). ``None`` when the directory has neither
    file (a fresh start); :class:`ConfigError` with every reason when files exist but none is usable (nothing is
    overwritten by starting afresh)."""
    run_dir = Path(run_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    reasons = []
    for name in (LAST, PREVIOUS):
        p = run_dir / name
        if not p.exists():
            continue
        try:
            return p, read_checkpoint(p)
        except CorruptCheckpoint as e:
            reasons.append(str(e))
            log(f"warning: refusing checkpoint: {e}")
    if reasons:
        raise ConfigError(f"no usable checkpoint in {str(run_dir)!r}: " + "; ".join(reasons)
                         + ". Move the files away to start afresh.")  # fmt: skip
    return None


def describe_write_error(e: OSError, path: Path, kept: Path | None) -> str:
    what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f"{type(e).__name__}: {e}"
    keep = f"the last good checkpoint {str(kept)!r} is kept" if kept else "no checkpoint had been written yet"
    return f"cannot write checkpoint {str(path)!r} ({what}); stopping: {keep}"


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
    """:func:`read_checkpoint` for a path the user named: :class:`ConfigError` with the reason when unusable."""
    try:
        return read_checkpoint(path)
    except CorruptCheckpoint as e:
        msg = f"checkpoint {e}"
        prev = Path(path).with_name(PREVIOUS)
        if Path(path).name == LAST and prev.is_file():
            msg += f" (the previous one is {str(prev)!r}; --resume auto -o DIR picks the newest good one)"
        raise ConfigError(msg) from e


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
