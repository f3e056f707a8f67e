"""Small utilities: counting the GPU kernel launches our launchers make, multiply-accumulates, relative error."""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def record_launch(n: int = 1, aten: bool = False) -> None:
    """Called by every launcher for each kernel it puts on the GPU: Triton kernels, and the ATen helpers our
    launchers call (copies, reductions, zero-fills; ``aten=True``, so a count of ATen ops can leave them out)."""
    counters = getattr(_state, "counters", None)
    if counters:
        for c in counters:
            c.count += n
            if aten:
                c.aten += n


class LaunchCounter:
    count: int = 0  # every kernel our launchers put on the GPU
    aten: int = 0  # of those, the ATen helper ops (also seen by a TorchDispatchMode such as bench.counting.OpCounter)

    def __repr__(self) -> str:
        return f"LaunchCounter(count={self.count})"


@contextlib.contextmanager
def count_launches():
    """Count the kernel launches our launchers make inside the block (nested counters all count).

    >>> with count_launches() as c:
    ...     model(x)
    >>> c.count
    """
    counter = LaunchCounter()
    stack = getattr(_state, "counters", None)
    if stack is None:
        stack = _state.counters = []
    stack.append(counter)
    try:
        yield counter
    finally:
        stack.remove(counter)


def count_macs(model, input_size=(299, 299), in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one image (convolutions and fully connected layers).

    The sum of :func:`inception_kernels.bench.counting.layer_profile` (the one MAC counter of the package): the
    model runs once on the plain-PyTorch reference backend (eval mode, batch 1, no grad, on the device and in the
    dtype of its parameters; ``meta`` works), so it counts exactly the ops that execute, aux heads excluded in
    eval. ``input_size``: ``(H, W)`` or one int for a square input.
    """
    from .bench.counting import layer_profile

    return int(sum(layer.macs for layer in layer_profile(model, input_size, in_channels=in_channels)))


def rel_err(a, b) -> float:
    """Relative error ``||a - b|| / ||b||`` (Frobenius norms, computed in float64 on the CPU); ``||a - b||`` when
    ``b`` is all zeros. ``inf`` when the shapes differ (never a broadcast); NaN propagates."""
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    import torch

    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    num = torch.linalg.vector_norm(a64 - b64).item()
    den = torch.linalg.vector_norm(b64).item()
    return num / den if den > 0 else num
