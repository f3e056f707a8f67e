"""``inception_kernels.optimize(model)``: our fused layers inside someone else's model, same function, same tensors.

This module holds :func:`optimize` (exported as ``inception_kernels.optimize``), its report
(:func:`report`, exported as ``inception_kernels.optimize_report``) and the drop-in layers it installs.

    model = timm.create_model("inception_v4", num_classes=37)
    model = inception_kernels.optimize(model)  # keeps training: same Parameters, buffers and state_dict keys

What is replaced (in any model, found by walking its module tree):

* every Inception block of torchvision ``GoogLeNet`` / ``Inception3`` and timm ``InceptionV3`` / ``InceptionV4`` /
  ``InceptionResnetV2`` (the stems' Mixed_3a/4a/5a and the Inception-ResNet residual blocks included) by a block
  engine :class:`~inception_kernels.nn.InceptionBlock` built from the matching zoo table: concat-free (every branch
  writes its channel slice), BN folded in eval, sibling 1×1 convs as one GEMM, the residual sum, scale and ReLU in
  the up-projection's epilogue;
* every other conv → BN → ReLU: torchvision ``BasicConv2d``, timm ``ConvNormAct``, and ``nn.Sequential(Conv2d,
  BatchNorm2d[, ReLU])`` by a fused :class:`~inception_kernels.nn.ConvBNAct` (for the Sequential keeping the member
  names ``0``, ``1``, ``2``).

The new modules hold the user's own ``nn.Conv2d`` modules and the user's ``nn.Parameter`` / buffer objects (a timm
``BatchNormAct2d`` becomes a plain ``nn.BatchNorm2d`` holding the same tensors), so an optimizer built before
``optimize`` keeps working, ``state_dict()`` keys, order and values are unchanged and checkpoints load both ways.
The model's own class, ``forward``, head, aux heads and every module we do not know stay as they are (an unknown
module is reported, never touched). A candidate that does not match what the fused layer computes (an unusual conv,
a BN without running statistics, hooks, a modified block) is left as is, with the reason in the report.

``inplace=False`` (the default) leaves the given model's module tree unchanged: the returned model is a new tree
that shares every module it does not replace, and every Parameter and buffer, with the original (training one
trains the other). ``inplace=True`` swaps the modules inside ``model`` and returns it.

Run-time fallbacks (each layer decides per call): the plain-PyTorch reference ops run when the input dtype has no
kernel (float64), with ``INCEPTION_KERNELS_BACKEND=reference`` or ``auto`` on CPU, while the model is being
exported, for a BN in train mode inside a layer in eval mode, and in training for a conv with a bias (only in a
user's ``Sequential``), a ``SyncBatchNorm``, or a block whose BNs are not all in the block's mode. A frozen BN (eval
inside a training model) in a single conv-BN-ReLU layer is folded into the fused epilogue, with gradients through
the folded scale and bias.

Activations between optimized layers are channels_last (values as before, strides differ): code after the model
that calls ``.view`` on a feature map should call ``.reshape``.

**Export.** ``torch.export``, ``torch.onnx.export`` and ``torch.jit.trace`` of an optimized model record the
reference ops (conv2d, batch_norm, relu, pools, cat): the exported program computes the same function and needs
nothing from this package (ONNX has no operator for our kernels, and an exported graph is meant to run elsewhere).
A one-time warning says so. ``torch.compile`` keeps our ops (registered custom ops, no graph breaks).

**FX.** ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor`` and timm's FX feature extraction
(``timm.models.create_feature_extractor``, ``FeatureGraphNet``) trace an optimized model: on an FX proxy our layers
take their reference forward, plain module and function calls (the user's ``conv`` / ``bn`` modules, relu, pools,
cat), so the graph computes the same function with the same parameters, and node names keep the model's module
paths (``Mixed_5b.branch1x1.conv``, ...; inside a block the table's op order may differ from the original's).
The graph runs those plain ops, not our kernels.

**TorchScript.** ``torch.jit.script`` cannot compile our layers (Triton launches, custom ops); scripting an
optimized model raises one ``RuntimeError`` that says so and what to do instead: script the original model
(``optimize`` leaves it unchanged), or use ``torch.compile`` / ``torch.export`` / ``torch.jit.trace``.

**Unsupported modules.** A conv → BN(→ ReLU) whose conv is grouped, dilated, not zero-padded, larger than 7×7 or
strided by more than 2, or whose tensors live on a device other than CPU / CUDA (meta is accepted), on several
devices, or in a dtype other than float32 / bfloat16 / float16 / float64, is kept as it is; the report
(``verbose=True`` or :func:`report`) gives the reason. A known block holding such a conv is kept too (its fusable
members are still replaced).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .nn.engine import Block, Conv, InceptionBlock, Pool, set_submodule
from .nn.layers import ConvBNAct
from .nn.residual import _KERNEL_DTYPES, _has_hooks, exporting, fusable_conv_reason
from .ops._args import pair as _pair
from .ops.conv import conv2d

__all__ = [
    "optimize",
    "report",
    "OptimizeReport",
    "DropInConvBNAct",
    "SequentialConvBNAct",
    "DropInInceptionBlock",
]


# ----------------------------------------------------------------------------------------------------------
# Run-time fallback rules shared by the drop-in layers
# ----------------------------------------------------------------------------------------------------------
_export_warned = False


def _use_reference(x: torch.Tensor) -> bool:
    """Reference ops for this call: FX symbolic tracing, no kernel for the dtype, or the model is being exported."""
    global _export_warned
    if isinstance(x, torch.fx.Proxy):
        # torch.fx.symbolic_trace, torchvision's create_feature_extractor, timm's FX feature extraction: the
        # reference forward is plain module and function calls without branches on tensor values, so the graph
        # records conv, batch_norm, relu, pools and cat -- the same function, runnable without this package
        return True
    if x.dtype not in _KERNEL_DTYPES:
        return True
    if exporting():
        if not _export_warned and not torch.compiler.is_dynamo_compiling():
            _export_warned = True
            warnings.warn(
                "inception_kernels: exporting an optimized model (torch.export / ONNX / jit.trace) records the "
                "reference PyTorch ops (conv2d, batch_norm, relu, cat) instead of our fused kernels; the exported "
                "program computes the same function and does not depend on inception_kernels",
                stacklevel=3,
            )
        return True
    return False


class _NotScriptable:
    """``torch.jit.script`` of a model holding our drop-in layers stops with one clear error (TorchScript cannot
    compile their forwards: Triton launches, custom ops, plans); it calls this hook on every submodule first."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile {type(self).__name__}, a layer installed by "
            "inception_kernels.optimize: its forward runs Triton kernels and torch.library custom ops, which "
            "TorchScript cannot represent. Script the model before optimize() (optimize(model) leaves `model` "
            "itself unchanged), or use torch.compile(optimized) to keep the fused kernels, or torch.export / "
            "torch.jit.trace / torch.fx.symbolic_trace, which record the equivalent plain PyTorch ops."
        )


