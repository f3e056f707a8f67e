"""GoogLeNet / Inception-v1 ("Going Deeper with Convolutions", Table 1) as data.

Layout and parameter names are torchvision's ``GoogLeNet``: ``load_state_dict(strict=True)`` of
``torchvision.models.googlenet(...).state_dict()`` loads unchanged (same keys, same order). Every Inception module
is one :class:`~inception_kernels.nn.engine.Block` table executed by the block engine; torchvision's
``nn.Sequential`` branches become dotted names (``branch2.0``, ``branch2.1``; the pool branch's max-pool is
index 0 of ``branch4``, so its 1×1 projection is ``branch4.1``).

As torchvision (which follows the TF/Caffe port, not the paper's text in two places):

* every max-pool uses ``ceil_mode=True``; ``maxpool4`` (before 5a) is 2×2/2 where the paper has 3×3/2;
* BN (eps 1e-3) after every conv — the paper's GoogLeNet had none (that is "BN-GoogLeNet" in Inception-v2 terms);
* the "5×5" branch is a 3×3 conv (pytorch/vision#906);
* the auxiliary heads pool with ``adaptive_avg_pool2d(4)`` (the paper: average pool 5×5/3, the same 4×4 grid at
  224² input), then 1×1 128 → FC 1024 + ReLU → dropout 0.7 → FC; they run in training mode only;
* ``dropout=0.2`` before the classifier (the paper: 0.4).

Options beyond the reference:

* ``paper_5x5=True``: the paper's true 5×5 conv (padding 2) in the "5×5" branch. Same output shapes, 380,928
  more parameters (16·Σ c5r·c5 over the nine modules), not weight-compatible with torchvision.
* ``hfuse``: horizontal fusion of the sibling 1×1 convs in the fused eval path (see the engine).

``forward`` returns logits, or ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` in training mode with
``aux_logits=True`` (torchvision's order). Inputs smaller than 15×15 (``GoogLeNet.min_size``, computed from the table: maxpool3,
3×3/2, needs a 2×2 grid after maxpool2) raise a ``ValueError``. The plumbing is
:class:`~inception_kernels.nn.network.InceptionNetwork`'s (timm's ``forward_features`` / ``forward_head`` /
``reset_classifier``).
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.engine import Block, Conv, Pool, branch
from ..nn.layers import ConvBNAct
from ..nn.network import AuxHead, InceptionNetwork

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

# Table 1 of the paper, per module: (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)
MODULES = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


def inception_block(ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int,
                    paper_5x5: bool = False) -> Block:  # fmt: skip
    """Figure 2(b): 1×1 | 1×1 → 3×3 | 1×1 → "5×5" (3×3 as torchvision, or 5×5) | max-pool 3×3/1 → 1×1."""
    k5, p5 = (5, 2) if paper_5x5 else (3, 1)
    return Block((
        branch(Conv("branch1", ch1x1)),
        branch(Conv("branch2.0", ch3x3red), Conv("branch2.1", ch3x3, 3, padding=1)),
        branch(Conv("branch3.0", ch5x5red), Conv("branch3.1", ch5x5, k5, padding=p5)),
        branch(Pool("max", 3, 1, 1, ceil_mode=True), Conv("branch4.1", pool_proj)),
    ))  # fmt: skip


def _maxpool(kernel: int = 3) -> Pool:
    return Pool("max", kernel, 2, ceil_mode=True)


class InceptionAux(nn.Module):
    """Auxiliary classifier (torchvision layout): adaptive avg-pool to 4×4 → 1×1 128 → FC 1024 + ReLU → dropout
    → FC. Names ``conv`` (a ``ConvBNAct``), ``fc1``, ``fc2``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = ConvBNAct(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a new ``fc2`` for ``num_classes``; 0: the identity."""
        dd = dict(device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)
        self.fc2 = (nn.Linear(1024, num_classes, **dd) if num_classes > 0 else nn.Identity()).train(self.training)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = self.conv(x, reference=reference)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))


class GoogLeNet(InceptionNetwork):
    """GoogLeNet equal to torchvision's ``googlenet`` (see the module docstring for the options)."""

    model_name = "googlenet"
    outputs = GoogLeNetOutputs
    # the heads pool adaptively (any grid); torchvision registers both after inception5b (state-dict order)
    aux_heads = {"aux2": AuxHead("inception4d", registered_after="inception5b"),
                 "aux1": AuxHead("inception4a", registered_after="inception5b")}  # fmt: skip

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.2, dropout_aux: float = 0.7, paper_5x5: bool = False, hfuse: bool = True):  # fmt: skip
        def aux(name: str, c: int) -> InceptionAux:
            return InceptionAux(c, num_classes, dropout=dropout_aux)

        super().__init__(self.stage_table(paper_5x5), num_classes, dropout, aux if aux_logits else None, hfuse)
        self.transform_input = transform_input
        self.paper_5x5 = paper_5x5

    @classmethod
    def stage_table(cls, paper_5x5: bool = False) -> list:
        """Table 1: stem, 3a, 3b, maxpool3, 4a (the 14×14×512 grid ``aux1`` reads), 4b..4d (the 14×14×528 grid
        of ``aux2``), 4e, maxpool4 (2×2/2 as torchvision), 5a, 5b: 7×7×1024 at 224² input."""

        def modules(*names):
            return [(n, inception_block(*MODULES[n], paper_5x5=paper_5x5)) for n in names]

        return [("conv1", Conv("conv1", 64, 7, stride=2, padding=3)), ("maxpool1", _maxpool()),
                ("conv2", Conv("conv2", 64)), ("conv3", Conv("conv3", 192, 3, padding=1)), ("maxpool2", _maxpool()),
                *modules("inception3a", "inception3b"), ("maxpool3", _maxpool()),
                *modules("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
                ("maxpool4", _maxpool(2)), *modules("inception5a", "inception5b")]  # fmt: skip
