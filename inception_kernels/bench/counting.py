"""Counting what a forward pass executes: ATen kernels (eager op count), our kernel launches without running
them, and per-layer multiply-adds / minimal bytes.

* :class:`OpCounter` -- a ``TorchDispatchMode`` that counts the ATen ops that do work on a device: views
  (``func.is_view``), allocations (``empty*``) and other metadata-only ops are left out, so the count is the
  number of kernels eager PyTorch launches (one per op; cuDNN may add layout transforms on a GPU).
* :func:`stubbed_launches` -- our launchers report each kernel through ``utils.record_launch`` (what
  ``utils.count_launches`` counts) just before launching it. Inside this context the Triton launch itself does
  nothing, so the fused path of a model can be walked at its native input size on a CPU in a fraction of a second: the
  outputs are left uninitialized (the numbers are garbage, the structure -- which kernels, which tensors saved
  for backward -- is the real one). ``tests/test_bench.py`` checks the count equals the interpreter's.
* :func:`layer_profile` -- per conv / linear / pool / residual-add layer: multiply-adds, activation and weight
  bytes, from the reference-backend forward (runs on the ``meta`` device: shapes only). The package's one MAC
  counter: ``utils.count_macs`` is its sum.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops that allocate or only touch metadata: no kernel
_NO_KERNEL = {
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "detach",
    "detach_",
    "lift_fresh",
    "_local_scalar_dense",
    "set_",
    "as_strided_",
    "_unsafe_view",
    "resize_",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
}


def launches_kernel(func) -> bool:
    """True for an ATen op that runs a device kernel (not a view, not an allocation)."""
    if getattr(func, "is_view", False):
        return False
    return func.overloadpacket.__name__ not in _NO_KERNEL


class OpCounter(TorchDispatchMode):
    """Counts kernel-launching ATen ops: ``with OpCounter() as c: f()`` -> ``c.total``, ``c.ops`` (by name)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    @property
    def total(self) -> int:
        return int(sum(self.ops.values()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def stubbed_launches():
    """Walk our fused path on CPU tensors without running a kernel: Triton kernel launches
    (``JITFunction.run``, the interpreter's ``InterpretedFunction.run``, ``Autotuner.run``) return at once. Our
    launchers report every kernel through ``utils.record_launch`` just before launching it, so
    ``count_launches`` still counts them. Backend forced to ``triton`` with the interpreter switch on, so CPU
    tensors take the fused path; everything restored on exit. Outputs of the skipped kernels stay
    uninitialized."""
    from triton.runtime import autotuner, interpreter, jit

    targets = [
        (jit.JITFunction, "run"),
        (interpreter.InterpretedFunction, "run"),
        (autotuner.Autotuner, "run"),
    ]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in targets if name in cls.__dict__]

    def no_launch(self, *args, **kwargs):
        return None

    for cls, name, _ in saved:
        setattr(cls, name, no_launch)
    try:
        with _env(INCEPTION_KERNELS_BACKEND="triton", TRITON_INTERPRET="1"):
            yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def count_eager_ops(model: nn.Module, x: torch.Tensor) -> Counter:
    """Kernel-launching ATen ops of one ``model(x)`` without autograd (run it on ``meta`` for speed)."""
    with torch.no_grad(), OpCounter() as c:
        model(x)
    return c.ops


def count_our_launches(model: nn.Module, x: torch.Tensor) -> dict:
    """Kernels of one eval forward of our model on the fused path (``x`` on the CPU, float32): our launches
    (``utils.count_launches``) plus the ATen ops that still run besides them (pools, the head, copies). Counted
    on a second call: the first packs weights and folds BN (cached)."""
    from ..utils import count_launches

    was_training = model.training
    model.eval()
    try:
        with stubbed_launches(), torch.no_grad():
            model(x)
            with count_launches() as c, OpCounter() as ops:
                model(x)
    finally:
        model.train(was_training)
    return {"our_kernels": c.count, "other_ops": dict(ops.ops), "total": c.count + ops.total}


# ----------------------------------------------------------------------------------------------------------
# Per-layer profile
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Layer:
    name: str  # module path (the innermost module running the op)
    op: str  # conv / linear / maxpool / avgpool / globalpool / residual
    in_shape: tuple
    out_shape: tuple
    macs: int  # multiply-adds per image
    act_elems: (
        int  # activation elements read + written per image (minimal: each input read once, output once)
    )
    weight_elems: int  # weight (+ bias) elements read once per call

    def bytes(self, batch: int = 1, elem_bytes: int = 2) -> int:
        """Minimal bytes of one call at ``batch`` images (``elem_bytes`` per element: 2 for bf16)."""
        return (batch * self.act_elems + self.weight_elems) * elem_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["in_shape"], d["out_shape"] = list(self.in_shape), list(self.out_shape)
        return d


def _per_image(t: torch.Tensor) -> int:
    return t.numel() // max(t.shape[0], 1) if t.dim() > 0 else t.numel()


class _ProfileMode(TorchDispatchMode):
    def __init__(self, names):
        super().__init__()
        self.names = names
        self.stack: list[str] = []
        self.layers: list[Layer] = []

    def _add(self, op, inp, out, macs, act, weight):
        name = self.stack[-1] if self.stack else ""
        self.layers.append(
            Layer(name, op, tuple(inp.shape), tuple(out.shape), int(macs), int(act), int(weight))
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        p = func.overloadpacket
        if p is aten.convolution:
            x, w, b = args[0], args[1], args[2]
            n = max(x.shape[0], 1)
            macs = out.numel() // n * w[0].numel()
            wel = w.numel() + (b.numel() if b is not None else 0)
            self._add("conv", x, out, macs, _per_image(x) + _per_image(out), wel)
        elif p in (aten.addmm, aten.mm):
            x, w = (args[1], args[2]) if p is aten.addmm else (args[0], args[1])
            n = max(x.shape[0], 1)
            wel = w.numel() + (args[0].numel() if p is aten.addmm else 0)
            self._add("linear", x, out, out.numel() // n * x.shape[1], _per_image(x) + _per_image(out), wel)
        elif p in (aten.max_pool2d_with_indices, aten.avg_pool2d, aten.max_pool2d):
            o = out[0] if isinstance(out, tuple) else out
            kind = "maxpool" if p is not aten.avg_pool2d else "avgpool"
            self._add(kind, args[0], o, 0, _per_image(args[0]) + _per_image(o), 0)
        elif p in (aten.mean, aten._adaptive_avg_pool2d) and args[0].dim() == 4:
            self._add("globalpool", args[0], out, 0, _per_image(args[0]) + _per_image(out), 0)
        elif (
            p is aten.add
            and len(args) >= 2
            and all(isinstance(a, torch.Tensor) for a in args[:2])
            and args[0].dim() == 4
            and tuple(args[0].shape) == tuple(args[1].shape)
        ):
            # residual sum: fused into the up-projection's epilogue, which reads the residual once
            self._add("residual", args[0], out, 0, _per_image(args[0]), 0)
        return out


def layer_profile(model: nn.Module, input_size, device=None, *, in_channels: int = 3) -> list[Layer]:
    """Per-layer multiply-adds and minimal bytes of one eval forward of ``model`` on the reference backend at
    ``input_size`` (``(H, W)`` or one int for a square input; batch 1, ``in_channels`` channels). ``device``:
    where the input is made (default: the device of the model's parameters; ``meta`` for a model built on
    ``meta``: shapes only, instant); the input has the dtype of the parameters. BN, ReLU and concat are free in
    the minimal-bytes model (fused into the producing conv's epilogue; concat is concat-free)."""
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if device is None:
        device = param.device if param is not None else "cpu"
    names = {id(m): n for n, m in model.named_modules()}
    names[id(model)] = type(model).__name__  # ops run by the network itself (stem pools, head)
    mode = _ProfileMode(names)

    def pre(mod, args):
        mode.stack.append(names.get(id(mod), type(mod).__name__))

    def post(mod, args, out):
        mode.stack.pop()

    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with _env(INCEPTION_KERNELS_BACKEND="reference"), torch.no_grad(), mode:
            model(torch.zeros(1, in_channels, *hw, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return mode.layers