class DropInConvBNAct(_NotScriptable, ConvBNAct):
    """A :class:`ConvBNAct` around a user's ``nn.Conv2d`` and BN (``optimize``'s replacement of ``BasicConv2d`` /
    ``ConvNormAct``). Beyond ``ConvBNAct``: a conv bias is folded into the epilogue in eval (in train mode such a
    layer runs the reference ops), and the reference ops serve the calls listed in the module docstring."""

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool = True) -> DropInConvBNAct:
        """Wrap existing modules: the layer holds ``conv`` and ``bn`` themselves (no copy)."""
        with torch.device("meta"):
            layer = cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                        tuple(conv.padding), eps=bn.eps, act=act)  # fmt: skip
        layer._adopt(conv, bn)
        return layer

    def _adopt(self, conv: nn.Module, bn: nn.Module) -> None:
        self.conv = conv
        self.bn = bn

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, bias = super().folded()
        if self.conv.bias is not None:
            bias = bias + scale * self.conv.bias.float()
        return scale, bias

    def writes_slice_under_autograd(self, x: torch.Tensor) -> bool:
        return self.training and not _use_reference(x) and super().writes_slice_under_autograd(x)

    def forward(
        self, x: torch.Tensor, out: torch.Tensor | None = None, reference: bool = False
    ) -> torch.Tensor:
        bn = self.bn
        if reference or _use_reference(x) or (not self.training and bn.training):
            return super().forward(x, out=out, reference=True)
        if self.training and not bn.training:
            # a frozen BN (eval inside a training model) is a per-channel affine map: the folded epilogue, with
            # autograd through the folded scale and bias to the BN's weight and bias
            scale, bias = self.folded()
            conv = self.conv
            return conv2d(x, conv.weight, stride=_pair(conv.stride), padding=_pair(conv.padding), scale=scale,
                          bias=bias, activation="relu" if self.act else None, out=out)  # fmt: skip
        if self.training and (self.conv.bias is not None or type(bn) is not nn.BatchNorm2d):
            return super().forward(x, out=out, reference=True)  # conv bias or SyncBatchNorm: their own ops
        return super().forward(x, out=out)


