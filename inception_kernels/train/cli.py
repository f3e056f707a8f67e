"""Flags of ``inception-kernels train`` / ``eval`` (also ``python -m inception_kernels.train``)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigError
from .evaluate import PROTOCOLS

# Optional dependencies (import name -> distribution) and the extra of setup.py that installs them; a command
# that needs one says which extra to install instead of a bare ModuleNotFoundError.
OPTIONAL_DEPS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "tqdm": "tqdm", "yaml": "pyyaml",
                 "torchvision": "torchvision"}  # fmt: skip
COMMAND_EXTRA = {"train": "train", "eval": "train", "bench": "bench"}


def missing_extra_message(err: ModuleNotFoundError, command: str) -> str | None:
    """The message for ``err`` raised by ``inception-kernels <command>`` when it is an optional dependency
    missing from the environment (None for any other missing module: a real bug, re-raised)."""
    top = (err.name or "").split(".")[0]
    if top not in OPTIONAL_DEPS:
        return None
    extra = COMMAND_EXTRA.get(command, "train")
    if extra == "bench" and top != "matplotlib":
        extra = "train"  # bench's extra has matplotlib only; the networks it builds come with [train]
    return (f"error: `inception-kernels {command}` needs {OPTIONAL_DEPS[top]}, which is not installed "
            f"(No module named {top!r}). Install the extra: pip install \"inception-kernels[{extra}]\"")  # fmt: skip


def run_friendly(command: str, fn, *args) -> int:
    """``fn(*args)``, turning a missing optional dependency into the install hint above (exit status 1)."""
    try:
        return fn(*args)
    except ModuleNotFoundError as e:
        msg = missing_extra_message(e, command)
        if msg is None:
            raise
        print(msg, file=sys.stderr)
        return 1


# Exit codes of `inception-kernels train` besides 0 (done) and 1 (an error, e.g. a NaN loss):
# SIGTERM/SIGINT stopped the run after a step with a resumable checkpoint (sysexits' EX_TEMPFAIL) ...
EXIT_PREEMPTED = 75
# ... a checkpoint could not be written (a full disk); the last good one is kept (sysexits' EX_IOERR)
EXIT_CHECKPOINT_WRITE = 74

TRAIN_DESCRIPTION = """\
Train an Inception network with the papers' recipe (TF RMSProp rho=0.9 momentum=0.9 eps=1.0, lr 0.045 x0.94 every
2 epochs, gradient clipping at global norm 2, weight decay 4e-5 on weights, label smoothing 0.1, aux loss 0.4
(GoogLeNet 0.3), EMA 0.9999 of weights and buffers). With no --data it trains on the built-in default:
scikit-learn's handwritten digits (1,437 train / 360 val scans, upscaled to the model's minimum input, 75x75 for
inception_v3) with inception_v3 at --width-mult 0.25, 20 epochs at batch 32 -- the same recipe, only width, input
size, epochs and batch chosen so that it reaches >= 95 %% val top-1 in a few minutes on a 2-core CPU (no aux head:
it needs 299x299 input). Multi-GPU / multi-process: torchrun --nproc_per_node=N -m inception_kernels.train ...
(--batch-size is per process).

