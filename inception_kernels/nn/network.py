"""Running a network table, and :class:`InceptionNetwork`, the base of every network in ``models/``.

A network is a sequence of named stages (stem convs, pools, blocks) registered on the model under their table
names, so state-dict keys are the reference implementation's (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ...). The model files hold only tables; the plumbing is here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import dispatch
from .engine import (
    Block,
    Conv,
    InceptionBlock,
    Pool,
    _pool,
    chain_hw,
    chain_min_hw,
    get_submodule,
    make_layer,
    set_submodule,
)


def build_stages(model: nn.Module, stages, in_channels: int, eps: float = 1e-3, hfuse: bool = True) -> int:
    """Register the modules of ``stages`` (``[(name, Conv | Pool | Block), ...]``) on ``model``; returns the
    channel count after the last stage."""
    c = in_channels
    for name, item in stages:
        if isinstance(item, Conv):
            set_submodule(model, name, make_layer(item, c, eps))
            c = item.out
        elif isinstance(item, Block):
            blk = InceptionBlock(c, item, eps=eps, hfuse=hfuse)
            set_submodule(model, name, blk)
            c = blk.out_channels
        elif not isinstance(item, Pool):
            raise TypeError(f"stage {name!r}: expected Conv, Pool or Block, got {type(item).__name__}")
    return c


def stages_hw(stages, hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after ``stages`` (``[(name, item), ...]``) for an input of ``hw`` pixels."""
    return chain_hw((item for _, item in stages), hw)