class SequentialConvBNAct(DropInConvBNAct):
    """``optimize``'s replacement of ``nn.Sequential(Conv2d, BatchNorm2d[, ReLU])``: the same members under the
    same names (``0``, ``1``, ``2``), so state-dict keys and ``layer[0]`` indexing are unchanged."""

    conv = property(lambda self: self._modules["0"])
    bn = property(lambda self: self._modules["1"])

    def _adopt(self, conv: nn.Module, bn: nn.Module) -> None:
        self._modules.clear()
        self.add_module("0", conv)
        self.add_module("1", bn)
        if self.act:
            self.add_module("2", nn.ReLU())

    def __getitem__(self, idx: int) -> nn.Module:
        return list(self._modules.values())[idx]

    def __len__(self) -> int:
        return len(self._modules)


class DropInInceptionBlock(_NotScriptable, InceptionBlock):
    """An :class:`InceptionBlock` holding a torchvision / timm block's own convs, BNs and tensors (``optimize``'s
    replacement of an Inception block); the reference ops serve the calls listed in the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_reference(x) or not self._bn_modes_match():
            return self.forward_reference(x)
        return super().forward(x)

    def _bn_modes_match(self) -> bool:
        """The engine's fused paths assume every BN is in the block's mode (and, training, a plain BatchNorm2d):
        a frozen BN in a training block, or a SyncBatchNorm, runs the reference ops (their own modules)."""
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                if m.bn.training != self.training or (self.training and type(m.bn) is not nn.BatchNorm2d):
                    return False
        return True


# ----------------------------------------------------------------------------------------------------------
# Recognising conv → BN → ReLU
# ----------------------------------------------------------------------------------------------------------
def _qual(m: nn.Module) -> str:
    t = type(m)
    return f"{t.__module__}.{t.__qualname__}"


_TV_BASIC = ("torchvision.models.googlenet.BasicConv2d", "torchvision.models.inception.BasicConv2d")
_TIMM_CNA = "timm.layers.conv_bn_act.ConvNormAct"
_TIMM_BNACT = "timm.layers.norm_act.BatchNormAct2d"


@dataclass
class _ConvBN:
    conv: nn.Conv2d
    bn: nn.Module
    act: bool
    kind: str  # "named" (conv/bn) or "sequential" (0/1/2)


def _bn_reason(bn: nn.Module, channels: int) -> str | None:
    q = _qual(bn)
    if type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm) and q != _TIMM_BNACT:
        return f"norm layer {type(bn).__name__} is not BatchNorm2d"
    if bn.weight is None or bn.bias is None:
        return "BatchNorm without affine parameters"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm without running statistics"
    if bn.num_features != channels:
        return f"BatchNorm has {bn.num_features} features, the conv {channels} outputs"
    if _has_hooks(bn):
        return "the BatchNorm has hooks"
    if q == _TIMM_BNACT:
        if type(bn.drop) is not nn.Identity:
            return f"BatchNormAct2d with drop layer {type(bn.drop).__name__}"
        if type(bn.act) not in (nn.ReLU, nn.Identity):
            return f"activation {type(bn.act).__name__} (the fused layer has ReLU or none)"
    return None


# where our layers run (meta: shapes only, for deferred initialization)
_DEVICE_TYPES = ("cpu", "cuda", "meta")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # float64: the reference ops


def _placement_reason(m: nn.Module) -> str | None:
    """Why ``m``'s parameters and buffers cannot run on our layers: a device other than CPU / CUDA (/ meta),
    tensors on several devices, or a dtype other than float32 / bfloat16 / float16 / float64 (None when they can)."""
    tensors = [t for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point() or t.is_complex()]
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"its tensors are on several devices ({', '.join(sorted(map(str, devices)))})"
    if devices and next(iter(devices)).type not in _DEVICE_TYPES:
        return f"device {next(iter(devices))} (our layers run on CPU and CUDA)"
    bad = sorted({str(t.dtype) for t in tensors if t.dtype not in _DTYPES})
    if bad:
        return f"dtype {', '.join(bad)} (our layers take float32, bfloat16, float16 and float64)"
    return None


def _conv_bn(m: nn.Module) -> _ConvBN | str | None:
    """The parts of a conv → BN → ReLU module; a reason string when it is one we cannot fuse; None otherwise."""
    q = _qual(m)
    if q in _TV_BASIC:
        if set(m._modules) != {"conv", "bn"}:
            return f"modified BasicConv2d (members {list(m._modules)})"
        parts = _ConvBN(m.conv, m.bn, True, "named")
    elif q == _TIMM_CNA:
        if set(m._modules) - {"conv", "bn", "aa"} or getattr(m, "aa", None) is not None:
            return "ConvNormAct with anti-aliasing or extra members"
        bn = m.bn
        if _qual(bn) != _TIMM_BNACT:
            return f"ConvNormAct with norm layer {type(bn).__name__}"
        parts = _ConvBN(m.conv, bn, type(bn.act) is nn.ReLU, "named")
    elif (
        type(m) is nn.Sequential
        and len(m) in (2, 3)
        and type(m[0]) is nn.Conv2d
        and isinstance(m[1], nn.BatchNorm2d)
        and (len(m) == 2 or type(m[2]) is nn.ReLU)
    ):
        parts = _ConvBN(m[0], m[1], len(m) == 3, "sequential")
    else:
        return None
    if any(_has_hooks(sub) for sub in m.modules()):
        return "the module or a member has hooks"
    reason = (fusable_conv_reason(parts.conv) or _bn_reason(parts.bn, parts.conv.out_channels)
              or _placement_reason(m))  # fmt: skip
    return reason or parts


def _plain_bn(bn: nn.Module) -> nn.Module:
    """An ``nn.BatchNorm2d`` computing what ``bn``'s normalization computes, holding ``bn``'s own tensors."""
    if _qual(bn) != _TIMM_BNACT:
        return bn
    with torch.device("meta"):
        new = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=True,
                             track_running_stats=True)  # fmt: skip
    new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def _fused_conv_bn(m: nn.Module, parts: _ConvBN) -> DropInConvBNAct:
    cls = SequentialConvBNAct if parts.kind == "sequential" else DropInConvBNAct
    layer = cls.from_modules(parts.conv, _plain_bn(parts.bn), act=parts.act)
    layer.training = m.training  # only the wrapper's own flag: the user's conv and BN keep theirs
    return layer


# ----------------------------------------------------------------------------------------------------------
# Recognising Inception blocks: each known class -> its zoo table, read off the module's channel counts
# ----------------------------------------------------------------------------------------------------------
def _out(m: nn.Module, name: str) -> int:
    return m.get_submodule(name).conv.out_channels


def _googlenet_block(m):
    from .models.googlenet import inception_block

    k5 = m.get_submodule("branch3.1").conv.kernel_size
    return inception_block(_out(m, "branch1"), _out(m, "branch2.0"), _out(m, "branch2.1"), _out(m, "branch3.0"),
                           _out(m, "branch3.1"), _out(m, "branch4.1"), paper_5x5=tuple(k5) == (5, 5))  # fmt: skip


def _v3(fn, *names):
    def make(m):
        from .models import inception_v3 as v3

        return getattr(v3, fn)(*(_out(m, n) for n in names))

    return make


def _v4(fn):
    def make(m):
        from .models import inception_v4 as v4

        return getattr(v4, fn)()

    return make


def _reduction_a(m):
    from .models.inception_v4 import reduction_a

    return reduction_a(_out(m, "branch1.0"), _out(m, "branch1.1"), _out(m, "branch1.2"), _out(m, "branch0"))


def _residual(fn, optional_act: bool):
    """Block35 / Block17 always apply their ReLU (``act``; ``relu`` in older timm); Block8's ``relu`` may be None."""

    def make(m):
        from .models import inception_resnet as ir

        scale = m.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise _Mismatch(f"residual scale of type {type(scale).__name__}")
        act = m._modules.get("act", m._modules.get("relu"))
        if act is None and not optional_act:
            raise _Mismatch("no residual activation module")
        if act is not None and type(act) is not nn.ReLU:
            raise _Mismatch(f"residual activation {type(act).__name__}")
        return getattr(ir, fn)(m.conv2d.out_channels, float(scale), act is not None)

    return make


