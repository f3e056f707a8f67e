"""Scaled residual addition ``act(x + scale · y)`` outside the conv epilogue, forward and backward.

Inception-ResNet blocks normally get their residual add for free in the 1×1 up-projection's epilogue
(``ops.conv2d(..., residual=x, residual_scale=s)``); this op serves the cases where ``y`` does not come from our
conv (``nn.ScaledResidual`` around an arbitrary module). Inputs and ``out`` may be channel slices; the ReLU mask of
the backward comes from the saved output.
"""

from __future__ import annotations

import functools

import torch

from .. import _backend
from ..utils import record_launch
from . import _args, _library, _tile, dispatch, reference
from ._registry import KernelSpec, register_kernel
from ._tile import BLOCK_C, BLOCK_M, NUM_WARPS, pixel_offsets, tile_2d
from ._triton import tl, triton


def _residual_fwd(
    x_ptr, y_ptr, out_ptr,
    M, C, H, W, scale,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    son, soc, soh, sow,
    RELU: tl.constexpr, IDX_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    _, offs_m, offs_c, _, mask = tile_2d(M, C, BLOCK_M, BLOCK_C)
    offs_c = offs_c.to(IDX_T)
    xo = pixel_offsets(offs_m, H, W, sxn, sxh, sxw, IDX_T)[:, None] + offs_c[None, :] * sxc
    yo = pixel_offsets(offs_m, H, W, syn, syh, syw, IDX_T)[:, None] + offs_c[None, :] * syc
    oo = pixel_offsets(offs_m, H, W, son, soh, sow, IDX_T)[:, None] + offs_c[None, :] * soc
    z = tl.load(x_ptr + xo, mask=mask, other=0.0).to(tl.float32) + scale * tl.load(
        y_ptr + yo, mask=mask, other=0.0
    ).to(tl.float32)
    if RELU:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as torch.relu
    tl.store(out_ptr + oo, z.to(out_ptr.dtype.element_ty), mask=mask)


def _residual_bwd(
    g_ptr, out_ptr, gx_ptr, gy_ptr,
    M, C, H, W, scale,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    RELU: tl.constexpr, IDX_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """gx = g·[out > 0], gy = scale·gx, both dense channels_last."""
    _, offs_m, offs_c, _, mask = tile_2d(M, C, BLOCK_M, BLOCK_C)
    offs_c = offs_c.to(IDX_T)
    go = pixel_offsets(offs_m, H, W, sgn, sgh, sgw, IDX_T)[:, None] + offs_c[None, :] * sgc
    g = tl.load(g_ptr + go, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        oo = pixel_offsets(offs_m, H, W, son, soh, sow, IDX_T)[:, None] + offs_c[None, :] * soc
        g = tl.where(tl.load(out_ptr + oo, mask=mask, other=0.0) > 0, g, 0.0)
    dense = offs_m.to(IDX_T)[:, None] * C + offs_c[None, :]
    tl.store(gx_ptr + dense, g.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gy_ptr + dense, (g * scale).to(gy_ptr.dtype.element_ty), mask=mask)


_residual_fwd_kernel = triton.jit(_residual_fwd)
_residual_bwd_kernel = triton.jit(_residual_bwd)


@_args.on_input_device
def residual_fwd_into(x, y, scale, relu, out):
    N, C, H, W = x.shape
    M = N * H * W
    record_launch()
    _residual_fwd_kernel[_tile.grid_2d(M, C)](
        x, y, out, M, C, H, W, float(scale), *x.stride(), *y.stride(), *out.stride(),
        RELU=bool(relu), IDX_T=_tile.tl_index_type(x, y, out), BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


@_args.on_input_device
def residual_bwd_triton(grad_out, out, scale, relu):
    N, C, H, W = grad_out.shape
    M = N * H * W
    gx = _tile.new_cl(grad_out.shape, out)
    gy = _tile.new_cl(grad_out.shape, out)
    record_launch()
    _residual_bwd_kernel[_tile.grid_2d(M, C)](
        grad_out, out, gx, gy, M, C, H, W, float(scale), *grad_out.stride(), *out.stride(),
        RELU=bool(relu), IDX_T=_tile.tl_index_type(grad_out, out), BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return gx, gy


def _residual_into(x, y, scale, relu, out, impl):
    """out = act(x + scale·y) by implementation ``impl`` (x, y any strides; out channels_last or a slice)."""
    if impl == "reference":
        out.copy_(reference.scaled_residual(x, y, scale, relu))
    elif impl == "cuda":
        torch.ops.inception_kernels_cuda.scaled_residual_fwd(x, y, float(scale), bool(relu), out)
    else:
        _backend.check_interpretable(x)
        residual_fwd_into(x, y, scale, relu, out)
    return out


def _residual_grads(grad, out, scale, relu, impl):
    """(gx, gy) from the output's gradient; the ReLU mask from the saved output."""
    if impl == "reference":
        g = torch.where(out > 0, grad, grad.new_zeros(())) if relu else grad
        return g, g * scale
    if impl == "cuda":
        return tuple(torch.ops.inception_kernels_cuda.scaled_residual_bwd(grad, out, float(scale), relu))
    return residual_bwd_triton(grad, out, scale, relu)


class _ScaledResidualFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, relu, out):
        impl = dispatch.choose("scaled_residual", x).impl
        _residual_into(x, y, scale, relu, out, impl)
        ctx.impl, ctx.scale, ctx.relu = impl, scale, relu
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        gx, gy = _residual_grads(grad, out, ctx.scale, ctx.relu, ctx.impl)
        return gx, gy, None, None, None


# ----------------------------------------------------------------------------------------------------------
# torch.library ops: what torch.compile traces (eager calls go through _ScaledResidualFn)
# ----------------------------------------------------------------------------------------------------------
def _op_impl(x: torch.Tensor, y: torch.Tensor, scale: float, relu: bool) -> torch.Tensor:
    impl = dispatch.choose("scaled_residual", x).impl
    return _residual_into(x, y, scale, relu, _tile.new_cl(x.shape, x), impl)


def _op_fake(x, y, scale, relu):
    return _tile.new_cl(x.shape, x)


def _bwd_op_impl(
    grad: torch.Tensor, out: torch.Tensor, scale: float, relu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    gx, gy = _residual_grads(grad, out, scale, relu, dispatch.choose("scaled_residual", out).impl)
    return _library.fresh_cl(gx, grad, out), _library.fresh_cl(gy, grad, out, gx)


def _bwd_op_fake(grad, out, scale, relu):
    return _tile.new_cl(grad.shape, out), _tile.new_cl(grad.shape, out)


def _op_setup(ctx, inputs, output):
    _, _, ctx.scale, ctx.relu = inputs
    ctx.save_for_backward(output)


def _op_backward(ctx, grad):
    (out,) = ctx.saved_tensors
    gx, gy = torch.ops.inception_kernels.scaled_residual_bwd(grad, out, ctx.scale, ctx.relu)
    return gx, gy, None, None


_library.define("scaled_residual_bwd", _bwd_op_impl, fake=_bwd_op_fake)
_library.define("scaled_residual", _op_impl, fake=_op_fake, backward=_op_backward, setup_context=_op_setup)


def scaled_residual(
    x: torch.Tensor, y: torch.Tensor, scale: float = 1.0, relu: bool = True, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``act(x + scale · y)`` for channels_last (N, C, H, W) x and y (channel slices allowed). Differentiable.

    y: x's shape, dtype and device; scale: a float; ``out`` (inference only) may be x or y itself (in place)
    but no other view of their memory."""
    _args.activation(x, "x")
    _args.activation(y, "y")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}")
    if y.dtype != x.dtype:
        raise TypeError(f"y has dtype {y.dtype} but x has {x.dtype}; y must match x")
    if y.shape != x.shape:
        raise ValueError(f"y must match x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    scale = _args.real(scale, "scale", finite=False)
    relu = _args.flag(relu, "relu")
    traced = _library.traced(x, y)
    if out is None:
        if traced:
            return torch.ops.inception_kernels.scaled_residual(x, y, scale, relu)
        out = _tile.new_cl(x.shape, x)
        return _ScaledResidualFn.apply(x, y, scale, relu, out)
    _args.out_tensor(out, x.shape, x)
    if not traced:  # (data pointers are not known while tracing)
        _args.no_overlap(out, {"x": x, "y": y}, elementwise=True)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        raise ValueError("scaled_residual(out=...) is for inference; with autograd, let it allocate")
    if traced:
        return out.copy_(torch.ops.inception_kernels.scaled_residual(x, y, scale, relu))
    with torch.no_grad():
        return _ScaledResidualFn.apply(x, y, scale, relu, out)


def _strides(prefix: str) -> dict:
    return {f"s{prefix}{d}": "i32:16" for d in "nhw"} | {f"s{prefix}c": 1}


@functools.cache
def _fwd_types(dt: str) -> dict:
    return {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "out_ptr": f"*{dt}", "M": "i32", "C": "i32:16", "H": "i32",
            "W": "i32", "scale": "fp32", **_strides("x"), **_strides("y"), **_strides("o"), "RELU": True,
            "IDX_T": tl.int32}  # fmt: skip


@functools.cache
def _bwd_types(dt: str) -> dict:
    return {"g_ptr": f"*{dt}", "out_ptr": f"*{dt}", "gx_ptr": f"*{dt}", "gy_ptr": f"*{dt}", "M": "i32",
            "C": "i32:16", "H": "i32", "W": "i32", "scale": "fp32", **_strides("g"), **_strides("o"),
            "RELU": True, "IDX_T": tl.int32}  # fmt: skip


_CFG = (triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_C": BLOCK_C}, num_warps=NUM_WARPS, num_stages=1),)
dispatch.register_memory_bound("scaled_residual")
register_kernel(KernelSpec("scaled_residual_fwd", _residual_fwd, _CFG, _fwd_types))
register_kernel(KernelSpec("scaled_residual_bwd", _residual_bwd, _CFG, _bwd_types))
