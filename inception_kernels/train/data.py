"""Data: an ImageFolder tree with the Inception preprocessing, random tensors for throughput runs, and the built-in
default -- scikit-learn's handwritten digits upscaled to the model's input size.

Every sample is ``(image, label)`` with ``image`` a float32 tensor (3, H, W) normalized to [-1, 1] (Inception
preprocessing: ``(x − 0.5) / 0.5`` of [0, 1] pixels). Unreadable images come back as ``None``;
:func:`collate_skip` drops them and counts them, so a corrupt file costs one sample, never the run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import ConfigError

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


# ----------------------------------------------------------------------------------------------------------
# Built-in: scikit-learn's digits
# ----------------------------------------------------------------------------------------------------------
def digits_split(image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8×8 digit scans (16 grey levels), bilinearly upscaled to ``image_size``², split
    80 / 20 stratified with a fixed seed (1,437 train, 360 val). Returns ``(x_train, y_train, x_val, y_val)``,
    images (N, 1, S, S) float32 in [-1, 1], labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_tr, idx_va = train_test_split(torch.arange(len(y)).numpy(), test_size=DIGITS_VAL_FRACTION,
                                      random_state=DIGITS_SPLIT_SEED, stratify=y.numpy())  # fmt: skip
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    idx_tr, idx_va = torch.as_tensor(idx_tr), torch.as_tensor(idx_va)
    return x[idx_tr].contiguous(), y[idx_tr], x[idx_va].contiguous(), y[idx_va]


class TensorImages(Dataset):
    """In-memory images (N, 1 or 3, H, W) and labels; grey images are repeated to 3 channels. With ``shift`` > 0
    each training sample is translated by a random integer offset in [−shift, shift]² (zero fill = the digits'
    background), drawn from a generator seeded by (seed, epoch, index): the same sample gets the same shift in
    every process layout and after a resume."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, shift: int = 0, seed: int = 0):
        self.x, self.y, self.shift, self.seed, self.epoch = x, y, shift, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        if self.shift:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
            dy, dx = (torch.randint(-self.shift, self.shift + 1, (2,), generator=g)).tolist()
            bg = float(img.min())
            img = torch.roll(img, (dy, dx), dims=(-2, -1))
            if dy > 0:
                img[..., :dy, :] = bg
            elif dy < 0:
                img[..., dy:, :] = bg
            if dx > 0:
                img[..., :, :dx] = bg
            elif dx < 0:
                img[..., :, dx:] = bg
        return img.expand(3, -1, -1), self.y[i]


# ----------------------------------------------------------------------------------------------------------
# Synthetic
# ----------------------------------------------------------------------------------------------------------
class SyntheticImages(Dataset):
    """``length`` random images (3, S, S) ~ N(0, 1) and uniform labels, generated per index from a seeded
    generator (no storage): for throughput runs, where the data must not be the bottleneck."""

    def __init__(self, length: int, image_size: int, num_classes: int, seed: int = 0):
        self.length, self.size, self.num_classes, self.seed = length, image_size, num_classes, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        img = torch.randn(3, self.size, self.size, generator=g)
        return img, int(torch.randint(self.num_classes, (), generator=g))


# ----------------------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------------------
def read_image(path: str) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W): torchvision's decoders, with PIL as the fallback for
    formats they do not read (BMP, TIFF, ...). Raises on an unreadable file."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():  # torchvision 0.29 announces the move of its decoders to TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(path, mode=ImageReadMode.RGB)
    except Exception:  # noqa: BLE001 - fall back to PIL, which raises for a truly corrupt file
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(path) as im:
            return pil_to_tensor(im.convert("RGB"))


def inception_train_transform(image_size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                              color_jitter: float = 0.0):  # fmt: skip
    """Inception training preprocessing on uint8 (3, H, W): random-resized crop (area fraction ``scale``, aspect
    ``ratio``), horizontal flip, optional colour jitter (brightness, contrast, saturation), then [-1, 1]."""
    from torchvision.transforms import v2

    t = [v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio, antialias=True)]
    if flip:
        t.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        t.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    t += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(t)


