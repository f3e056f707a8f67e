"""Inception-v3 ("Rethinking the Inception Architecture", Table 1, Figures 5, 6, 7 and 10) as data.

Layout and parameter names are torchvision's ``Inception3`` (and timm's ``InceptionV3``, which shares them):
``load_state_dict(strict=True)`` of either loads unchanged. Every block is executed by the block engine.

Options beyond the reference:
* ``avgpool_mode="tf"``: the pool branches' 3×3 average excludes padding (as the TF-trained weights); the default
  ``"torch"`` includes it (torchvision/timm).
* ``bn_aux=True``: the paper's "BN-auxiliary": the auxiliary head's FC output is batch-normalized too (adds
  ``AuxLogits.fc_bn``; not in torchvision's state dict).
* ``stem="151"`` / ``"79"``: the low-resolution experiment of §9 — the first conv has stride 1 (151² input) and,
  for 79², the first max-pool is removed; the rest is unchanged, so the cost stays near the 299² model's.
* ``first_conv="7x7"``: an unfactorized 7×7/2 first layer (used by the Inception-v2 reading in ``inception_v2``).
* ``width_mult``: every filter count ``c`` (stem, blocks, aux head) becomes ``scale_width(c, width_mult)`` =
  ``max(8, round(c·width_mult/8)·8)`` (halves round up); ``1.0`` is the reference architecture unchanged. Narrow
  networks are for small data and CPU runs (the trainer's built-in default uses one).
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.engine import Block, Conv, Pool, branch
from ..nn.network import AuxHead, InceptionNetwork, build_stages

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


def scale_width(c: int, width_mult: float) -> int:
    """A filter count scaled by ``width_mult``, rounded to the nearest multiple of 8 (halves up; at least 8);
    unchanged at 1.0."""
    return c if width_mult == 1.0 else max(8, int(c * width_mult / 8 + 0.5) * 8)


def _scaled(item, width_mult: float):
    """A table item (Conv, Pool, Branch, Block) with every Conv's filter count scaled."""
    if width_mult == 1.0:
        return item
    if isinstance(item, Conv):
        return dataclasses.replace(item, out=scale_width(item.out, width_mult))
    if isinstance(item, Block):
        return dataclasses.replace(item, branches=tuple(_scaled(b, width_mult) for b in item.branches))
    if isinstance(item, Pool):
        return item
    return dataclasses.replace(item, layers=tuple(_scaled(x, width_mult) for x in item.layers),
                               fork=tuple(_scaled(f, width_mult) for f in item.fork))  # fmt: skip


def block_a(pool_features: int, count_include_pad: bool = True) -> Block:
    """Figure 5: 35×35 module with the 5×5 kept as in torchvision (1×1 48 → 5×5 64) and a double 3×3."""
    return Block((
        branch(Conv("branch1x1", 64)),
        branch(Conv("branch5x5_1", 48), Conv("branch5x5_2", 64, 5, padding=2)),
        branch(Conv("branch3x3dbl_1", 64), Conv("branch3x3dbl_2", 96, 3, padding=1),
               Conv("branch3x3dbl_3", 96, 3, padding=1)),
        branch(Pool("avg", 3, 1, 1, count_include_pad), Conv("branch_pool", pool_features)),
    ))  # fmt: skip


def block_b() -> Block:
    """Figure 10: 35→17 grid reduction."""
    return Block((
        branch(Conv("branch3x3", 384, 3, stride=2)),
        branch(Conv("branch3x3dbl_1", 64), Conv("branch3x3dbl_2", 96, 3, padding=1),
               Conv("branch3x3dbl_3", 96, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


def block_c(c7: int, count_include_pad: bool = True) -> Block:
    """Figure 6: 17×17 module with n×1 / 1×n factorization (n = 7)."""
    return Block((
        branch(Conv("branch1x1", 192)),
        branch(Conv("branch7x7_1", c7), Conv("branch7x7_2", c7, (1, 7), padding=(0, 3)),
               Conv("branch7x7_3", 192, (7, 1), padding=(3, 0))),
        branch(Conv("branch7x7dbl_1", c7), Conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0)),
               Conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3)), Conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0)),
               Conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))),
        branch(Pool("avg", 3, 1, 1, count_include_pad), Conv("branch_pool", 192)),
    ))  # fmt: skip


def block_d() -> Block:
    """17→8 grid reduction (torchvision ``InceptionD``)."""
    return Block((
        branch(Conv("branch3x3_1", 192), Conv("branch3x3_2", 320, 3, stride=2)),
        branch(Conv("branch7x7x3_1", 192), Conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3)),
               Conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0)), Conv("branch7x7x3_4", 192, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


def block_e(count_include_pad: bool = True) -> Block:
    """Figure 7: 8×8 module with expanded filter banks; two branches fork into {1×3, 3×1}."""
    return Block((
        branch(Conv("branch1x1", 320)),
        branch(Conv("branch3x3_1", 384), fork=(
            branch(Conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))),
            branch(Conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))))),
        branch(Conv("branch3x3dbl_1", 448), Conv("branch3x3dbl_2", 384, 3, padding=1), fork=(
            branch(Conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))),
            branch(Conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))))),
        branch(Pool("avg", 3, 1, 1, count_include_pad), Conv("branch_pool", 192)),
    ))  # fmt: skip


