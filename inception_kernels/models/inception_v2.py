"""Inception-v2 as the ablation baseline of "Rethinking the Inception Architecture" (Table 3), as data.

Reading of the paper
--------------------
Table 3 lists "Inception-v2" rows whose changes are cumulative: (1) the §6 / Table 1 network, then + RMSProp,
+ label smoothing, + "Factorized 7×7", + "BN-auxiliary"; the last row is what the paper calls Inception-v3. RMSProp
and label smoothing are training-recipe changes; only the last two change the network. So the Inception-v2
network is Inception-v3 (Table 1, Figures 5, 6, 7, 10, the 17×17 auxiliary head) *without* those two changes:

* **Factorized 7×7.** §10: "factorizes the first 7×7 convolutional layer into a sequence of 3×3 convolutional
  layers"; §6: "we have factorized the traditional 7×7 convolution into three 3×3 convolutions". The sequence is
  Table 1's first three rows (3×3/2 32 valid → 3×3 32 valid → 3×3 64 padded: 299² → 147²×64). Unfactorized, these
  three layers are one 7×7/2 convolution with 64 filters (the "traditional" first layer of GoogLeNet and
  BN-Inception). We make it *valid* (unpadded, as all of Table 1's stem but the one marked "padded"): 299² →
  ⌊(299 − 7)/2⌋ + 1 = 147², i.e. exactly the 147×147×64 grid that the factorized sequence produces, so everything
  after it (max-pool, 1×1 80, 3×3 192, the 35/17/8 grids and every module) is unchanged, and the minimum input
  stays 75×75 (⌊(n − 7)/2⌋ + 1 = ⌊(n − 3)/2⌋ − 1 for every n). This is the default, ``stem="7x7"``.
  Cost: the 7×7 layer is 147²·7²·3·64 = 203.3 M multiply-adds against 616.6 M for the three 3×3 layers, so
  Inception-v2 is ~0.41 G cheaper than Inception-v3 (5.30 vs 5.71 G at 299²) — the same direction as Table 3's
  cost column (3.8 → 4.8 "Bn Ops" when factorizing), whose absolute numbers we cannot reproduce (it also gives
  Inception-v3 4.8 where the layer-by-layer count is 5.7).
* **BN-auxiliary.** §10: "the version in which the fully connected layer of the auxiliary classifier is also
  batch-normalized, not just the convolutions". Before it, the side head is torchvision's ``InceptionAux`` (its
  convs are conv→BN→ReLU, the FC is a plain linear layer): ``InceptionV3``'s head with ``bn_aux=False``.

``stem="7x7_32"`` is the narrower alternative reading: only Table 1's first layer is replaced by a 7×7/2 (32
filters, padding 3: 299² → 150²), and the other two 3×3 layers stay — ``InceptionV3(first_conv="7x7")``'s stem.
That layer is then not a factorization into "three 3×3 convolutions", and it makes the network more expensive
than Inception-v3 (5.81 G), against Table 3, so it is not the default.

No reference implementation exists (no torchvision/timm model, no published weights); parameter names follow
``InceptionV3`` (``Conv2d_1a_7x7``, ``Mixed_5b`` ... ``Mixed_7c``, ``AuxLogits``, ``fc``).
"""

from __future__ import annotations

from ..nn.engine import Conv, Pool
from ..nn.network import InceptionNetwork
from . import inception_v3 as v3

STEMS = ("7x7", "7x7_32")


def stem(kind: str = "7x7") -> list:
    """The stem up to the 35×35×192 grid (Table 1 with the unfactorized first layer)."""
    if kind == "7x7_32":
        return v3.stem("299", first_conv="7x7")
    if kind != "7x7":
        raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")
    return [("Conv2d_1a_7x7", Conv("Conv2d_1a_7x7", 64, 7, stride=2)), ("maxpool1", Pool("max", 3, 2)),
            ("Conv2d_3b_1x1", Conv("Conv2d_3b_1x1", 80)), ("Conv2d_4a_3x3", Conv("Conv2d_4a_3x3", 192, 3)),
            ("maxpool2", Pool("max", 3, 2))]  # fmt: skip


class InceptionV2(InceptionNetwork):
    """Inception-v2 (Table 3 baseline): ``forward`` returns logits, or ``InceptionOutputs(logits, aux_logits)`` in
    training mode with ``aux_logits=True`` (as ``InceptionV3``). Smallest input 75×75 (``"7x7"``), 73×73
    (``"7x7_32"``), computed from the table."""

    model_name = "inception_v2"
    outputs = v3.InceptionOutputs
    aux_heads = v3.AUX_HEADS

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.5,
                 avgpool_mode: str = "torch", stem: str = "7x7", hfuse: bool = True):  # fmt: skip
        def aux(name: str, c: int) -> v3.InceptionAux:
            return v3.InceptionAux(c, num_classes, bn_aux=False)

        super().__init__(self.stage_table(stem, avgpool_mode), num_classes, dropout, aux if aux_logits else None,
                         hfuse)  # fmt: skip
        self.stem_kind = stem

    @classmethod
    def stage_table(cls, stem: str = "7x7", avgpool_mode: str = "torch") -> list:
        v3.check_avgpool_mode(avgpool_mode)
        return globals()["stem"](stem) + v3.body(avgpool_mode)