def _irv2(fn):
    def make(m):
        from .models import inception_resnet as ir

        return getattr(ir, fn)()

    return make


_TV = "torchvision.models."
_TM = "timm.models."
_V3_BLOCKS = {
    "InceptionA": _v3("block_a", "branch_pool"),
    "InceptionB": _v3("block_b"),
    "InceptionC": _v3("block_c", "branch7x7_1"),
    "InceptionD": _v3("block_d"),
    "InceptionE": _v3("block_e"),
}
BLOCKS = {
    _TV + "googlenet.Inception": _googlenet_block,
    **{_TV + "inception." + k: v for k, v in _V3_BLOCKS.items()},
    **{_TM + "inception_v3." + k: v for k, v in _V3_BLOCKS.items()},
    _TM + "inception_v4.Mixed3a": _v4("mixed_3a"),
    _TM + "inception_v4.Mixed4a": _v4("mixed_4a"),
    _TM + "inception_v4.Mixed5a": _v4("mixed_5a"),
    _TM + "inception_v4.InceptionA": _v4("inception_a"),
    _TM + "inception_v4.ReductionA": _reduction_a,
    _TM + "inception_v4.InceptionB": _v4("inception_b"),
    _TM + "inception_v4.ReductionB": _v4("reduction_b"),
    _TM + "inception_v4.InceptionC": _v4("inception_c"),
    _TM + "inception_resnet_v2.Mixed_5b": _irv2("mixed_5b"),
    _TM + "inception_resnet_v2.Mixed_6a": _reduction_a,
    _TM + "inception_resnet_v2.Mixed_7a": _irv2("reduction_b_v2"),
    _TM + "inception_resnet_v2.Block35": _residual("block35", False),
    _TM + "inception_resnet_v2.Block17": _residual("block17", False),
    _TM + "inception_resnet_v2.Block8": _residual("block8", True),
}
"""Known block classes (``module.qualname``) -> a function of the instance returning its :class:`Block` table."""


