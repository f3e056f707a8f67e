"""Layers built on the fused ops: ``ConvBNAct`` (conv → BN → ReLU) and the linear conv of residual up-projections.

State-dict names follow torchvision ``BasicConv2d`` and timm ``ConvNormAct``: ``conv.weight``, ``bn.weight``,
``bn.bias``, ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``.

Three execution modes, chosen per call:
* reference: ``bn(conv(x))`` then ReLU in plain PyTorch (the oracle);
* eval (fused): BN folded into the conv epilogue (``scale = γ/√(var+ε)``, ``bias = β − mean·scale``, cached until a
  parameter or running statistic changes), one kernel writing straight into its destination slice;
* train (fused): our conv with per-tile BN statistics in its epilogue, a finalize kernel (batch mean/var, running
  stats updated exactly like ``nn.BatchNorm2d``), then BN-apply + ReLU written straight into the destination
  (``ops.batchnorm.conv_bn_act``); backward recomputes the ReLU mask from the saved pre-BN output. Under
  ``torch.compile`` train mode runs our registered conv op, then our registered BN ops (statistics with the
  running-stat update, BN-apply + ReLU, their backward); without a Triton device, our conv then ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import amp, dispatch
from ..ops import batchnorm as bn_ops
from ..ops._args import FLOAT_DTYPES
from ..ops._args import pair as _pair
from ..ops._library import traced
from ..ops.conv import _check_no_alias, conv2d, plan_forward, plannable


class _VersionCache:
    """Caches a value computed from tensors until one of them is replaced or modified in place."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, tensors, compute):
        # Never cache a value that autograd must differentiate (it would carry a stale graph), nor under tracing.
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        ):
            return compute()
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if key != self.key:
            self.value, self.key = compute(), key
        return self.value


class _Plans(dict):
    """Execution plans of one module keyed by call signature (a few entries: one per input shape seen). Never
    pickled or deep-copied: a copy starts empty and plans itself on its first call."""

    MAX = 16

    def __reduce__(self):
        return (_Plans, ())

    def put(self, key, plan):
        if len(self) >= self.MAX:
            self.clear()
        self[key] = plan
        return plan


def plans_of(module: nn.Module) -> _Plans:
    """``module``'s plans (created on first use, so a module pickled before plans existed loads and plans too)."""
    plans = module.__dict__.get("_plans")
    if plans is None:
        plans = module.__dict__["_plans"] = _Plans()
    return plans


_MISSING = object()


def member(module: nn.Module, name: str):
    """``module.<name>`` for a parameter, buffer or submodule, read from the module's own tables: the lookup
    ``nn.Module.__getattr__`` makes costs about a microsecond, and a training layer call reads some twenty. A
    name in none of the tables (a parametrization's property, a plain attribute) is read by ``getattr``."""
    v = module._parameters.get(name, _MISSING)
    if v is _MISSING:
        v = module._buffers.get(name, _MISSING)
        if v is _MISSING:
            v = module._modules.get(name, _MISSING)
            if v is _MISSING:
                return getattr(module, name)
    return v


def versions(*tensors):
    """What changes when a tensor is replaced, rebound (``.data = ...``) or written in place."""
    return tuple((id(t), t._version, t.data_ptr()) if t is not None else None for t in tensors)


