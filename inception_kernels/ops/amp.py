"""``torch.autocast`` for our ops: the one place that says what autocast does to them.

PyTorch's autocast runs ``conv2d`` in the region's lower-precision dtype (its "lower_precision_fp" list: the input
and the weight cast to bf16 / fp16, float64 left alone) and leaves ``batch_norm``, pooling and ``add`` alone (they
run in the dtype they are given). Our ops follow the same rule, so an fp32 model of ours under autocast computes
what the same torchvision / timm model computes under autocast, in the same dtypes:

* the conv family (:func:`~inception_kernels.ops.conv2d`, :func:`~inception_kernels.ops.conv_bn_act`, the
  modules built on them) casts ``x``, ``weight`` and ``residual`` to the autocast dtype; the per-channel epilogue
  (``scale``, ``bias``, BN's γ / β and running statistics) stays float32, as our kernels read it in float32 anyway;
  ``out`` must have the autocast dtype;
* BN-apply, pooling and the scaled residual take the dtype they are given;
* inside the op, autocast is off (the op has already decided its dtypes; the reference route and the cudnn route
  call ATen ops that autocast would otherwise cast again).

Modules that keep plans (``nn.layers``, ``nn.engine``) put :func:`dtype_for` in their plan keys: a plan made
under autocast is never run outside it, nor the other way round. The cast of an fp32 weight is an autograd op, so
the gradient reaches the fp32 parameter in fp32, as under eager autocast -- except in the planned training step of
``ConvBNAct`` (``ops.batchnorm.plan_conv_bn_act(master=True)``), which takes the fp32 master weight itself: the
copy that packs the weight for the GEMM casts it, and the weight gradient the wgrad accumulates in fp32 is returned
as it is (three launches fewer per conv than cast, GEMM, the gradient rounded to 16 bits and cast back).
"""

from __future__ import annotations

import functools

import torch


def _castable(t) -> bool:
    """A tensor autocast casts: floating point, not float64."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def dtype_for(x) -> torch.dtype | None:
    """The dtype autocast runs a conv on ``x`` in: the autocast dtype of ``x``'s device type when autocast is on
    there and ``x`` is a tensor autocast casts; None otherwise (nothing to cast)."""
    if not _castable(x):
        return None
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` where autocast would cast it (a floating tensor other than float64); else ``t``."""
    if dtype is None or not _castable(t) or t.dtype == dtype:
        return t
    return t.to(dtype)


def conv_family(fn):
    """Decorates a conv-family op ``fn(x, weight, *args, residual=None, **kwargs)``: under autocast, ``x``,
    ``weight`` and ``residual`` are cast to the autocast dtype and ``fn`` runs with autocast off."""

    @functools.wraps(fn)
    def wrapper(x, weight, *args, **kwargs):
        dt = dtype_for(x)
        if dt is None:
            return fn(x, weight, *args, **kwargs)
        if kwargs.get("residual") is not None:
            kwargs["residual"] = cast(kwargs["residual"], dt)
        with torch.autocast(x.device.type, enabled=False):
            return fn(cast(x, dt), cast(weight, dt), *args, **kwargs)

    return wrapper
