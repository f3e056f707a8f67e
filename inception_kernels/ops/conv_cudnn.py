"""The ``cudnn`` conv route: PyTorch's convolution for the GEMM (cuDNN on a GPU), our kernels around it.

    forward:  y0 = aten.convolution(x, w)            (no bias: the epilogue owns scale and bias)
              out = act(residual + s·(y0·scale[k] + bias[k]))   -- one pass of our epilogue kernel, written into
              any channels_last destination (a block's channel slice, or two destinations for horizontal fusion)
              BN statistics (training ConvBNAct): our per-tile statistics kernel over y0
    backward: our epilogue-gradient pass (ReLU mask, residual gradient, bias partials) as on the triton route,
              then ``aten.convolution_backward`` for dgrad and/or wgrad (one call when both run here)

So a block on this route stays concat-free, keeps its recipes (the saved pre-BN outputs) and its horizontal 1×1
fusion (one GEMM, split epilogue). An epilogue-free forward without a destination returns ATen's output as is.
Asymmetric padding (top != bottom or left != right, which ATen cannot express) pads the input explicitly first.

On a CPU with ``TRITON_INTERPRET=1`` this runs ATen's CPU convolution plus our kernels in the interpreter, which
is how the test suite covers the route.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import _backend
from ..utils import record_launch
from . import _tile, _weights, dispatch
from ._registry import KernelSpec, register_kernel
from ._tile import BLOCK_C, BLOCK_M, NUM_WARPS, pixel_offsets, tile_2d
from ._triton import tl, triton


def _epilogue_fwd(
    y_ptr, out_ptr, out2_ptr, scale_ptr, bias_ptr, res_ptr,
    M, K, P, Q, k_split, res_scale,
    syn, syk, syp, syq,
    son, sok, sop, soq,
    s2n, s2k, s2p, s2q,
    srn, srk, srp, srq,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    HAS_OUT2: tl.constexpr, IDX_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out = act(res + res_scale·(y·scale + bias)) over a [pixels, channels] tile; channels >= k_split go to
    out2 (at channel k - k_split). The conv forward kernel's epilogue, as a pass of its own."""
    _, offs_m, offs_k, mask_k, mask = tile_2d(M, K, BLOCK_M, BLOCK_C)
    k64 = offs_k.to(IDX_T)
    yo = pixel_offsets(offs_m, P, Q, syn, syp, syq, IDX_T)[:, None] + k64[None, :] * syk
    acc = tl.load(y_ptr + yo, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
    acc = acc * res_scale
    if HAS_RES:
        ro = pixel_offsets(offs_m, P, Q, srn, srp, srq, IDX_T)[:, None] + k64[None, :] * srk
        acc = acc + tl.load(res_ptr + ro, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as torch.relu
    if HAS_OUT2:
        first = (offs_k < k_split)[None, :]
        oo = pixel_offsets(offs_m, P, Q, son, sop, soq, IDX_T)[:, None] + k64[None, :] * sok
        tl.store(out_ptr + oo, acc.to(out_ptr.dtype.element_ty), mask=mask & first)
        o2 = pixel_offsets(offs_m, P, Q, s2n, s2p, s2q, IDX_T)[:, None] + (k64 - k_split)[None, :] * s2k
        tl.store(out2_ptr + o2, acc.to(out2_ptr.dtype.element_ty), mask=mask & (offs_k >= k_split)[None, :])
    else:
        oo = pixel_offsets(offs_m, P, Q, son, sop, soq, IDX_T)[:, None] + k64[None, :] * sok
        tl.store(out_ptr + oo, acc.to(out_ptr.dtype.element_ty), mask=mask)


_epilogue_fwd_kernel = triton.jit(_epilogue_fwd)


def _aten_padding(x: torch.Tensor, padding):
    """(input ATen can convolve, its symmetric padding): asymmetric padding is applied to a padded copy."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return x, (top, left)
    xp = F.pad(x, (left, right, top, bottom)).contiguous(memory_format=torch.channels_last)
    return xp, (0, 0)


def _in_dtype_of(weight, x) -> torch.Tensor:
    """``weight`` in x's dtype: an fp32 master weight under autocast (``ops.amp``) is cast into the cached
    channels_last operand (``_weights.weight_operand``), one cast per weight version that the forward and the
    backward GEMM share (and the triton route, for the same weight)."""
    if weight.dtype == x.dtype:
        return weight
    return _weights.weight_operand(weight, dtype=x.dtype)


def _aten_conv(x, weight, stride, padding) -> torch.Tensor:
    weight = _in_dtype_of(weight, x)
    xin, pad = _aten_padding(x, padding)
    record_launch(aten=True)
    y = torch.ops.aten.convolution(xin, weight, None, list(stride), list(pad), [1, 1], False, [0, 0], 1)
    if not y.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def conv_fwd_cudnn(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out=None, out2=None, stats=None,
):  # fmt: skip
    """The fused conv forward on this route; same contract as ``ops.conv_triton.conv_fwd_into`` except that ``out`` may
    be None (then the result is a new channels_last tensor, ATen's own when there is no epilogue)."""
    _backend.check_interpretable(x)
    y0 = _aten_conv(x, weight, stride, padding)
    N, K, P, Q = y0.shape
    if stats is not None:
        _stats_into(y0, stats)
    trivial = (
        scale is None and bias is None and residual is None and not relu and float(residual_scale) == 1.0
    )
    if out is None and out2 is None and trivial:
        return y0
    if out is None:
        out = _tile.new_cl((N, K, P, Q), x)
    k1 = out.shape[1] if out2 is not None else K
    dummy = y0
    res = residual if residual is not None else out
    o2 = out2 if out2 is not None else out
    M = N * P * Q
    record_launch()
    _epilogue_fwd_kernel[_tile.grid_2d(M, K)](
        y0, out, o2,
        scale if scale is not None else dummy, bias if bias is not None else dummy, res,
        M, K, P, Q, k1, float(residual_scale),
        *y0.stride(), *out.stride(), *o2.stride(), *res.stride(),
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=bool(relu),
        HAS_OUT2=out2 is not None, IDX_T=_tile.tl_index_type(y0, out, o2, res),
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def _stats_into(y0: torch.Tensor, stats) -> None:
    """Per-tile BN partials of y0 into the conv kernel's statistics buffers (``conv_triton.stats_partials``): our
    statistics kernel writes them in the conv epilogue's layout."""
    from .batchnorm import stats_partials_into

    stats_partials_into(y0, stats)


def conv_bwd_cudnn(gp, x, weight, scale, stride, padding, need_x: bool, need_w: bool):
    """(dx, dw without scale, float32) through ``aten.convolution_backward`` from the epilogue gradient ``gp``
    (dense channels_last, already multiplied by residual_scale); scale is folded into the weight for dx."""
    weight = _in_dtype_of(weight, x)
    w_eff = weight if scale is None or not need_x else weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
    xin, pad = _aten_padding(x, padding)
    record_launch(aten=True)
    dxp, dw, _ = torch.ops.aten.convolution_backward(
        gp, xin, w_eff, None, list(stride), list(pad), [1, 1], False, [0, 0], 1, [need_x, need_w, False]
    )
    dx = None
    if need_x:
        if xin is not x:
            top, _, left, _ = padding
            dxp = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
        dx = (
            dxp
            if dxp.is_contiguous(memory_format=torch.channels_last)
            else dxp.contiguous(memory_format=torch.channels_last)
        )
    return dx, (dw.float() if need_w else None)


# ----------------------------------------------------------------------------------------------------------
# What this route supports
# ----------------------------------------------------------------------------------------------------------
def _reasons(problem: dispatch.ConvProblem) -> list[str]:
    why = []
    if problem.device.startswith("cpu"):
        if problem.device != "cpu-interpreter":
            why.append("its epilogue is a Triton kernel: needs a CUDA tensor, or TRITON_INTERPRET=1 on a CPU")
        elif problem.dtype == torch.bfloat16:
            why.append("the Triton interpreter has no bfloat16 arithmetic")
    if not _backend.triton_available():
        why.append("triton is not installed")
    return why


def _bwd_reasons(problem: dispatch.ConvProblem) -> list[str]:
    why = _reasons(problem)
    if problem.device.startswith("cpu") and problem.dtype == torch.float16:
        why.append("ATen's CPU convolution backward has no float16 kernel")
    return why


def dgrad_cudnn(gp, x, weight, scale, stride, padding):
    return conv_bwd_cudnn(gp, x, weight, scale, stride, padding, True, False)[0]


def wgrad_cudnn(gp, x, weight, stride, padding):
    return conv_bwd_cudnn(gp, x, weight, None, stride, padding, False, True)[1]


dispatch.register(dispatch.Impl("conv_fwd", "cudnn", _reasons, conv_fwd_cudnn))
dispatch.register(dispatch.Impl("conv_dgrad", "cudnn", _bwd_reasons, dgrad_cudnn))
dispatch.register(dispatch.Impl("conv_wgrad", "cudnn", _bwd_reasons, wgrad_cudnn))


# ----------------------------------------------------------------------------------------------------------
# AOT registration
# ----------------------------------------------------------------------------------------------------------
def _strides(prefix: str) -> dict:
    return {f"s{prefix}{d}": "i32:16" for d in "npq"} | {f"s{prefix}k": 1}


@functools.cache
def _epi_types(dt: str) -> dict:
    return {"y_ptr": f"*{dt}", "out_ptr": f"*{dt}", "out2_ptr": f"*{dt}", "scale_ptr": "*fp32",
            "bias_ptr": "*fp32", "res_ptr": f"*{dt}", "M": "i32", "K": "i32:16", "P": "i32", "Q": "i32",
            "k_split": "i32", "res_scale": "fp32", **_strides("y"), **_strides("o"), **_strides("2"),
            **_strides("r"), "HAS_SCALE": True, "HAS_BIAS": True, "HAS_RES": True, "RELU": True, "HAS_OUT2": True,
            "IDX_T": tl.int32}  # fmt: skip


_CFG = (triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_C": BLOCK_C}, num_warps=NUM_WARPS, num_stages=1),)
register_kernel(KernelSpec("conv_epilogue_fwd", _epilogue_fwd, _CFG, _epi_types))
