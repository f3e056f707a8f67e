"""The ``torch.library`` scaffolding every fused op shares (conv, pooling, batch norm, scaled residual).

Each op family has two doors:

* eager calls on plain tensors go through the family's ``torch.autograd.Function`` and call the launchers
  directly (the dispatcher of a Python custom op costs tens of microseconds per call, more than a small Inception
  layer takes on the GPU);
* traced calls -- ``torch.compile``, ``torch.export``, fake / functional tensor subclasses -- go through the
  registered ``inception_kernels::*`` custom ops (:func:`define`): opaque to the tracer, correctly faked, with
  their backward registered through ``register_autograd`` as further custom ops.

:func:`traced` is the one test between the two doors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

NAMESPACE = "inception_kernels"

# Fake, functional and other tracing tensor subclasses must go through the registered ops.
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def traced(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on ``tensors`` must use the registered ops: Dynamo is tracing, or one of them is not a plain
    tensor (a FakeTensor, a functional tensor, another subclass)."""
    if torch.compiler.is_compiling():
        return True
    for t in tensors:  # (a loop, not any(<generator>): this runs on every eager launch)
        if t is not None and type(t) not in PLAIN_TENSORS:
            return True
    return False


def define(
    name: str,
    impl: Callable,
    *,
    fake: Callable,
    mutates_args: Iterable[str] = (),
    backward: Callable | None = None,
    setup_context: Callable | None = None,
):
    """Register ``impl`` as the custom op ``inception_kernels::name`` (schema from its type hints), its fake
    (meta) kernel and, when given, its autograd formula; returns the op (call it, or ``torch.ops.inception_kernels``
    under the same name)."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=tuple(mutates_args))(impl)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return op


def no_tensor(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """What a custom op returns for an output it does not have (its schema cannot say None)."""
    return like.new_empty(0, dtype=dtype)


def fresh_cl(t: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``t`` as a custom op may return it: a dense channels_last tensor (what the fakes promise) that is no view
    of any input (custom-op outputs must not alias inputs). Copies only when ``t`` is neither."""
    cl = torch.channels_last
    storage = t.untyped_storage().data_ptr()
    aliased = any(i is not None and i.untyped_storage().data_ptr() == storage for i in inputs)
    return t.clone(memory_format=cl) if aliased or not t.is_contiguous(memory_format=cl) else t
