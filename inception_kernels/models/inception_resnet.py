"""Inception-ResNet-v1 and -v2 ("Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning", Figures 3, 7, 10–19) as data.

Every residual block is ``act(x + s · (W · concat(branches) + b))``: the branches are conv → BN → ReLU, the
up-projection ``conv2d`` is a linear 1×1 conv with bias as wide as the block input (no BN: the paper uses BN "only
on top of the traditional layers, but not on top of the summations"), and the block engine computes the scaled
residual sum and the ReLU in the up-projection's epilogue. BN eps 1e-3; the 3×3 average pools exclude padding.

Three networks:

* :class:`InceptionResNetV2` — the TF-slim layout behind the released weights, equal to timm's
  ``inception_resnet_v2`` (same module names, ``load_state_dict(strict=True)`` of timm's state dict loads
  unchanged; head ``global_pool`` → ``head_drop`` → ``classif``). Inception-v3-like stem ending in ``mixed_5b``
  (320 @ 35²), 10 × Block35 (``scale_a`` = 0.17), ``mixed_6a`` (Reduction-A (256, 256, 384, 384) → 1088),
  20 × Block17 (``scale_b`` = 0.10), ``mixed_7a`` (→ 2080), 9 × Block8 (``scale_c`` = 0.20), one more Block8
  ``block8`` with scale ``scale_last`` = 1.0 and no ReLU, ``conv2d_7b`` (1×1 1536). 55,843,464 parameters,
  13.16 G multiply-adds at 299²; smallest legal input 75×75.

* :class:`InceptionResNetV1` — the paper's Figures 14, 10, 7, 11, 12, 13 in the Fig. 15 arrangement: stem
  (Fig. 14) → 256 @ 35², 5 × Inception-ResNet-A (Fig. 10), Reduction-A (192, 192, 256, 384) → 896 @ 17²,
  10 × Inception-ResNet-B (Fig. 11), Reduction-B (Fig. 12) → 1792 @ 8², 5 × Inception-ResNet-C (Fig. 13), average
  pool, dropout (keep 0.8: ``drop_rate`` = 0.2), linear. Module names follow the TF/facenet convention
  (``conv2d_1a`` … ``conv2d_4b``, ``repeat_1``, ``mixed_6a``, ``repeat_2``, ``mixed_7a``, ``repeat_3``, head
  ``global_pool`` → ``head_drop`` → ``last_linear``). No released weights: there is no reference state dict.
  22,756,328 parameters with a 1000-class head, 6.21 G multiply-adds at 299² (the paper: "roughly the
  computational cost of Inception-v3", 5.7 G); smallest legal input 75×75.

* :class:`InceptionResNetV2Paper` — the paper's own v2 layout: the Inception-v4 stem (Fig. 3, 384 @ 35²),
  5 × Inception-ResNet-A (Fig. 16), Reduction-A (256, 256, 384, 384) → 1152 @ 17², 10 × Inception-ResNet-B
  (Fig. 17), Reduction-B (Fig. 18) → 2144 @ 8², 5 × Inception-ResNet-C (Fig. 19), average pool, dropout (keep
  0.8), linear. Names: ``conv2d_1a``, ``conv2d_2a``, ``conv2d_2b``, ``mixed_3a``, ``mixed_4a``, ``mixed_5a``,
  ``repeat``, ``mixed_6a``, ``repeat_1``, ``mixed_7a``, ``repeat_2``, head ``global_pool`` → ``head_drop`` →
  ``classif``. 32,433,928 parameters with a 1000-class head, 9.26 G multiply-adds at 299²; smallest legal input
  75×75. (The paper says Inception-ResNet-v2 "matches the raw cost" of Inception-v4, 12.25 G; with Fig. 15's
  5 / 10 / 5 blocks it is cheaper — the TF-slim release, 10 / 20 / 10 blocks on a narrower stem, costs 13.16 G.)

  **Up-projection widths.** Fig. 17 draws the B block's up-projection as "1×1 Conv (1154 Linear)" and Fig. 19
  the C block's as "1×1 Conv (2048 Linear)", but with the Fig. 3 stem the input of the B blocks is Reduction-A's
  output, 384 + 384 + 384 = 1152 channels, and the input of the C blocks is Reduction-B's output,
  384 + 288 + 320 + 1152 = 2144 channels; a residual sum of 1154 (or 2048) channels onto 1152 (or 2144) is
  undefined. We resolve it by making every up-projection exactly as wide as its block input (384, 1152, 2144),
  which is what "scaling up the dimensionality of the filter bank before the addition to match the depth of the
  input" (§3.2) requires, and what the TF-slim implementation does for its own widths (320, 1088, 2080). The
  figures' numbers are not used anywhere.

Residual scales are constructor arguments (``scale_a``, ``scale_b``, ``scale_c``). The paper only says it "picked
some scaling factors between 0.1 and 0.3"; all three networks default to the TF-slim values 0.17 / 0.10 / 0.20
(all within that range). ``InceptionResNetV1`` and ``InceptionResNetV2Paper``
keep the ReLU after every residual sum, as the figures draw it (``last_relu=False`` drops it after the final
block, as TF-slim's ``block8``).
"""

