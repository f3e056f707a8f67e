"""Small utilities: counting the GPU kernel launches our launchers make."""

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

    Runs the model once on the plain-PyTorch reference backend with hooks on every ``nn.Conv2d`` / ``nn.Linear``
    (eval mode, batch 1, CPU, no grad), so it counts exactly the layers that execute, aux heads excluded in eval.
    """
    import os

    import torch

    counts = []

    def conv_hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        counts.append(out.numel() * k)

    def linear_hook(mod, inp, out):
        counts.append(out.numel() * mod.in_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    old = os.environ.get("INCEPTION_KERNELS_BACKEND")
    os.environ["INCEPTION_KERNELS_BACKEND"] = "reference"
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        if old is None:
            os.environ.pop("INCEPTION_KERNELS_BACKEND", None)
        else:
            os.environ["INCEPTION_KERNELS_BACKEND"] = old
    return int(sum(counts))
