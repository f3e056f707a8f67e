"""Evaluation: top-1 / top-5 with single-crop and multi-crop protocols, model ensembles and EMA weights.

Protocols (``crop`` is the network's input size, e.g. 299 or 224; ``crop_pct`` = 0.875 by default):

* ``1`` -- single crop: resize the shorter side to ``round(crop / crop_pct)`` (342 for 299), center crop.
* ``10`` -- resize as for ``1``; the four corner crops and the center crop, and their horizontal mirrors
  (Krizhevsky et al.; torchvision's ``TenCrop``).
* ``12`` -- **our definition** of the "12-crop" evaluation the Inception-v4 paper reports (Table 4) while only
  citing GoogLeNet, whose paper defines 144 crops and no 12-crop scheme. We take GoogLeNet's per-square crop set
  at one scale: resize the shorter side to ``round(crop / crop_pct)``, take the *central square* of side = the
  shorter side, and from it the 4 corner crops and the center crop of size ``crop``, plus the whole square resized
  to ``crop``; and the mirrors of all six: 1 scale × 1 square × 6 crops × 2 = 12. It is the 144-crop scheme
  restricted to its middle scale and middle square, and for a square image it is the 10-crop set plus the full
  image and its mirror.
* ``144`` -- GoogLeNet's: resize the shorter side to 4 scales, ``round(crop · s / 224)`` for s in
  (256, 288, 320, 352) -- exactly the paper's 256...352 at crop 224; from each, 3 squares of side = the shorter side
  (left, center, right for a landscape image; top, center, bottom for a portrait one; for a square image the three
  coincide and are still counted, as the protocol is a fixed number of crops); from each square the 4 corner and
  the center ``crop``² crops plus the square resized to ``crop``²; and their mirrors: 4 × 3 × 6 × 2 = 144.

Predictions average the softmax over crops and, for an ensemble, over models (each model's crops weighted
equally). All resizing is bilinear with antialiasing (torchvision ``transforms.v2.functional.resize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PROTOCOLS = ("1", "10", "12", "144")
GOOGLENET_SCALES = (256, 288, 320, 352)


@dataclass(frozen=True)
class CropSpec:
    """One view: resize the image so its shorter side is ``short``; take the square at (``sq_top``, ``sq_left``)
    of side ``sq_side`` in the resized image; inside the square take the ``crop``² box at (``top``, ``left``) --
    or, with ``full=True``, resize the whole square to ``crop``²; mirror horizontally if ``flip``."""

    short: int
    sq_top: int
    sq_left: int
    sq_side: int
    top: int
    left: int
    full: bool
    flip: bool


def resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to ``short`` (aspect kept; torchvision's rounding: ``int``)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def _five(side: int, crop: int) -> list[tuple[int, int]]:
    """Top-left corners of the 4 corner crops and the center crop (tl, tr, bl, br, center) in a side² square."""
    if crop > side:
        raise ValueError(f"crop {crop} larger than the {side}-pixel square it is taken from")
    c = int(round((side - crop) / 2.0))
    e = side - crop
    return [(0, 0), (0, e), (e, 0), (e, e), (c, c)]


def crop_specs(h: int, w: int, crop: int, protocol: str, crop_pct: float = 0.875) -> list[CropSpec]:
    """The views of ``protocol`` for an h×w image, in order (unflipped views first, then their mirrors)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown crop protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "144":
        scales = [round(crop * s / 224) for s in GOOGLENET_SCALES]
    else:
        scales = [round(crop / crop_pct)]
    views = []
    for short in scales:
        rh, rw = resized_hw(h, w, short)
        if protocol in ("1", "10"):
            # the crop box in the whole resized image (the "square" is the image itself: sq_side = its height)
            ct, cl = int(round((rh - crop) / 2.0)), int(round((rw - crop) / 2.0))
            boxes = (
                [(ct, cl)]
                if protocol == "1"
                else [(0, 0), (0, rw - crop), (rh - crop, 0), (rh - crop, rw - crop), (ct, cl)]
            )
            views += [CropSpec(short, 0, 0, 0, t, l, False, False) for t, l in boxes]  # noqa: E741
            continue
        side = min(rh, rw)
        if protocol == "12":
            offsets = [int(round((max(rh, rw) - side) / 2.0))]
        else:
            offsets = [0, int(round((max(rh, rw) - side) / 2.0)), max(rh, rw) - side]
        for off in offsets:
            st, sl = (0, off) if rw >= rh else (off, 0)
            for t, l in _five(side, crop):  # noqa: E741
                views.append(CropSpec(short, st, sl, side, t, l, False, False))
            views.append(CropSpec(short, st, sl, side, 0, 0, True, False))
    if protocol == "1":
        return views
    return views + [
        CropSpec(v.short, v.sq_top, v.sq_left, v.sq_side, v.top, v.left, v.full, True) for v in views
    ]


