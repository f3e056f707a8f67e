"""Small utilities: counting the GPU kernel launches our launchers make."""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def record_launch(n: int = 1) -> None:
    """Called by every launcher for each kernel it puts on the GPU (Triton kernels and helper copies)."""
    counters = getattr(_state, "counters", None)
    if counters:
        for c in counters:
            c.count += n


class LaunchCounter:
    count: int = 0

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