class _Mismatch(Exception):
    """The module differs from what its table describes (the message says how)."""


def _spec_convs(spec: Block) -> list[Conv]:
    out = []
    for br in spec.branches:
        out += [la for la in br.layers if isinstance(la, Conv)]
        for fb in br.fork:
            out += [la for la in fb.layers if isinstance(la, Conv)]
    if spec.proj is not None:
        out.append(spec.proj)
    return out


def _spec_pools(spec: Block) -> list[Pool]:
    out = []
    for br in spec.branches:
        out += [la for la in br.layers if isinstance(la, Pool)]
        for fb in br.fork:
            out += [la for la in fb.layers if isinstance(la, Pool)]
    return out


def _pool_of(m: nn.Module) -> Pool | None:
    def one(v):
        a, b = _pair(v)
        if a != b:
            raise _Mismatch(f"non-square pool {v}")
        return a

    if type(m) is nn.MaxPool2d:
        if one(m.dilation) != 1 or m.return_indices:
            raise _Mismatch("max-pool with dilation or indices")
        return Pool("max", one(m.kernel_size), one(m.stride), one(m.padding), ceil_mode=m.ceil_mode)
    if type(m) is nn.AvgPool2d:
        if m.divisor_override is not None:
            raise _Mismatch("avg-pool with divisor_override")
        return Pool(
            "avg", one(m.kernel_size), one(m.stride), one(m.padding), m.count_include_pad, m.ceil_mode
        )
    return None


