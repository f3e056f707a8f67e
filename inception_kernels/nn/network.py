"""Running a network table: a sequence of named stages (stem convs, pools, blocks) registered on a model.

The stage modules are registered directly on the model under their table names, so state-dict keys are the
reference implementation's (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import dispatch
from .engine import (
    Block,
    Conv,
    InceptionBlock,
    Pool,
    _pool,
    get_submodule,
    layer_hw,
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


def stages_hw(model: nn.Module, stages, hw: tuple[int, int]) -> tuple[int, int]:
    for name, item in stages:
        hw = get_submodule(model, name).out_hw(hw) if isinstance(item, Block) else layer_hw(item, hw)
    return hw


def run_stages(model: nn.Module, stages, x: torch.Tensor) -> torch.Tensor:
    reference = dispatch.is_reference(x)
    if not reference and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    for name, item in stages:
        if isinstance(item, Pool):
            x = _pool(item, x, fused=not reference)
        elif isinstance(item, Conv):
            mod = get_submodule(model, name)
            x = mod(x, reference=reference) if item.bn else mod(x)
        else:
            x = get_submodule(model, name)(x)
    return x


def check_min_size(model_name: str, hw: tuple[int, int], stages_out_hw, minimum: int) -> None:
    h, w = hw
    ok = min(h, w) >= minimum
    if ok:
        oh, ow = stages_out_hw(hw)
        ok = oh >= 1 and ow >= 1
    if not ok:
        raise ValueError(f"{model_name} needs an input of at least {minimum}x{minimum} pixels, got {h}x{w}")


def transform_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``transform_input``: re-normalize ImageNet-normalized input to (x − 0.5)/0.5 per channel,
    as x·(std/0.5) + (mean − 0.5)/0.5 — the same arithmetic, without slicing and ``torch.cat``."""
    scale = x.new_tensor([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5]).view(1, 3, 1, 1)
    shift = x.new_tensor([(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5]).view(1, 3, 1, 1)
    return x * scale + shift
