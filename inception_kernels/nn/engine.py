"""The block engine: one executor for every Inception block, described as data.

A block is a small tree. Each top-level :class:`Branch` is a chain of layers (:class:`Conv`, :class:`Pool`) that
may end in a fork (sub-branches reading the chain's output, as Inception-v3's E block and Inception-v4's C block).
Every leaf owns a channel range of the block output, in table order. The merge is either

* ``"concat"``: leaves write into their slice of one preallocated channels_last buffer (no ``torch.cat``), or
* ``"residual"``: ``act(x + scale · (W · concat + b))`` — the concat buffer feeds a linear 1×1 up-projection whose
  epilogue adds the scaled residual (Inception-ResNet).

Execution modes (per call): ``reference`` is plain PyTorch (conv, batch_norm, relu, pools, ``torch.cat``) — the
oracle; eval writes every leaf straight into its slice with BN folded, and runs sibling 1×1 convs that read the
block input as one GEMM whose output channels are split between the leaf slice and a temporary (horizontal
fusion); train uses our conv with ``nn.BatchNorm2d`` on batch statistics and writes leaves into their slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import _recompute, amp, dispatch, reference
from ..ops import conv as conv_ops
from ..ops import pool as pool_ops
from ..ops._args import device_guard, window_out_size
from ..ops._args import pair as _pair
from ..ops._library import traced
from .layers import ConvBNAct, _VersionCache, plans_of, versions


# ----------------------------------------------------------------------------------------------------------
# The table vocabulary
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv:
    """A convolution. ``bn=True``: conv → BN → ReLU (``ConvBNAct``, state-dict prefix ``name``). ``bn=False``:
    a linear conv with bias (a plain ``nn.Conv2d`` named ``name``), used for residual up-projections."""

    name: str
    out: int
    kernel: int | tuple[int, int] = 1
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    bn: bool = True
    act: bool = True


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    count_include_pad: bool = True
    ceil_mode: bool = False


@dataclass(frozen=True)
class Branch:
    layers: tuple = ()
    fork: tuple = ()  # sub-branches reading this chain's output; then the leaves are the fork's branches


@dataclass(frozen=True)
class Block:
    branches: tuple
    merge: str = "concat"  # or "residual"
    proj: Conv | None = None  # residual: the linear 1x1 up-projection (bn=False)
    scale: float = 1.0  # residual scale
    act: bool = True  # residual: ReLU after the sum


def branch(*layers, fork=()) -> Branch:
    return Branch(tuple(layers), tuple(fork))


# ----------------------------------------------------------------------------------------------------------
# Shape arithmetic
# ----------------------------------------------------------------------------------------------------------
def _min_in_size(out: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    """The smallest input length (at least 1) whose ``ops._args.window_out_size`` is at least ``out``: the inverse of
    the floor formula, and for ceil mode the ceil formula together with PyTorch's rule that the last window starts
    inside the input or its left padding (assumes ``p <= k // 2``, as PyTorch requires)."""
    n = (out - 1) * s + k - 2 * p
    if ceil:
        n = max((out - 2) * s + k - 2 * p + 1, (out - 1) * s - p + 1)
    return max(n, 1)


def _geometry(layer) -> tuple[tuple, bool]:
    """((kernel, stride, padding) of the height, the same of the width), ceil mode."""
    if isinstance(layer, Conv):
        return tuple(zip(_pair(layer.kernel), _pair(layer.stride), _pair(layer.padding))), False
    return ((layer.kernel, layer.stride, layer.padding),) * 2, layer.ceil_mode


def out_hw(item, hw: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a table item (:class:`Conv`, :class:`Pool` or :class:`Block`) for an input of ``hw``.
    Every leaf of a block has the same size; the first branch's path gives it."""
    if isinstance(item, Block):
        br = item.branches[0]
        return chain_hw(br.layers + (br.fork[0].layers if br.fork else ()), hw)
    dims, ceil = _geometry(item)
    return tuple(window_out_size(n, k, s, p, ceil) for n, (k, s, p) in zip(hw, dims))


def min_in_hw(item, hw: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """The smallest input (H, W) for which ``item`` and every layer inside it give an output of at least ``hw``
    (for a block: the largest need over its chains and forks)."""
    if not isinstance(item, Block):
        dims, ceil = _geometry(item)
        return tuple(_min_in_size(n, k, s, p, ceil) for n, (k, s, p) in zip(hw, dims))
    needs = []
    for br in item.branches:
        at_fork = _max_hw([chain_min_hw(fb.layers, hw) for fb in br.fork]) if br.fork else hw
        needs.append(chain_min_hw(br.layers, at_fork))
    return _max_hw(needs)


def chain_hw(items, hw: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a sequence of table items."""
    for item in items:
        hw = out_hw(item, hw)
    return hw


def chain_min_hw(items, hw: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """The smallest input (H, W) for which every item of the sequence has a non-empty output and the last one
    an output of at least ``hw``."""
    hw = _max_hw([hw, (1, 1)])
    for item in reversed(tuple(items)):
        hw = min_in_hw(item, hw)
    return hw


def _max_hw(hws) -> tuple[int, int]:
    return max(h for h, _ in hws), max(w for _, w in hws)


def _pool(layer: Pool, x: torch.Tensor, fused: bool = False, out: torch.Tensor | None = None,
          owner: nn.Module | None = None) -> torch.Tensor:  # fmt: skip
    """The pooling layer; ``fused``: our kernel, writing straight into ``out`` (a channel slice) when given
    (under torch.compile through the registered ``inception_kernels::pool2d_fwd`` op). With ``owner`` (the module
    whose table holds the layer) eager calls run from a plan per call signature kept in the owner's plans."""
    if fused:
        args = (layer.kind, layer.kernel, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad)
        if owner is not None and not traced(x) and not dispatch.recording_active():
            key = ("pool", id(layer), x.shape, x.stride(), x.dtype, x.device,
                   None if out is None else (out.shape, out.stride()), dispatch.requested(), dispatch.generation())  # fmt: skip
            plans = plans_of(owner)
            plan = plans[key] if key in plans else plans.put(key, pool_ops.plan_pool2d(x, *args, out=out))
            if plan is not None:
                return plan(x, out)
        return pool_ops.pool2d(x, *args, out=out)
    if layer.kind == "max":
        y = F.max_pool2d(x, layer.kernel, layer.stride, layer.padding, ceil_mode=layer.ceil_mode)
    else:
        y = F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding, ceil_mode=layer.ceil_mode,
                         count_include_pad=layer.count_include_pad)  # fmt: skip
    return y if out is None else out.copy_(y)


def _new_like(x: torch.Tensor, channels: int, hw: tuple[int, int]) -> torch.Tensor:
    return torch.empty((x.shape[0], channels, *hw), device=x.device, dtype=x.dtype,
                       memory_format=torch.channels_last)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Module construction helpers
# ----------------------------------------------------------------------------------------------------------
class _Container(nn.ModuleDict):
    """Holds a reference ``nn.Sequential``'s parameterized members under their indices ("0", "1", ...); integer
    indexing works as on the Sequential (``block.branch1[0]``)."""

    def __getitem__(self, key):
        return super().__getitem__(str(key))


def set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Register ``module`` at ``dotted`` (e.g. ``"branch1.0"``), creating ModuleDict containers on the way, so
    that state-dict keys match the reference implementation's ``nn.Sequential`` layout."""
    parts = dotted.split(".")
    node = root
    for p in parts[:-1]:
        if p not in node._modules:
            node.add_module(p, _Container())
        node = node._modules[p]
    node.add_module(parts[-1], module)


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    node = root
    for p in dotted.split("."):
        node = node._modules[p]
    return node


def make_layer(layer: Conv, in_channels: int, eps: float = 1e-3) -> nn.Module:
    if layer.bn:
        return ConvBNAct(
            in_channels, layer.out, layer.kernel, layer.stride, layer.padding, eps=eps, act=layer.act
        )
    return nn.Conv2d(
        in_channels, layer.out, layer.kernel, stride=layer.stride, padding=layer.padding, bias=True
    )


@dataclass
class _Leaf:
    lo: int
    hi: int


@dataclass
class _Plan:
    """Precomputed structure of a block: leaf channel ranges and the horizontal-fusion group."""

    leaves: list = field(default_factory=list)  # per top-level branch: _Leaf, or a list of _Leaf for a fork
    out_channels: int = 0
    hfuse: list = field(default_factory=list)  # indices of top-level branches fused at their first 1x1
    leaf_convs: list = field(default_factory=list)  # the Conv ending each leaf that does not end in a Pool
    convless_leaf: bool = False  # a leaf with no conv on its path (a pool of the block input, or the input)


# ----------------------------------------------------------------------------------------------------------
# The block module
# ----------------------------------------------------------------------------------------------------------
class InceptionBlock(nn.Module):
    """Executes one :class:`Block` table. ``in_channels`` is the channel count of the block input."""

    def __init__(self, in_channels: int, spec: Block, eps: float = 1e-3, hfuse: bool = True):
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        plan = _Plan()
        offset = 0
        for br in spec.branches:
            c = self._build_chain(br.layers, in_channels, eps)
            if br.fork:
                sub = []
                for fb in br.fork:
                    fc = self._build_chain(fb.layers, c, eps)
                    sub.append(_Leaf(offset, offset + fc))
                    offset += fc
                plan.leaves.append(sub)
            else:
                plan.leaves.append(_Leaf(offset, offset + c))
                offset += c
        plan.out_channels = offset
        for br in spec.branches:
            trunk = br.layers if br.fork else ()  # a fork's leaves run the shared trunk first
            for chain in [fb.layers for fb in br.fork] if br.fork else [br.layers]:
                if not chain or not isinstance(chain[-1], Pool):
                    plan.leaf_convs.append(chain[-1] if chain else None)
                if not any(isinstance(layer, Conv) for layer in (*trunk, *chain)):
                    plan.convless_leaf = True
        if spec.merge == "residual":
            if spec.proj is None or spec.proj.bn:
                raise ValueError("a residual block needs a linear (bn=False) up-projection `proj`")
            set_submodule(self, spec.proj.name, make_layer(spec.proj, offset, eps))
            if spec.proj.out != in_channels:
                raise ValueError(
                    f"residual up-projection gives {spec.proj.out} channels, block input has {in_channels}"
                )
        # Horizontal fusion: top-level branches whose first layer is a stride-1, unpadded 1x1 ConvBNAct reading x.
        firsts = [
            i for i, br in enumerate(spec.branches)
            if br.layers and isinstance(br.layers[0], Conv) and br.layers[0].bn
            and _pair(br.layers[0].kernel) == (1, 1) and _pair(br.layers[0].stride) == (1, 1)
            and _pair(br.layers[0].padding) == (0, 0)
        ]  # fmt: skip
        leaf_firsts = [i for i in firsts if len(spec.branches[i].layers) == 1 and not spec.branches[i].fork]
        if hfuse and len(firsts) >= 2 and len(leaf_firsts) <= 1:
            # the (at most one) leaf goes first: its channels land in the block output, the rest in a temporary
            plan.hfuse = leaf_firsts + [i for i in firsts if i not in leaf_firsts]
        self.plan = plan
        self._hcache = _VersionCache()

    def _build_chain(self, layers, c: int, eps: float) -> int:
        """Register the chain's conv modules; returns the chain's output channel count."""
        for layer in layers:
            if isinstance(layer, Conv):
                set_submodule(self, layer.name, make_layer(layer, c, eps))
                c = layer.out
        return c

    @property
    def out_channels(self) -> int:
        return self.spec.proj.out if self.spec.merge == "residual" else self.plan.out_channels

    def out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output (H, W) for an input of ``hw``, computed once per input size (the table never changes)."""
        known = self.__dict__.setdefault("_out_hw_of", {})
        res = known.get(hw)
        if res is None:
            res = known[hw] = out_hw(self.spec, tuple(hw))
        return res

    # -------------------------------------------------------------------------------------------- reference
    def _run_ref(self, layers, x):
        for layer in layers:
            if isinstance(layer, Pool):
                x = _pool(layer, x)
            elif layer.bn:
                x = self._layer(layer)(x, reference=True)
            else:
                x = self._layer(layer)(x)
        return x

    def _layer(self, layer: Conv):
        return get_submodule(self, layer.name)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for br in self.spec.branches:
            y = self._run_ref(br.layers, x)
            if br.fork:
                outs.extend(self._run_ref(fb.layers, y) for fb in br.fork)
            else:
                outs.append(y)
        cat = reference.concat(outs)
        if self.spec.merge == "concat":
            return cat
        y = x + self.spec.scale * self._layer(self.spec.proj)(cat)
        return F.relu(y) if self.spec.act else y

    # -------------------------------------------------------------------------------------------- fused
    def _run_chain(self, layers, x, dest):
        """Run a chain; the last layer writes into ``dest`` (a channel slice) when given."""
        for j, layer in enumerate(layers):
            last = j == len(layers) - 1
            target = dest if last else None
            if isinstance(layer, Conv):
                x = self._layer(layer)(x, out=target)
            else:
                x = _pool(layer, x, fused=True, out=target, owner=self)
        return x

    def _fused_1x1(self):
        """Concatenated weight and folded (scale, bias) of the horizontally fused 1x1 convs (eval only)."""
        mods = [self._layer(self.spec.branches[i].layers[0]) for i in self.plan.hfuse]
        tensors = [t for m in mods for t in (m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean,
                                                 m.bn.running_var)]  # fmt: skip

        def compute():
            ks = [m.out_channels for m in mods]
            w0 = mods[0].conv.weight
            weight = torch.empty((sum(ks), *w0.shape[1:]), device=w0.device, dtype=w0.dtype)
            scale = torch.empty(sum(ks), device=w0.device, dtype=torch.float32)
            bias = torch.empty_like(scale)
            lo = 0
            for m, k in zip(mods, ks):
                s, b = m.folded()
                weight[lo : lo + k].copy_(m.conv.weight)
                scale[lo : lo + k].copy_(s)
                bias[lo : lo + k].copy_(b)
                lo += k
            return weight, scale, bias, ks

        return self._hcache.get(tensors, compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ac = amp.dtype_for(x)
        if dispatch.is_reference(x) or (ac not in (None, x.dtype) and self._promotes()):
            return self.forward_reference(x)
        x = amp.cast(x, ac)  # under autocast every conv of the block runs in its dtype (ops.amp), so its buffers too
        x = (
            x
            if x.is_contiguous(memory_format=torch.channels_last)
            else x.contiguous(memory_format=torch.channels_last)
        )
        hw = self.out_hw(tuple(x.shape[-2:]))
        grad = _needs_grad(self, x)
        # Every leaf writes its slice of one preallocated output -- with autograd too, where each leaf's last op
        # (the fused conv → BN → ReLU, or a pool) writes its slice inside its own autograd node and _SliceJoin
        # ties the slices to the buffer (no copy; its backward hands each leaf a strided view of the block
        # gradient). Leaves whose last op cannot write in place under autograd (frozen or synchronized BN, a conv
        # bias, traced code) produce their own tensors, which _SliceMerge copies into a new buffer: an in-place
        # write recorded by autograd would make it clone the whole gradient for every slice.
        direct = not grad or self._leaves_write_in_place(x)
        out = _new_like(x, self.plan.out_channels, hw) if direct else None
        leaf_outs = []
        started = {}
        if self.plan.hfuse and not self.training and not grad:
            started = self._run_hfused(x, out, ac)
        for i, br in enumerate(self.spec.branches):
            leaf = self.plan.leaves[i]
            layers = br.layers
            inp = x
            if i in started:
                inp, layers = started[i], layers[1:]
                if not layers and not br.fork:
                    continue  # the fused GEMM already wrote this leaf's slice
            if br.fork:
                y = self._run_chain(layers, inp, None) if layers else inp
                for fb, fl in zip(br.fork, leaf):
                    leaf_outs.append(self._run_chain(fb.layers, y, out[:, fl.lo : fl.hi] if direct else None))
            else:
                leaf_outs.append(self._run_chain(layers, inp, out[:, leaf.lo : leaf.hi] if direct else None))
        if grad:
            out = _SliceJoin.apply(out, *leaf_outs) if direct else _SliceMerge.apply(hw, *leaf_outs)
            parts, lo = [], 0
            for t in leaf_outs:
                parts.append((lo, lo + t.shape[1], t))
                lo += t.shape[1]
            # the next block saves the leaves' recipes (their pre-BN outputs), not this buffer
            _recompute.attach(out, *_recompute.concat(parts, out))
        if self.spec.merge == "concat":
            return out
        proj = self._layer(self.spec.proj)
        return conv_ops.conv2d(out, proj.weight, bias=proj.bias, residual=x, residual_scale=self.spec.scale,
                               activation="relu" if self.spec.act else None)  # fmt: skip

    def _promotes(self) -> bool:
        """Whether, under autocast, eager's type promotion gives this block's output the dtype of an input that
        is not in the autocast dtype: a residual sum with x, or a leaf without a conv (a pool of x) concatenated
        with conv outputs. Such a call runs the reference path, so its dtypes are eager's; inside a network
        every block's input is a conv output, in the autocast dtype already."""
        return self.spec.merge != "concat" or self.plan.convless_leaf

    def _leaves_write_in_place(self, x) -> bool:
        """Whether every leaf's last op writes its slice of the block output inside its own autograd node."""
        return conv_ops._eager_direct(x) and all(
            c is not None and c.bn and self._layer(c).writes_slice_under_autograd(x) for c in self.plan.leaf_convs
        )

    def _run_hfused(self, x, out, ac):
        """One GEMM for the sibling 1x1 convs on x (in the autocast dtype ``ac`` already, where not None); returns
        {branch index: its output (a slice)}."""
        order = self.plan.hfuse
        first_is_leaf = (
            len(self.spec.branches[order[0]].layers) == 1 and not self.spec.branches[order[0]].fork
        )
        started = {}
        if first_is_leaf and conv_ops._eager_direct(x):
            mods = [self._layer(self.spec.branches[i].layers[0]) for i in order]
            ks = [m.out_channels for m in mods]
            leaf = self.plan.leaves[order[0]]
            dest = out[:, leaf.lo : leaf.hi]
            tmp = _new_like(x, sum(ks[1:]), x.shape[-2:])
            with device_guard(x):  # the launchers run on the current CUDA device: make it x's
                self._hfused_plan(x, dest, tmp, mods, ac)(x, dest, tmp)
            started[order[0]] = dest
            lo = 0
            for i, k in zip(order[1:], ks[1:]):
                started[i] = tmp[:, lo : lo + k]
                lo += k
        else:
            # no leaf among the fused convs, or a traced call (torch.compile): one GEMM into a temporary
            weight, scale, bias, ks = self._fused_1x1()
            tmp = conv_ops.conv2d(x, weight, scale=scale, bias=bias, activation="relu")
            lo = 0
            for i, k in zip(order, ks):
                started[i] = tmp[:, lo : lo + k]
                lo += k
            if first_is_leaf:
                leaf = self.plan.leaves[order[0]]
                started[order[0]] = out[:, leaf.lo : leaf.hi].copy_(started[order[0]])
        return started


    def _hfused_plan(self, x, dest, tmp, mods, ac):
        """The fused 1x1 GEMM writing the leaf's slice ``dest`` and the temporary ``tmp``, decided once per input
        signature (``ops.conv.plan_forward``) until the backend or a tensor of the fused convs changes; while a
        dispatch recording runs, or for an empty batch, the unplanned call. ``ac``: the autocast dtype (the fused
        weight is cast to it) or None."""
        if dispatch.recording_active() or not conv_ops.plannable(x):
            weight, scale, bias, _ = self._fused_1x1()
            weight = amp.cast(weight, ac)
            return lambda x, dest, tmp: conv_ops.conv_forward(
                x, weight, scale, bias, None, (1, 1), (0, 0, 0, 0), 1.0, True, dest, out2=tmp
            )
        key = (x.shape, x.stride(), x.dtype, x.device, dest.stride(), dispatch.requested(), dispatch.generation(),
               torch.backends.cudnn.allow_tf32, ac,
               versions(*(t for m in mods for t in (m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean,
                                                    m.bn.running_var))))  # fmt: skip
        plans = plans_of(self)
        plan = plans.get(key)
        if plan is None:
            weight, scale, bias, _ = self._fused_1x1()
            plan = plans.put(key, conv_ops.plan_forward(x, amp.cast(weight, ac), scale=scale, bias=bias, activation="relu",
                                                        out=dest, out2=tmp))  # fmt: skip
        return plan


class _SliceJoin(torch.autograd.Function):
    """The block output ``buf`` whose channel slices the leaves (inputs after ``buf``, in channel order) already
    wrote inside their own autograd nodes; backward returns each leaf's gradient as a strided channel view of the
    block gradient (no copy)."""

    @staticmethod
    def forward(ctx, buf, *leaves):
        lo, ranges = 0, []
        for t in leaves:
            ranges.append((lo, lo + t.shape[1]))
            lo += t.shape[1]
        ctx.ranges = ranges
        return buf.detach()  # an autograd-plain alias (an input returned as-is would become a view of it)

    @staticmethod
    def backward(ctx, grad):
        return (None,) + tuple(grad[:, lo:hi] for lo, hi in ctx.ranges)


class _SliceMerge(torch.autograd.Function):
    """Place the leaf outputs (N, C_i, P, Q) side by side in one channels_last buffer; backward returns each
    leaf's gradient as a strided channel view of the block gradient (no copy)."""

    @staticmethod
    def forward(ctx, hw, *leaves):
        ref = leaves[0]
        out = _new_like(ref, sum(t.shape[1] for t in leaves), hw)
        lo = 0
        ranges = []
        for t in leaves:
            out[:, lo : lo + t.shape[1]].copy_(t)
            ranges.append((lo, lo + t.shape[1]))
            lo += t.shape[1]
        ctx.ranges = ranges
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None,) + tuple(grad[:, lo:hi] for lo, hi in ctx.ranges)


def _needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())