def _check_layout(m: nn.Module, spec: Block, convs: list[Conv]) -> None:
    """Every submodule of ``m`` is one the table accounts for (convs, their containers, pools matching the table's,
    the residual ReLU); raises :class:`_Mismatch` otherwise."""
    conv_names = {c.name for c in convs}
    containers = {c.name.rsplit(".", 1)[0] for c in convs if "." in c.name}
    containers |= {n.rsplit(".", i)[0] for n in containers for i in range(1, n.count(".") + 1)}
    pools = []
    inside_conv = tuple(f"{n}." for n in conv_names)
    for name, sub in m.named_modules():
        if name == "" or name.startswith(inside_conv):
            continue
        if _has_hooks(sub):
            raise _Mismatch(f"submodule {name!r} has hooks")
        if name in conv_names:
            continue
        if name in containers:
            if type(sub) is not nn.Sequential:
                raise _Mismatch(f"container {name!r} is a {type(sub).__name__}")
            continue
        pool = _pool_of(sub)
        if pool is not None:
            pools.append(pool)
        elif not (spec.merge == "residual" and name in ("act", "relu") and type(sub) is nn.ReLU):
            raise _Mismatch(f"unexpected submodule {name!r} ({type(sub).__name__})")
    if pools and pools != _spec_pools(spec):
        raise _Mismatch(f"pools {pools} differ from the table's {_spec_pools(spec)}")


