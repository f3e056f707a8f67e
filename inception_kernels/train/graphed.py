"""``--cuda-graph``: the forward, loss and backward of a training step replayed from one CUDA graph.

A v3 training step makes ~1,300 kernel launches; at the batch sizes of the papers (32 per GPU) the host's launch
work is a large part of the step. :class:`GraphedStep` records forward + loss + backward once and then replays
them with one call; the optimizer step, gradient clipping, the GradScaler and the EMA stay ordinary PyTorch calls
(a handful of multi-tensor kernels) on the gradients the graph wrote.

* Warm-up: the first ``warmup`` steps of the run are ordinary steps (Triton compiles and tunes, lazily built state
  such as the GradScaler's scale is created); the next one is captured and then replayed.
* One signature is graphed: the input and target shapes, strides and dtypes of the step that was captured (the
  full batch). A step of another shape (the short batch an epoch can end with, a batch with unreadable images
  skipped) runs the ordinary way, with the same result.
* The gradients of a replay are written (not accumulated) into ``param.grad``: tensors the graph owns. The loop must
  therefore clear gradients in place (``zero_grad(set_to_none=False)``, :meth:`GraphedStep.set_to_none`) once a
  graph exists, and an ordinary step after a replay starts from zeroed gradients (done here).
* A capture that fails (an op that synchronizes with the host, for example a BN with ``momentum=None``) warns once
  and the run goes on without graphs.

Dropout draws from CUDA's graph-safe Philox generator (``torch.cuda.graph`` advances its offset per replay): masks
differ from an eager run's, as they differ between any two seeds. Single process only (the trainer refuses
``--cuda-graph`` with DDP, ``--accum-steps`` > 1 or ``--compile``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class GraphedStep:
    def __init__(self, params: list[torch.Tensor], warmup: int = 3):
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer, got {warmup!r}")
        self.params, self.warmup = params, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature = None
        self.static: tuple | None = None  # (x, y, loss)
        self.steps = 0  # ordinary steps before the capture
        self.replays = 0
        self.failed: str | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    @property
    def set_to_none(self) -> bool:
        """What ``zero_grad(set_to_none=...)`` must be: gradients stay the graph's tensors once it exists."""
        return not self.captured

    @staticmethod
    def _signature(x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (x.shape, x.stride(), x.dtype, x.device, y.shape, y.stride(), y.dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """One forward + loss + backward: ``step(x, y)`` computes them the ordinary way (backward included) and
        returns the detached loss; this replays it from the graph where it can. Returns the detached loss."""
        sig = self._signature(x, y)
        if self.failed is not None or x.device.type != "cuda":
            return step(x, y)
        if self.signature is None:
            self.signature = sig
        if sig != self.signature:
            self._zero_grads()  # the gradients hold the last replay's values: accumulate onto zeros
            return step(x, y)
        if self.graph is None:
            if self.steps < self.warmup:
                self.steps += 1
                return step(x, y)
            if not self._capture(x, y, step):
                return step(x, y)
        sx, sy, loss = self.static
        sx.copy_(x)
        sy.copy_(y)
        self.graph.replay()
        self.replays += 1
        return loss.clone()

    def _zero_grads(self) -> None:
        if self.graph is not None:
            for p in self.params:
                if p.grad is not None:
                    p.grad.zero_()

    def _capture(self, x, y, step) -> bool:
        sx = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        sy = torch.empty_strided(y.shape, y.stride(), dtype=y.dtype, device=y.device)
        sx.copy_(x)
        sy.copy_(y)
        for p in self.params:  # the captured backward then allocates the gradients in the graph's pool
            p.grad = None
        torch.cuda.synchronize(x.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = step(sx, sy)
        except Exception as e:  # noqa: BLE001 - any capture failure: go on without graphs, say why once
            self.failed = f"{type(e).__name__}: {e}"
            for p in self.params:
                p.grad = None
            torch.cuda.synchronize(x.device)
            warnings.warn(f"--cuda-graph: capturing the training step failed ({self.failed}); running without "
                          "CUDA graphs", stacklevel=2)  # fmt: skip
            return False
        self.graph, self.static = graph, (sx, sy, loss)
        return True
