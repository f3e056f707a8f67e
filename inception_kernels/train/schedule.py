"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch


class StaircaseLR:
    """TF's ``exponential_decay(staircase=True)`` as the Inception papers use it, with an optional linear warmup::

        lr(step) = base_lr · decay ^ floor(step / decay_steps) · min(1, (step + 1) / warmup_steps)

    with ``decay_steps = round(decay_epochs · steps_per_epoch)`` (the papers: ×0.94 every 2 epochs) and
    ``warmup_steps = round(warmup_epochs · steps_per_epoch)`` (0: no warmup). ``decay=1`` gives a constant rate.
    Writes ``param_group["lr"]`` of every group on construction (step 0) and on each :meth:`step`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, steps_per_epoch: int, decay: float = 0.94,
                 decay_epochs: float = 2.0, warmup_epochs: float = 0.0):  # fmt: skip
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.decay = decay
        self.decay_steps = max(1, round(decay_epochs * steps_per_epoch))
        self.warmup_steps = max(0, round(warmup_epochs * steps_per_epoch))
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        lr = self.base_lr * self.decay ** math.floor(step / self.decay_steps)
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def get_last_lr(self) -> float:
        return self.lr_at(self.last_step)

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return dict(last_step=self.last_step, base_lr=self.base_lr, decay=self.decay, decay_steps=self.decay_steps,
                    warmup_steps=self.warmup_steps)  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for k in ("base_lr", "decay", "decay_steps", "warmup_steps"):
            setattr(self, k, state[k])
        self.last_step = state["last_step"]
        self._apply()