def _build_block(m: nn.Module, spec: Block) -> DropInInceptionBlock:
    convs = _spec_convs(spec)
    if _has_hooks(m):
        raise _Mismatch("the block has hooks")
    placement = _placement_reason(m)
    if placement:
        raise _Mismatch(placement)
    _check_layout(m, spec, convs)
    theirs = {}
    for c in convs:
        try:
            theirs[c.name] = m.get_submodule(c.name)
        except AttributeError:
            raise _Mismatch(f"no submodule {c.name!r}") from None
    first = next(br.layers[0] for br in spec.branches if br.layers and isinstance(br.layers[0], Conv))
    cin = _conv_module(theirs[first.name]).in_channels
    with torch.device("meta"):
        blk = DropInInceptionBlock(cin, spec)
    # train/eval flags of our own modules from the user's module of the same name (before adopting the user's
    # convs and BNs, whose flags stay as they are: a frozen BN stays frozen)
    for sub_name, sub in blk.named_modules():
        try:
            sub.training = m.get_submodule(sub_name).training
        except AttributeError:
            sub.training = m.training
    for c in convs:
        mod = theirs[c.name]
        if c.bn:
            parts = _conv_bn(mod)
            if not isinstance(parts, _ConvBN) or parts.kind != "named":
                raise _Mismatch(f"{c.name!r}: {parts or type(mod).__name__ + ' is not conv-BN-ReLU'}")
            if parts.act != c.act or parts.conv.bias is not None:
                raise _Mismatch(f"{c.name!r}: activation or conv bias differs from the table")
            conv = parts.conv
        else:
            conv = mod
            reason = fusable_conv_reason(conv)
            if reason or conv.bias is None:
                raise _Mismatch(f"{c.name!r}: {reason or 'the up-projection has no bias'}")
        if (tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)) != (
            _pair(c.kernel),
            _pair(c.stride),
            _pair(c.padding),
        ):
            raise _Mismatch(
                f"{c.name!r}: kernel/stride/padding {conv.kernel_size}/{conv.stride}/{conv.padding} differ from "
                f"the table's {c.kernel}/{c.stride}/{c.padding}"
            )
        if c.bn:
            blk.get_submodule(c.name)._modules.update(conv=conv, bn=_plain_bn(parts.bn))
        else:
            set_submodule(blk, c.name, conv)
    ours = blk.state_dict(keep_vars=True)
    ref = m.state_dict(keep_vars=True)
    if list(ours) != list(ref) or any(ours[k] is not ref[k] for k in ref):
        raise _Mismatch("its parameters differ from the table's")
    return blk


def _conv_module(mod: nn.Module) -> nn.Conv2d:
    return mod.conv if hasattr(mod, "conv") else mod


# ----------------------------------------------------------------------------------------------------------
# The walk
# ----------------------------------------------------------------------------------------------------------
@dataclass
class OptimizeReport:
    """What ``optimize`` did: ``replaced`` = [(name, old type, new type)], ``kept`` = [(name, type, reason)] for
    every module that stays as it was and either owns parameters or buffers (unknown to us) or was a candidate we
    could not fuse."""

    replaced: list = field(default_factory=list)
    kept: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"inception_kernels.optimize: {len(self.replaced)} modules replaced, {len(self.kept)} kept as is"
        ]
        w = max((len(n or "<model>") for n, *_ in self.replaced + self.kept), default=0)
        if self.replaced:
            lines.append("  replaced:")
            lines += [f"    {n or '<model>':<{w}}  {a} -> {b}" for n, a, b in self.replaced]
        if self.kept:
            lines.append("  kept (they run as before):")
            lines += [f"    {n or '<model>':<{w}}  {a}: {r}" for n, a, r in self.kept]
        return "\n".join(lines)


def _shallow_copy(m: nn.Module) -> nn.Module:
    """A new module object sharing ``m``'s attributes, with its own registries (children, parameters, buffers,
    hooks), so that swapping a child of the copy leaves ``m`` untouched."""
    new = type(m).__new__(type(m))
    d = dict(m.__dict__)
    for k, v in d.items():
        if isinstance(v, (dict, set, list)):
            d[k] = type(v)(v) if not isinstance(v, dict) else v.copy()
    new.__dict__.update(d)
    return new


def _replacement(m: nn.Module, name: str, report: OptimizeReport) -> nn.Module | None:
    q = _qual(m)
    make_spec = BLOCKS.get(q)
    if make_spec is not None:
        try:
            blk = _build_block(m, make_spec(m))
        except (_Mismatch, AttributeError, ValueError) as e:
            report.kept.append((name, type(m).__name__, f"not replaced: {e}"))
            return None
        report.replaced.append((name, type(m).__name__, f"{type(blk).__name__} ({len(blk.spec.branches)} "
                                                         f"branches, {blk.spec.merge})"))  # fmt: skip
        return blk
    parts = _conv_bn(m)
    if isinstance(parts, str):
        report.kept.append((name, type(m).__name__, f"not replaced: {parts}"))
        return None
    if parts is not None:
        layer = _fused_conv_bn(m, parts)
        report.replaced.append((name, type(m).__name__, type(layer).__name__))
        return layer
    return None


