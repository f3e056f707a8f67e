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


# ----------------------------------------------------------------------------------------------------------
# ``inception-kernels bench --memory``: the saved-activation table
# ----------------------------------------------------------------------------------------------------------
MEMORY_GOAL = 0.5  # issue 4: ours keeps at most half the bytes the torchvision / timm model keeps


def compare_saved_activations(name: str, size: int = 75, batch: int = 2, device=None, backend: str = "triton") -> dict:
    """Saved-activation bytes per image of one training step (:func:`saved_activation_bytes` / ``batch``): our
    fused training path vs the torchvision / timm model, the same input size and batch, fp32, train mode, no aux
    heads (inception_v3's aux head needs 299² in training).

    Ours really runs, with ``INCEPTION_KERNELS_BACKEND=backend`` for the call: on a machine without a GPU through
    the Triton interpreter (``TRITON_INTERPRET=1`` must be set before the kernels are defined; the CLI does it),
    so the table is measured in CI. The reference is walked on the ``meta`` device (the same saved tensors,
    shapes only)."""
    import time

    from . import zoo
    from .counting import _env

    dev = _device(device)
    torch.manual_seed(0)
    ours = zoo.our_model(name, dev).train()
    ref = zoo.reference_model(name, "meta").train()
    x = torch.randn(batch, 3, size, size, device=dev)
    t0 = time.perf_counter()
    with _env(INCEPTION_KERNELS_BACKEND=backend):
        ours_bytes = saved_activation_bytes(ours, x.contiguous(memory_format=torch.channels_last))
    t_ours = time.perf_counter() - t0
    ref_bytes = saved_activation_bytes(ref, torch.empty(batch, 3, size, size, device="meta"))
    return {
        "model": name,
        "input_size": size,
        "batch": batch,
        "dtype": "float32",
        "device": str(dev),
        "ours_saved_bytes_per_image": ours_bytes / batch,
        "reference_saved_bytes_per_image": ref_bytes / batch,
        "ratio": ours_bytes / ref_bytes,
        "ours_seconds": t_ours,
    }


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def format_saved_table(rows: list[dict]) -> str:
    """The rows of :func:`compare_saved_activations` as a text table (MB = 10^6 bytes per image)."""
    lines = [f"{'model':20s} {'size':>5s} {'batch':>5s} {'ours MB':>9s} {'reference MB':>13s} {'ours/ref':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:20s} {r['input_size']:5d} {r['batch']:5d} {r['ours_saved_bytes_per_image'] / 1e6:9.2f} "
                     f"{r['reference_saved_bytes_per_image'] / 1e6:13.2f} {r['ratio']:8.3f}")  # fmt: skip
    return "\n".join(lines)


def run_memory(out_dir: str | None = None, networks=("inception_v3",), size: int = 75, batches=(2,),
               device=None, log=print) -> dict:  # fmt: skip
    """The saved-activation table of ``networks`` at ``size``² for each batch; with ``out_dir`` also written to
    ``memory.json`` there (the environment in ``meta``). Returns ``{"meta": ..., "rows": [...]}``."""
    import os

    from .env import environment
    from .report import write_json

    dev = _device(device)
    rows = [compare_saved_activations(n, size, b, dev) for n in networks for b in batches]
    log("saved activations per image, one training step, fp32, ours (fused path) vs torchvision / timm")
    log(format_saved_table(rows))
    res = {"meta": {**environment(dev), "mode": "memory"}, "rows": rows}
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, "memory.json"), res)
    return res
