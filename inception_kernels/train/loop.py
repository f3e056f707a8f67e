"""The training loop: the papers' recipe, torchrun/DDP, EMA, checkpoints, logs and plots.

:func:`train` takes a :class:`TrainConfig` and returns a :class:`TrainResult`. The command lines
(``inception-kernels train``, ``python -m inception_kernels.train``) build the config from flags.

One optimizer step: forward/backward of the batch (optionally as ``accum_steps`` strided micro-batches) under
autocast → the loss averaged over processes is checked for NaN/Inf (stop, keep the last checkpoint) → gradients
clipped to global norm ``clip_grad`` → optimizer step (for RMSProp/SGD the L2 weight decay is added to the clipped
gradient inside the optimizer; TF-slim adds it to the loss, i.e. before clipping -- the difference only matters
while clipping is active) → learning-rate schedule → EMA update. Each epoch ends with validation of the raw and EMA
weights, ``epochs.csv``, and ``last.pt`` (+ ``best.pt`` when the best top-1 of either improved).

Faults. SIGTERM / SIGINT (what schedulers and torchrun send on preemption) make every process finish the current
optimizer step (the processes agree through the loss all-reduce), write a mid-epoch ``last.pt`` (position in the
epoch, RNG states, the epoch's running sums) and raise :class:`Preempted`; a second signal acts at once. The
previous checkpoint is kept as ``last.prev.pt``; ``resume="auto"`` (or a run directory) continues from the newest
good one, bit-identically, and starts afresh when there is none. A checkpoint that cannot be written (a full disk)
raises :class:`CheckpointWriteError` with the last good one intact. ``checkpoint_every`` adds mid-epoch
checkpoints every N steps, for faults that give no warning (a killed process; torchrun ``--max-restarts``).
Test hooks (environment): ``INCEPTION_KERNELS_TEST_SIGNAL_AT=STEP[:SIGNAME[:RANK]]`` makes each process (or process
RANK) send itself the signal (SIGTERM) as optimizer step STEP begins; ``INCEPTION_KERNELS_TEST_KILL_AT=RANK:STEP
[:ATTEMPT]`` SIGKILLs process RANK after step STEP on the torchrun job's attempt ATTEMPT (default 0: the first;
``TORCHELASTIC_RESTART_COUNT``, 0 when unset).

Where this differs from the papers by default, a flag restores them: BN statistics use the models' momentum 0.1
(``--bn-momentum 0.0003`` for TF's decay 0.9997, meant for 100+ epoch ImageNet runs); the EMA uses TF's
``num_updates`` warm-up rule (``--no-ema-warmup`` for a fixed 0.9999).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import itertools
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt_mod
from . import distributed as dist_mod
from .data import DataBundle, build_data, collate_skip
from .ema import ModelEMA
from .errors import ConfigError
from .evaluate import accuracy_table, predict
from .graphed import GraphedStep
from .losses import inception_loss
from .optim import build_optimizer, param_groups
from .schedule import StaircaseLR

# The built-in default (no --data): a narrow Inception-v3 on scikit-learn's digits at the model's minimum input
# size (75², where the aux head cannot run). Measured on a 2-core CPU: see DIGITS_DEFAULTS_NOTE.
DIGITS_DEFAULTS = dict(width_mult=0.25, epochs=20, batch_size=32)
DIGITS_DEFAULTS_NOTE = (
    "built-in default (no --data): inception_v3 at width 0.25 and 75x75 input on scikit-learn's digits "
    "(1,437 train / 360 val), 20 epochs of the papers' recipe at batch 32"
)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf; the run stopped, the last good checkpoint is kept."""


CheckpointWriteError = ckpt_mod.CheckpointWriteError


class Preempted(RuntimeError):
    """A SIGTERM/SIGINT stopped the run after an optimizer step; ``checkpoint`` resumes it (``resume="auto"``)."""

    def __init__(self, msg: str, signum: int, checkpoint: Path, step: int):
        super().__init__(msg)
        self.signum, self.checkpoint, self.step = signum, checkpoint, step