from __future__ import annotations

from ..nn.engine import Block, Conv, Pool, branch
from ..nn.network import InceptionNetwork
from .inception_v4 import _avg, reduction_a, stem_v4


def _residual(branches, width: int, scale: float, act: bool) -> Block:
    return Block(
        tuple(branches), merge="residual", proj=Conv("conv2d", width, bn=False), scale=scale, act=act
    )


# ----------------------------------------------------------------------------------------------------------
# Inception-ResNet-v2 blocks (Figs. 16–19; TF-slim Block35 / Mixed_6a / Block17 / Mixed_7a / Block8)
# ----------------------------------------------------------------------------------------------------------
def mixed_5b() -> Block:
    """TF-slim's 35² module ending the stem: 1×1 96 | 1×1 48 → 5×5 64 | 1×1 64 → 3×3 96 → 3×3 96 |
    avg → 1×1 64 → 320."""
    return Block((
        branch(Conv("branch0", 96)),
        branch(Conv("branch1.0", 48), Conv("branch1.1", 64, 5, padding=2)),
        branch(Conv("branch2.0", 64), Conv("branch2.1", 96, 3, padding=1), Conv("branch2.2", 96, 3, padding=1)),
        branch(_avg(), Conv("branch3.1", 64)),
    ))  # fmt: skip


def block35(width: int = 320, scale: float = 0.17, act: bool = True) -> Block:
    """Inception-ResNet-A of v2 (Fig. 16): 1×1 32 | 1×1 32 → 3×3 32 | 1×1 32 → 3×3 48 → 3×3 64 → 1×1 ``width``."""
    return _residual((
        branch(Conv("branch0", 32)),
        branch(Conv("branch1.0", 32), Conv("branch1.1", 32, 3, padding=1)),
        branch(Conv("branch2.0", 32), Conv("branch2.1", 48, 3, padding=1), Conv("branch2.2", 64, 3, padding=1)),
    ), width, scale, act)  # fmt: skip


def block17(width: int = 1088, scale: float = 0.10, act: bool = True) -> Block:
    """Inception-ResNet-B of v2 (Fig. 17): 1×1 192 | 1×1 128 → 1×7 160 → 7×1 192 → 1×1 ``width``."""
    return _residual((
        branch(Conv("branch0", 192)),
        branch(Conv("branch1.0", 128), Conv("branch1.1", 160, (1, 7), padding=(0, 3)),
               Conv("branch1.2", 192, (7, 1), padding=(3, 0))),
    ), width, scale, act)  # fmt: skip


def block8(width: int = 2080, scale: float = 0.20, act: bool = True) -> Block:
    """Inception-ResNet-C of v2 (Fig. 19): 1×1 192 | 1×1 192 → 1×3 224 → 3×1 256 → 1×1 ``width``."""
    return _residual((
        branch(Conv("branch0", 192)),
        branch(Conv("branch1.0", 192), Conv("branch1.1", 224, (1, 3), padding=(0, 1)),
               Conv("branch1.2", 256, (3, 1), padding=(1, 0))),
    ), width, scale, act)  # fmt: skip