def multi_crop(img: torch.Tensor, crop: int, protocol: str, crop_pct: float = 0.875) -> torch.Tensor:
    """Views of one image (C, H, W) under ``protocol``: a tensor (n_views, C, crop, crop) of ``img``'s dtype."""
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    out, cache = [], {}
    for v in crop_specs(h, w, crop, protocol, crop_pct):
        if v.short not in cache:
            cache[v.short] = TF.resize(img, [v.short], antialias=True)
        im = cache[v.short]
        if v.sq_side:
            im = im[..., v.sq_top : v.sq_top + v.sq_side, v.sq_left : v.sq_left + v.sq_side]
        if v.full:
            im = TF.resize(im, [crop, crop], antialias=True)
        else:
            im = im[..., v.top : v.top + crop, v.left : v.left + crop]
        out.append(TF.horizontal_flip(im) if v.flip else im)
    return torch.stack(out)


class MultiCropDataset(torch.utils.data.Dataset):
    """Wraps a dataset of uncropped ``(image, label)`` (uint8 or normalized float (3, H, W)) into
    ``(views, label)`` with ``views`` float32 (n_views, 3, crop, crop) normalized to [-1, 1]."""

    def __init__(self, base, crop: int, protocol: str, crop_pct: float = 0.875):
        self.base, self.crop, self.protocol, self.crop_pct = base, crop, protocol, crop_pct

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        from .data import to_model_input

        item = self.base[i]
        if item is None:
            return None
        img, label = item
        return to_model_input(multi_crop(img, self.crop, self.protocol, self.crop_pct)), label


def _forward_views(model: nn.Module, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    """Softmax probabilities (B, K) averaged over views: ``x`` is (B, C, H, W) or (B, V, C, H, W)."""
    b = x.shape[0]
    views = x.reshape(-1, *x.shape[-3:]) if x.ndim == 5 else x
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(views)
    p = F.softmax(logits.float(), dim=-1)
    return p.view(b, -1, p.shape[-1]).mean(1)


@torch.no_grad()
def predict(models: list[nn.Module], loader, device: torch.device, amp_dtype=None, channels_last: bool = False,
            info=None):  # fmt: skip
    """Run ``models`` (in eval mode) over ``loader`` (batches from :func:`~.data.collate_skip`). Returns
    ``(probs, labels, skipped)``: per-model softmax probabilities averaged over views, a list of (N, K) tensors;
    labels (N,); the number of unreadable images skipped."""
    for m in models:
        m.eval()
    capacity = _num_samples(loader)
    probs = [_Rows(capacity, torch.float32) for _ in models]
    labels, skipped = _Rows(capacity, torch.int64), 0
    for x, y, n_skip in loader:
        skipped += n_skip
        if x is None:
            continue
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for i, m in enumerate(models):
            probs[i].add(_forward_views(m, x, amp_dtype).cpu())
        labels.add(torch.as_tensor(y))
    k = next((p.cols for p in probs if p.cols is not None), 0)
    return [p.rows(k) for p in probs], labels.rows(), skipped


def _num_samples(loader) -> int:
    """How many samples this process's loader yields (its sampler's length: a shard in a distributed run), or 0
    when it cannot say."""
    for source in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        try:
            return len(source)
        except TypeError:
            continue
    return 0


class _Rows:
    """Batches of rows written into one preallocated buffer (sized by the dataset, doubled if a loader yields
    more), so the gathered predictions are never concatenated."""

    def __init__(self, capacity: int, dtype: torch.dtype):
        self.capacity, self.dtype, self.n = max(1, capacity), dtype, 0
        self.buf: torch.Tensor | None = None
        self.cols: int | None = None

    def add(self, t: torch.Tensor) -> None:
        t = t.reshape(len(t), -1) if t.ndim > 1 else t.reshape(-1)
        if self.buf is None:
            self.cols = t.shape[1] if t.ndim == 2 else None
            self.buf = torch.empty((self.capacity, *t.shape[1:]), dtype=self.dtype)
        need = self.n + len(t)
        if need > len(self.buf):
            grown = torch.empty((max(need, 2 * len(self.buf)), *self.buf.shape[1:]), dtype=self.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : need] = t
        self.n = need

    def rows(self, cols: int | None = None) -> torch.Tensor:
        """The rows written so far; with none, an empty (0,) tensor, or (0, cols) given ``cols``."""
        if self.buf is None:
            return torch.empty((0,) if cols is None else (0, cols), dtype=self.dtype)
        return self.buf[: self.n]


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k classes, for each k (k capped at the class count)."""
    if len(labels) == 0:
        return [0 for _ in ks]
    top = probs.topk(min(max(ks), probs.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return [int(hit[:, : min(k, probs.shape[1])].any(1).sum()) for k in ks]


def accuracy_table(
    names: list[str], probs: list[torch.Tensor], labels: torch.Tensor, info=None
) -> list[dict]:
    """Top-1 / top-5 (percent) per model and, with several, of the ensemble (mean of the softmax outputs).
    In a distributed run the counts are summed over processes (each holds a shard of the data)."""
    from .distributed import all_reduce_sum

    rows = []
    entries = list(zip(names, probs))
    if len(probs) > 1:
        entries.append((f"ensemble of {len(probs)}", torch.stack(probs).mean(0)))
    for name, p in entries:
        c1, c5 = topk_correct(p, labels)
        t = torch.tensor([c1, c5, len(labels)], dtype=torch.float64)
        if info is not None:
            t = all_reduce_sum(t.to(info.device), info).cpu()
        n = max(1.0, float(t[2]))
        rows.append(dict(model=name, top1=100.0 * float(t[0]) / n, top5=100.0 * float(t[1]) / n, n=int(t[2])))
    return rows
