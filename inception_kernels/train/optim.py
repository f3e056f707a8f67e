"""Optimizers of the Inception recipe.

:class:`RMSpropTF` is TensorFlow's ``RMSPropOptimizer`` (the one the Inception-v3/v4 papers trained with), which
differs from ``torch.optim.RMSprop`` in three ways: the mean square starts at 1 (not 0), ε sits inside the square
root, and the learning rate multiplies the gradient *before* it enters the momentum buffer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow's RMSProp with momentum, exactly::

        g   ← grad + weight_decay · p          (weight decay as an L2 term on the gradient)
        ms  ← ρ · ms + (1 − ρ) · g²            (ms initialised to 1)
        mom ← μ · mom + lr · g / √(ms + ε)     (mom initialised to 0)
        p   ← p − mom

    Defaults are the Inception papers' (ρ = 0.9, μ = 0.9, ε = 1.0). The learning rate can change between steps
    (schedules write ``param_group["lr"]``); as in TF it scales the update that enters the momentum buffer.
    State per parameter: ``ms`` and ``mom`` (same shape and dtype as the parameter).
    """

    def __init__(self, params, lr: float = 0.045, rho: float = 0.9, momentum: float = 0.9, eps: float = 1.0,
                 weight_decay: float = 0.0):  # fmt: skip
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, mu, eps, wd = (
                group["lr"],
                group["rho"],
                group["momentum"],
                group["eps"],
                group["weight_decay"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(rho).addcmul_(g, g, value=1.0 - rho)
                mom.mul_(mu).addcdiv_(g, ms.add(eps).sqrt_(), value=lr)
                p.sub_(mom)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as TF-slim regularizes: weight decay on conv / linear weights (tensors with ≥ 2 dims), none on
    BN scales and shifts or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


OPTIMIZERS = ("rmsprop-tf", "sgd", "adamw")


def build_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    rho: float = 0.9, eps: float = 1.0) -> torch.optim.Optimizer:  # fmt: skip
    """``rmsprop-tf`` (:class:`RMSpropTF`), ``sgd`` (momentum, L2 weight decay) or ``adamw`` (decoupled weight
    decay; ``eps`` is RMSProp's and is not passed to AdamW). ``params`` may be parameter groups carrying their own
    ``weight_decay``."""
    if name == "rmsprop-tf":
        return RMSpropTF(params, lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
