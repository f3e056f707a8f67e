"""Inception-v4 ("Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning", Figures 3–9)
as data.

Layout and parameter names are timm's ``inception_v4`` (the TF-slim port): the stem layers and blocks live in
``features.0`` … ``features.21`` (timm's ``nn.Sequential``; here a ModuleDict with the same keys), the head is
``global_pool`` (no parameters) → ``head_drop`` → ``last_linear``, so ``load_state_dict(strict=True)`` of timm's
state dict loads unchanged. Every block — the stem's Mixed_3a/4a/5a included — is executed by the block engine.
BN eps 1e-3; the pool branches' 3×3 average excludes padding (``count_include_pad=False``), as timm and TF.

    features.0-2   stem convs: 3×3/2 32 V, 3×3 32 V, 3×3 64                     (Fig. 3)
    features.3     Mixed_3a: maxpool 3×3/2 V | 3×3/2 96 V              → 160  (Fig. 3)
    features.4     Mixed_4a: 1×1 64→3×3 96 V | 1×1 64→1×7→7×1→3×3 96 V → 192  (Fig. 3)
    features.5     Mixed_5a: 3×3/2 192 V | maxpool 3×3/2 V             → 384 @ 35² (Fig. 3)
    features.6-9   4 × Inception-A                                      → 384  (Fig. 4)
    features.10    Reduction-A, (k, l, m, n) = (192, 224, 256, 384)     → 1024 @ 17² (Fig. 7, Table 1)
    features.11-17 7 × Inception-B                                      → 1024 (Fig. 5)
    features.18    Reduction-B                                          → 1536 @ 8² (Fig. 8)
    features.19-21 3 × Inception-C                                      → 1536 (Fig. 6)

42,679,816 parameters, 12.25 G multiply-adds at 299² (convolutions and the classifier). The smallest legal input
is 75×75 (every stage keeps at least a 1×1 grid; ``InceptionV4.min_size``, computed from the table).

The blocks shared with the residual networks (:func:`stem_v4`, :func:`reduction_a`) are used by
:mod:`inception_kernels.models.inception_resnet` too.
"""

from __future__ import annotations

from ..nn.engine import Block, Conv, Pool, branch
from ..nn.network import InceptionNetwork


def _avg() -> Pool:
    """The pool branches' 3×3/1 average, padding excluded from the mean (TF / timm)."""
    return Pool("avg", 3, 1, 1, count_include_pad=False)


# ----------------------------------------------------------------------------------------------------------
# Stem (Fig. 3), shared with the paper's Inception-ResNet-v2
# ----------------------------------------------------------------------------------------------------------
def mixed_3a() -> Block:
    """maxpool 3×3/2 V | 3×3/2 96 V → 160 (timm ``Mixed3a``: the pool comes first in the concatenation)."""
    return Block((branch(Pool("max", 3, 2)), branch(Conv("conv", 96, 3, stride=2))))


def mixed_4a() -> Block:
    """1×1 64 → 3×3 96 V | 1×1 64 → 1×7 64 → 7×1 64 → 3×3 96 V → 192."""
    return Block((
        branch(Conv("branch0.0", 64), Conv("branch0.1", 96, 3)),
        branch(Conv("branch1.0", 64), Conv("branch1.1", 64, (1, 7), padding=(0, 3)),
               Conv("branch1.2", 64, (7, 1), padding=(3, 0)), Conv("branch1.3", 96, 3)),
    ))  # fmt: skip


def mixed_5a() -> Block:
    """3×3/2 192 V | maxpool 3×3/2 V → 384 @ 35²."""
    return Block((branch(Conv("conv", 192, 3, stride=2)), branch(Pool("max", 3, 2))))


def stem_v4(
    names=("features.0", "features.1", "features.2", "features.3", "features.4", "features.5"),
) -> list:
    """Fig. 3 as six stages (three convs, Mixed_3a/4a/5a) registered under ``names``; 299² → 384 @ 35²."""
    n = list(names)
    return [(n[0], Conv(n[0], 32, 3, stride=2)), (n[1], Conv(n[1], 32, 3)), (n[2], Conv(n[2], 64, 3, padding=1)),
            (n[3], mixed_3a()), (n[4], mixed_4a()), (n[5], mixed_5a())]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Blocks (Figs. 4–8)
# ----------------------------------------------------------------------------------------------------------
def inception_a() -> Block:
    """Fig. 4: 1×1 96 | 1×1 64 → 3×3 96 | 1×1 64 → 3×3 96 → 3×3 96 | avg → 1×1 96 → 384."""
    return Block((
        branch(Conv("branch0", 96)),
        branch(Conv("branch1.0", 64), Conv("branch1.1", 96, 3, padding=1)),
        branch(Conv("branch2.0", 64), Conv("branch2.1", 96, 3, padding=1), Conv("branch2.2", 96, 3, padding=1)),
        branch(_avg(), Conv("branch3.1", 96)),
    ))  # fmt: skip


