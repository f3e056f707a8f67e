"""Exponential moving average of a model's parameters and buffers (TF's ``ExponentialMovingAverage``)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEMA:
    """A copy of ``model`` whose floating-point parameters *and buffers* (BN running statistics) follow

        ema ← d · ema + (1 − d) · value,   d = min(decay, (1 + n) / (10 + n))

    after the n-th update (n = 1, 2, ...). The ``(1 + n)/(10 + n)`` cap is TF's ``num_updates`` rule that
    TF-slim's Inception training passes the global step to: early in training (and in short runs) the average
    follows the weights instead of staying near the initialisation; ``warmup=False`` uses ``decay`` throughout.
    Integer buffers (``num_batches_tracked``) are copied. The averaged model lives in ``self.module`` (eval mode,
    no gradients).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = self.current_decay()
        ema_state, state = self.module.state_dict(), model.state_dict()
        for name, e in ema_state.items():
            v = state[name].detach()
            if e.dtype.is_floating_point:
                e.mul_(d).add_(v.to(e.dtype), alpha=1.0 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict:
        return dict(module=self.module.state_dict(), decay=self.decay, warmup=self.warmup,
                    num_updates=self.num_updates)  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