def stem(kind: str = "299", first_conv: str = "3x3") -> list:
    s1 = 1 if kind in ("151", "79") else 2
    first = (Conv("Conv2d_1a_3x3", 32, 3, stride=s1) if first_conv == "3x3"
             else Conv("Conv2d_1a_7x7", 32, 7, stride=s1, padding=3))  # fmt: skip
    layers = [("Conv2d_1a_3x3" if first_conv == "3x3" else "Conv2d_1a_7x7", first),
              ("Conv2d_2a_3x3", Conv("Conv2d_2a_3x3", 32, 3)),
              ("Conv2d_2b_3x3", Conv("Conv2d_2b_3x3", 64, 3, padding=1))]  # fmt: skip
    if kind != "79":
        layers.append(("maxpool1", Pool("max", 3, 2)))
    layers += [("Conv2d_3b_1x1", Conv("Conv2d_3b_1x1", 80)), ("Conv2d_4a_3x3", Conv("Conv2d_4a_3x3", 192, 3)),
               ("maxpool2", Pool("max", 3, 2))]  # fmt: skip
    return layers


def body(avgpool_mode: str = "torch") -> list:
    """Mixed_5b … Mixed_6e (the 17×17 grid the aux head reads), Mixed_7a … Mixed_7c."""
    inc = avgpool_mode == "torch"
    return [("Mixed_5b", block_a(32, inc)), ("Mixed_5c", block_a(64, inc)), ("Mixed_5d", block_a(64, inc)),
            ("Mixed_6a", block_b()), ("Mixed_6b", block_c(128, inc)), ("Mixed_6c", block_c(160, inc)),
            ("Mixed_6d", block_c(160, inc)), ("Mixed_6e", block_c(192, inc)), ("Mixed_7a", block_d()),
            ("Mixed_7b", block_e(inc)), ("Mixed_7c", block_e(inc))]  # fmt: skip


def check_avgpool_mode(avgpool_mode: str) -> None:
    if avgpool_mode not in ("torch", "tf"):
        raise ValueError(f"avgpool_mode must be 'torch' or 'tf', got {avgpool_mode!r}")


# The aux head up to its global pool: avg-pool 5×5/3 → 1×1 128 → 5×5 768 (valid): it needs a 17×17 grid.
AUX_LAYERS = (Pool("avg", 5, 3), Conv("conv0", 128), Conv("conv1", 768, 5))
AUX_HEADS = {"AuxLogits": AuxHead("Mixed_6e", AUX_LAYERS)}


class InceptionAux(nn.Module):
    """Auxiliary head on the 17×17 grid: :data:`AUX_LAYERS` → global avg-pool → FC (→ BN with ``bn_aux``)."""

    def __init__(self, in_channels: int, num_classes: int, bn_aux: bool = False, width_mult: float = 1.0):
        super().__init__()
        self.pool, *convs = AUX_LAYERS
        c = build_stages(self, [(c.name, _scaled(c, width_mult)) for c in convs], in_channels)
        self.fc = nn.Linear(c, num_classes)
        self.fc_bn = nn.BatchNorm1d(num_classes, eps=1e-3) if bn_aux else None

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a new FC (and ``fc_bn``) for ``num_classes``; 0: identities."""
        dd = dict(device=self.conv1.conv.weight.device, dtype=self.conv1.conv.weight.dtype)
        new = num_classes > 0
        self.fc = (nn.Linear(self.conv1.out_channels, num_classes, **dd) if new else nn.Identity()).train(self.training)
        if self.fc_bn is not None:
            self.fc_bn = (nn.BatchNorm1d(num_classes, eps=1e-3, **dd) if new else nn.Identity()).train(self.training)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=self.pool.kernel, stride=self.pool.stride)
        x = self.conv1(self.conv0(x, reference=reference), reference=reference)
        x = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return self.fc_bn(x) if self.fc_bn is not None else x


class InceptionV3(InceptionNetwork):
    """Inception-v3; ``forward`` returns logits, or ``InceptionOutputs(logits, aux_logits)`` in training mode
    with ``aux_logits=True`` (as torchvision)."""

    model_name = "inception_v3"
    outputs = InceptionOutputs
    aux_heads = AUX_HEADS

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.5, avgpool_mode: str = "torch", bn_aux: bool = False, stem: str = "299",
                 first_conv: str = "3x3", hfuse: bool = True, width_mult: float = 1.0):  # fmt: skip
        def aux(name: str, c: int) -> InceptionAux:
            return InceptionAux(c, num_classes, bn_aux, width_mult)

        table = self.stage_table(stem, first_conv, avgpool_mode, width_mult)
        super().__init__(table, num_classes, dropout, aux if aux_logits else None, hfuse)
        self.transform_input = transform_input
        self.stem_kind = stem
        self.width_mult = width_mult

    @classmethod
    def stage_table(cls, stem: str = "299", first_conv: str = "3x3", avgpool_mode: str = "torch",
                    width_mult: float = 1.0) -> list:  # fmt: skip
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        check_avgpool_mode(avgpool_mode)
        if stem not in ("299", "151", "79"):
            raise ValueError(f"stem must be '299', '151' or '79', got {stem!r}")
        return [(n, _scaled(it, width_mult)) for n, it in globals()["stem"](stem, first_conv) + body(avgpool_mode)]