class ConvBNAct(nn.Module):
    """``relu(bn(conv(x)))`` with BN eps 1e-3 (TF lineage); drop-in for torchvision/timm ``BasicConv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, eps: float = 1e-3,
                 act: bool = True):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.act = act
        self._fold = _VersionCache()

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode BN as a per-channel (scale, bias) in float32."""
        bn = self.bn

        def compute():
            scale = torch.rsqrt(bn.running_var.float() + bn.eps)
            if bn.weight is not None:
                scale = bn.weight.float() * scale
            bias = -bn.running_mean.float() * scale
            return scale, bias if bn.bias is None else bn.bias.float() + bias

        tensors = (bn.running_mean, bn.running_var) + tuple(t for t in (bn.weight, bn.bias) if t is not None)
        return self._fold.get(tensors, compute)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.act else y

    def forward(
        self, x: torch.Tensor, out: torch.Tensor | None = None, reference: bool = False
    ) -> torch.Tensor:
        """x: (N, C, H, W); ``out``: optional channels_last destination (a channel slice of a block output)."""
        # asked, or a dtype only the reference backend takes (float64) while it is in force
        if reference or (x.dtype not in FLOAT_DTYPES and dispatch.is_reference(x)):
            y = self.forward_reference(x)
            return y if out is None else out.copy_(y)
        conv, bn = member(self, "conv"), member(self, "bn")
        activation = "relu" if self.act else None
        ac = amp.dtype_for(x)  # under autocast the conv runs in its dtype, as nn.Conv2d's does (ops.amp)
        x = amp.cast(x, ac)
        plain = member(conv, "bias") is None and type(bn) is nn.BatchNorm2d  # not SyncBatchNorm, no conv bias
        if plain and not bn.training and member(bn, "running_mean") is not None:
            # eval, or a frozen BN (eval-mode BN inside a training model): running statistics, folded into the
            # conv epilogue (differentiable: γ and β get their gradients through scale and bias). A BN without
            # running statistics normalizes with batch statistics in eval mode too, as nn.BatchNorm2d does.
            if not (torch.is_grad_enabled() and (x.requires_grad or self._trainable())):
                plan = self._eval_plan(x, out, activation, ac)
                if plan is not None:
                    if out is not None:
                        _check_no_alias(out, x, None)
                    return plan(x, out)
            scale, bias = self.folded()
            return conv2d(x, conv.weight, stride=_pair(conv.stride), padding=_pair(conv.padding), scale=scale,
                          bias=bias, activation=activation, out=out)  # fmt: skip
        if plain and bn_ops.conv_bn_act_supported(x):
            return self._forward_train_fused(x, out, ac, conv, bn)
        stride, padding = _pair(conv.stride), _pair(conv.padding)
        # (momentum=None averages with 1/num_batches_tracked: a float() of a tensor, which Dynamo cannot trace)
        counts = bn.momentum is not None or not bn.track_running_stats
        if plain and counts and bn_ops.traced_bn_supported(x):
            # traced (torch.compile): our registered ops (conv with the batch statistics in its epilogue and the
            # running-stat update, BN-apply + act, their backward): the eager step's three launches
            gamma, beta, rm, rv, momentum, eps = self._bn_step_args()
            return bn_ops.conv_bn_act(x, conv.weight, gamma, beta, rm, rv, momentum=momentum, eps=eps, stride=stride,
                                      padding=(padding[0], padding[0], padding[1], padding[1]), relu=self.act,
                                      out=out)  # fmt: skip
        # no Triton device, SyncBatchNorm, a conv bias or momentum=None traced: our conv, then the BN module
        y = bn(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding) if conv.bias is not None
               else conv2d(x, conv.weight, stride=stride, padding=padding))  # fmt: skip
        if self.act:
            y = F.relu(y)
        return y if out is None else out.copy_(y)

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in (self.conv.weight, self.bn.weight, self.bn.bias) if p is not None)

    def _eval_plan(self, x, out, activation, ac):
        """The eval forward for this call signature decided once (``ops.conv.plan_forward``: BN folded, weight
        packed, implementation chosen, launch fixed) and kept until the signature, the backend, the dispatch tables
        (``dispatch.generation``), TF32, a parameter or a running statistic changes; None where a plan cannot serve
        (tracing, recording, the reference route). The conv's stride and padding are read when a plan is made (a
        module's geometry is fixed at construction)."""
        if traced(x) or dispatch.recording_active():
            return None
        conv, bn = member(self, "conv"), member(self, "bn")
        key = (x.shape, x.stride(), x.dtype, x.device, None if out is None else (out.shape, out.stride()),
               dispatch.requested(), dispatch.generation(), torch.backends.cudnn.allow_tf32, ac,
               versions(conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias))  # fmt: skip
        plans = plans_of(self)
        plan = plans.get(key)
        if plan is None:
            if not plannable(x):
                return None
            scale, bias = self.folded()
            plan = plans.put(key, plan_forward(x, amp.cast(conv.weight, ac), stride=_pair(conv.stride),
                                               padding=_pair(conv.padding), scale=scale, bias=bias,
                                               activation=activation, out=out))  # fmt: skip
        return plan

    def writes_slice_under_autograd(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x, out=slice)`` with autograd writes the slice inside its own autograd node (the
        fused training step) -- the block engine then needs no merge copy."""
        bn = self.bn
        return (self.conv.bias is None and type(bn) is nn.BatchNorm2d and (bn.training or bn.running_mean is None)
                and bn_ops.conv_bn_act_supported(x))  # fmt: skip

    def _bn_momentum(self, count: bool = True) -> float:
        """``nn.BatchNorm2d``'s exponential-average factor for this step (counts the batch, as it does, unless
        ``count`` is False: then the caller's kernel does)."""
        bn = self.bn
        if not bn.track_running_stats:
            return 0.0
        if count:
            bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
        return bn.momentum

    def _bn_step_args(self, count: bool = True) -> tuple:
        """(γ, β, running mean, running var, momentum, eps) of one training-mode BN step (counts the batch unless
        ``count`` is False)."""
        bn = self.bn
        momentum = self._bn_momentum(count)
        track = bn.track_running_stats
        return (bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None,
                momentum, bn.eps)  # fmt: skip

    def _forward_train_fused(self, x, out, ac, conv, bn):
        """Training: conv with BN statistics in its epilogue → finalize (running stats) → BN-apply + act, run from
        the plan of this call signature (``ops.batchnorm.plan_conv_bn_act``) where one serves. ``ac``: the
        autocast dtype (``ops.amp.dtype_for``) or None; under autocast the plan takes the fp32 master weight
        (cast in the copy that packs it, its gradient returned in fp32), the unplanned call a cast of it.

        Every parameter and buffer is read once, from the modules' own tables (:func:`member`); the plan's entry
        also fixes whether its finalize launch counts the batch (a fixed momentum, ``num_batches_tracked`` one
        int64 element on x's device) instead of a separate ``add_``."""
        weight, gamma, beta = member(conv, "weight"), member(bn, "weight"), member(bn, "bias")
        track, momentum = bn.track_running_stats, bn.momentum
        if track:
            rm, rv, nbt = member(bn, "running_mean"), member(bn, "running_var"), member(bn, "num_batches_tracked")
        else:
            rm = rv = nbt = None
        entry = self._train_plan(x, out, ac, conv, bn, (weight, gamma, beta, rm, rv), nbt, track, momentum is None)
        if entry is not None:
            plan, counted = entry
            if counted:
                return plan(x, weight, gamma, beta, rm, rv, momentum, out, batches=nbt)
            return plan(x, weight, gamma, beta, rm, rv, self._bn_momentum(), out)
        stride, padding = _pair(conv.stride), _pair(conv.padding)
        gamma, beta, rm, rv, momentum, eps = self._bn_step_args()
        return bn_ops.conv_bn_act(
            x, weight, gamma, beta, rm, rv, momentum=momentum, eps=eps, stride=stride,
            padding=(padding[0], padding[0], padding[1], padding[1]), relu=self.act, out=out,
        )  # fmt: skip

    def _train_plan(self, x, out, ac, conv, bn, tensors, nbt, track, no_momentum):
        """(the training step's plan for this call signature, whether its finalize counts the batch), or None
        where a plan cannot serve (tracing, recording, the reference route). The plan
        (:class:`~inception_kernels.ops.batchnorm.ConvBNActPlan`: checks, implementation and launch decided once;
        parameter values are read at every call) is kept until the signature, the backend, the dispatch tables,
        TF32, the identity / dtype / strides of a parameter or running statistic (``tensors``: conv weight, γ, β,
        running mean, running var), eps, ``track_running_stats``, whether the momentum is None or the batch
        counter ``nbt`` (its identity, dtype, shape and device) changes. (Only called where our kernels run directly:
        the caller has checked ``conv_bn_act_supported(x)``, which holds no traced tensor.)"""
        if dispatch.recording_active():
            return None
        key = ("train", x.shape, x.stride(), x.dtype, x.device, None if out is None else (out.shape, out.stride()),
               dispatch.requested(), dispatch.generation(), torch.backends.cudnn.allow_tf32, ac, bn.eps, track,
               no_momentum, tuple(None if t is None else (id(t), t.dtype, t.stride()) for t in tensors),
               None if nbt is None else (id(nbt), nbt.dtype, nbt.shape, nbt.device))  # fmt: skip
        plans = plans_of(self)
        entry = plans.get(key)
        if entry is not None or key in plans:
            return entry
        weight, gamma, beta, rm, rv = tensors
        stride, padding = _pair(conv.stride), _pair(conv.padding)
        # under autocast the plan takes the fp32 master weight: cast in its pack copy, its gradient in fp32
        plan = bn_ops.plan_conv_bn_act(
            x, weight, gamma, beta, rm, rv, momentum=0.0, eps=bn.eps, stride=stride,
            padding=(padding[0], padding[0], padding[1], padding[1]), relu=self.act, out=out, master=ac is not None,
        )  # fmt: skip
        counted = (not no_momentum and isinstance(nbt, torch.Tensor) and nbt.dtype == torch.int64
                   and nbt.numel() == 1 and nbt.device == x.device)  # fmt: skip
        return plans.put(key, None if plan is None else (plan, counted))
