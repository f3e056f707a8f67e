"""Layers built on the fused ops: ``ConvBNAct`` (conv → BN → ReLU) and the linear conv of residual up-projections.

State-dict names follow torchvision ``BasicConv2d`` and timm ``ConvNormAct``: ``conv.weight``, ``bn.weight``,
``bn.bias``, ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``.

Three execution modes, chosen per call:
* reference: ``bn(conv(x))`` then ReLU in plain PyTorch (the oracle);
* eval (fused): BN folded into the conv epilogue (``scale = γ/√(var+ε)``, ``bias = β − mean·scale``, cached until a
  parameter or running statistic changes), one kernel writing straight into its destination slice;
* train: our conv, then ``nn.BatchNorm2d`` itself on the batch (identical statistics and running-stat updates), ReLU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.conv import conv2d


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _VersionCache:
    """Caches a value computed from tensors until one of them is replaced or modified in place."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, tensors, compute):
        # Never cache a value that autograd must differentiate (it would carry a stale graph), nor under tracing.
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        ):
            return compute()
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if key != self.key:
            self.value, self.key = compute(), key
        return self.value


class ConvBNAct(nn.Module):
    """``relu(bn(conv(x)))`` with BN eps 1e-3 (TF lineage); drop-in for torchvision/timm ``BasicConv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, eps: float = 1e-3,
                 act: bool = True):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.act = act
        self._fold = _VersionCache()

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode BN as a per-channel (scale, bias) in float32."""
        bn = self.bn

        def compute():
            scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
            return scale, bn.bias.float() - bn.running_mean.float() * scale

        return self._fold.get((bn.weight, bn.bias, bn.running_mean, bn.running_var), compute)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.act else y

    def forward(
        self, x: torch.Tensor, out: torch.Tensor | None = None, reference: bool = False
    ) -> torch.Tensor:
        """x: (N, C, H, W); ``out``: optional channels_last destination (a channel slice of a block output)."""
        if reference:
            y = self.forward_reference(x)
            return y if out is None else out.copy_(y)
        conv = self.conv
        stride, padding = _pair(conv.stride), _pair(conv.padding)
        activation = "relu" if self.act else None
        if not self.training:
            scale, bias = self.folded()
            return conv2d(x, conv.weight, stride=stride, padding=padding, scale=scale, bias=bias,
                          activation=activation, out=out)  # fmt: skip
        y = self.bn(conv2d(x, conv.weight, stride=stride, padding=padding))
        if self.act:
            y = F.relu(y)
        return y if out is None else out.copy_(y)