def inception_eval_transform(image_size: int, crop_pct: float = 0.875):
    """Single-crop evaluation: resize the shorter side to ``round(image_size / crop_pct)`` (342 for 299), take the
    center ``image_size``² crop, then [-1, 1]."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(image_size / crop_pct), antialias=True), v2.CenterCrop(image_size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip


def to_model_input(img: torch.Tensor) -> torch.Tensor:
    """uint8 (.., 3, H, W) → float32 in [-1, 1]; float input is taken as already normalized."""
    if img.dtype == torch.uint8:
        return (img.float() / 255.0 - 0.5) / 0.5
    return img


class SafeImageFolder(Dataset):
    """torchvision's ``ImageFolder`` class discovery over ``root``, decoding with :func:`read_image`. An image that
    cannot be read or transformed comes back as ``None`` (see :func:`collate_skip`) with a warning naming it.
    With a ``seed``, the random transform of sample ``i`` draws from torch's CPU generator seeded by (seed, epoch,
    i), which is restored afterwards: the same crops in every process / worker layout and after a mid-epoch
    resume (which skips the epoch's first batches without loading them)."""

    def __init__(self, root: str | Path, transform=None, seed: int | None = None):
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"dataset directory {str(root)!r} does not exist")
        try:
            folder = ImageFolder(str(root), loader=lambda p: p)
        except (FileNotFoundError, RuntimeError) as e:
            raise ConfigError(f"no images in {str(root)!r}: {e}") from e
        self.root, self.samples, self.classes = root, folder.samples, folder.classes
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _transform(self, img, i: int):
        if self.seed is None:
            return self.transform(img)
        g = torch.default_generator  # (not torch.manual_seed: that would reseed the CUDA generators too)
        saved = g.get_state()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
        try:
            return self.transform(img)
        finally:
            g.set_state(saved)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = read_image(path)
            if self.transform is not None:
                img = self._transform(img, i)
        except Exception as e:  # noqa: BLE001 - any failure on one file skips that file only
            warnings.warn(f"skipping unreadable image {path}: {type(e).__name__}: {e}", stacklevel=1)
            return None
        return img, label


def collate_skip(batch):
    """Collate ``(image, label)`` samples, dropping ``None`` (unreadable) ones. Returns ``(images, labels,
    n_skipped)``; ``images`` and ``labels`` are ``None`` when every sample of the batch was unreadable."""
    from torch.utils.data import default_collate

    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    x, y = default_collate(good)
    return x, y, skipped


# ----------------------------------------------------------------------------------------------------------
# Choosing the data
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DataBundle:
    kind: str  # "digits", "synthetic" or "folder"
    train: Dataset
    val: Dataset
    num_classes: int
    classes: list = field(default_factory=list)
    # for evaluation: the val images before any crop (uint8 for folders, normalized floats otherwise)
    val_raw: Dataset | None = None


def build_data(data: str | None, image_size: int, *, num_classes: int | None = None, seed: int = 0,
               color_jitter: float = 0.0, crop_pct: float = 0.875, digits_shift: int = 0,
               synthetic_length: int = 1024, limit_train: int = 0, limit_val: int = 0) -> DataBundle:  # fmt: skip
    """``data``: ``None`` or ``"digits"`` (built-in), ``"synthetic"``, or a directory with ``train/`` and ``val/``
    ImageFolder trees. ``num_classes``, when given, must match the data (a clear error otherwise).
    ``limit_train`` / ``limit_val`` > 0 keep only the first samples of each split (smoke tests)."""
    from torch.utils.data import Subset

    if data in (None, "", "digits"):
        xt, yt, xv, yv = digits_split(image_size)
        bundle = DataBundle("digits", TensorImages(xt, yt, digits_shift, seed), TensorImages(xv, yv), 10,
                            [str(i) for i in range(10)])  # fmt: skip
        bundle.val_raw = bundle.val
    elif data == "synthetic":
        k = num_classes or 1000
        bundle = DataBundle("synthetic", SyntheticImages(synthetic_length, image_size, k, seed),
                            SyntheticImages(max(1, synthetic_length // 4), image_size, k, seed + 1), k)  # fmt: skip
        bundle.val_raw = bundle.val
    else:
        root = Path(data)
        if not root.is_dir():
            raise ConfigError(f"--data {data!r}: no such directory (expected train/ and val/ inside)")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise ConfigError(f"--data {data!r} has no {split}/ directory (expected train/ and val/)")
        train = SafeImageFolder(
            root / "train", inception_train_transform(image_size, color_jitter=color_jitter), seed=seed
        )
        val = SafeImageFolder(root / "val", inception_eval_transform(image_size, crop_pct))
        if train.classes != val.classes:
            raise ConfigError(f"train/ has {len(train.classes)} classes and val/ has {len(val.classes)} "
                             "(their class folders must be the same)")  # fmt: skip
        bundle = DataBundle(
            "folder", train, val, len(train.classes), train.classes, SafeImageFolder(root / "val")
        )
    if num_classes is not None and num_classes != bundle.num_classes and bundle.kind != "synthetic":
        raise ConfigError(f"--num-classes {num_classes} but the data has {bundle.num_classes} classes")
    if len(bundle.train) == 0 or len(bundle.val) == 0:
        raise ConfigError(f"empty dataset ({len(bundle.train)} train, {len(bundle.val)} val images)")
    if limit_train:
        bundle.train = Subset(bundle.train, range(min(limit_train, len(bundle.train))))
    if limit_val:
        n = min(limit_val, len(bundle.val))
        bundle.val = Subset(bundle.val, range(n))
        bundle.val_raw = Subset(bundle.val_raw, range(n))
    return bundle