class _StopSignals:
    """While active (main thread only), the first SIGTERM/SIGINT is recorded in ``signum`` instead of acting; the
    previous handler comes back at once, so a second signal acts as it would have (SIGINT: KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self._old = 0, {}

    def _handle(self, signum, frame):
        if not self.signum:
            self.signum = signum
        if signum in self._old:
            signal.signal(signum, self._old.pop(signum))

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:  # (None: a handler not set from Python, not restorable: use the default)
                old = signal.signal(s, self._handle)
                self._old[s] = signal.SIG_DFL if old is None else old
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


@dataclass
class TrainConfig:
    """Every knob of a run. ``None`` means "the recipe's default for this data" (resolved by :func:`resolve`)."""

    # model
    model: str = "inception_v3"
    width_mult: float | None = None
    model_kwargs: dict = field(default_factory=dict)
    aux_logits: str = "auto"  # auto | on | off
    bn_momentum: float | None = None  # PyTorch convention (1 − TF's decay); None keeps the model's (0.1)
    # data
    data: str | None = None  # None/"digits", "synthetic" or an ImageFolder root with train/ and val/
    image_size: int | None = None
    num_classes: int | None = None
    color_jitter: float = 0.0
    crop_pct: float = 0.875
    digits_shift: int = 0
    workers: int | None = None
    limit_train: int = 0
    limit_val: int = 0
    synthetic_length: int = 1024
    # recipe
    epochs: int | None = None
    batch_size: int | None = None  # per process, per optimizer step
    accum_steps: int = 1
    optimizer: str = "rmsprop-tf"
    lr: float = 0.045
    lr_scale: bool = False
    lr_decay: float = 0.94
    lr_decay_epochs: float = 2.0
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    rho: float = 0.9
    opt_eps: float = 1.0
    weight_decay: float = 4e-5
    clip_grad: float = 2.0
    label_smoothing: float = 0.1
    aux_weight: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    # execution
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp16 | none
    channels_last: str = "auto"  # auto (CUDA only) | on | off
    compile: bool = False
    cuda_graph: bool = False  # replay forward + loss + backward from a CUDA graph (train/graphed.py)
    backend: str | None = None
    threads: int | None = (
        None  # CPU intra-op threads per process (None: torch's default, or cores / processes)
    )
    seed: int = 0
    # run management
    output: str | None = None
    resume: str | None = None  # a checkpoint file, a run directory, or "auto" (the newest good one of output)
    checkpoint_every: int = 0  # also write last.pt every N optimizer steps mid-epoch (0: at epoch ends only)
    stop_after: int = 0  # stop (resumably) after this many epochs in total; 0 = run all
    quiet: bool = False
    log_every: int = 10
    plots: bool = True


# fields a resumed run may change; everything else comes from the checkpoint's config
RESUME_OVERRIDES = (
    "epochs",
    "stop_after",
    "quiet",
    "workers",
    "log_every",
    "plots",
    "output",
    "device",
    "threads",
    "checkpoint_every",
    "cuda_graph",
)


@dataclass
class TrainResult:
    out_dir: Path
    history: list = field(default_factory=list)  # one dict per epoch (the rows of epochs.csv)
    best_top1: float = float("nan")
    best_source: str = ""
    elapsed_s: float = 0.0
    cuda_graph_replays: int = 0  # --cuda-graph: the training steps replayed from the graph (this invocation)


def auto_threads(threads: int) -> int:
    """CPU threads for a run that does not set ``--threads``: ``threads`` (torch's default: one per core, or the
    process's share under torchrun), lowered to the cores left idle by other work (1-minute load average) when the
    machine is busy. Oversubscribed OpenMP threads spin-wait on each other: measured on a 2-core machine at load ~5,
    a narrow Inception-v3 trained at 10-80 img/s with 2 threads and at ~330 img/s with 1 (~770 img/s with 2 threads
    on the idle machine)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on POSIX
        return threads
    idle = (os.cpu_count() or threads) - load
    return max(1, min(threads, int(idle + 0.5)))


def is_digits(cfg: TrainConfig) -> bool:
    return cfg.data in (None, "", "digits")


def _model_class(name: str):
    from ..models import _MODELS, _resolve, list_models

    cls = _resolve(name) if name in _MODELS else None
    if cls is None:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return cls


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the data-dependent defaults: the built-in digits run uses :data:`DIGITS_DEFAULTS` (where the model has
    the option), every other run the papers' recipe (batch 32, 100 epochs; 1 epoch for synthetic data) at 299²
    (224² for GoogLeNet)."""
    cfg = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    cls = _model_class(cfg.model)
    params = inspect.signature(cls).parameters
    if is_digits(cfg):
        if cfg.width_mult is None and "width_mult" in params and cfg.model == "inception_v3":
            cfg.width_mult = DIGITS_DEFAULTS["width_mult"]
        if cfg.epochs is None:
            cfg.epochs = DIGITS_DEFAULTS["epochs"]
        if cfg.batch_size is None:
            cfg.batch_size = DIGITS_DEFAULTS["batch_size"]
    if cfg.epochs is None:
        cfg.epochs = 1 if cfg.data == "synthetic" else 100
    if cfg.batch_size is None:
        cfg.batch_size = 32
    if cfg.width_mult is not None and "width_mult" not in params:
        raise ConfigError(f"model {cfg.model!r} has no width_mult option")
    if cfg.image_size is None:
        if is_digits(cfg):
            cfg.image_size = cls.min_size_for(**_table_kwargs(cfg))
        else:
            cfg.image_size = 224 if cfg.model == "googlenet" else 299
    if cfg.aux_weight is None:
        cfg.aux_weight = 0.3 if cfg.model == "googlenet" else 0.4
    if cfg.batch_size % cfg.accum_steps:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is not divisible by --accum-steps {cfg.accum_steps}"
        )
    if cfg.aux_logits not in ("auto", "on", "off"):
        raise ConfigError(f"aux_logits must be auto, on or off, got {cfg.aux_logits!r}")
    return cfg


def _table_kwargs(cfg: TrainConfig) -> dict:
    kw = dict(cfg.model_kwargs)
    if cfg.width_mult is not None:
        kw["width_mult"] = cfg.width_mult
    return kw


def model_kwargs(cfg: TrainConfig, num_classes: int) -> dict:
    """The keyword arguments the run's model is built with (stored in checkpoints): ``model_kwargs`` plus
    ``width_mult`` and the resolved ``aux_logits`` (``auto``: on when the model has aux heads that can run at this
    input size, ``aux_min_size_for`` of the model class)."""
    kw = _table_kwargs(cfg)
    cls = _model_class(cfg.model)
    if cls.aux_heads:
        if cfg.aux_logits == "auto":
            kw["aux_logits"] = cfg.image_size >= cls.aux_min_size_for(**kw)
        else:
            kw["aux_logits"] = cfg.aux_logits == "on"
    return kw


# ----------------------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------------------
class CsvLog:
    def __init__(self, path: Path, fields: list[str], enabled: bool):
        self.path, self.fields, self.enabled = path, fields, enabled
        if enabled and not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


STEP_FIELDS = ["epoch", "step", "loss", "lr", "img_per_s"]
EPOCH_FIELDS = ["epoch", "step", "train_loss", "val_loss", "top1", "top5", "ema_top1", "ema_top5", "lr", "epoch_s",
                "img_per_s", "skipped_train", "skipped_val"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def _resumable_sampler_class():
    from torch.utils.data import DistributedSampler

    class ResumableSampler(DistributedSampler):
        """``DistributedSampler`` (order from (seed, epoch) only) that can begin the epoch at a position ``start``
        of this process's indices (until the next ``set_epoch``): a mid-epoch resume skips the batches done
        without loading them."""

        start = 0

        def set_epoch(self, epoch: int) -> None:
            super().set_epoch(epoch)
            self.start = 0

        def __iter__(self):
            return itertools.islice(super().__iter__(), self.start, None)

        def __len__(self) -> int:
            return super().__len__() - self.start

    return ResumableSampler


def _test_hooks(info) -> tuple[int, int, int]:
    """(step at which to signal oneself, that signal, step after which to SIGKILL oneself); 0 = none."""
    sig_at, signum, kill_at = 0, signal.SIGTERM, 0
    spec = os.environ.get("INCEPTION_KERNELS_TEST_SIGNAL_AT", "")
    if spec:
        at, name, rank = (spec.split(":") + ["", ""])[:3]
        if not rank or int(rank) == info.rank:
            sig_at, signum = int(at), getattr(signal, name or "SIGTERM")
    spec = os.environ.get("INCEPTION_KERNELS_TEST_KILL_AT", "")
    if spec:
        rank, at, attempt = (spec.split(":") + ["0"])[:3]
        if int(rank) == info.rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == attempt:
            kill_at = int(at)
    return sig_at, signum, kill_at


def _truncate_csv(path: Path, max_step: int) -> None:
    """Drop the rows logged after ``max_step`` (by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        return
    i = rows[0].index("step")
    keep = [rows[0]] + [r for r in rows[1:] if len(r) > i and r[i].isdigit() and int(r[i]) <= max_step]
    if len(keep) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, path)


def _set_epoch(ds, epoch: int) -> None:
    while hasattr(ds, "dataset") and not hasattr(ds, "set_epoch"):
        ds = ds.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def _amp_dtype(cfg: TrainConfig, device: torch.device):
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _loaders(bundle: DataBundle, cfg: TrainConfig, info, pin: bool):
    from torch.utils.data import DataLoader, Subset

    workers = cfg.workers
    if workers is None:
        workers = (
            0 if bundle.kind == "digits" else min(8, max(1, (os.cpu_count() or 2) // max(1, info.world_size)))
        )
    # Random augmentation is seeded per (seed, epoch, sample) in every dataset (data.py), not by the workers' seeds:
    # it resumes exactly, also mid-epoch. Workers are restarted every epoch (not persistent). One sampler for every
    # layout: the permutation depends on (seed, epoch) only, so one process with batch B and N processes with batch
    # B/N see the same global batches (rank r takes positions r, r+N, ...).
    sampler = _resumable_sampler_class()(bundle.train, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed)  # fmt: skip
    train = DataLoader(bundle.train, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                       collate_fn=collate_skip, pin_memory=pin, drop_last=True,
                       persistent_workers=False)  # fmt: skip
    val_ds = (
        Subset(bundle.val, range(info.rank, len(bundle.val), info.world_size)) if info.enabled else bundle.val
    )
    val = DataLoader(val_ds, batch_size=max(cfg.batch_size, 64), shuffle=False, num_workers=workers,
                     collate_fn=collate_skip, pin_memory=pin)  # fmt: skip
    return train, sampler, val


def _evaluate(models: dict, loader, info, amp_dtype, channels_last: bool) -> dict:
    names = list(models)
    probs, labels, skipped = predict(list(models.values()), loader, info.device, amp_dtype, channels_last)
    out = {}
    for name, p in zip(names, probs):
        (row,) = accuracy_table([name], [p], labels, info)
        nll = (
            -torch.log(p.gather(1, labels.view(-1, 1)).clamp_min(1e-12)).sum()
            if len(labels)
            else torch.zeros(())
        )
        t = dist_mod.all_reduce_sum(torch.tensor([float(nll), float(len(labels))], dtype=torch.float64,
                                                 device=info.device), info).cpu()  # fmt: skip
        out[name] = dict(top1=row["top1"], top5=row["top5"], loss=float(t[0] / max(1.0, float(t[1]))))
    sk = dist_mod.all_reduce_sum(torch.tensor([float(skipped)], device=info.device), info)
    out["skipped"] = int(sk.item())
    return out


def _default_output(cfg: TrainConfig) -> Path:
    data = "digits" if is_digits(cfg) else ("synthetic" if cfg.data == "synthetic" else Path(cfg.data).name)
    return Path("runs") / f"{cfg.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print(info, *a, **kw) -> None:
    if info.is_main:
        print(*a, **kw, flush=True)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
def _find_resume(cfg: TrainConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint ``cfg.resume`` names: a file (strict: refused with the reason when unusable), a run directory
    or ``"auto"`` (``cfg.output``): its newest good checkpoint, ``(None, None)`` when it has none yet."""
    if cfg.resume == "auto" or Path(cfg.resume).is_dir():
        if cfg.resume == "auto" and not cfg.output:
            raise ConfigError("--resume auto needs --output DIR, the run directory to continue")
        run_dir = Path(cfg.output if cfg.resume == "auto" else cfg.resume)
        quiet = os.environ.get("RANK", "0") != "0"
        found = ckpt_mod.latest_checkpoint(run_dir, log=(lambda m: None) if quiet else None)
        return found if found is not None else (None, None)
    return Path(cfg.resume), ckpt_mod.load_checkpoint(cfg.resume)


def train(cfg: TrainConfig) -> TrainResult:  # noqa: C901 - one readable loop
    """Train a model as configured; returns the run directory and the per-epoch history. Raises
    :class:`NonFiniteLoss` when the loss becomes NaN/Inf (the last good ``last.pt`` is kept), :class:`Preempted`
    after a SIGTERM/SIGINT (a resumable ``last.pt`` written), :class:`CheckpointWriteError` when a checkpoint cannot
    be written (the previous one kept), and :class:`~inception_kernels.train.errors.ConfigError` (a ``ValueError``)
    with a clear message for bad data, options or checkpoints."""
    t_start = time.perf_counter()
    resume_ckpt, resume_path = None, None
    if cfg.resume:
        resume_path, resume_ckpt = _find_resume(cfg)
    if resume_ckpt is not None:
        known = TrainConfig.__dataclass_fields__
        saved = TrainConfig(**{k: v for k, v in resume_ckpt["config"].items() if k in known})
        defaults = TrainConfig()
        for k in RESUME_OVERRIDES:
            if getattr(cfg, k) != getattr(defaults, k):
                setattr(saved, k, getattr(cfg, k))
        for k in TrainConfig.__dataclass_fields__:  # anything else asked for must agree with the checkpoint
            new, old = getattr(cfg, k), getattr(saved, k)
            if k not in RESUME_OVERRIDES and k != "resume" and new != getattr(defaults, k) and new != old:
                raise ConfigError(f"--resume {resume_path}: the checkpoint was trained with {k}={old!r}, this "
                                 f"run asks for {k}={new!r} (a resumed run keeps its checkpoint's settings)")  # fmt: skip
        if saved.output is None or cfg.output is None:
            saved.output = str(resume_path.resolve().parent)
        saved.resume = cfg.resume
        cfg = saved
    cfg = resolve(cfg)
    old_backend, old_threads = os.environ.get("INCEPTION_KERNELS_BACKEND"), torch.get_num_threads()
    if cfg.backend:
        os.environ["INCEPTION_KERNELS_BACKEND"] = cfg.backend
    info = dist_mod.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif info.device.type == "cpu":
        torch.set_num_threads(auto_threads(torch.get_num_threads()))
    try:
        with _StopSignals() as stopper:
            return _train(cfg, info, resume_ckpt, resume_path, t_start, stopper)
    finally:
        dist_mod.cleanup()
        # leave the calling process as it was (train() is also a library call)
        torch.set_num_threads(old_threads)
        if cfg.backend:
            if old_backend is None:
                os.environ.pop("INCEPTION_KERNELS_BACKEND", None)
            else:
                os.environ["INCEPTION_KERNELS_BACKEND"] = old_backend


def _check_cuda_graph(cfg: TrainConfig, info) -> None:
    if not cfg.cuda_graph:
        return
    if info.device.type != "cuda":
        raise ConfigError(f"--cuda-graph needs a CUDA device; this run is on {info.device}")
    if info.enabled:
        raise ConfigError("--cuda-graph runs in a single process: not under torchrun (DDP)")
    if cfg.accum_steps > 1:
        raise ConfigError("--cuda-graph replays whole batches: not with --accum-steps > 1")
    if cfg.compile:
        raise ConfigError(
            "--cuda-graph and --compile exclude each other (torch.compile(mode='reduce-overhead') makes graphs)"
        )


def _train(cfg: TrainConfig, info, resume_ckpt, resume_path, t_start, stopper) -> TrainResult:  # noqa: C901
    from tqdm.auto import tqdm

    device = info.device
    _check_cuda_graph(cfg, info)
    torch.manual_seed(cfg.seed)
    bundle = build_data(cfg.data, cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed,
                        color_jitter=cfg.color_jitter, crop_pct=cfg.crop_pct, digits_shift=cfg.digits_shift,
                        synthetic_length=cfg.synthetic_length, limit_train=cfg.limit_train,
                        limit_val=cfg.limit_val)  # fmt: skip
    num_classes = bundle.num_classes
    mkw = model_kwargs(cfg, num_classes)
    if resume_ckpt is not None:
        ckpt_mod.check_compatible(resume_ckpt, cfg.model, mkw, num_classes, str(resume_path))
    min_size = _model_class(cfg.model).min_size_for(**mkw)
    if cfg.image_size < min_size:
        raise ConfigError(f"{cfg.model} needs an input of at least {min_size}x{min_size}, "
                         f"--image-size is {cfg.image_size}")  # fmt: skip
    from ..models import create_model

    model = create_model(cfg.model, num_classes=num_classes, **mkw)
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None

    train_loader, sampler, val_loader = _loaders(bundle, cfg, info, pin=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(bundle.train)} training images make no full batch of {cfg.batch_size} "
                         f"per process × {info.world_size} processes")  # fmt: skip
    global_batch = cfg.batch_size * info.world_size
    lr = cfg.lr * global_batch / 32 if cfg.lr_scale else cfg.lr
    opt = build_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay), lr, cfg.weight_decay, cfg.momentum,
                          cfg.rho, cfg.opt_eps)  # fmt: skip
    sched = StaircaseLR(opt, lr, steps_per_epoch, cfg.lr_decay, cfg.lr_decay_epochs, cfg.warmup_epochs)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, start_batch, step, best, best_source = 0, 0, 0, -1.0, ""
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        if ema is not None and resume_ckpt.get("ema") is not None:
            ema.load_state_dict(resume_ckpt["ema"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        sched.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        start_epoch, step = resume_ckpt["epoch"], resume_ckpt["step"]
        start_batch = resume_ckpt.get("batch", 0)  # > 0: mid-epoch (then epoch = the epoch in progress)
        best, best_source = resume_ckpt.get("best_top1", -1.0), resume_ckpt.get("best_source", "")
        if start_batch == 0:  # mid-epoch: restored once the epoch's loader iterator exists (it draws a seed)
            ckpt_mod.set_rng_state(resume_ckpt["rng"])

    run_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        run_model = torch.compile(run_model)

    out_dir = (Path(cfg.output) if cfg.output else _default_output(cfg)).absolute()
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_mod.remove_stale_temporaries(out_dir)
        if resume_ckpt is not None:  # rows logged after the checkpoint by a run that died later are redone
            for name in ("steps.csv", "epochs.csv"):
                _truncate_csv(out_dir / name, step)
        conf = dataclasses.asdict(cfg)
        conf_full = dict(config=conf, model_kwargs=mkw, num_classes=num_classes, world_size=info.world_size,
                         global_batch=global_batch, lr=lr, steps_per_epoch=steps_per_epoch, device=str(device),
                         torch=torch.__version__, train_images=len(bundle.train), val_images=len(bundle.val))  # fmt: skip
        with open(out_dir / "config.json", "w") as f:
            json.dump(conf_full, f, indent=1, default=str)
        try:
            import yaml

            with open(out_dir / "config.yaml", "w") as f:
                yaml.safe_dump(json.loads(json.dumps(conf_full, default=str)), f, sort_keys=False)
        except ImportError:
            pass
    steps_log = CsvLog(out_dir / "steps.csv", STEP_FIELDS, info.is_main)
    epochs_log = CsvLog(out_dir / "epochs.csv", EPOCH_FIELDS, info.is_main)
    n_params = sum(p.numel() for p in model.parameters())
    _print(info, f"output: {out_dir}")
    if resume_ckpt is not None:
        where = (
            f"epoch {start_epoch + 1}, batch {start_batch}/{steps_per_epoch}" if start_batch else "epoch end"
        )
        _print(info, f"resuming from {resume_path} (step {step}, {where})")
    _print(info, f"{cfg.model} {mkw} ({n_params / 1e6:.2f} M params) on {bundle.kind} data: {len(bundle.train)} "
                 f"train / {len(bundle.val)} val images, {num_classes} classes, {cfg.image_size}x{cfg.image_size}; "
                 f"{device} ({torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''}), {info.world_size} process(es), global batch {global_batch}, {cfg.optimizer} lr {lr:g}, "
                 f"{cfg.epochs} epochs")  # fmt: skip

    history = []
    if resume_ckpt is not None:
        history = list(resume_ckpt.get("history", []))
    k = cfg.accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    graphed = GraphedStep(params) if cfg.cuda_graph else None
    sig_at, sig_num, kill_at = _test_hooks(info)
    last_pt, prev_pt = out_dir / ckpt_mod.LAST, out_dir / ckpt_mod.PREVIOUS

    def checkpoint(epoch_done: int, batch: int, running: dict | None, best_too: bool = False) -> bool:
        """Write last.pt (rank 0; + best.pt) and agree with every process on the outcome: raises
        :class:`CheckpointWriteError` everywhere when the write failed, returns whether any process was signalled
        (the reduction is also the barrier after the write)."""
        failed = None
        if info.is_main:
            state = dict(model=model.state_dict(), ema=ema.state_dict() if ema else None, optimizer=opt.state_dict(),
                         scheduler=sched.state_dict(), scaler=scaler.state_dict(), rng=ckpt_mod.rng_state(),
                         epoch=epoch_done, batch=batch, running=running, step=step, best_top1=best,
                         best_source=best_source, history=history, config=dataclasses.asdict(cfg),
                         model_name=cfg.model, model_kwargs=mkw, num_classes=num_classes, classes=bundle.classes,
                         image_size=cfg.image_size, data_kind=bundle.kind)  # fmt: skip
            target = last_pt
            try:
                ckpt_mod.save_checkpoint(state, last_pt, previous=prev_pt)
                if best_too:
                    target = out_dir / "best.pt"
                    ckpt_mod.save_checkpoint(state, target)
            except OSError as e:
                kept = last_pt if last_pt.exists() else (prev_pt if prev_pt.exists() else None)
                failed = ckpt_mod.describe_write_error(e, target, kept)
                failed += f"; free space, then continue with --resume auto -o {out_dir}" if kept else ""
        flags = [float(failed is not None), float(stopper.signum)]
        flags = dist_mod.all_reduce_sum(torch.tensor(flags, dtype=torch.float64, device=device), info)
        if flags[0] > 0:
            raise CheckpointWriteError(failed or "writing a checkpoint failed on process 0 (see its message)")
        return bool(flags[1] > 0)

    def preempted(where: str) -> Preempted:
        name = signal.Signals(stopper.signum).name if stopper.signum else "a signal to another process"
        msg = (f"stopped by {name} after step {step} ({where}); checkpoint {last_pt}; continue with "
               f"--resume auto -o {out_dir}")  # fmt: skip
        return Preempted(msg, stopper.signum, last_pt, step)

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        _set_epoch(bundle.train, epoch)
        run_model.train()
        t0 = time.perf_counter()
        loss_sum, loss_n, seen, skipped = torch.zeros((), dtype=torch.float64), 0, 0, 0
        batch, elapsed_before = 0, 0.0
        running = resume_ckpt.get("running") if resume_ckpt is not None and epoch == start_epoch else None
        if start_batch and running is not None:  # a mid-epoch checkpoint: continue where it stopped
            batch = start_batch
            sampler.start = start_batch * cfg.batch_size
            loss_sum = torch.tensor(running["loss_sum"], dtype=torch.float64)
            loss_n, seen = running["loss_n"], running["seen"]
            skipped = running["skipped"] if info.is_main else 0  # the sum over processes, counted once
            elapsed_before = running["train_s"]
        cur_lr = sched.lr_at(max(0, step - 1))  # the rate of the latest step (shown at the epoch end)
        batches = iter(train_loader)
        if batch:
            ckpt_mod.set_rng_state(resume_ckpt["rng"])
        # the DDP stand-in for an unreadable batch (below) is the process's previous good batch; after a mid-epoch
        # resume it starts as zeros again (the only state a resume does not restore: it is per-process data)
        last_good = None
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, total=steps_per_epoch,
                   initial=batch, disable=cfg.quiet or not info.is_main, dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        for x, y, n_skip in bar:
            if step + 1 == sig_at:
                os.kill(os.getpid(), sig_num)
            batch += 1
            skipped += n_skip
            weight = 1.0
            if x is None:
                if not info.enabled:
                    continue
                # every process must take part in the gradient all-reduce: reuse a batch with zero weight
                x, y = (
                    last_good
                    if last_good is not None
                    else (
                        torch.zeros(2 * k, 3, cfg.image_size, cfg.image_size),
                        torch.zeros(2 * k, dtype=torch.int64),
                    )
                )
                weight = 0.0
            else:
                last_good = (x, y)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step_loss = torch.zeros((), device=device)

            def forward_backward(xj, yj, weight=weight):
                # (a CUDA graph capture needs autocast's weight-cast cache off)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None,
                                    cache_enabled=graphed is None):  # fmt: skip
                    out = run_model(xj)
                loss = inception_loss(out, yj, cfg.label_smoothing, cfg.aux_weight)
                scaler.scale(loss * (weight / k)).backward()
                return loss.detach()

            for j in range(k):
                # strided micro-batches: micro-batch j of one process = the batch of rank j of k processes
                xj, yj = (x, y) if k == 1 else (x[j::k], y[j::k])
                sync = contextlib.nullcontext()
                if info.enabled and j < k - 1:
                    sync = run_model.no_sync()
                with sync:
                    loss = forward_backward(xj, yj) if graphed is None else graphed(xj, yj, forward_backward)
                step_loss += loss / k
            # the loss every process logs and checks: the mean over processes (the global batch's loss); the same
            # reduction tells every process whether any of them was signalled, so that they all stop at this step
            red = torch.stack([step_loss.double() * weight, torch.tensor(weight, dtype=torch.float64, device=device),
                               torch.tensor(float(stopper.signum), dtype=torch.float64, device=device)])  # fmt: skip
            red = dist_mod.all_reduce_sum(red, info)
            gloss = float(red[0] / red[1].clamp_min(1e-12))
            if not math.isfinite(gloss):
                opt.zero_grad(set_to_none=graphed is None or graphed.set_to_none)
                msg = (f"loss is {gloss} at epoch {epoch + 1}, step {step + 1}: stopping. The last good checkpoint "
                       f"is {last_pt}" + ("" if last_pt.exists() else " (none written yet)")
                       + "; lower --lr or check the data.")  # fmt: skip
                bar.close()
                raise NonFiniteLoss(msg)
            scaler.unscale_(opt)
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=graphed is None or graphed.set_to_none)
            cur_lr = opt.param_groups[0]["lr"]
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += gloss * float(red[1])
            loss_n += float(red[1])
            seen += x.shape[0] * info.world_size
            ips = seen / max(1e-9, elapsed_before + time.perf_counter() - t0)
            if not cfg.quiet:
                bar.set_postfix(loss=f"{gloss:.3f}", lr=f"{cur_lr:.3g}", img_s=f"{ips:.0f}", refresh=False)
            if step % cfg.log_every == 0:
                steps_log.write(dict(epoch=epoch + 1, step=step, loss=gloss, lr=cur_lr, img_per_s=ips))
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            stop = bool(red[2] > 0)
            periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
            # (a periodic one at the epoch's last batch is the epoch-end one; a stop there does not wait for the
            # validation: the checkpoint says batch = steps_per_epoch, and the resumed run validates)
            if stop or (periodic and batch < steps_per_epoch):
                sk = dist_mod.all_reduce_sum(torch.tensor([float(skipped)], device=device), info)
                running = dict(loss_sum=float(loss_sum), loss_n=loss_n, seen=seen, skipped=int(sk.item()),
                               train_s=elapsed_before + time.perf_counter() - t0)  # fmt: skip
                if checkpoint(epoch, batch, running) or stop:
                    bar.close()
                    raise preempted(f"epoch {epoch + 1}, batch {batch}/{steps_per_epoch}")
        bar.close()
        del batches
        train_time = elapsed_before + time.perf_counter() - t0
        models = {"raw": model}
        if ema is not None:
            models["ema"] = ema.module
        ev = _evaluate(models, val_loader, info, amp_dtype, channels_last)
        sk = dist_mod.all_reduce_sum(torch.tensor([float(skipped)], device=device), info)
        row = dict(epoch=epoch + 1, step=step, train_loss=float(loss_sum) / max(1.0, loss_n),
                   val_loss=ev["raw"]["loss"], top1=ev["raw"]["top1"], top5=ev["raw"]["top5"],
                   ema_top1=ev["ema"]["top1"] if ema else "", ema_top5=ev["ema"]["top5"] if ema else "",
                   lr=opt.param_groups[0]["lr"], epoch_s=elapsed_before + time.perf_counter() - t0,
                   img_per_s=seen / max(1e-9, train_time), skipped_train=int(sk.item()),
                   skipped_val=ev["skipped"])  # fmt: skip
        history.append(row)
        epochs_log.write(row)
        improved = False
        for src in models:
            if ev[src]["top1"] > best:
                best, best_source, improved = ev[src]["top1"], src, True
        line = (f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  val top1 {row['top1']:.2f} "
                f"top5 {row['top5']:.2f}")  # fmt: skip
        if ema is not None:
            line += f"  ema top1 {row['ema_top1']:.2f}"
        line += f"  lr {cur_lr:.4g}  {row['img_per_s']:.0f} img/s  {row['epoch_s']:.1f} s"
        if row["skipped_train"] or row["skipped_val"]:
            line += f"  skipped {row['skipped_train']} train / {row['skipped_val']} val unreadable images"
        _print(info, line)
        stop = checkpoint(epoch + 1, 0, None, best_too=improved)
        if stop and epoch + 1 < cfg.epochs:
            raise preempted(f"end of epoch {epoch + 1}")
        if cfg.stop_after and epoch + 1 >= cfg.stop_after and epoch + 1 < cfg.epochs:
            _print(info, f"stopping after epoch {epoch + 1} (--stop-after); resume with --resume {last_pt}")
            break
    elapsed = time.perf_counter() - t_start
    if info.is_main and cfg.plots and history:
        from .plots import plot_run

        plot_run(out_dir)
    _print(info, f"best val top1 {best:.2f} % ({best_source} weights); {elapsed:.0f} s; outputs in {out_dir}")
    return TrainResult(out_dir, history, best, best_source, elapsed,
                       cuda_graph_replays=graphed.replays if graphed is not None else 0)  # fmt: skip