def reduction_b_v2() -> Block:
    """Reduction-B of v2 (Fig. 18; TF-slim Mixed_7a): 1×1 256 → 3×3/2 384 V | 1×1 256 → 3×3/2 288 V |
    1×1 256 → 3×3 288 → 3×3/2 320 V | maxpool 3×3/2 V → 992 + input channels."""
    return Block((
        branch(Conv("branch0.0", 256), Conv("branch0.1", 384, 3, stride=2)),
        branch(Conv("branch1.0", 256), Conv("branch1.1", 288, 3, stride=2)),
        branch(Conv("branch2.0", 256), Conv("branch2.1", 288, 3, padding=1), Conv("branch2.2", 320, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Inception-ResNet-v1 blocks (Figs. 10–14)
# ----------------------------------------------------------------------------------------------------------
def block_a_v1(width: int = 256, scale: float = 0.17, act: bool = True) -> Block:
    """Fig. 10: 1×1 32 | 1×1 32 → 3×3 32 | 1×1 32 → 3×3 32 → 3×3 32 → 1×1 ``width`` (256)."""
    return _residual((
        branch(Conv("branch0", 32)),
        branch(Conv("branch1.0", 32), Conv("branch1.1", 32, 3, padding=1)),
        branch(Conv("branch2.0", 32), Conv("branch2.1", 32, 3, padding=1), Conv("branch2.2", 32, 3, padding=1)),
    ), width, scale, act)  # fmt: skip


def block_b_v1(width: int = 896, scale: float = 0.10, act: bool = True) -> Block:
    """Fig. 11: 1×1 128 | 1×1 128 → 1×7 128 → 7×1 128 → 1×1 ``width`` (896)."""
    return _residual((
        branch(Conv("branch0", 128)),
        branch(Conv("branch1.0", 128), Conv("branch1.1", 128, (1, 7), padding=(0, 3)),
               Conv("branch1.2", 128, (7, 1), padding=(3, 0))),
    ), width, scale, act)  # fmt: skip


def block_c_v1(width: int = 1792, scale: float = 0.20, act: bool = True) -> Block:
    """Fig. 13: 1×1 192 | 1×1 192 → 1×3 192 → 3×1 192 → 1×1 ``width`` (1792)."""
    return _residual((
        branch(Conv("branch0", 192)),
        branch(Conv("branch1.0", 192), Conv("branch1.1", 192, (1, 3), padding=(0, 1)),
               Conv("branch1.2", 192, (3, 1), padding=(1, 0))),
    ), width, scale, act)  # fmt: skip


def reduction_b_v1() -> Block:
    """Fig. 12: 1×1 256 → 3×3/2 384 V | 1×1 256 → 3×3/2 256 V | 1×1 256 → 3×3 256 → 3×3/2 256 V |
    maxpool 3×3/2 V → 896 + input channels (1792)."""
    return Block((
        branch(Conv("branch0.0", 256), Conv("branch0.1", 384, 3, stride=2)),
        branch(Conv("branch1.0", 256), Conv("branch1.1", 256, 3, stride=2)),
        branch(Conv("branch2.0", 256), Conv("branch2.1", 256, 3, padding=1), Conv("branch2.2", 256, 3, stride=2)),
        branch(Pool("max", 3, 2)),
    ))  # fmt: skip


def stem_v1() -> list:
    """Fig. 14: 3×3/2 32 V, 3×3 32 V, 3×3 64, maxpool 3×3/2 V, 1×1 80, 3×3 192 V, 3×3/2 256 V → 256 @ 35²."""
    return [("conv2d_1a", Conv("conv2d_1a", 32, 3, stride=2)), ("conv2d_2a", Conv("conv2d_2a", 32, 3)),
            ("conv2d_2b", Conv("conv2d_2b", 64, 3, padding=1)), ("maxpool_3a", Pool("max", 3, 2)),
            ("conv2d_3b", Conv("conv2d_3b", 80)), ("conv2d_4a", Conv("conv2d_4a", 192, 3)),
            ("conv2d_4b", Conv("conv2d_4b", 256, 3, stride=2))]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------
def _repeat(prefix: str, spec: Block, n: int) -> list:
    return [(f"{prefix}.{i}", spec) for i in range(n)]


class InceptionResNetV2(InceptionNetwork):
    """Inception-ResNet-v2 in the TF-slim layout, equal to timm's ``inception_resnet_v2``.

    Options: ``num_classes``; ``drop_rate`` (timm's default 0); residual scales ``scale_a`` (Block35, 0.17),
    ``scale_b`` (Block17, 0.10), ``scale_c`` (Block8, 0.20), ``scale_last`` (the final ``block8``, 1.0);
    ``hfuse`` (horizontal fusion of sibling 1×1 convs in eval)."""

    model_name = "inception_resnet_v2"
    head_name = "classif"

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0, scale_a: float = 0.17,
                 scale_b: float = 0.10, scale_c: float = 0.20, scale_last: float = 1.0, hfuse: bool = True):  # fmt: skip
        super().__init__(self.stage_table(scale_a, scale_b, scale_c, scale_last), num_classes, drop_rate, hfuse=hfuse)

    @classmethod
    def stage_table(cls, scale_a: float = 0.17, scale_b: float = 0.10, scale_c: float = 0.20,
                    scale_last: float = 1.0) -> list:  # fmt: skip
        stages = [("conv2d_1a", Conv("conv2d_1a", 32, 3, stride=2)), ("conv2d_2a", Conv("conv2d_2a", 32, 3)),
                  ("conv2d_2b", Conv("conv2d_2b", 64, 3, padding=1)), ("maxpool_3a", Pool("max", 3, 2)),
                  ("conv2d_3b", Conv("conv2d_3b", 80)), ("conv2d_4a", Conv("conv2d_4a", 192, 3)),
                  ("maxpool_5a", Pool("max", 3, 2)), ("mixed_5b", mixed_5b())]  # fmt: skip
        stages += _repeat("repeat", block35(320, scale_a), 10)
        stages += [("mixed_6a", reduction_a(256, 256, 384, 384))]
        stages += _repeat("repeat_1", block17(1088, scale_b), 20)
        stages += [("mixed_7a", reduction_b_v2())]
        stages += _repeat("repeat_2", block8(2080, scale_c), 9)
        return stages + [("block8", block8(2080, scale_last, act=False)), ("conv2d_7b", Conv("conv2d_7b", 1536))]


class _PaperLayout(InceptionNetwork):
    """The paper's Fig. 15 arrangement (v1 and the paper's v2): dropout 0.2 (keep 0.8), a ReLU after every
    residual sum unless ``last_relu=False``."""

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.2, scale_a: float = 0.17,
                 scale_b: float = 0.10, scale_c: float = 0.20, last_relu: bool = True, hfuse: bool = True):  # fmt: skip
        super().__init__(self.stage_table(scale_a, scale_b, scale_c, last_relu), num_classes, drop_rate, hfuse=hfuse)


class InceptionResNetV1(_PaperLayout):
    """Inception-ResNet-v1 per the paper (Figs. 10–15); see the module docstring.

    Options: ``num_classes``; ``drop_rate`` (0.2: the paper's keep-probability 0.8); residual scales ``scale_a``
    (0.17), ``scale_b`` (0.10), ``scale_c`` (0.20); ``last_relu`` (ReLU after the last residual sum, True as in
    the figures); ``hfuse``."""

    model_name = "inception_resnet_v1"
    head_name = "last_linear"

    @classmethod
    def stage_table(cls, scale_a: float = 0.17, scale_b: float = 0.10, scale_c: float = 0.20,
                    last_relu: bool = True) -> list:  # fmt: skip
        stages = stem_v1() + _repeat("repeat_1", block_a_v1(256, scale_a), 5)
        stages += [("mixed_6a", reduction_a(192, 192, 256, 384))]
        stages += _repeat("repeat_2", block_b_v1(896, scale_b), 10)
        stages += [("mixed_7a", reduction_b_v1())]
        stages += _repeat("repeat_3", block_c_v1(1792, scale_c), 4)
        return stages + [("repeat_3.4", block_c_v1(1792, scale_c, act=last_relu))]


class InceptionResNetV2Paper(_PaperLayout):
    """Inception-ResNet-v2 in the paper's own layout (Figs. 3, 16, 7, 17, 18, 19 arranged as Fig. 15); see the
    module docstring for the up-projection widths (384, 1152, 2144 — not the figures' 1154 and 2048).

    Options: ``num_classes``; ``drop_rate`` (0.2); ``scale_a`` (0.17), ``scale_b`` (0.10), ``scale_c`` (0.20);
    ``last_relu`` (True); ``hfuse``."""

    model_name = "inception_resnet_v2_paper"
    head_name = "classif"

    @classmethod
    def stage_table(cls, scale_a: float = 0.17, scale_b: float = 0.10, scale_c: float = 0.20,
                    last_relu: bool = True) -> list:  # fmt: skip
        stages = stem_v4(("conv2d_1a", "conv2d_2a", "conv2d_2b", "mixed_3a", "mixed_4a", "mixed_5a"))
        stages += _repeat("repeat", block35(384, scale_a), 5)
        stages += [("mixed_6a", reduction_a(256, 256, 384, 384))]  # 384 + 384 + 384 = 1152 @ 17²
        stages += _repeat("repeat_1", block17(1152, scale_b), 10)
        stages += [("mixed_7a", reduction_b_v2())]  # 384 + 288 + 320 + 1152 = 2144 @ 8²
        stages += _repeat("repeat_2", block8(2144, scale_c), 4)
        return stages + [("repeat_2.4", block8(2144, scale_c, act=last_relu))]
