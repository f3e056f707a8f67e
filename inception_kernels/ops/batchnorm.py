"""Training-mode batch norm, fused: statistics, BN-apply + ReLU into a slice, and their backward.

    y   = conv(x)                                 (statistics of y from the conv epilogue, or bn_stats)
    out = act((y − mean) · invstd · γ + β)        (bn_act: written into any channels_last slice)

Statistics are numerically stable: each tile reduces its pixels to (count, mean, M2 = Σ(v − mean)²) by the
corrected two-pass algorithm over registers, and :func:`bn_finalize` combines the tiles in a fixed order with Chan et al.'s
pairwise update, shifted by the first tile's mean -- no E[v²] − E[v]² cancellation when the mean dwarfs the
spread, and the same bits on every run (several programs merge chunks of the tile rows in parallel; the last to
finish merges the chunks in order).

Backward (``bn_act_backward``) recomputes the ReLU mask and x̂ from the saved pre-BN tensor: with M = N·H·W,
g' = g·[z > 0], z = x̂·γ + β, dβ = Σ g', dγ = Σ g'·x̂, dx = γ·invstd·(g' − dβ/M − x̂·dγ/M). Two launches: the
reduction (each program sums a fixed set of pixel tiles; the last program of each channel block to finish adds
the programs' partials in a fixed order), then the elementwise dx. ``grad_out`` may be a strided channel slice of
a block's gradient. Behind a conv on our Triton kernels (:func:`conv_bn_act`'s backward) the dx launch goes: the
reduction also writes per-channel coefficients (:func:`bn_act_bwd_coefs`) and the conv's dgrad and wgrad apply
the dx formula to grad_out as they load it; and when the conv's input is another ``conv_bn_act``'s output, its
wgrad rebuilds that input on its x load instead of a BN-apply launch (``ops._recompute`` fold tags).

:func:`conv_bn_act` is the training step of ``ConvBNAct``: our conv with the statistics epilogue, the finalize
(which also updates the running statistics exactly like ``nn.BatchNorm2d``: momentum, unbiased variance), and
BN-apply + ReLU written straight to the destination. It saves the conv input, the pre-BN output and the
per-channel statistics; the post-activation output is not saved (its mask is recomputed).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import _backend
from ..utils import record_launch
from . import _args, _library, _recompute, _tile, _weights, amp, conv_triton, dispatch, reference
from . import conv as conv_ops
from ._registry import KernelSpec, register_kernel
from ._tile import BLOCK_C, BLOCK_M, NUM_WARPS, last_to_arrive, pixel_offsets, reset_arrivals, tile_2d
from ._triton import tl, triton
from .conv_kernels import _store_stats, bn_grad

FINALIZE_BLOCK_T = 32
FINALIZE_BLOCK_C = 64
REDUCE_BLOCK_T = 64  # partial rows the BN backward's last program adds per step


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
def _bn_partials(
    x_ptr, cnt_ptr, mean_ptr, m2_ptr,
    M, C, H, W,
    sxn, sxc, sxh, sxw,
    IDX_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """(count, mean, M2) of each [BLOCK_M pixels, BLOCK_C channels] tile of x, in the layout of the conv
    epilogue's partials (``conv_triton.stats_partials``: a row per STATS_ROWS pixels; the tile's partial in its
    first row, count 0 in the others)."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    mask = mask_m[:, None] & mask_c[None, :]
    px = pixel_offsets(offs_m, H, W, sxn, sxh, sxw, IDX_T)
    v = tl.load(x_ptr + px[:, None] + offs_c.to(IDX_T)[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
    _store_stats(v, mask_m, offs_c, mask_c, pid_m, pid_c == 0, M, C, cnt_ptr, mean_ptr, m2_ptr, BLOCK_M)


@triton.jit
def _merge_rows(acc_n, acc_mean, acc_m2, n, mu, m2):
    """Chan et al.'s pairwise update: merge a block of partials ``n``, ``mu`` (shifted means), ``m2`` (each
    (BLOCK_T, BLOCK_C); 0 on empty rows and masked channels) into the running (count, mean, M2) per channel."""
    nb = tl.sum(n, axis=0)
    mb = tl.sum(n * mu, axis=0) / tl.maximum(nb, 1.0)
    d = tl.where(n > 0, mu - mb[None, :], 0.0)
    m2b = tl.sum(m2, axis=0) + tl.sum(n * d * d, axis=0)
    tot = acc_n + nb
    frac = nb / tl.maximum(tot, 1.0)
    delta = mb - acc_mean
    return tot, acc_mean + delta * frac, acc_m2 + m2b + delta * delta * acc_n * frac


def _bn_finalize(
    cnt_ptr, pmean_ptr, pm2_ptr, mean_ptr, var_ptr, invstd_ptr, rmean_ptr, rvar_ptr, nbt_ptr,
    qn_ptr, qmean_ptr, qm2_ptr, arrive_ptr,
    T, C, rows_per_program, eps, momentum, unbias,
    UPDATE_RUNNING: tl.constexpr, COUNT_BATCH: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Combine T tile partials per channel (fixed order) into mean, biased var, invstd; update running stats;
    with ``COUNT_BATCH`` also add 1 to ``num_batches_tracked`` (int64), as ``nn.BatchNorm2d`` does.

    Program (g, j) merges the partial rows [g·R, (g + 1)·R) (R = ``rows_per_program``) of channel block j in row
    order into chunk g's (count, mean, M2) (``qn``, ``qmean``, ``qm2``: (G, C)); the last program of channel block j
    to arrive (its counter, reset to 0 for the next launch) merges the G chunks in the order 0, 1, ... and writes
    the results: the rows are read by G programs in parallel, in one launch, with the same bits on every run.
    Tiles with count 0 are empty (a conv config with tiles larger than the partial rows leaves some unused).
    Values are shifted by tile 0's mean (tile 0 is never empty) so the sums stay small.
    """
    pid_g = tl.program_id(0)
    pid = tl.program_id(1)
    G = tl.num_programs(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    shift = tl.load(pmean_ptr + offs_c, mask=mask_c, other=0.0)
    acc_n = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc_mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc_m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    start = pid_g * rows_per_program
    stop = tl.minimum(start + rows_per_program, T)
    for t0 in range(start, stop, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        n = tl.load(cnt_ptr + offs_t, mask=offs_t < stop, other=0.0)
        live = (n > 0)[:, None] & mask_c[None, :]
        ptrs = offs_t[:, None] * C + offs_c[None, :]
        mu = tl.where(live, tl.load(pmean_ptr + ptrs, mask=live, other=0.0) - shift[None, :], 0.0)
        m2 = tl.where(live, tl.load(pm2_ptr + ptrs, mask=live, other=0.0), 0.0)
        acc_n, acc_mean, acc_m2 = _merge_rows(acc_n, acc_mean, acc_m2, tl.where(live, n[:, None], 0.0), mu, m2)
    tl.store(qn_ptr + pid_g * C + offs_c, acc_n, mask=mask_c)
    tl.store(qmean_ptr + pid_g * C + offs_c, acc_mean, mask=mask_c)
    tl.store(qm2_ptr + pid_g * C + offs_c, acc_m2, mask=mask_c)
    if last_to_arrive(arrive_ptr + pid, G):
        tot_n = tl.zeros((BLOCK_C,), dtype=tl.float32)
        tot_mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
        tot_m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for g0 in range(0, G, BLOCK_T):
            rows = g0 + tl.arange(0, BLOCK_T)
            here = (rows < G)[:, None] & mask_c[None, :]
            off = rows[:, None] * C + offs_c[None, :]
            qn = tl.load(qn_ptr + off, mask=here, other=0.0, cache_modifier=".cg")
            live = here & (qn > 0)
            qmu = tl.where(live, tl.load(qmean_ptr + off, mask=here, other=0.0, cache_modifier=".cg"), 0.0)
            qm2 = tl.where(live, tl.load(qm2_ptr + off, mask=here, other=0.0, cache_modifier=".cg"), 0.0)
            tot_n, tot_mean, tot_m2 = _merge_rows(tot_n, tot_mean, tot_m2, tl.where(live, qn, 0.0), qmu, qm2)
        mean = shift + tot_mean
        var = tot_m2 / tot_n
        tl.store(mean_ptr + offs_c, mean, mask=mask_c)
        tl.store(var_ptr + offs_c, var, mask=mask_c)
        tl.store(invstd_ptr + offs_c, 1.0 / tl.sqrt(var + eps), mask=mask_c)
        if UPDATE_RUNNING:
            rm = tl.load(rmean_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
            rv = tl.load(rvar_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
            rm = (1.0 - momentum) * rm + momentum * mean
            rv = (1.0 - momentum) * rv + momentum * (var * unbias)
            tl.store(rmean_ptr + offs_c, rm.to(rmean_ptr.dtype.element_ty), mask=mask_c)
            tl.store(rvar_ptr + offs_c, rv.to(rvar_ptr.dtype.element_ty), mask=mask_c)
        if COUNT_BATCH:
            if pid == 0:
                tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)
        reset_arrivals(arrive_ptr + pid)


@triton.jit
def _load_affine(
    mean_ptr, invstd_ptr, w_ptr, b_ptr, offs_c, mask_c, HAS_W: tl.constexpr, HAS_B: tl.constexpr
):
    mean = tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0)
    invstd = tl.load(invstd_ptr + offs_c, mask=mask_c, other=0.0)
    if HAS_W:
        w = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        w = tl.full(mean.shape, 1.0, tl.float32)
    if HAS_B:
        b = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(mean.shape, tl.float32)
    return mean, invstd, w, b


def _bn_act_fwd(
    x_ptr, out_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr,
    M, C, H, W,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RELU: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_m, offs_m, offs_c, mask_c, mask = tile_2d(M, C, BLOCK_M, BLOCK_C)
    c64 = offs_c.to(IDX_T)[None, :]
    xp = pixel_offsets(offs_m, H, W, sxn, sxh, sxw, IDX_T)[:, None] + c64 * sxc
    v = tl.load(x_ptr + xp, mask=mask, other=0.0).to(tl.float32)
    mean, invstd, w, b = _load_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    z = (v - mean[None, :]) * (invstd * w)[None, :] + b[None, :]
    if RELU:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as torch.relu
    op = pixel_offsets(offs_m, H, W, son, soh, sow, IDX_T)[:, None] + c64 * soc
    tl.store(out_ptr + op, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_grad(g_ptr, x_ptr, offs_m, offs_c, mask, mean, invstd, w, b, H, W,
                 sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, RELU: tl.constexpr, IDX_T: tl.constexpr):  # fmt: skip
    """(g', x̂) of a tile: the incoming gradient through the ReLU (mask recomputed) and the normalized input."""
    c64 = offs_c.to(IDX_T)[None, :]
    gp = pixel_offsets(offs_m, H, W, sgn, sgh, sgw, IDX_T)[:, None] + c64 * sgc
    xp = pixel_offsets(offs_m, H, W, sxn, sxh, sxw, IDX_T)[:, None] + c64 * sxc
    g = tl.load(g_ptr + gp, mask=mask, other=0.0).to(tl.float32)
    xhat = (tl.load(x_ptr + xp, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * invstd[None, :]
    if RELU:
        g = tl.where(xhat * w[None, :] + b[None, :] > 0, g, 0.0)
    return g, xhat


def _bn_act_bwd_reduce(
    g_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, pb_ptr, pw_ptr, gb_ptr, gw_ptr, cnt_ptr, coef_ptr,
    M, C, H, W, inv_m,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RELU: tl.constexpr, COEFS: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """dβ = Σ g' and dγ = Σ g'·x̂ per channel, in one launch and the same bits on every run.

    Program (i, j) sums the row tiles i, i + G, i + 2G, ... (G programs along axis 0) of channel block j into row i
    of the partials; the last program of channel block j to finish (its arrival counter, reset to 0 for the next
    launch) adds the G rows in the order 0, 1, ... and writes the sums. With ``COEFS`` it also writes the (6, C)
    coefficients that let a conv's dgrad / wgrad take dx on load (``conv_kernels.bn_coefs``): mean, invstd, γ,
    β, dβ/M, dγ/M."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    G = tl.num_programs(0)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mean, invstd, w, b = _load_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    acc_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t in range(pid_m, tl.cdiv(M, BLOCK_M), G):
        offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (offs_m < M)[:, None] & mask_c[None, :]
        g, xhat = _masked_grad(g_ptr, x_ptr, offs_m, offs_c, mask, mean, invstd, w, b, H, W,
                               sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, RELU, IDX_T)  # fmt: skip
        acc_b += tl.sum(g, axis=0)
        acc_w += tl.sum(tl.where(mask, g * xhat, 0.0), axis=0)
    tl.store(pb_ptr + pid_m * C + offs_c, acc_b, mask=mask_c)
    tl.store(pw_ptr + pid_m * C + offs_c, acc_w, mask=mask_c)
    if last_to_arrive(cnt_ptr + pid_c, G):
        tot_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
        tot_w = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for t0 in range(0, G, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            live = (rows < G)[:, None] & mask_c[None, :]
            off = rows[:, None] * C + offs_c[None, :]
            tot_b += tl.sum(tl.load(pb_ptr + off, mask=live, other=0.0, cache_modifier=".cg"), axis=0)
            tot_w += tl.sum(tl.load(pw_ptr + off, mask=live, other=0.0, cache_modifier=".cg"), axis=0)
        tl.store(gb_ptr + offs_c, tot_b, mask=mask_c)
        tl.store(gw_ptr + offs_c, tot_w, mask=mask_c)
        if COEFS:
            tl.store(coef_ptr + offs_c, mean, mask=mask_c)
            tl.store(coef_ptr + C + offs_c, invstd, mask=mask_c)
            tl.store(coef_ptr + 2 * C + offs_c, w, mask=mask_c)
            tl.store(coef_ptr + 3 * C + offs_c, b, mask=mask_c)
            tl.store(coef_ptr + 4 * C + offs_c, tot_b * inv_m, mask=mask_c)
            tl.store(coef_ptr + 5 * C + offs_c, tot_w * inv_m, mask=mask_c)
        reset_arrivals(cnt_ptr + pid_c)


def _bn_act_bwd_dx(
    g_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, gb_ptr, gw_ptr, dx_ptr,
    M, C, H, W, inv_m,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RELU: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx = γ·invstd·(g' − dβ/M − x̂·dγ/M) (``conv_kernels.bn_grad``, which a conv's dgrad / wgrad also apply)."""
    pid_m, offs_m, offs_c, mask_c, mask = tile_2d(M, C, BLOCK_M, BLOCK_C)
    mean, invstd, w, b = _load_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    c64 = offs_c.to(IDX_T)[None, :]
    gp = pixel_offsets(offs_m, H, W, sgn, sgh, sgw, IDX_T)[:, None] + c64 * sgc
    xp = pixel_offsets(offs_m, H, W, sxn, sxh, sxw, IDX_T)[:, None] + c64 * sxc
    g = tl.load(g_ptr + gp, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + xp, mask=mask, other=0.0).to(tl.float32)
    gb = tl.load(gb_ptr + offs_c, mask=mask_c, other=0.0) * inv_m
    gw = tl.load(gw_ptr + offs_c, mask=mask_c, other=0.0) * inv_m
    dx = bn_grad(g, v, mean, invstd, w, b, gb, gw, RELU)
    dp = pixel_offsets(offs_m, H, W, sdn, sdh, sdw, IDX_T)[:, None] + offs_c.to(IDX_T)[None, :] * sdc
    tl.store(dx_ptr + dp, dx.to(dx_ptr.dtype.element_ty), mask=mask)


_bn_partials_kernel = triton.jit(_bn_partials)
_bn_finalize_kernel = triton.jit(_bn_finalize)
_bn_act_fwd_kernel = triton.jit(_bn_act_fwd)
_bn_act_bwd_reduce_kernel = triton.jit(_bn_act_bwd_reduce)
_bn_act_bwd_dx_kernel = triton.jit(_bn_act_bwd_dx)


# ----------------------------------------------------------------------------------------------------------
# Launchers (Triton)
# ----------------------------------------------------------------------------------------------------------
def _tile_args():
    return dict(BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)


def stats_partials_of(x: torch.Tensor):
    """Per-tile (count, mean, M2) partials of x (for a tensor our conv did not produce)."""
    N, C, H, W = x.shape
    return stats_partials_into(x, conv_triton.stats_partials(N * H * W, C, x.device))


@_args.on_input_device
def stats_partials_into(x: torch.Tensor, partials):
    """Write x's per-tile partials into ``partials`` = (count (T,), mean (T, C), M2 (T, C)) of
    :func:`conv_triton.stats_partials` for x's N·H·W rows (T = cdiv(N·H·W, STATS_ROWS))."""
    N, C, H, W = x.shape
    M = N * H * W
    cnt, pmean, pm2 = partials
    if pmean.shape != (_tile.cdiv(M, conv_triton.STATS_ROWS), C) or cnt.shape != pmean.shape[:1]:
        raise ValueError(f"partials of shape {tuple(pmean.shape)} do not match the tiles of a {tuple(x.shape)} tensor")
    record_launch()
    _bn_partials_kernel[_tile.grid_2d(M, C)](
        x, cnt, pmean, pm2, M, C, H, W, *x.stride(), IDX_T=_tile.tl_index_type(x), **_tile_args()
    )
    return partials


def finalize_programs(T: int, C: int, device: torch.device) -> int:
    """Programs along the partial rows of :func:`bn_finalize` (G of ``_bn_finalize``): on a GPU about two per SM
    over all channel blocks (at most 256, so the last program merges few chunks), none with fewer than
    FINALIZE_BLOCK_T rows; in the interpreter up to 4, so that several chunks are merged there too."""
    blocks = _tile.cdiv(T, FINALIZE_BLOCK_T)
    if device.type != "cuda":
        return max(1, min(blocks, 4))
    per_block = 2 * conv_triton.kernels._num_sms(device) // _tile.cdiv(C, FINALIZE_BLOCK_C)
    return max(1, min(blocks, 256, per_block))


# The BN kernels' launch decisions (grid, programs, flags, index type, fixed arguments), memoized on the shapes and
# strides of their tensors and their flags: a training step makes the same few launches per layer every step.
_LAUNCHES: dict = {}


def bn_finalize(partials, M: int, eps: float, running_mean=None, running_var=None, momentum: float = 0.1,
                batches=None, programs=None):  # fmt: skip
    """(mean, biased var, invstd), float32 (C,), from tile partials; updates running stats in place if given, and
    adds 1 to ``batches`` (a BN's ``num_batches_tracked``: one int64 element on this device) if given -- one
    launch where the module would add in a second one. ``programs``: the row chunks merged in parallel
    (:func:`finalize_programs` unless given)."""
    _, pmean, _ = partials
    T, C = pmean.shape
    dev = pmean.device
    update = running_mean is not None
    key = ("finalize", T, C, dev, update, batches is None, programs)
    launcher = _args.memoized(_LAUNCHES, key, lambda: _finalize_launcher(T, C, dev, update, batches is not None,
                                                                         programs))  # fmt: skip
    return _finalize_into(launcher, partials, tuple(_tile.new_buf((C,), dev) for _ in range(3)), M, eps,
                          running_mean, running_var, momentum, batches)  # fmt: skip


def _finalize_into(launcher, partials, outs, M: int, eps: float, running_mean, running_var, momentum: float,
                   batches):  # fmt: skip
    """:func:`bn_finalize`'s launch by ``launcher`` (of :func:`_finalize_launcher`) writing ``outs`` = (mean,
    var, invstd), float32 (C,) contiguous; returns ``outs``."""
    G, cb, launch = launcher
    cnt, pmean, pm2 = partials
    C = pmean.shape[1]
    dev = pmean.device
    mean, var, invstd = outs
    update = running_mean is not None
    unbias = M / (M - 1) if M > 1 else float("inf")
    chunks = _tile.new_buf((3 * G * C,), dev).split_with_sizes((G * C,) * 3)
    record_launch()
    with _args.device_guard(pmean):
        launch(
            (cnt, pmean, pm2, mean, var, invstd, running_mean if update else mean, running_var if update else var,
             mean if batches is None else batches, *chunks, conv_triton._tile_counters(dev, cb)),
            float(eps), float(momentum), float(unbias),
        )  # fmt: skip
    return outs


def _finalize_launcher(T: int, C: int, dev, update: bool, count_batch: bool, programs):
    """:func:`bn_finalize`'s launch for (T, C) partials: (row chunks G, channel blocks, ``launch(tensors, eps,
    momentum, unbias)``)."""
    rows = _tile.cdiv(T, programs or finalize_programs(T, C, dev))
    G = _tile.cdiv(T, rows)  # no chunk without rows
    cb = _tile.cdiv(C, FINALIZE_BLOCK_C)
    kernel = _bn_finalize_kernel[(G, cb)]
    flags = dict(UPDATE_RUNNING=update, COUNT_BATCH=count_batch, BLOCK_T=FINALIZE_BLOCK_T, BLOCK_C=FINALIZE_BLOCK_C,
                 num_warps=NUM_WARPS)  # fmt: skip

    def launch(tensors, eps, momentum, unbias):
        kernel(*tensors, T, C, rows, eps, momentum, unbias, **flags)

    return G, cb, launch


@_args.on_input_device
def bn_act_fwd_into(x, mean, invstd, weight, bias, relu, out):
    key = ("apply", _args.geometry(x, out), x.dtype, out.dtype, x.device, weight is None, bias is None, bool(relu))
    launch = _args.memoized(_LAUNCHES, key, lambda: _apply_launcher(x, weight, bias, relu, out))
    return _run_apply(launch, x, out, mean, invstd, weight, bias)


def _run_apply(launch, x, out, mean, invstd, weight, bias):
    """One BN-apply launch by ``launch`` (of :func:`_apply_launcher`); an absent γ or β is passed as an unread
    tensor."""
    record_launch()
    launch(x, out, mean, invstd, weight if weight is not None else mean, bias if bias is not None else mean)
    return out


def _apply_launcher(x, weight, bias, relu, out):
    """:func:`bn_act_fwd_into`'s launch for tensors of these shapes and strides: ``launch(x, out, mean, invstd,
    weight, bias)``."""
    N, C, H, W = x.shape
    M = N * H * W
    kernel = _bn_act_fwd_kernel[_tile.grid_2d(M, C)]
    ints = (M, C, H, W, *x.stride(), *out.stride())
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, RELU=bool(relu), IDX_T=_tile.tl_index_type(x, out),
                 **_tile_args())  # fmt: skip

    def launch(*tensors):
        kernel(*tensors, *ints, **flags)

    return launch


def reduce_programs(M: int, C: int, device: torch.device) -> int:
    """Programs along the rows of the BN backward's reduction (G of ``_bn_act_bwd_reduce``): on a GPU about four
    per SM over all channel blocks (at most 256, so the last program adds few partial rows); in the interpreter 4,
    so that programs loop over several row tiles there too."""
    tiles = _tile.cdiv(M, BLOCK_M)
    if device.type != "cuda":
        return min(tiles, 4)
    per_block = 4 * conv_triton.kernels._num_sms(device) // _tile.cdiv(C, BLOCK_C)
    return max(1, min(tiles, 256, per_block))


def _bwd_reduce(grad_out, x, mean, invstd, weight, bias, relu, programs, coefs: bool, slot=None):
    """The BN backward's reduction launch: (dγ, dβ, the (6, C) coefficients or None, the kernel flags). ``slot``:
    as in ``conv_triton.wgrad_triton`` (the launch kept under "reduce")."""
    C = x.shape[1]
    dev = x.device
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, RELU=bool(relu))
    G, cb, launch = _args.memoized_in(
        slot, "reduce", _LAUNCHES,
        lambda: ("reduce", _args.geometry(grad_out, x), grad_out.dtype, x.dtype, dev, tuple(flags.values()), programs,
                 bool(coefs)),
        lambda: _reduce_launcher(grad_out, x, programs, coefs, flags),
    )  # fmt: skip
    dummy = mean
    # per-program partials (rows 0..G-1), then the sums (row G)
    pb, pw = _tile.new_buf((2, G + 1, C), dev).unbind(0)
    gb, gw = pb[G], pw[G]
    coef = _tile.new_buf((6, C), dev) if coefs else dummy
    record_launch()
    launch(
        grad_out, x, mean, invstd, weight if weight is not None else dummy, bias if bias is not None else dummy,
        pb, pw, gb, gw, conv_triton._tile_counters(dev, cb), coef,
    )  # fmt: skip
    return gw, gb, (coef if coefs else None), flags


def _reduce_launcher(grad_out, x, programs, coefs, flags):
    """:func:`_bwd_reduce`'s launch for tensors of these shapes and strides: (programs G, channel blocks,
    ``launch(*tensors)``)."""
    N, C, H, W = x.shape
    M = N * H * W
    G = programs or reduce_programs(M, C, x.device)
    cb = _tile.cdiv(C, BLOCK_C)
    kernel = _bn_act_bwd_reduce_kernel[(G, cb)]
    ints = (M, C, H, W, 1.0 / M, *grad_out.stride(), *x.stride())
    kw = dict(IDX_T=_tile.tl_index_type(grad_out, x), **flags, COEFS=bool(coefs), BLOCK_T=REDUCE_BLOCK_T,
              **_tile_args())  # fmt: skip

    def launch(*tensors):
        kernel(*tensors, *ints, **kw)

    return G, cb, launch


@_args.on_input_device
def bn_act_bwd_coefs(grad_out, x, mean, invstd, weight, bias, relu, slot=None):
    """(coefficients, dγ, dβ) of the BN backward in one launch, for a conv's dgrad / wgrad to apply dx on load
    (``conv_ops.conv_bwd(bn=...)``): the reduction of :func:`bn_act_bwd_triton` without its dx launch. ``slot``:
    see :func:`_bwd_reduce`."""
    gw, gb, coef, _ = _bwd_reduce(grad_out, x, mean, invstd, weight, bias, relu, None, True, slot)
    return coef, gw, gb


@_args.on_input_device
def bn_act_bwd_triton(grad_out, x, mean, invstd, weight, bias, relu, dx=None, programs=None):
    """(dx, dγ, dβ); dx written into ``dx`` (any channels_last view) when given. Two launches: the reduction (its
    ``programs`` rows of partials summed in-kernel, :func:`reduce_programs` unless given), then dx."""
    N, C, H, W = x.shape
    M = N * H * W
    gw, gb, _, flags = _bwd_reduce(grad_out, x, mean, invstd, weight, bias, relu, programs, False)
    dummy = mean
    wt = weight if weight is not None else dummy
    bs = bias if bias is not None else dummy
    idx = _tile.tl_index_type(grad_out, x, dx)
    if dx is None:
        dx = _tile.new_cl(x.shape, x)
    record_launch()
    _bn_act_bwd_dx_kernel[_tile.grid_2d(M, C)](
        grad_out, x, mean, invstd, wt, bs, gb, gw, dx, M, C, H, W, 1.0 / M,
        *grad_out.stride(), *x.stride(), *dx.stride(), IDX_T=idx, **flags, **_tile_args(),
    )  # fmt: skip
    return dx, gw, gb


# ----------------------------------------------------------------------------------------------------------
# Reference twins (explicit math, also the CPU path)
# ----------------------------------------------------------------------------------------------------------
def _ref_stats(x):
    v = x.float()
    return v.mean((0, 2, 3)), v.var((0, 2, 3), unbiased=False)


def _ref_bwd(grad_out, x, mean, invstd, weight, bias, relu):
    C = x.shape[1]
    xhat = (x.float() - mean.view(1, C, 1, 1)) * invstd.view(1, C, 1, 1)
    w = weight.float().view(1, C, 1, 1) if weight is not None else torch.ones_like(mean).view(1, C, 1, 1)
    b = bias.float().view(1, C, 1, 1) if bias is not None else torch.zeros_like(mean).view(1, C, 1, 1)
    g = grad_out.float()
    if relu:
        g = torch.where(xhat * w + b > 0, g, torch.zeros((), dtype=g.dtype, device=g.device))
    M = x.numel() // C
    gb = g.sum((0, 2, 3))
    gw = (g * xhat).sum((0, 2, 3))
    dx = w * invstd.view(1, C, 1, 1) * (g - gb.view(1, C, 1, 1) / M - xhat * gw.view(1, C, 1, 1) / M)
    return dx.to(x.dtype).contiguous(memory_format=torch.channels_last), gw, gb


def _impl(x: torch.Tensor, op: str) -> str:
    return dispatch.choose(op, x).impl


def _cuda_ops():
    return torch.ops.inception_kernels_cuda


# ----------------------------------------------------------------------------------------------------------
# Public functional ops (no autograd of their own: building blocks of the autograd functions below)
# ----------------------------------------------------------------------------------------------------------
_STAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _stat(t, name: str, C: int, x: torch.Tensor, *, dtypes=_STAT_DTYPES) -> torch.Tensor:
    """A per-channel (C,) operand of the kernels: float32, contiguous (a no-op for the usual fp32 vector)."""
    t = _args.channel_vector(t, name, C, x, dtypes=dtypes)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


@_args.on_input_device
def bn_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over N·H·W, float32 (C,). x: channels_last (slices allowed).

    With no pixels (N·H·W = 0) both are NaN, like ``torch.var_mean`` of an empty tensor."""
    _args.activation(x, "x")
    if x.numel() == 0:
        nan = torch.full((x.shape[1],), float("nan"), dtype=torch.float32, device=x.device)
        return nan, nan.clone()
    impl = _impl(x, "bn_stats")
    if impl == "reference":
        return _ref_stats(x)
    if impl == "cuda":
        return tuple(_cuda_ops().bn_stats(x))
    _backend.check_interpretable(x)
    M = x.numel() // x.shape[1]
    mean, var, _ = bn_finalize(stats_partials_of(x), M, 1.0)  # eps only shapes the unused invstd
    return mean, var


@_args.on_input_device
def bn_act(x, mean, invstd, weight=None, bias=None, relu: bool = True, out=None) -> torch.Tensor:
    """``act((x − mean)·invstd·weight + bias)`` per channel; writes ``out`` (a channels_last slice) if given.

    x: (N, C, H, W) channels_last (slices allowed); mean, invstd: (C,) float tensors (float32 is the fast case);
    weight, bias: (C,) or None; ``out`` may be x itself (in place), but no other view of x's memory."""
    _args.activation(x, "x")
    C = x.shape[1]
    mean, invstd = _stat(mean, "mean", C, x), _stat(invstd, "invstd", C, x)
    weight = None if weight is None else _stat(weight, "weight", C, x)
    bias = None if bias is None else _stat(bias, "bias", C, x)
    relu = _args.flag(relu, "relu")
    if out is None:
        out = _tile.new_cl(x.shape, x)
    else:
        _args.out_tensor(out, x.shape, x)
        _args.no_overlap(out, {"x": x}, elementwise=True)
    return _bn_act_into(x, mean, invstd, weight, bias, relu, out)


def _bn_act_into(x, mean, invstd, weight, bias, relu, out):
    """bn_act on checked arguments (float32 per-channel vectors; x any strides), by the chosen implementation."""
    impl = _impl(x, "bn_act")
    if impl == "reference":
        return out.copy_(reference.bn_act(x, mean, invstd, weight, bias, relu))
    if impl == "cuda":
        _cuda_ops().bn_act_fwd(x, mean, invstd, weight, bias, bool(relu), out)
        return out
    _backend.check_interpretable(x)
    return bn_act_fwd_into(x, mean, invstd, weight, bias, relu, out)


def bn_act_backward(grad_out, x, mean, invstd, weight=None, bias=None, relu: bool = True):
    """Training-mode gradients (dx, dγ, dβ) of ``bn_act`` with batch statistics (see the module docstring)."""
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have x's shape {tuple(x.shape)}, got {tuple(grad_out.shape)}")
    # any strides: the kernels index grad_out through its own strides (channels_last slices are the fast case)
    impl = _impl(x, "bn_act")
    if impl == "reference":
        return _ref_bwd(grad_out, x, mean, invstd, weight, bias, relu)
    if impl == "cuda":
        return tuple(_cuda_ops().bn_act_bwd(grad_out, x, mean, invstd, weight, bias, bool(relu)))
    _backend.check_interpretable(x)
    return bn_act_bwd_triton(grad_out, x, mean, invstd, weight, bias, relu)


# ----------------------------------------------------------------------------------------------------------
# Autograd: batch norm (+ ReLU) on a tensor, and the fused training step of ConvBNAct
# ----------------------------------------------------------------------------------------------------------
def _momentum_and_check(M: int, momentum: float) -> float:
    if M <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {M}")
    return momentum


def _batch_stats(x, running_mean, running_var, momentum, eps):
    """(mean, invstd) float32 (C,) of x over N·H·W; running statistics (float32 contiguous, or None) updated in
    place like ``nn.BatchNorm2d`` (momentum, unbiased variance). Triton: partials + finalize, two launches."""
    impl = _impl(x, "bn_act")
    M = x.numel() // x.shape[1]
    _momentum_and_check(M, momentum)
    if impl == "triton":
        _backend.check_interpretable(x)
        mean, _, invstd = bn_finalize(stats_partials_of(x), M, eps, running_mean, running_var, momentum)
        return mean, invstd
    mean, var = bn_stats(x)
    invstd = torch.rsqrt(var + eps)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * (M / (M - 1))).to(running_var.dtype),
                                                alpha=momentum)  # fmt: skip
    return mean, invstd


class _BatchNormActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, relu, out):
        mean, invstd = _batch_stats(x, running_mean, running_var, momentum, eps)
        y = bn_act(x, mean, invstd, weight, bias, relu, out=out)
        ctx.save_for_backward(x, mean, invstd, weight, bias)
        ctx.relu = relu
        dispatch.remember_backend(ctx)
        if out is not None:
            ctx.mark_dirty(out)
        return y

    @staticmethod
    @dispatch.on_forward_backend
    def backward(ctx, grad):
        x, mean, invstd, weight, bias = ctx.saved_tensors
        dx, dw, db = bn_act_backward(grad, x, mean, invstd, weight, bias, ctx.relu)
        dw = dw.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = db.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# torch.library ops: what torch.compile traces (eager calls go through _BatchNormActFn, without dispatcher overhead)
#
#   bn_batch_stats  (mean, invstd) of a detached x, running statistics updated in place (mutated arguments);
#   bn_act_train    BN-apply + act with those statistics; its registered gradient is the training-mode one
#                   (through the batch statistics: dx, dγ, dβ of bn_act_backward), so mean and invstd must be
#                   x's batch statistics (from bn_batch_stats) and get no gradient of their own;
#   bn_act_bwd      that gradient (dx, dγ, dβ).
# Same launches as the eager path: partials + finalize, apply; reduce + sum + dx.
# ----------------------------------------------------------------------------------------------------------
def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.dtype == torch.float32 else t.float()


def _bn_batch_stats_impl(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _batch_stats(x, running_mean, running_var, momentum, eps)


def _channel_vec(x: torch.Tensor) -> torch.Tensor:
    """A fake per-channel float32 (C,) statistic or gradient."""
    return x.new_empty(x.shape[1], dtype=torch.float32)


def _bn_batch_stats_fake(x, running_mean, running_var, momentum, eps):
    return _channel_vec(x), _channel_vec(x)


def _bn_act_train_impl(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    return _bn_act_into(x, _f32(mean), _f32(invstd), _f32(weight), _f32(bias), relu, _tile.new_cl(x.shape, x))


def _bn_act_train_fake(x, mean, invstd, weight, bias, relu):
    return _tile.new_cl(x.shape, x)


def _bn_act_bwd_impl(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = bn_act_backward(grad_out, x, _f32(mean), _f32(invstd), _f32(weight), _f32(bias), relu)
    if db.untyped_storage().data_ptr() == dw.untyped_storage().data_ptr():
        # the Triton route sums both partials in one op: two rows of one tensor (outputs may not alias, and
        # the fakes promise fresh vectors)
        dw, db = (t.clone() if t.storage_offset() else t for t in (dw, db))
    return _library.fresh_cl(dx, grad_out, x), dw, db


def _bn_act_bwd_fake(grad_out, x, mean, invstd, weight, bias, relu):
    return _tile.new_cl(x.shape, x), _channel_vec(x), _channel_vec(x)


def _bn_act_train_setup(ctx, inputs, output):
    x, mean, invstd, weight, bias, relu = inputs
    ctx.save_for_backward(x, mean, invstd, weight, bias)
    ctx.relu = relu


def _bn_act_train_backward(ctx, grad):
    x, mean, invstd, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.inception_kernels.bn_act_bwd(grad, x, mean, invstd, weight, bias, ctx.relu)
    dw = dw.to(weight.dtype) if weight is not None and ctx.needs_input_grad[3] else None
    db = db.to(bias.dtype) if bias is not None and ctx.needs_input_grad[4] else None
    return dx, None, None, dw, db, None


_library.define("bn_batch_stats", _bn_batch_stats_impl, fake=_bn_batch_stats_fake,
                mutates_args=("running_mean", "running_var"))  # fmt: skip
_library.define("bn_act_bwd", _bn_act_bwd_impl, fake=_bn_act_bwd_fake)
_library.define("bn_act_train", _bn_act_train_impl, fake=_bn_act_train_fake, backward=_bn_act_train_backward,
                setup_context=_bn_act_train_setup)  # fmt: skip


def _conv2d_stats_impl(
    x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The conv of a training ConvBNAct with the BN statistics in its epilogue: ``(y, count, mean, M2)`` (the
    per-tile partials of :func:`~inception_kernels.ops.conv_triton.stats_partials`), one launch as in eager."""
    N, K, P, Q = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
    partials = conv_triton.stats_partials(N * P * Q, K, x.device)
    y = conv_ops.conv_forward(x, weight, None, None, None, tuple(stride), tuple(padding), 1.0, False, stats=partials)
    return (_library.fresh_cl(y, x), *partials)


def _conv2d_stats_fake(x, weight, stride, padding):
    N, K, P, Q = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
    tiles = _tile.cdiv(N * P * Q, conv_triton.STATS_ROWS)
    f32 = dict(dtype=torch.float32, device=x.device)
    return (_tile.new_cl((N, K, P, Q), x), x.new_empty(tiles, **f32), x.new_empty((tiles, K), **f32),
            x.new_empty((tiles, K), **f32))  # fmt: skip


def _conv2d_stats_setup(ctx, inputs, output):
    x, weight, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = list(stride), list(padding)
    ctx.mark_non_differentiable(*output[1:])


def _conv2d_stats_backward(ctx, grad_y, *_partials):
    """The conv's gradients from ``grad_y``, which ``bn_act_bwd`` computed through the batch statistics (as the
    eager step's backward does): the partials feed only the finalize, so they carry no gradient."""
    x, weight = ctx.saved_tensors
    need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False, False, False]
    dx, dw, *_ = torch.ops.inception_kernels.conv2d_bwd(grad_y, x, weight, None, grad_y, ctx.stride, ctx.padding,
                                                         1.0, False, need)  # fmt: skip
    return dx if need[0] else None, dw if need[1] else None, None, None


def _bn_finalize_impl(
    count: torch.Tensor,
    mean: torch.Tensor,
    m2: torch.Tensor,
    rows: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, invstd) of ``rows`` values per channel from the partials of :func:`_conv2d_stats_impl`; running
    statistics updated in place (one launch)."""
    _momentum_and_check(rows, momentum)
    bmean, _, invstd = bn_finalize((count, mean, m2), rows, eps, running_mean, running_var, momentum)
    return bmean, invstd


def _bn_finalize_fake(count, mean, m2, rows, running_mean, running_var, momentum, eps):
    return mean.new_empty(mean.shape[1]), mean.new_empty(mean.shape[1])


_library.define("conv2d_stats", _conv2d_stats_impl, fake=_conv2d_stats_fake, backward=_conv2d_stats_backward,
                setup_context=_conv2d_stats_setup)  # fmt: skip
_library.define("bn_finalize", _bn_finalize_impl, fake=_bn_finalize_fake,
                mutates_args=("running_mean", "running_var"))  # fmt: skip


def _traced_conv_bn_act(x, weight, gamma, beta, running_mean, running_var, momentum, eps, stride, padding, relu):
    """conv_bn_act under torch.compile: the registered ops, three launches as in eager (conv with the statistics
    epilogue, finalize with the running-stat update, BN-apply + act)."""
    ops = torch.ops.inception_kernels
    y, *partials = ops.conv2d_stats(x, weight, list(stride), list(padding))
    N, K, P, Q = y.shape
    mean, invstd = ops.bn_finalize(*(t.detach() for t in partials), N * P * Q, running_mean, running_var,
                                   momentum, eps)  # fmt: skip
    return ops.bn_act_train(y, mean, invstd, gamma, beta, relu)


def _traced_batch_norm_act(x, weight, bias, running_mean, running_var, momentum, eps, relu):
    ops = torch.ops.inception_kernels
    mean, invstd = ops.bn_batch_stats(x.detach(), running_mean, running_var, momentum, eps)
    return ops.bn_act_train(x, mean, invstd, weight, bias, relu)


def traced_bn_supported(x: torch.Tensor) -> bool:
    """Training-mode BN of a traced call (torch.compile) runs our registered ops (not the reference backend)."""
    return _library.traced(x) and not dispatch.is_reference(x)


def _running_stats(running_mean, running_var, C: int, x: torch.Tensor, what: str = "C"):
    """(mean, var, write_back): float32 contiguous running statistics for the kernels. Buffers already in that
    form are used in place; others (float16, strided) are updated through a float32 copy written back after."""
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must both be None or both be tensors (as in F.batch_norm)"
        )
    if running_mean is None:
        return None, None, None
    pair = []
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _args.channel_vector(t, name, C, x, dtypes=_STAT_DTYPES, what=what)
        if t.requires_grad:
            raise ValueError(f"{name} must not require grad (it is updated in place)")
        pair.append(t)
    if all(t.dtype == torch.float32 and t.stride(0) == 1 for t in pair):
        return running_mean, running_var, None
    work = [torch.empty(C, dtype=torch.float32, device=x.device).copy_(t) for t in pair]

    def write_back():
        with torch.no_grad():
            running_mean.copy_(work[0])
            running_var.copy_(work[1])

    return work[0], work[1], write_back


def _bn_scalars(momentum, eps, relu):
    return _args.real(momentum, "momentum"), _args.real(eps, "eps", minimum=0.0), _args.flag(relu, "relu")


def _empty_bn(y, weight, bias, eps, relu):
    """F.batch_norm of a tensor without elements: an empty result (running statistics untouched)."""
    z = F.batch_norm(y, None, None, weight, bias, True, 0.0, eps)
    return (torch.relu(z) if relu else z).contiguous(memory_format=torch.channels_last)


@_args.on_input_device
def batch_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, momentum: float = 0.1,
                   eps: float = 1e-5, relu: bool = True) -> torch.Tensor:  # fmt: skip
    """Training-mode ``act(batch_norm(x))`` with batch statistics, running stats updated like ``nn.BatchNorm2d``.

    x: (N, C, H, W) channels_last; weight/bias (C,) float32 or x's dtype, or None; running_mean/running_var
    (C,) float tensors (updated in place) or both None. Raises like ``F.batch_norm`` when a channel has a
    single value; an input without elements gives an empty result.
    """
    _args.activation(x, "x")
    C = x.shape[1]
    weight = None if weight is None else _args.channel_vector(weight, "weight", C, x)
    bias = None if bias is None else _args.channel_vector(bias, "bias", C, x)
    momentum, eps, relu = _bn_scalars(momentum, eps, relu)
    if x.numel() == 0:
        return _empty_bn(x, weight, bias, eps, relu)
    _momentum_and_check(x.numel() // C, momentum)
    rm, rv, write_back = _running_stats(running_mean, running_var, C, x)
    if _library.traced(x):
        y = _traced_batch_norm_act(x, weight, bias, rm, rv, momentum, eps, relu)
    else:
        y = _BatchNormActFn.apply(x, weight, bias, rm, rv, momentum, eps, relu, None)
    if write_back is not None:
        write_back()
    return y


class _ConvBNActFn(torch.autograd.Function):
    """conv (statistics in its epilogue) → finalize (+ running stats) → BN-apply + act into the destination."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        gamma,
        beta,
        running_mean,
        running_var,
        momentum,
        eps,
        stride,
        padding,
        relu,
        out,
        record,
        plan=None,
        batches=None,
    ):
        shape = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
        N, K, P, Q = shape
        M = N * P * Q
        _momentum_and_check(M, momentum)
        partials = conv_triton.stats_partials(M, K, x.device)
        if plan is None:
            y = conv_ops.conv_forward(x, weight, None, None, None, stride, padding, 1.0, False, stats=partials)
            mean, _, invstd = bn_finalize(partials, M, eps, running_mean, running_var, momentum, batches)
        else:
            y = plan.conv(x, weight, partials)
            mean, _, invstd = plan.finalize(partials, running_mean, running_var, momentum, batches)
        # ``out`` is an input of this node: write and return an autograd-plain alias of it (a tensor returned
        # as-is would come back wrapped in a new view object, without the recipe attached below)
        out = None if out is None else out.detach()
        if plan is None:
            out = bn_act(y, mean, invstd, gamma, beta, relu, out=out)
        else:
            out = plan.apply(y, mean, invstd, gamma, beta, out)
        # x is saved as its recipe when it has one (the producer's pre-BN output and statistics); the output
        # gets a recipe of its own for the layers that consume it (see ops._recompute)
        _recompute.save_with_input(ctx, x, weight, y, mean, invstd, gamma, beta)
        _recompute.attach(out, functools.partial(_rebuild_bn_act, relu), (y, mean, invstd, gamma, beta),
                          recording=record, fold=("bn_act", relu))  # fmt: skip
        ctx.conf = (stride, padding, relu)
        ctx.plan = plan
        dispatch.remember_backend(ctx)
        return out

    @staticmethod
    @dispatch.on_forward_backend
    def backward(ctx, grad):
        stride, padding, relu = ctx.conf
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False, False, False)
        plan = ctx.plan
        chosen = []  # the implementations, when the fold question already chose them
        x, x_fold, (weight, y, mean, invstd, gamma, beta) = _recompute.load_with_input_folded(
            ctx, functools.partial(_input_foldable, stride, padding, need, chosen, plan)
        )
        x_bn = None
        if x_fold is not None:
            # x is the output of a conv_bn_act: its pre-BN tensor stands in for it (same shape), and the wgrad
            # rebuilds it on its x load (no rebuild launch)
            (_, x_relu), (x, x_mean, x_invstd, x_gamma, x_beta) = x_fold
            x_bn = (x_mean, x_invstd, x_gamma, x_beta, x_relu)
        dx = dw = None
        impls, bn_impl = chosen[0] if chosen else _backward_impls(plan, x, weight, stride, padding, need)
        if conv_ops.folds_bn(impls, need) and grad.dtype == x.dtype and bn_impl == "triton":
            # the BN's dx applied by dgrad / wgrad on load: reduction, dgrad, wgrad (three launches, no dz tensor)
            _backend.check_interpretable(y)
            slot = None if plan is None else plan.backward_slot(grad, x, y, need, x_bn)
            coef, dgamma, dbeta = bn_act_bwd_coefs(grad, y, mean, invstd, gamma, beta, relu, slot)
            dx, dw, *_ = conv_ops.conv_bwd(grad, x, weight, None, y, 1.0, relu, stride, padding, need, impls=impls,
                                           bn=coef, x_bn=x_bn, slot=slot)  # fmt: skip
        else:
            gy, dgamma, dbeta = bn_act_backward(grad, y, mean, invstd, gamma, beta, relu)
            if any(need):
                dx, dw, *_ = conv_ops.conv_bwd(gy, x, weight, None, None, 1.0, False, stride, padding, need,
                                               impls=impls, x_bn=x_bn)  # fmt: skip
        dgamma = _as_dtype(dgamma, gamma) if ctx.needs_input_grad[2] else None
        dbeta = _as_dtype(dbeta, beta) if ctx.needs_input_grad[3] else None
        return dx, dw, dgamma, dbeta, None, None, None, None, None, None, None, None, None, None, None


def _rebuild_bn_act(relu, y, mean, invstd, gamma, beta, out=None):
    """The forward's BN-apply + act again, on the tensors it ran on (checked then: no argument checks here)."""
    with _args.device_guard(y):
        return _bn_act_into(y, mean, invstd, _f32(gamma), _f32(beta), relu, _tile.new_cl(y.shape, y) if out is None
                            else out)  # fmt: skip


def _as_dtype(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == like.dtype else t.to(like.dtype)


def _backward_impls(plan, x, weight, stride, padding, need) -> tuple[dict, str]:
    """({"dgrad": name or None, "wgrad": name or None}, the BN-apply implementation) of a conv_bn_act backward on
    tensors like ``x`` (its shape, dtype and device: the input, or the pre-BN tensor standing in for it; the
    BN-apply choice depends on the dtype and device only, so it holds for the layer's own pre-BN output too).
    From the forward's plan, which decides them once per dispatch-table generation, else chosen now."""
    if plan is None or dispatch.recording_active():  # (a recording must see every choice)
        return conv_ops.bwd_impls(x, weight, stride, padding, need), _impl(x, "bn_act")
    dgrad, wgrad, bn_impl = plan.backward_impls(x, weight)
    return {"dgrad": dgrad if need[0] else None, "wgrad": wgrad if need[1] else None}, bn_impl


def _input_foldable(stride, padding, need, chosen, plan, tag, tensors, others) -> bool:
    """Whether a conv_bn_act backward can take its input's recipe -- another conv_bn_act's output (``tag``
    ("bn_act", relu), ``tensors`` (pre-BN y, mean, invstd, γ, β)) -- on its wgrad's x load instead of a rebuild:
    the wgrad runs on Triton (or is not needed), y has the input's shape and our kernels run there, and the
    per-channel vectors are float32 (γ and β present). The implementations it chooses (y has the input's shape,
    dtype and device: the same choice, :func:`_backward_impls`) go into ``chosen`` for the backward to use."""
    y, mean, invstd, gamma, beta = tensors
    weight = others[0]
    if tag[0] != "bn_act" or any(t is None or t.dtype != torch.float32 or not t.is_contiguous()
                                 for t in (mean, invstd, gamma, beta)):  # fmt: skip
        return False
    impls, bn_impl = _backward_impls(plan, y, weight, stride, padding, need)
    if bn_impl != "triton":
        return False
    chosen.append((impls, bn_impl))
    return impls["wgrad"] in (None, "triton")


def conv_bn_act_supported(x: torch.Tensor) -> bool:
    """The fused training step runs where our conv runs directly (eager, Triton-capable device)."""
    return conv_ops._eager_direct(x)


@amp.conv_family
@_args.on_input_device
def conv_bn_act(x, weight, gamma, beta, running_mean, running_var, *, momentum: float, eps: float,
                stride=(1, 1), padding=(0, 0, 0, 0), relu: bool = True, out=None) -> torch.Tensor:  # fmt: skip
    """Training-mode ``act(batch_norm(conv(x, weight)))`` fused (see the module docstring).

    x: (N, C, H, W) channels_last (NCHW is converted); weight (K, C, R, S); stride and padding in any form
    :func:`~inception_kernels.ops.conv2d` accepts (padding: int, pair, (top, bottom, left, right), "same",
    "valid"); gamma/beta (K,) or None; running stats (K,) or both None (not tracked). Returns a new
    channels_last (N, K, P, Q) tensor, or writes ``out`` (a channels_last slice of a buffer that no autograd
    node has recorded, e.g. a block output the block engine joins with ``_SliceJoin``) and returns it. Where
    our conv cannot run directly (reference backend, torch.compile) it is the plain PyTorch composition.
    """
    x, gamma, beta, momentum, eps, relu, stride, padding, shape = _conv_bn_act_args(
        x, weight, gamma, beta, momentum, eps, stride, padding, relu, out
    )
    traced = traced_bn_supported(x) and conv_ops._ours(x)
    if shape[0] * shape[2] * shape[3] == 0 or not (traced or conv_bn_act_supported(x)):
        return _conv_bn_act_composed(x, weight, gamma, beta, running_mean, running_var, momentum, eps, stride,
                                     padding, relu, out)  # fmt: skip
    rm, rv, write_back = _running_stats(running_mean, running_var, weight.shape[0], x, what="K")
    if traced:
        y = _traced_conv_bn_act(x, weight, gamma, beta, rm, rv, momentum, eps, stride, padding, relu)
        if out is not None:
            y = out.copy_(y)
    else:
        y = _ConvBNActFn.apply(x, weight, gamma, beta, rm, rv, momentum, eps, stride, padding, relu, out,
                               _records(x, weight, gamma, beta))  # fmt: skip
    if write_back is not None:
        write_back()
    return y


def _records(x, weight, gamma, beta) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, gamma, beta))


def _conv_bn_act_args(x, weight, gamma, beta, momentum, eps, stride, padding, relu, out, master=False):
    """conv_bn_act's argument checks: (x as channels_last, γ, β, momentum, eps, relu, stride, padding, output
    shape)."""
    stride, padding, _, _ = conv_ops._validate(x, weight, stride, padding, None, None, None, None, 1.0, None,
                                               master=master)  # fmt: skip
    K = weight.shape[0]
    gamma = None if gamma is None else _args.channel_vector(gamma, "gamma", K, x, what="K")
    beta = None if beta is None else _args.channel_vector(beta, "beta", K, x, what="K")
    momentum, eps, relu = _bn_scalars(momentum, eps, relu)
    shape = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
    if out is not None:
        _args.out_tensor(out, shape, x)
        if out.requires_grad:
            raise ValueError(
                "conv_bn_act(out=...): out must not require grad (autograd records this op's output)"
            )
        if not torch.compiler.is_compiling():
            _args.no_overlap(out, {"x": x, "weight": weight})
    x = x if _args.is_nhwc_strided(x) else x.contiguous(memory_format=torch.channels_last)
    return x, gamma, beta, momentum, eps, relu, stride, padding, shape


class ConvBNActPlan:
    """:func:`conv_bn_act`'s training step decided once for one call signature (issue 12: plans per signature and
    mode): the arguments checked, the conv implementation chosen and, on the triton route, its launch (config,
    grid, constexprs) fixed. ``plan(x, weight, gamma, beta, running_mean, running_var, momentum, out=None)`` then
    runs the step on tensors of the signature it was made for (the same shapes, strides, dtypes, device, the same
    presence of γ / β / running statistics and the same ``out`` view geometry); the tensors' values are read at
    each call (nothing is folded: the parameters change every step). Made by :func:`plan_conv_bn_act`.

    The rest of the step is decided by the plan on first use and kept: the finalize launch (:meth:`finalize`), the
    BN-apply's implementation and launch (:meth:`apply`), the backward's implementations (:meth:`backward_impls`)
    and, per gradient geometry, its launches (:meth:`backward_slot`)."""

    def __init__(self, x, weight, eps, stride, padding, relu, shape, out):
        self.eps, self.stride, self.padding, self.relu, self.shape = eps, stride, padding, relu, shape
        self.geometry = _args.geometry(x, weight, out)
        impl = dispatch.choose_conv("conv_fwd", x, weight, stride, padding, None, False, None, None, True, False)
        if impl.name == "triton":
            launch = conv_triton.fwd_launcher(x, weight, None, None, None, stride, padding, 1.0, False,
                                              _tile.new_cl(shape, x), stats=True)  # fmt: skip

            def conv(x, weight, partials):
                y = _tile.new_cl(shape, x)
                wp = _weights.weight_operand(weight, dtype=x.dtype)
                launch(x, wp, y, stats=partials)
                return y

        else:

            def conv(x, weight, partials):
                return impl.fn(x, weight, None, None, None, stride, padding, 1.0, False, None, None, partials)

        self.conv = conv
        self.M = shape[0] * shape[2] * shape[3]
        self._backward = self._apply = None
        self._finalizers: dict = {}
        self._slots: dict = {}

    def backward_slot(self, grad, x, y, need, x_bn) -> dict:
        """The launch decisions of a backward of this plan's steps on the fold route (BN reduction, dgrad, wgrad:
        see ``conv_triton.wgrad_triton``'s ``slot``), kept per what can differ between such backwards: the
        incoming gradient's shape, strides and dtype, the input's (or the pre-BN tensor's standing in for it)
        strides and dtype, the strides of the step's pre-BN output ``y``, which gradients are needed, whether and
        how the input's BN is rebuilt on load (``x_bn``), and the launch switches (TF32, autotune, interpreter).
        Everything else is the plan's."""
        key = (grad.shape, grad.stride(), grad.dtype, x.stride(), x.dtype, y.stride(), need, None if x_bn is None
               else bool(x_bn[4]), conv_triton._launch_env())  # fmt: skip
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= 8:
                self._slots.clear()
            slot = self._slots[key] = {}
        return slot

    def finalize(self, partials, running_mean, running_var, momentum, batches):
        """:func:`bn_finalize` of this step's partials, its launch decided once per (running statistics updated,
        batches counted); mean, var and invstd are three views of one buffer."""
        key = (running_mean is not None, batches is not None)
        launcher = self._finalizers.get(key)
        if launcher is None:
            T, K = partials[1].shape
            launcher = self._finalizers[key] = _finalize_launcher(T, K, partials[1].device, *key, None)
        K = self.shape[1]
        outs = _tile.new_buf((3 * K,), partials[1].device).split_with_sizes((K, K, K))
        return _finalize_into(launcher, partials, outs, self.M, self.eps, running_mean, running_var, momentum,
                              batches)  # fmt: skip

    def apply(self, y, mean, invstd, gamma, beta, out):
        """BN-apply + act of this step into ``out`` (None: a new channels_last tensor), by the implementation
        chosen once per dispatch-table generation (on the triton route: its launch fixed; the plan's geometry
        check fixed ``out``'s geometry, the plan's signature γ and β's presence)."""
        gen = dispatch.generation()
        got = self._apply
        if got is None or got[0] != gen:
            impl = _impl(y, "bn_act")
            if impl == "triton":
                _backend.check_interpretable(y)
            launch = _apply_launcher(y, gamma, beta, self.relu, y if out is None else out) if impl == "triton" else None
            got = self._apply = (gen, launch)
        out = _tile.new_cl(self.shape, y) if out is None else out
        if got[1] is None:
            return _bn_act_into(y, mean, invstd, _f32(gamma), _f32(beta), self.relu, out)
        return _run_apply(got[1], y, out, mean, invstd, _f32(gamma), _f32(beta))

    def backward_impls(self, x, weight) -> tuple[str, str, str]:
        """(dgrad, wgrad, BN-apply implementation names) of the backward of this plan's steps, chosen on the first
        backward (``x``: the step's input or the pre-BN tensor standing in for it; ``weight``: its weight) and kept
        while the dispatch tables (``dispatch.generation``) stay: every tensor they depend on has the plan's
        signature."""
        gen = dispatch.generation()
        got = self._backward
        if got is None or got[0] != gen:
            both = conv_ops.bwd_impls(x, weight, self.stride, self.padding, (True, True, False, False, False))
            got = self._backward = (gen, both["dgrad"], both["wgrad"], _impl(x, "bn_act"))
        return got[1:]

    def __call__(self, x, weight, gamma, beta, running_mean, running_var, momentum, out=None, batches=None):
        """``batches``: the BN's ``num_batches_tracked`` (int64, one element, on x's device), counted by the
        finalize launch instead of a separate ``add_`` (None: the caller counts)."""
        if _args.geometry(x, weight, out) != self.geometry:
            _args.check_plan_geometry(self.geometry, x, weight, out, what="conv_bn_act plan")
        if batches is not None and (batches.dtype != torch.int64 or batches.numel() != 1
                                    or batches.device != x.device):  # fmt: skip
            raise ValueError(f"batches must be one int64 element on {x.device}, got {batches.dtype} "
                             f"{tuple(batches.shape)} on {batches.device}")  # fmt: skip
        return _ConvBNActFn.apply(x, weight, gamma, beta, running_mean, running_var, float(momentum), self.eps,
                                  self.stride, self.padding, self.relu, out, _records(x, weight, gamma, beta),
                                  self, batches)  # fmt: skip


def plan_conv_bn_act(x, weight, gamma, beta, running_mean, running_var, *, momentum: float, eps: float,
                     stride=(1, 1), padding=(0, 0, 0, 0), relu: bool = True, out=None,
                     master: bool = False) -> ConvBNActPlan | None:  # fmt: skip
    """A :class:`ConvBNActPlan` for calls like ``conv_bn_act(x, weight, ...)`` with these arguments (checked here,
    as :func:`conv_bn_act` checks them), or None where a plan cannot serve them and :func:`conv_bn_act` must run:
    an input our fused step does not take (see :func:`conv_bn_act_supported`), an empty output, running
    statistics that are not float32 contiguous, NCHW ``x``, a dispatch recording in progress.

    ``master``: ``weight`` may be the float32 master weight of a 16-bit x (autocast, ``ops.amp``): the step casts
    it in the copy that packs it for the GEMM, and its gradient comes back in float32 as the wgrad accumulates it
    (no cast launch either way, and no rounding of the gradient to 16 bits)."""
    x2, gamma, beta, momentum, eps, relu, stride, padding, shape = _conv_bn_act_args(
        x, weight, gamma, beta, momentum, eps, stride, padding, relu, out, master=master
    )
    if x2 is not x or shape[0] * shape[2] * shape[3] == 0 or not conv_bn_act_supported(x):
        return None
    if dispatch.recording_active() or _running_stats(running_mean, running_var, weight.shape[0], x, "K")[2]:
        return None
    return ConvBNActPlan(x, weight, eps, stride, padding, relu, shape, out)


def _conv_bn_act_composed(x, weight, gamma, beta, running_mean, running_var, momentum, eps, stride, padding,
                          relu, out):  # fmt: skip
    """conv_bn_act from ops.conv2d and F.batch_norm (the reference definition; autograd by PyTorch)."""
    y = conv_ops.conv2d(x, weight, stride=stride, padding=padding)
    if y.numel() == 0:
        z = _empty_bn(y, gamma, beta, eps, relu)
    else:
        _running_stats(running_mean, running_var, weight.shape[0], x, what="K")  # the checks only
        z = reference.batch_norm_act(y, gamma, beta, running_mean, running_var, momentum, eps, relu)
    return z.contiguous(memory_format=torch.channels_last) if out is None else out.copy_(z)


# ----------------------------------------------------------------------------------------------------------
# Ahead-of-time compile registry
# ----------------------------------------------------------------------------------------------------------
_UNIT = {"sxc": 1, "soc": 1, "sgc": 1, "sdc": 1}


def _strides(names: str) -> dict:
    return {n.strip(): "i32:16" for n in names.split(",") if n.strip()}


@functools.cache
def _partials_types(dt: str) -> dict:
    return {"x_ptr": f"*{dt}", "cnt_ptr": "*fp32", "mean_ptr": "*fp32", "m2_ptr": "*fp32",
            "M": "i32", "C": "i32:16", "H": "i32", "W": "i32", **_strides("sxn, sxh, sxw"), "sxc": 1,
            "IDX_T": tl.int32}  # fmt: skip


@functools.cache
def _finalize_types(dt: str) -> dict:
    return {**{p: "*fp32" for p in ("cnt_ptr", "pmean_ptr", "pm2_ptr", "mean_ptr", "var_ptr", "invstd_ptr",
                                     "rmean_ptr", "rvar_ptr", "qn_ptr", "qmean_ptr", "qm2_ptr")},
            "nbt_ptr": "*i64", "arrive_ptr": "*i32", "T": "i32", "C": "i32", "rows_per_program": "i32",
            "eps": "fp32", "momentum": "fp32", "unbias": "fp32", "UPDATE_RUNNING": True, "COUNT_BATCH": True}  # fmt: skip


_AFFINE = {"mean_ptr": "*fp32", "invstd_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32",
           "HAS_W": True, "HAS_B": True, "RELU": True, "IDX_T": tl.int32, "M": "i32", "C": "i32:16",
           "H": "i32", "W": "i32"}  # fmt: skip


@functools.cache
def _fwd_types(dt: str) -> dict:
    return {"x_ptr": f"*{dt}", "out_ptr": f"*{dt}", **_AFFINE, **_strides("sxn, sxh, sxw, son, soh, sow"),
            "sxc": 1, "soc": 1}  # fmt: skip


@functools.cache
def _reduce_types(dt: str) -> dict:
    return {"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "pb_ptr": "*fp32", "pw_ptr": "*fp32", "gb_ptr": "*fp32",
            "gw_ptr": "*fp32", "cnt_ptr": "*i32", "coef_ptr": "*fp32", "inv_m": "fp32", "COEFS": True, **_AFFINE,
            **_strides("sgn, sgh, sgw, sxn, sxh, sxw"), "sgc": 1, "sxc": 1}  # fmt: skip


@functools.cache
def _dx_types(dt: str) -> dict:
    return {"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dx_ptr": f"*{dt}", "gb_ptr": "*fp32", "gw_ptr": "*fp32",
            "inv_m": "fp32", **_AFFINE, **_strides("sgn, sgh, sgw, sxn, sxh, sxw, sdn, sdh, sdw"),
            "sgc": 1, "sxc": 1, "sdc": 1}  # fmt: skip


_TILE_CONFIG = (triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_C": BLOCK_C}, num_warps=NUM_WARPS, num_stages=1),)
dispatch.register_memory_bound("bn_stats")
dispatch.register_memory_bound("bn_act")
register_kernel(KernelSpec("bn_partials", _bn_partials, _TILE_CONFIG, _partials_types))
register_kernel(KernelSpec(
    "bn_finalize", _bn_finalize,
    (triton.Config({"BLOCK_T": FINALIZE_BLOCK_T, "BLOCK_C": FINALIZE_BLOCK_C}, num_warps=NUM_WARPS, num_stages=1),),
    _finalize_types,
))  # fmt: skip
register_kernel(KernelSpec("bn_act_fwd", _bn_act_fwd, _TILE_CONFIG, _fwd_types))
register_kernel(KernelSpec(
    "bn_act_bwd_reduce", _bn_act_bwd_reduce,
    (triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_C": BLOCK_C, "BLOCK_T": REDUCE_BLOCK_T}, num_warps=NUM_WARPS,
                   num_stages=1),),
    _reduce_types,
))  # fmt: skip
register_kernel(KernelSpec("bn_act_bwd_dx", _bn_act_bwd_dx, _TILE_CONFIG, _dx_types))