def _walk(m: nn.Module, name: str, report: OptimizeReport, inplace: bool, memo: dict) -> nn.Module:
    if id(m) in memo:
        return memo[id(m)]
    if isinstance(m, (ConvBNAct, InceptionBlock)):  # already ours
        memo[id(m)] = m
        return m
    new = _replacement(m, name, report)
    if new is None:
        changed = {}
        for child_name, child in m._modules.items():
            if child is None:
                continue
            c = _walk(child, f"{name}.{child_name}" if name else child_name, report, inplace, memo)
            if c is not child:
                changed[child_name] = c
        if changed:
            new = m if inplace else _shallow_copy(m)
            new._modules.update(changed)
        else:
            new = m
            own = list(m._parameters.values()) + list(m._buffers.values())
            if any(t is not None for t in own) and not (report.kept and report.kept[-1][0] == name):
                report.kept.append((name, type(m).__name__, "no fused replacement"))
    memo[id(m)] = new
    return new


def optimize(
    model: nn.Module,
    *,
    inplace: bool = False,
    verbose: bool = False,
    backend: str | None = None,
    cuda_graph: bool = False,
) -> nn.Module:
    """Run ``model``'s Inception blocks through the block engine and its conv → BN → ReLU layers through the
    fused conv op; returns the optimized model (:mod:`inception_kernels.convert` says what is replaced and
    shared, and how export, FX tracing and TorchScript behave). :func:`report` (``inception_kernels.optimize_report``)
    of the returned model lists what was replaced and what was kept, with the reason.

    Args:
        model: any ``nn.Module``; torchvision ``GoogLeNet`` / ``Inception3`` and timm ``InceptionV3`` /
            ``InceptionV4`` / ``InceptionResnetV2`` are fully covered (any ``num_classes``, with or without aux
            heads, train or eval, on CPU or CUDA, in float32 / bfloat16 / float16 / float64).
        inplace: swap the modules inside ``model`` (True) or return a new module tree that shares every
            Parameter, buffer and untouched module with ``model``, leaving ``model``'s own tree unchanged (False).
        verbose: print what was replaced and what was kept (with the reason).
        backend: run the optimized model on one backend (``"triton"``, ``"cudnn"``, ``"cuda"``, ``"reference"``,
            ``"auto"``) whatever ``INCEPTION_KERNELS_BACKEND`` says (``ops.dispatch.bind_backend``; eager only);
            None: the environment and the dispatch layer's choice per layer.
        cuda_graph: replay eval forwards under ``torch.no_grad()`` / ``torch.inference_mode()`` on CUDA inputs
            from CUDA graphs, one per input shape (:func:`inception_kernels.graphs.graph_eval`: the model keeps its
            class; other calls, training among them, run as without). For static-shape inference at small batches,
            where launch overhead dominates.

    Returns: the optimized model: same class as ``model`` (unless ``model`` itself is a conv-BN-ReLU or a block),
    same ``state_dict()`` keys and tensors, same function within fp32 rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if backend is not None:
        from .ops import dispatch

        dispatch._check_backend(backend, "backend")  # refuse a bad name before touching the model
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"optimize(cuda_graph=...) must be True or False, got {cuda_graph!r}")
    rep = OptimizeReport()
    out = _walk(model, "", rep, inplace, {})
    if backend is not None:
        dispatch.bind_backend(out, backend)
    if cuda_graph:
        from .graphs import graph_eval

        graph_eval(out)
    _REPORTS[out] = rep
    if verbose:
        print(rep)
    return out


_REPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def report(model: nn.Module) -> OptimizeReport:
    """The :class:`OptimizeReport` of the last ``optimize`` call that returned ``model``."""
    try:
        return _REPORTS[model]
    except KeyError:
        raise ValueError("this model was not returned by inception_kernels.optimize") from None