def stages_min_hw(stages, hw: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """The smallest input (H, W) for which every layer of ``stages`` has a non-empty output and the last stage an
    output of at least ``hw``; computed backwards through the tables' kernel / stride / padding."""
    return chain_min_hw([item for _, item in stages], hw)


def run_stages(model: nn.Module, stages, x: torch.Tensor) -> torch.Tensor:
    reference = dispatch.is_reference(x)
    if not reference and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    for name, item in stages:
        if isinstance(item, Pool):
            x = _pool(item, x, fused=not reference, owner=model)
        elif isinstance(item, Conv):
            mod = get_submodule(model, name)
            x = mod(x, reference=reference) if item.bn else mod(x)
        else:
            x = get_submodule(model, name)(x)
    return x


def transform_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``transform_input``: re-normalize ImageNet-normalized input to (x − 0.5)/0.5 per channel,
    as x·(std/0.5) + (mean − 0.5)/0.5 — the same arithmetic, without slicing and ``torch.cat``."""
    scale = x.new_tensor([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5]).view(1, 3, 1, 1)
    shift = x.new_tensor([(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5]).view(1, 3, 1, 1)
    return x * scale + shift


class GlobalPool(nn.Module):
    """timm's ``SelectAdaptivePool2d(flatten=True)`` for the pool types of these heads: ``"avg"`` or ``"max"``
    (N, C, H, W) → (N, C); ``""``: no pooling and no flattening (the classifier sees the feature map)."""

    TYPES = ("avg", "max", "")

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        if pool_type not in self.TYPES:
            raise ValueError(f"global_pool must be one of {self.TYPES}, got {pool_type!r}")
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_type:
            return x
        pool = F.adaptive_avg_pool2d if self.pool_type == "avg" else F.adaptive_max_pool2d
        return torch.flatten(pool(x, 1), 1)


@dataclass(frozen=True)
class AuxHead:
    """Where an auxiliary head reads and what its layers need: ``tap`` is the stage whose output it reads,
    ``layers`` the head's own windows (kernel / stride / padding) up to its global pool, which fix the smallest
    grid it runs on; ``registered_after``: the stage after which the head is registered (the reference's
    state-dict order; None: right after ``tap``)."""

    tap: str
    layers: tuple = ()
    registered_after: str | None = None


def _classifier(num_features: int, num_classes: int, like: nn.Module | None = None) -> nn.Module:
    """timm's: a linear layer, or ``nn.Identity`` for ``num_classes <= 0``; on ``like``'s device and dtype."""
    if num_classes <= 0:
        return nn.Identity()
    p = next(like.parameters(), None) if like is not None else None
    return nn.Linear(num_features, num_classes, device=p.device if p is not None else None,
                     dtype=p.dtype if p is not None else None)  # fmt: skip


class InceptionNetwork(nn.Module):
    """A network table with timm's model API: stages → global pool → dropout → linear classifier.

    Subclasses give the data: ``stage_table(**config)`` (a classmethod: the stage list for the constructor's
    arguments), ``model_name``, ``head_name`` (the classifier's attribute: ``fc``, ``last_linear``, ``classif``)
    and, with auxiliary heads, ``aux_heads`` (attribute name → :class:`AuxHead`, in the order of ``outputs``'
    fields after ``logits``) and ``outputs`` (the namedtuple a training-mode forward returns).

    * ``forward_features(x)``: the last feature map (N, ``num_features``, H', W'); never runs the aux heads.
    * ``forward_head(x, pre_logits=False)``: global pool → dropout (→ classifier unless ``pre_logits``).
    * ``forward(x)``: logits; in training mode with aux heads ``outputs(logits, *aux_logits)``.
    * ``get_classifier()``, ``reset_classifier(num_classes, global_pool=None)``: as timm (0 classes: identity;
      the aux heads' classifiers are reset too).
    * ``min_size`` / ``min_size_for(**config)``: the smallest square input every stage runs on, computed from
      the tables; ``aux_min_size`` / ``aux_min_size_for(**config)``: the same with the aux heads running.
    """

    model_name: ClassVar[str] = "inception"
    head_name: ClassVar[str] = "fc"
    aux_heads: ClassVar[dict] = {}
    outputs: ClassVar[type | None] = None
    transform_input = False

    def __init__(self, stages, num_classes: int, drop_rate: float, aux=None, hfuse: bool = True):
        """``aux``: None (no aux heads) or ``aux(name, in_channels) -> nn.Module`` building the head ``name`` of
        ``aux_heads``; each is registered after its ``registered_after`` stage, heads after one stage in the
        order of their taps."""
        super().__init__()
        self.stages = list(stages)
        self.num_classes = num_classes
        self.min_hw = stages_min_hw(self.stages)
        self.min_size = max(self.min_hw)
        self.aux_min_size = self._aux_min_size(self.stages)
        names = [n for n, _ in self.stages]
        heads = sorted(self.aux_heads.items(), key=lambda kv: names.index(kv[1].tap))
        channels, c = {}, 3
        for name, item in self.stages:
            c = channels[name] = build_stages(self, [(name, item)], c, hfuse=hfuse)
            for head, spec in heads:
                if (spec.registered_after or spec.tap) == name:
                    setattr(self, head, aux(head, channels[spec.tap]) if aux is not None else None)
        self.num_features = c
        self.global_pool = GlobalPool("avg")
        self.head_drop = nn.Dropout(drop_rate)
        self.add_module(self.head_name, _classifier(c, num_classes))
        # the stages split after each tap: [(stages, heads reading the last one), ...]
        self._segments, start = [], 0
        for i, name in enumerate(names):
            tapped = [h for h, spec in heads if spec.tap == name]
            if tapped or i == len(names) - 1:
                self._segments.append((self.stages[start : i + 1], tapped))
                start = i + 1

    # ------------------------------------------------------------------------------------------ table facts
    @classmethod
    def stage_table(cls, **config) -> list:
        raise NotImplementedError

    @classmethod
    def _table(cls, config: dict) -> list:
        """``stage_table`` for constructor arguments ``config`` (those the table does not depend on are ignored;
        names the constructor does not take raise ``TypeError``, as the constructor would)."""
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
        wanted = inspect.signature(cls.stage_table).parameters
        return cls.stage_table(**{k: v for k, v in config.items() if k in wanted})

    @classmethod
    def min_size_for(cls, **config) -> int:
        """The smallest square input (pixels) on which every stage of ``cls(**config)`` has a non-empty output,
        computed from the tables (no model is built)."""
        return max(stages_min_hw(cls._table(config)))

    @classmethod
    def aux_min_size_for(cls, **config) -> int | None:
        """The smallest square input on which ``cls(**config)`` can also run its aux heads (training mode); None
        for a network without aux heads."""
        return cls._aux_min_size(cls._table(config))

    @classmethod
    def _aux_min_size(cls, stages) -> int | None:
        if not cls.aux_heads:
            return None
        names = [n for n, _ in stages]
        need = max(stages_min_hw(stages))
        for spec in cls.aux_heads.values():
            grid = chain_min_hw(spec.layers)
            need = max(need, *stages_min_hw(stages[: names.index(spec.tap) + 1], grid))
        return need

    def out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the last feature map for an input of ``hw`` pixels."""
        return stages_hw(self.stages, hw)

    # ------------------------------------------------------------------------------------------ aux heads
    @property
    def aux_logits(self) -> bool:
        """Whether the aux heads exist (they run in training mode). ``model.aux_logits = False`` drops them (as
        torchvision's factories do after loading weights)."""
        return bool(self.aux_heads) and all(getattr(self, h) is not None for h in self.aux_heads)

    @aux_logits.setter
    def aux_logits(self, value: bool) -> None:
        if value and not self.aux_logits:
            raise ValueError(f"this {self.model_name} was built without aux heads; build it with aux_logits=True")
        if not value:
            for h in self.aux_heads:
                setattr(self, h, None)

    # ------------------------------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor, with_aux: bool) -> None:
        h, w = x.shape[-2:]
        if h < self.min_hw[0] or w < self.min_hw[1]:
            raise ValueError(f"{self.model_name} needs an input of at least {self.min_hw[0]}x{self.min_hw[1]} "
                             f"pixels, got {h}x{w}")  # fmt: skip
        if with_aux and min(h, w) < self.aux_min_size:
            grids = ((max(chain_min_hw(s.layers)), s.tap) for s in self.aux_heads.values())
            taps = " and ".join(f"a {g}x{g} {tap} grid" for g, tap in grids)
            raise ValueError(f"{self.model_name} with aux_logits in training mode needs {taps}: an input of at "
                             f"least {self.aux_min_size}x{self.aux_min_size}, got {h}x{w} (or aux_logits=False)")  # fmt: skip

    def _features(self, x: torch.Tensor, with_aux: bool):
        self._check_input(x, with_aux)
        if self.transform_input:
            x = transform_input(x)
        reference = dispatch.is_reference(x)
        aux = {}
        for stages, heads in self._segments:
            x = run_stages(self, stages, x)
            for h in heads if with_aux else ():
                aux[h] = getattr(self, h)(x, reference=reference)
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → the last feature map (N, ``num_features``, H', W')."""
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map → global pool → dropout → classifier (``pre_logits``: stop before the classifier)."""
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor):
        with_aux = self.training and self.aux_logits
        x, aux = self._features(x, with_aux)
        x = self.forward_head(x)
        return self.outputs(x, *(aux[h] for h in self.aux_heads)) if with_aux else x

    # ------------------------------------------------------------------------------------------ classifier
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none, ``forward`` returns the pooled features) and, when
        given, a new global pool type (``"avg"``, ``"max"``, ``""``); the aux heads' classifiers too (as timm's
        InceptionV3). New layers are on the model's device and dtype, in its training mode."""
        pool = GlobalPool(self.global_pool.pool_type if global_pool is None else global_pool)
        self.num_classes, self.global_pool = num_classes, pool
        self.add_module(self.head_name, _classifier(self.num_features, num_classes, like=self).train(self.training))
        for h in self.aux_heads:
            if getattr(self, h) is not None:
                getattr(self, h).reset_classifier(num_classes)
