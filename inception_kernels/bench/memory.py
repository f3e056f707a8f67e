"""Memory measurements: activations saved for backward, and peak GPU memory of a callable.

``saved_activation_bytes(model, x)`` is what a training step must keep alive between forward and backward:
the sum, over *unique storages*, of every tensor the autograd graph of ``model(x)`` holds -- the tensors saved
through ``ctx.save_for_backward`` / by built-in backward nodes (seen by
:func:`torch.autograd.graph.saved_tensors_hooks`) and tensors a custom ``autograd.Function`` keeps as attributes
of its ``ctx`` (found by walking the graph). A view of a larger buffer counts the whole buffer (the buffer is
what stays alive); a storage counts once however many tensors share it. Parameters and buffers of the model are
excluded (they live anyway); the input ``x`` counts when the graph holds it.

Our fused training path on a CPU at native sizes, without running the kernels (the saved tensors are the same;
their values are not computed)::

    from inception_kernels.bench.counting import stubbed_launches
    model = create_model("inception_v3", aux_logits=False).train()
    with stubbed_launches():
        per_image = saved_activation_bytes_per_image(model, lambda n: torch.zeros(n, 3, 299, 299))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn


def _storage_key(t: torch.Tensor) -> int:
    # The address of the StorageImpl: equal for every view of one storage, valid on any device (meta included).
    return t.untyped_storage()._cdata


def _graph_held_tensors(outputs) -> list[torch.Tensor]:
    """Tensors kept as attributes of Python autograd nodes (custom ``autograd.Function`` ctx) reachable from
    ``outputs``' grad_fn. Saved tensors of built-in nodes go through the saved-tensor hooks instead."""
    roots = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    seen, found, stack = set(), [], roots
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for value in getattr(node, "__dict__", {}).values():
            items = value if isinstance(value, (list, tuple)) else (value,)
            found.extend(v for v in items if isinstance(v, torch.Tensor))
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def _outputs(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for item in out for o in _outputs(item)]
    if isinstance(out, dict):
        return [o for item in out.values() for o in _outputs(item)]
    return [o for o in getattr(out, "__dict__", {}).values() if isinstance(o, torch.Tensor)]


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes the autograd graph of one forward ``model(x)`` keeps for backward (unique storages, parameters and
    buffers excluded). Runs the forward once with grad enabled, in the model's current mode (call
    ``model.train()`` first for a training step); the graph is freed before returning.

    Works on any device, ``meta`` included (shapes only). Tensors a custom ``autograd.Function`` keeps on its
    ``ctx`` as attributes are counted too (found by walking the graph)."""
    held: list[torch.Tensor] = []

    def pack(t):
        held.append(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    outs = _outputs(out)
    held.extend(_graph_held_tensors(outs))
    skip = {_storage_key(p) for p in model.parameters()} | {_storage_key(b) for b in model.buffers()}
    sizes: dict[int, int] = {}
    for t in held:
        if t.layout != torch.strided:
            continue
        key = _storage_key(t)
        if key not in skip:
            sizes[key] = t.untyped_storage().nbytes()
    del out, outs
    held.clear()
    return int(sum(sizes.values()))


def saved_activation_bytes_per_image(
    model: nn.Module, make_input: Callable[[int], torch.Tensor], batches: tuple[int, int] = (1, 2)
) -> int:
    """Saved-activation bytes per image: ``(bytes(b2) - bytes(b1)) / (b2 - b1)`` with
    :func:`saved_activation_bytes`, so that batch-independent tensors (BN statistics, repacked weights) cancel.
    ``make_input(n)`` returns a batch of ``n`` images."""
    b1, b2 = batches
    s1 = saved_activation_bytes(model, make_input(b1))
    s2 = saved_activation_bytes(model, make_input(b2))
    return int(round((s2 - s1) / (b2 - b1)))


@contextlib.contextmanager
def peak_memory(device):
    """``with peak_memory(dev) as m: ...`` -> ``m["peak_mb"]``: the CUDA allocator's peak inside the block minus
    what was allocated when it started (the working memory above the resident weights and inputs), in MiB.
    On a non-CUDA device ``m["peak_mb"]`` is None."""
    result: dict = {"peak_mb": None}
    dev = torch.device(device)
    if dev.type != "cuda":
        yield result
        return
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        yield result
    finally:
        torch.cuda.synchronize(dev)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