Faults: SIGTERM/SIGINT finish the current step, write a resumable last.pt and exit with code 75; a checkpoint that
cannot be written (full disk) stops with code 74, the last good one kept; --resume auto -o DIR continues from DIR's
newest good checkpoint (last.pt, else last.prev.pt) or starts afresh when there is none."""


def _kv(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    import yaml

    return k, yaml.safe_load(v)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .loop import TrainConfig
    from .optim import OPTIMIZERS

    d = TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="model name (inception_v3, googlenet, inception_v4, ...)")
    g.add_argument("--width-mult", type=float, help="filter-count multiplier (inception_v3; default 1, "
                   "0.25 on the built-in digits)")  # fmt: skip
    g.add_argument("--model-kw", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra model option, e.g. --model-kw dropout=0.2 (repeatable)")  # fmt: skip
    g.add_argument("--aux-logits", choices=["auto", "on", "off"], default=d.aux_logits,
                   help="auxiliary heads (auto: on where the model has them and the input is large enough)")  # fmt: skip
    g.add_argument("--aux-weight", type=float, help="aux loss weight per head (default 0.4; GoogLeNet 0.3)")
    g.add_argument("--bn-momentum", type=float, help="BatchNorm momentum, PyTorch convention = 1 - TF decay "
                   "(the papers: 0.0003; default: the model's 0.1, better for short runs)")  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--data", help="ImageFolder root with train/ and val/, 'synthetic', or 'digits' (default)")
    g.add_argument("--image-size", type=int, help="input size (default 299, GoogLeNet 224, digits: the model's "
                   "minimum)")  # fmt: skip
    g.add_argument("--num-classes", type=int, help="check the data has this many classes (synthetic: set it)")
    g.add_argument("--color-jitter", type=float, default=d.color_jitter, help="brightness/contrast/saturation "
                   "jitter strength for ImageFolder training (0: off)")  # fmt: skip
    g.add_argument("--crop-pct", type=float, default=d.crop_pct, help="eval center crop fraction (0.875)")
    g.add_argument("--digits-shift", type=int, default=d.digits_shift, help="digits: random translation in "
                   "pixels (0: none)")  # fmt: skip
    g.add_argument("--workers", type=int, help="data-loading processes per training process")
    g.add_argument("--limit-train", type=int, default=0, help="use only the first N training images")
    g.add_argument("--limit-val", type=int, default=0, help="use only the first N validation images")
    g.add_argument(
        "--synthetic-length", type=int, default=d.synthetic_length, help="images per synthetic epoch"
    )
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, help="epochs (default 100; digits 20; synthetic 1)")
    g.add_argument("--batch-size", type=int, help="batch per process per step (default 32)")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="split each batch into this many "
                   "strided micro-batches (gradient accumulation; BN statistics per micro-batch, like replicas)")  # fmt: skip
    g.add_argument("--opt", dest="optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (0.045)")
    g.add_argument("--lr-scale", action="store_true", help="scale lr by global batch / 32")
    g.add_argument("--lr-decay", type=float, default=d.lr_decay, help="staircase decay factor (0.94)")
    g.add_argument("--lr-decay-epochs", type=float, default=d.lr_decay_epochs, help="epochs per decay (2)")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warmup (0: none)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="momentum (RMSProp, SGD)")
    g.add_argument("--rho", type=float, default=d.rho, help="RMSProp decay (0.9)")
    g.add_argument("--opt-eps", type=float, default=d.opt_eps, help="RMSProp epsilon (1.0)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 on weights (4e-5)")
    g.add_argument("--clip-grad", type=float, default=d.clip_grad, help="global-norm clip (2.0; 0: off)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(0.1)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay (0.9999; 0: no EMA)")
    g.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false",
                   help="use the EMA decay from step 1 (default: TF's min(decay, (1+n)/(10+n)))")  # fmt: skip
    g = p.add_argument_group("execution")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default=d.amp, help="autocast (auto: bf16 "
                   "on CUDA, none on CPU)")  # fmt: skip
    g.add_argument("--channels-last", choices=["auto", "on", "off"], default=d.channels_last,
                   help="channels_last memory (auto: on CUDA)")  # fmt: skip
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--cuda-graph", action="store_true", help="replay forward + loss + backward from a CUDA graph "
                   "(one process, one batch shape; other batches run as usual)")  # fmt: skip
    g.add_argument("--backend", choices=["auto", "triton", "cuda", "reference"],
                   help="sets INCEPTION_KERNELS_BACKEND (auto: fused kernels on CUDA, reference on CPU)")  # fmt: skip
    g.add_argument("--threads", type=int, help="CPU threads per process (default: all cores / processes)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("run")
    g.add_argument("--output", "-o", help="run directory (default runs/<model>-<data>-<time>)")
    g.add_argument("--resume", help="continue from this last.pt (its config; --epochs may extend the run), "
                   "from a run directory's newest good checkpoint, or 'auto': that of --output (none: start afresh)")  # fmt: skip
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="N", help="also write "
                   "last.pt every N steps within epochs (for kills without warning; 0: at epoch ends only)")  # fmt: skip
    g.add_argument("--stop-after", type=int, default=0, help="stop resumably after this many epochs in total")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar (one line per epoch)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between steps.csv rows")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG curves")


def config_from_args(args: argparse.Namespace):
    from .loop import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["model_kwargs"] = dict(args.model_kw)
    return TrainConfig(**kw)


def run_train(args: argparse.Namespace) -> int:
    from .loop import CheckpointWriteError, NonFiniteLoss, Preempted, train

    try:
        train(config_from_args(args))
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    except CheckpointWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE
    except ConfigError as e:  # bad options, data or checkpoint: the library's message, usage exit code
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def train_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m inception_kernels.train", description=TRAIN_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_train_arguments(p)
    return run_friendly("train", run_train, p.parse_args(argv))


# ----------------------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------------------
EVAL_DESCRIPTION = """\
Evaluate checkpoints (last.pt / best.pt of `inception-kernels train`): top-1/top-5 under the crop protocols
1 (center crop), 10 (corners + center, x mirror), 12 (our definition: the central square at one scale, its 4 corner
+ center crops and the square resized, x mirror) and 144 (GoogLeNet: 4 scales x 3 squares x 6 crops x 2), with
raw and/or EMA weights; several checkpoints are also evaluated as an ensemble (softmax averaged). The crop
definitions are in inception_kernels/train/evaluate.py."""


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoint files (several: also their ensemble)")
    p.add_argument("--data", help="data to evaluate on (default: the first checkpoint's training data)")
    p.add_argument("--crops", nargs="+", choices=PROTOCOLS, default=["1"], help="crop protocols (default 1)")
    p.add_argument("--weights", choices=["ema", "raw", "both"], default="both", help="which weights (both)")
    p.add_argument("--crop-pct", type=float, help="crop fraction for 1/10/12 (default: 0.875; digits: 1.0)")
    p.add_argument("--batch-size", type=int, default=256, help="views per forward batch (default 256)")
    p.add_argument("--workers", type=int, help="data-loading processes")
    p.add_argument("--limit-val", type=int, default=0, help="only the first N validation images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", help="also write the results here")


def evaluate_checkpoints(paths: list[str], data: str | None = None, crops=("1",), weights: str = "both",
                         crop_pct: float | None = None, batch_size: int = 256, workers: int | None = None,
                         limit_val: int = 0, device: str = "auto") -> list[dict]:  # fmt: skip
    """Top-1/top-5 of each checkpoint (raw / EMA weights) and of their ensemble under each crop protocol. Returns
    rows ``dict(protocol, weights, model, top1, top5, n)``; raises :class:`ConfigError` for missing or mismatched
    checkpoints or data."""
    import os

    import torch
    from torch.utils.data import DataLoader

    from ..models import create_model
    from .checkpoint import check_compatible, load_checkpoint
    from .data import build_data, collate_skip
    from .evaluate import MultiCropDataset, accuracy_table, crop_specs, predict

    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]
    for p, c in zip(paths[1:], ckpts[1:]):
        if c["num_classes"] != first["num_classes"] or c["image_size"] != first["image_size"]:
            raise ConfigError(f"{p!r} ({c['num_classes']} classes, {c['image_size']}px) cannot be ensembled "
                             f"with {paths[0]!r} ({first['num_classes']} classes, {first['image_size']}px)")  # fmt: skip
    if data is None:
        data = first["config"].get("data")
    size = first["image_size"]
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))  # fmt: skip
    if dev.type == "cpu":
        from .loop import auto_threads

        torch.set_num_threads(auto_threads(torch.get_num_threads()))
    bundle = build_data(data, size, limit_val=limit_val, num_classes=first["num_classes"])
    if crop_pct is None:
        crop_pct = 1.0 if bundle.kind == "digits" else 0.875
    groups = {"raw": [], "ema": []}  # weights -> [(name, model)]
    for p, c in zip(paths, ckpts):
        check_compatible(c, c["model_name"], c["model_kwargs"], bundle.num_classes, p)
        name = os.path.basename(os.path.dirname(os.path.abspath(p))) + "/" + os.path.basename(p)
        for w in ("raw", "ema"):
            if weights not in (w, "both"):
                continue
            state = c["model"] if w == "raw" else (c["ema"] or {}).get("module")
            if state is None:
                if weights == "ema":
                    raise ConfigError(f"{p!r} has no EMA weights (trained with --ema-decay 0)")
                continue
            m = create_model(c["model_name"], num_classes=c["num_classes"], **c["model_kwargs"])
            m.load_state_dict(state)
            groups[w].append((name, m.to(dev).eval()))
    if workers is None:
        workers = 0 if bundle.kind != "folder" else min(8, os.cpu_count() or 1)
    rows = []
    for protocol in crops:
        n_views = len(crop_specs(size + 64, size + 64, size, protocol, crop_pct)) if protocol != "1" else 1
        ds = MultiCropDataset(bundle.val_raw, size, protocol, crop_pct)
        loader = DataLoader(ds, batch_size=max(1, batch_size // n_views), num_workers=workers,
                            collate_fn=collate_skip)  # fmt: skip
        entries = groups["raw"] + groups["ema"]
        probs, labels, skipped = predict([m for _, m in entries], loader, dev)
        i = 0
        for w in ("raw", "ema"):
            n = len(groups[w])
            if n:
                names = [name for name, _ in groups[w]]
                for r in accuracy_table(names, probs[i : i + n], labels):
                    rows.append(dict(protocol=protocol, views=n_views, weights=w, skipped=skipped, **r))
            i += n
    return rows


def run_eval(args: argparse.Namespace) -> int:
    try:
        rows = evaluate_checkpoints(args.checkpoints, args.data, args.crops, args.weights, args.crop_pct,
                                    args.batch_size, args.workers, args.limit_val, args.device)  # fmt: skip
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{'crops':>5s} {'views':>5s} {'weights':7s} {'model':40s} {'top-1':>7s} {'top-5':>7s} {'images':>7s}"
    )
    for r in rows:
        print(
            f"{r['protocol']:>5s} {r['views']:5d} {r['weights']:7s} {r['model'][:40]:40s} {r['top1']:7.2f} "
            f"{r['top5']:7.2f} {r['n']:7d}"
            + (f"  ({r['skipped']} unreadable skipped)" if r["skipped"] else "")
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