def reduction_a(k: int, l: int, m: int, n: int) -> Block:  # noqa: E741 - the paper's names
    """Fig. 7 (35² → 17²): 3×3/2 n V | 1×1 k → 3×3 l → 3×3/2 m V | maxpool 3×3/2 V → n + m + input channels.
    Table 1: Inception-v4 (192, 224, 256, 384), Inception-ResNet-v1 (192, 192, 256, 384), -v2 (256, 256, 384, 384)."""
    return Block((
        branch(Conv("branch0", n, 3, stride=2)),
        branch(Conv("branch1.0", k), Conv("branch1.1", l, 3, padding=1), Conv("branch1.2", m, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


def inception_b() -> Block:
    """Fig. 5: 1×1 384 | 1×1 192 → 1×7 224 → 7×1 256 | 1×1 192 → 7×1 192 → 1×7 224 → 7×1 224 → 1×7 256 |
    avg → 1×1 128 → 1024."""
    return Block((
        branch(Conv("branch0", 384)),
        branch(Conv("branch1.0", 192), Conv("branch1.1", 224, (1, 7), padding=(0, 3)),
               Conv("branch1.2", 256, (7, 1), padding=(3, 0))),
        branch(Conv("branch2.0", 192), Conv("branch2.1", 192, (7, 1), padding=(3, 0)),
               Conv("branch2.2", 224, (1, 7), padding=(0, 3)), Conv("branch2.3", 224, (7, 1), padding=(3, 0)),
               Conv("branch2.4", 256, (1, 7), padding=(0, 3))),
        branch(_avg(), Conv("branch3.1", 128)),
    ))  # fmt: skip


def reduction_b() -> Block:
    """Fig. 8 (17² → 8²): 1×1 192 → 3×3/2 192 V | 1×1 256 → 1×7 256 → 7×1 320 → 3×3/2 320 V | maxpool → 1536."""
    return Block((
        branch(Conv("branch0.0", 192), Conv("branch0.1", 192, 3, stride=2)),
        branch(Conv("branch1.0", 256), Conv("branch1.1", 256, (1, 7), padding=(0, 3)),
               Conv("branch1.2", 320, (7, 1), padding=(3, 0)), Conv("branch1.3", 320, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


def inception_c() -> Block:
    """Fig. 6: 1×1 256 | 1×1 384 → {1×3 256, 3×1 256} | 1×1 384 → 3×1 448 → 1×3 512 → {1×3 256, 3×1 256} |
    avg → 1×1 256 → 1536 (timm's flat names ``branch1_0``, ``branch1_1a`` …)."""
    return Block((
        branch(Conv("branch0", 256)),
        branch(Conv("branch1_0", 384), fork=(
            branch(Conv("branch1_1a", 256, (1, 3), padding=(0, 1))),
            branch(Conv("branch1_1b", 256, (3, 1), padding=(1, 0))))),
        branch(Conv("branch2_0", 384), Conv("branch2_1", 448, (3, 1), padding=(1, 0)),
               Conv("branch2_2", 512, (1, 3), padding=(0, 1)), fork=(
            branch(Conv("branch2_3a", 256, (1, 3), padding=(0, 1))),
            branch(Conv("branch2_3b", 256, (3, 1), padding=(1, 0))))),
        branch(_avg(), Conv("branch3.1", 256)),
    ))  # fmt: skip


def body() -> list:
    """features.6 … features.21: 4 × A, Reduction-A, 7 × B, Reduction-B, 3 × C."""
    blocks = [inception_a()] * 4 + [reduction_a(192, 224, 256, 384)] + [inception_b()] * 7
    blocks += [reduction_b()] + [inception_c()] * 3
    return [(f"features.{6 + i}", b) for i, b in enumerate(blocks)]


class InceptionV4(InceptionNetwork):
    """Inception-v4, equal to timm's ``inception_v4`` (same state dict, same function).

    Options: ``num_classes``; ``drop_rate`` (dropout before the classifier; timm's default 0, the paper's
    keep-probability 0.8 is ``drop_rate=0.2``); ``hfuse`` (horizontal fusion of sibling 1×1 convs in eval)."""

    model_name = "inception_v4"
    head_name = "last_linear"

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0, hfuse: bool = True):
        super().__init__(self.stage_table(), num_classes, drop_rate, hfuse=hfuse)

    @classmethod
    def stage_table(cls) -> list:
        return stem_v4() + body()
