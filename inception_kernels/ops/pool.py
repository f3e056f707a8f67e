"""Max / average pooling written straight into a channel slice, and its backward.

Output size, window clipping and the average divisor follow PyTorch's ``max_pool2d`` / ``avg_pool2d`` exactly
(``ceil_mode``: the last window must start inside the input or the left padding; ``count_include_pad``:
the divisor counts the window clipped to the padded extent, otherwise only the in-bounds pixels).

Max pooling saves an int8 index per output element (the argmax position r·KW + s inside its window; the first
maximum in row-major window order; a NaN is the maximum and the last NaN wins -- PyTorch's rule, so the
gradient lands where PyTorch's does) instead of PyTorch's int64 flat index: 1 byte
instead of 8. The backward gathers: each input pixel sums the gradients of the (at most ⌈KH/SH⌉·⌈KW/SW⌉)
windows that contain it -- no atomics, deterministic. ``grad_out`` may be a strided channel slice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .. import _backend
from ..utils import record_launch
from . import _args, _library, _recompute, _tile, dispatch, reference
from ._registry import KernelSpec, register_kernel
from ._tile import BLOCK_C, BLOCK_M, NUM_WARPS
from ._triton import tl, triton

KINDS = {"max": 0, "avg": 1}
MAX_KERNEL = 127  # per dimension (the kernels unroll the window)
MAX_WINDOW = 127  # max pooling: the int8 argmax of a window (the CUDA C++ kernels' limit too)


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _avg_divisor(h0, w0, H, W, pad_h, pad_w, KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr):
    """PyTorch's average-pool divisor of the windows starting at (h0, w0) (may be negative: padding)."""
    if COUNT_PAD:
        hs = tl.minimum(h0 + KH, H + pad_h) - h0
        ws = tl.minimum(w0 + KW, W + pad_w) - w0
    else:
        hs = tl.minimum(h0 + KH, H) - tl.maximum(h0, 0)
        ws = tl.minimum(w0 + KW, W) - tl.maximum(w0, 0)
    return tl.maximum(hs * ws, 1).to(tl.float32)


