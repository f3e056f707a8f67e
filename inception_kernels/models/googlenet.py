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
``aux_logits=True`` (torchvision's order). Inputs smaller than 15×15 raise a ``ValueError``.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.engine import Block, Conv, Pool, branch
from ..nn.layers import ConvBNAct
from ..nn.network import build_stages, check_min_size, run_stages, stages_hw, transform_input
from ..ops import dispatch

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])

MIN_SIZE = 15  # maxpool3 (3×3/2, no padding) needs a 2×2 grid after maxpool2: 15×15 input at least

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


def _modules(names, paper_5x5: bool) -> list:
    return [(n, inception_block(*MODULES[n], paper_5x5=paper_5x5)) for n in names]


def stages_to_aux1(paper_5x5: bool = False) -> list:
    """Stem and 3a..4a: ends on the 14×14×512 grid that feeds ``aux1``."""
    return [("conv1", Conv("conv1", 64, 7, stride=2, padding=3)), ("maxpool1", _maxpool()),
            ("conv2", Conv("conv2", 64)), ("conv3", Conv("conv3", 192, 3, padding=1)), ("maxpool2", _maxpool()),
            *_modules(("inception3a", "inception3b"), paper_5x5), ("maxpool3", _maxpool()),
            *_modules(("inception4a",), paper_5x5)]  # fmt: skip


def stages_to_aux2(paper_5x5: bool = False) -> list:
    """4b..4d: ends on the 14×14×528 grid that feeds ``aux2``."""
    return _modules(("inception4b", "inception4c", "inception4d"), paper_5x5)


def stages_to_head(paper_5x5: bool = False) -> list:
    """4e, maxpool4 (2×2/2 as torchvision), 5a, 5b: 7×7×1024 at 224² input."""
    return [*_modules(("inception4e",), paper_5x5), ("maxpool4", _maxpool(2)),
            *_modules(("inception5a", "inception5b"), paper_5x5)]  # fmt: skip


class InceptionAux(nn.Module):
    """Auxiliary classifier (torchvision layout): adaptive avg-pool to 4×4 → 1×1 128 → FC 1024 + ReLU → dropout
    → FC. Names ``conv`` (a ``ConvBNAct``), ``fc1``, ``fc2``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = ConvBNAct(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = self.conv(x, reference=reference)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """GoogLeNet equal to torchvision's ``googlenet`` (see the module docstring for the options)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.2, dropout_aux: float = 0.7, paper_5x5: bool = False, hfuse: bool = True):  # fmt: skip
        super().__init__()
        self.transform_input = transform_input
        self.paper_5x5 = paper_5x5
        self.stages_a = stages_to_aux1(paper_5x5)
        self.stages_b = stages_to_aux2(paper_5x5)
        self.stages_c = stages_to_head(paper_5x5)
        # Registration order = torchvision's (stem, inception modules, aux1, aux2, fc): same state-dict key order.
        c_aux1 = build_stages(self, self.stages_a, 3, hfuse=hfuse)
        c_aux2 = build_stages(self, self.stages_b, c_aux1, hfuse=hfuse)
        c = build_stages(self, self.stages_c, c_aux2, hfuse=hfuse)
        if aux_logits:
            self.aux1 = InceptionAux(c_aux1, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(c_aux2, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c, num_classes)

    @property
    def aux_logits(self) -> bool:
        return self.aux1 is not None

    @aux_logits.setter
    def aux_logits(self, value: bool) -> None:
        """``model.aux_logits = False`` drops the heads (as torchvision's factory does after loading weights)."""
        if value and self.aux1 is None:
            raise ValueError("this GoogLeNet was built without aux heads; build it with aux_logits=True")
        if not value:
            self.aux1 = None
            self.aux2 = None

    @property
    def stages(self) -> list:
        return self.stages_a + self.stages_b + self.stages_c

    def out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the last Inception module's output for an input of size ``hw``."""
        return stages_hw(self, self.stages, hw)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return transform_input(x) if self.transform_input else x

    def forward(self, x: torch.Tensor):
        check_min_size("googlenet", tuple(x.shape[-2:]), self.out_hw, MIN_SIZE)
        reference = dispatch.is_reference(x)
        with_aux = self.training and self.aux1 is not None
        x = run_stages(self, self.stages_a, self._transform_input(x))
        aux1 = self.aux1(x, reference=reference) if with_aux else None
        x = run_stages(self, self.stages_b, x)
        aux2 = self.aux2(x, reference=reference) if with_aux else None
        x = run_stages(self, self.stages_c, x)
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if with_aux:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x