def _pool_fwd(
    x_ptr, out_ptr, idx_ptr,
    M, C, H, W, P, Q,
    sxn, sxc, sxh, sxw,
    son, soc, sop, soq,
    stride_h, stride_w, pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr, IS_MAX: tl.constexpr, COUNT_PAD: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One [BLOCK_M output pixels, BLOCK_C channels] tile; M = N·P·Q."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    q = offs_m % Q
    t = offs_m // Q
    p = t % P
    n = t // P
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_row = x_ptr + n.to(IDX_T) * sxn
    c_off = offs_c.to(IDX_T)[None, :] * sxc
    if IS_MAX:
        best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), tl.float32)
        arg = tl.full((BLOCK_M, BLOCK_C), -1, tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for r in tl.static_range(KH):
        for s in tl.static_range(KW):
            h = h0 + r
            w = w0 + s
            inside = mask_m & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            m2 = inside[:, None] & mask_c[None, :]
            ptrs = (x_row + h.to(IDX_T) * sxh + w.to(IDX_T) * sxw)[:, None] + c_off
            v = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
            if IS_MAX:
                take = m2 & ((v > best) | (v != v) | (arg < 0))  # ties: the first; NaN: the last (PyTorch)
                best = tl.where(take, v, best)
                arg = tl.where(take, r * KW + s, arg)
            else:
                acc += v
    mask = mask_m[:, None] & mask_c[None, :]
    o_off = (n.to(IDX_T) * son + p.to(IDX_T) * sop + q.to(IDX_T) * soq)[:, None] + offs_c.to(IDX_T)[
        None, :
    ] * soc
    if IS_MAX:
        tl.store(out_ptr + o_off, best.to(out_ptr.dtype.element_ty), mask=mask)
        i_off = offs_m.to(IDX_T)[:, None] * C + offs_c.to(IDX_T)[None, :]
        tl.store(idx_ptr + i_off, arg.to(tl.int8), mask=mask)
    else:
        div = _avg_divisor(h0, w0, H, W, pad_h, pad_w, KH, KW, COUNT_PAD)
        tl.store(out_ptr + o_off, (acc / div[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def _pool_bwd(
    g_ptr, idx_ptr, dx_ptr,
    M, C, H, W, P, Q,
    sgn, sgc, sgp, sgq,
    stride_h, stride_w, pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr, NR: tl.constexpr, NS: tl.constexpr,
    IS_MAX: tl.constexpr, COUNT_PAD: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx for a [BLOCK_M input pixels, BLOCK_C channels] tile (M = N·H·W); NR, NS = windows per pixel per axis."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    w = offs_m % W
    t = offs_m // W
    h = t % H
    n = t // H
    # the last window (in each axis) whose start is at or before this pixel
    p_hi = (h + pad_h) // stride_h
    q_hi = (w + pad_w) // stride_w
    c64 = offs_c.to(IDX_T)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for i in tl.static_range(NR):
        p = p_hi - i
        r = h + pad_h - p * stride_h  # tap row of this pixel inside window p
        ok_p = (p >= 0) & (p < P) & (r < KH)
        for j in tl.static_range(NS):
            q = q_hi - j
            s = w + pad_w - q * stride_w
            ok = mask_m & ok_p & (q >= 0) & (q < Q) & (s < KW)
            m2 = ok[:, None] & mask_c[None, :]
            g_off = (n.to(IDX_T) * sgn + p.to(IDX_T) * sgp + q.to(IDX_T) * sgq)[:, None] + c64 * sgc
            g = tl.load(g_ptr + g_off, mask=m2, other=0.0).to(tl.float32)
            if IS_MAX:
                o_flat = ((n * P + p) * Q + q).to(IDX_T)
                arg = tl.load(idx_ptr + o_flat[:, None] * C + c64, mask=m2, other=-1).to(tl.int32)
                acc += tl.where(m2 & (arg == (r * KW + s)[:, None]), g, 0.0)
            else:
                div = _avg_divisor(
                    p * stride_h - pad_h, q * stride_w - pad_w, H, W, pad_h, pad_w, KH, KW, COUNT_PAD
                )
                acc += g / div[:, None]
    d_off = offs_m.to(IDX_T)[:, None] * C + c64
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


_pool_fwd_kernel = triton.jit(_pool_fwd)
_pool_bwd_kernel = triton.jit(_pool_bwd)


# ----------------------------------------------------------------------------------------------------------
# Launchers and functional ops
# ----------------------------------------------------------------------------------------------------------
def pool_out_shape(x_shape, kernel, stride, padding, ceil_mode):
    N, C, H, W = x_shape
    P = _args.window_out_size(H, kernel[0], stride[0], padding[0], ceil_mode)
    Q = _args.window_out_size(W, kernel[1], stride[1], padding[1], ceil_mode)
    return N, C, P, Q


def pool_fwd_launcher(x, kind, kernel, stride, padding, count_include_pad, out):
    """Everything about one pooling forward launch that stays while the tensors keep their shapes and strides,
    decided once: returns ``run(x, out)`` (the argmax indices for max pooling, else None). ``x`` and ``out`` lend
    their shapes and strides here."""
    N, C, H, W = x.shape
    _, _, P, Q = out.shape
    M = N * P * Q
    is_max = kind == "max"
    big_idx = is_max and M * C >= 2**31  # the int8 argmax tensor (N, P, Q, C), dense
    launch = _pool_fwd_kernel[_tile.grid_2d(M, C)]
    ints = (M, C, H, W, P, Q, *x.stride(), *out.stride(), stride[0], stride[1], padding[0], padding[1])
    consts = dict(KH=kernel[0], KW=kernel[1], IS_MAX=is_max, COUNT_PAD=bool(count_include_pad),
                  IDX_T=tl.int64 if big_idx else _tile.tl_index_type(x, out), BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
                  num_warps=NUM_WARPS)  # fmt: skip

    def run(x, out):
        idx = _tile.new_buf((N, P, Q, C), x.device, torch.int8) if is_max else out
        record_launch()
        launch(x, out, idx, *ints, **consts)
        return idx.permute(0, 3, 1, 2) if is_max else None

    return run


@_args.on_input_device
def pool_fwd_triton(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out):
    return pool_fwd_launcher(x, kind, kernel, stride, padding, count_include_pad, out)(x, out)


@_args.on_input_device
def pool_bwd_triton(grad_out, idx, kind, kernel, stride, padding, count_include_pad, x_shape, dtype):
    N, C, H, W = x_shape
    _, _, P, Q = grad_out.shape
    dx = _tile.new_cl(x_shape, grad_out, dtype=dtype)
    M = N * H * W
    is_max = kind == "max"
    record_launch()
    _pool_bwd_kernel[_tile.grid_2d(M, C)](
        grad_out, idx if is_max else grad_out, dx, M, C, H, W, P, Q, *grad_out.stride(),
        stride[0], stride[1], padding[0], padding[1],
        KH=kernel[0], KW=kernel[1], NR=math.ceil(kernel[0] / stride[0]), NS=math.ceil(kernel[1] / stride[1]),
        IS_MAX=is_max, COUNT_PAD=bool(count_include_pad), IDX_T=_tile.tl_index_type(grad_out, dx),
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
    )  # fmt: skip
    return dx


def _ref_bwd(grad_out, x_ref, kind, kernel, stride, padding, ceil_mode, count_include_pad):
    with torch.enable_grad():
        xr = x_ref.detach().requires_grad_()
        y = reference.pool2d(xr, kind, kernel, stride, padding, ceil_mode, count_include_pad)
        (dx,) = torch.autograd.grad(y, xr, grad_out)
    return dx.contiguous(memory_format=torch.channels_last)


class _PoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out, plan=None):
        out = out.detach()  # an autograd-plain alias of the destination (see batchnorm._ConvBNActFn)
        impl = dispatch.choose("pool2d", x).impl if plan is None else plan.impl
        ctx.conf = (kind, kernel, stride, padding, ceil_mode, count_include_pad)
        ctx.x_shape, ctx.impl, ctx.dtype = tuple(x.shape), impl, x.dtype
        idx = None
        if impl == "reference":
            out.copy_(reference.pool2d(x, kind, kernel, stride, padding, ceil_mode, count_include_pad))
            ctx.save_for_backward(x if kind == "max" else None)
        elif impl == "cuda":
            idx = torch.ops.inception_kernels_cuda.pool2d_fwd(
                x, KINDS[kind], list(kernel), list(stride), list(padding), ceil_mode, count_include_pad, out
            )
            ctx.save_for_backward(idx if kind == "max" else None)
        else:
            _tile_check_interpretable(x)
            if plan is None:
                idx = pool_fwd_triton(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out)
            else:
                with _args.device_guard(x):
                    idx = plan.launch(x, out)
            ctx.save_for_backward(idx)
        return out

    @staticmethod
    def backward(ctx, grad):
        kind, kernel, stride, padding, ceil_mode, count_include_pad = ctx.conf
        (saved,) = ctx.saved_tensors
        if ctx.impl == "reference":
            x_ref = (
                saved if saved is not None else torch.zeros(ctx.x_shape, dtype=grad.dtype, device=grad.device)
            )
            dx = _ref_bwd(grad, x_ref, *ctx.conf)
        elif ctx.impl == "cuda":
            dx = torch.ops.inception_kernels_cuda.pool2d_bwd(
                grad, saved if saved is not None else grad.new_empty(0, dtype=torch.int8), KINDS[kind],
                list(kernel), list(stride), list(padding), ceil_mode, count_include_pad, list(ctx.x_shape),
            )  # fmt: skip
        else:
            dx = pool_bwd_triton(grad, saved, kind, kernel, stride, padding, count_include_pad, ctx.x_shape,
                                 ctx.dtype)  # fmt: skip
        return dx, None, None, None, None, None, None, None, None


def _repool(conf, x, out=None):
    with torch.no_grad():
        return pool2d(x, *conf, out=out)


def _tile_check_interpretable(x):

    _backend.check_interpretable(x)


# ----------------------------------------------------------------------------------------------------------
# torch.library ops: what torch.compile traces (eager calls go through _PoolFn, without dispatcher overhead)
# ----------------------------------------------------------------------------------------------------------
def _idx_template(shape, like: torch.Tensor) -> torch.Tensor:
    N, C, P, Q = shape
    return torch.empty((N, P, Q, C), device=like.device, dtype=torch.int8).permute(0, 3, 1, 2)


def _pool2d_fwd_impl(
    x: torch.Tensor,
    kind: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, int8 window argmax (max) or an empty tensor (avg)); Triton only (the engine pools in PyTorch
    wherever Triton cannot run)."""
    kernel, stride, padding = tuple(kernel), tuple(stride), tuple(padding)
    out = _tile.new_cl(pool_out_shape(x.shape, kernel, stride, padding, ceil_mode), x)
    idx = pool_fwd_triton(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out)
    return out, (idx if idx is not None else _library.no_tensor(x, torch.int8))


def _pool2d_fwd_fake(x, kind, kernel, stride, padding, ceil_mode, count_include_pad):
    shape = pool_out_shape(x.shape, tuple(kernel), tuple(stride), tuple(padding), ceil_mode)
    idx = _idx_template(shape, x) if kind == "max" else _library.no_tensor(x, torch.int8)
    return _tile.new_cl(shape, x), idx


def _pool2d_bwd_impl(
    grad: torch.Tensor,
    idx: torch.Tensor,
    kind: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    count_include_pad: bool,
    x_shape: Sequence[int],
) -> torch.Tensor:
    return pool_bwd_triton(grad, idx, kind, tuple(kernel), tuple(stride), tuple(padding), count_include_pad,
                           tuple(x_shape), grad.dtype)  # fmt: skip


def _pool2d_bwd_fake(grad, idx, kind, kernel, stride, padding, count_include_pad, x_shape):
    return _tile.new_cl(tuple(x_shape), grad)


def _op_setup_context(ctx, inputs, output):
    x, kind, kernel, stride, padding, ceil_mode, count_include_pad = inputs
    ctx.save_for_backward(output[1])
    ctx.conf = (kind, list(kernel), list(stride), list(padding), count_include_pad, list(x.shape))


def _op_backward(ctx, grad_out, _grad_idx):
    (idx,) = ctx.saved_tensors
    kind, kernel, stride, padding, count_include_pad, x_shape = ctx.conf
    dx = torch.ops.inception_kernels.pool2d_bwd(grad_out, idx, kind, kernel, stride, padding, count_include_pad,
                                                x_shape)  # fmt: skip
    return dx, None, None, None, None, None, None


_library.define("pool2d_bwd", _pool2d_bwd_impl, fake=_pool2d_bwd_fake)
_library.define("pool2d_fwd", _pool2d_fwd_impl, fake=_pool2d_fwd_fake, backward=_op_backward,
                setup_context=_op_setup_context)  # fmt: skip


def _traced_pool(x, conf, out):
    kind, kernel, stride, padding, ceil_mode, count_include_pad = conf
    y, _ = torch.ops.inception_kernels.pool2d_fwd(
        x, kind, list(kernel), list(stride), list(padding), ceil_mode, count_include_pad
    )
    return y if out is None else out.copy_(y)


def pool2d(
    x: torch.Tensor,
    kind: str,
    kernel,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Max (``kind="max"``) or average (``"avg"``) pooling of a channels_last x, written into ``out`` if given.

    x: (N, C, H, W), channels innermost (a channel slice is fine); out: (N, C, P, Q) channels_last view, e.g. a
    channel slice of an Inception block's output. Differentiable; returns ``out`` (or a new tensor).
    """
    conf, shape = _pool_args(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out)
    if _library.traced(x):
        return _traced_pool(x, conf, out)
    return _run_pool(x, conf, _pool_out(x, shape, out), None)


def _pool_args(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out):
    """pool2d's argument checks: ``(conf, output shape)``, conf = (kind, kernel, stride, padding, ceil_mode,
    count_include_pad) in canonical form."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
    _args.activation(x, "x")
    kernel, stride, padding = _args.pool_geometry(kernel, stride, padding)
    ceil_mode = _args.flag(ceil_mode, "ceil_mode")
    count_include_pad = _args.flag(count_include_pad, "count_include_pad")
    if max(kernel) > MAX_KERNEL:
        raise ValueError(f"kernel_size must be at most {MAX_KERNEL} in each dimension, got {kernel}")
    if kind == "max" and kernel[0] * kernel[1] > MAX_WINDOW:
        raise ValueError(
            f"kernel_size: max pooling windows are limited to {MAX_WINDOW} elements (int8 argmax), got {kernel}"
        )
    if 0 in x.shape[1:]:
        raise ValueError(f"x must have non-zero C, H and W (only the batch may be empty, as in F.max_pool2d), "
                         f"got shape {tuple(x.shape)}")  # fmt: skip
    shape = pool_out_shape(x.shape, kernel, stride, padding, ceil_mode)
    if min(shape[2:]) < 1:
        raise ValueError(f"pooling output would be empty: x {tuple(x.shape)}, kernel_size {kernel}, "
                         f"padding {padding}")  # fmt: skip
    if out is not None:
        _args.out_tensor(out, shape, x)
    return (kind, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad)), shape


def _pool_out(x, shape, out):
    """The destination of an eager call: a new channels_last tensor, or the checked ``out``."""
    if out is None:
        return _tile.new_cl(shape, x)
    _args.no_overlap(out, {"x": x})
    if out.requires_grad:
        raise ValueError("pool2d(out=...): out must not require grad (autograd records this op's output)")
    return out


def _run_pool(x, conf, out, plan):
    y = _PoolFn.apply(x, *conf, out, plan)
    if torch.is_grad_enabled() and x.requires_grad and _recompute.has_recipe(x):
        # consumers of y save x's recipe (already-saved tensors) and re-pool, instead of saving y
        _recompute.attach(y, *_recompute.then(_recompute.recipe_of(x), functools.partial(_repool, conf)))
    return y


class PoolPlan:
    """:func:`pool2d` decided once for one call signature (issue 12: plans per signature): the arguments checked,
    the implementation chosen and, on the triton route, the launch fixed. ``plan(x, out=None)`` then pools any
    ``x`` (and ``out``) of the shapes, strides, dtype and device it was made for, with autograd as pool2d."""

    def __init__(self, x, conf, shape, out):
        self.conf, self.shape = conf, shape
        self.geometry = _args.geometry(x, out)
        self.impl = dispatch.choose("pool2d", x).impl
        kind, kernel, stride, padding, _, count_include_pad = conf
        self.launch = None
        if self.impl == "triton":
            _tile_check_interpretable(x)  # (depends on the dtype and the device only: part of the signature)
            example = out if out is not None else _tile.new_cl(shape, x)
            self.launch = pool_fwd_launcher(x, kind, kernel, stride, padding, count_include_pad, example)

    def __call__(self, x, out=None):
        if _args.geometry(x, out) != self.geometry:
            _args.check_plan_geometry(self.geometry, x, out, what="pool plan")
        out = _pool_out(x, self.shape, out)
        if self.launch is not None and not (torch.is_grad_enabled() and x.requires_grad):
            with _args.device_guard(x):  # nothing to record for autograd: the launch alone
                self.launch(x, out)
            return out
        return _run_pool(x, self.conf, out, self)


def plan_pool2d(x, kind, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True, out=None):
    """A :class:`PoolPlan` for calls like ``pool2d(x, ...)`` with these arguments (checked here as pool2d checks
    them), or None where a plan cannot serve: traced calls (torch.compile, fake tensors), an empty batch, a
    dispatch recording in progress."""
    conf, shape = _pool_args(x, kind, kernel, stride, padding, ceil_mode, count_include_pad, out)
    if _library.traced(x) or x.shape[0] == 0 or dispatch.recording_active():
        return None
    return PoolPlan(x, conf, shape, out)


# ----------------------------------------------------------------------------------------------------------
# Ahead-of-time compile registry
# ----------------------------------------------------------------------------------------------------------
def _common(dt: str) -> dict:
    return {"M": "i32", "C": "i32:16", "H": "i32", "W": "i32", "P": "i32", "Q": "i32",
            "stride_h": "i32", "stride_w": "i32", "pad_h": "i32", "pad_w": "i32",
            "KH": 3, "KW": 3, "IDX_T": tl.int32}  # fmt: skip


@functools.cache
def _fwd_types(dt: str) -> dict:
    return {"x_ptr": f"*{dt}", "out_ptr": f"*{dt}", "idx_ptr": "*i8", **_common(dt), "IS_MAX": True,
            "COUNT_PAD": False, "sxc": 1, "soc": 1,
            **{k: "i32:16" for k in ("sxn", "sxh", "sxw", "son", "sop", "soq")}}  # fmt: skip


@functools.cache
def _bwd_types(dt: str) -> dict:
    return {"g_ptr": f"*{dt}", "idx_ptr": "*i8", "dx_ptr": f"*{dt}", **_common(dt), "NR": 2, "NS": 2,
            "IS_MAX": True, "COUNT_PAD": False, "sgc": 1,
            **{k: "i32:16" for k in ("sgn", "sgp", "sgq")}}  # fmt: skip


_CFG = (triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_C": BLOCK_C}, num_warps=NUM_WARPS, num_stages=1),)
dispatch.register_memory_bound("pool2d")
register_kernel(KernelSpec("pool2d_fwd", _pool_fwd, _CFG, _fwd_types))
register_kernel(KernelSpec("pool2d_bwd", _pool_bwd, _CFG, _bwd_types))
