"""The v1 implicit-GEMM conv kernels (Triton), their tile configs and how one is chosen, and their AOT types.

Layout: tensors are logical NCHW stored channels_last (physically NHWC). The forward and dgrad read the weight
(K, C, R, S) in the channels_last layout (physically K, R, S, C, as CUTLASS's NHWC convs read it): a channels_last
weight, or any contiguous 1×1 weight, is read as it is; another is copied once per version
(``_weights.weight_operand``), one copy serving both. wgrad writes dw in the weight's layout (``DW_CL``), so
autograd accumulates it without a copy. All kernels take explicit element strides, so an input, a residual,
``out`` and ``grad_out`` may each be a channel slice of a larger channels_last buffer.

GEMM views (M rows, N columns, reduction):
* forward: M = N·P·Q output pixels, N = K output channels, reduction over (r, s, c) with c innermost.
* dgrad:   M = N·H·W input pixels, split into stride_h·stride_w phases so that every (pixel, tap) pair the
  kernel visits is a real one (no zero-insertion, no wasted MMAs for stride 2), N = C, reduction (r, s, k).
* wgrad:   M = K, N = C per tap (r, s), reduction over N·P·Q, split-K into a fixed number of slabs that the last
  program of each output tile sums in a fixed order inside the same launch (deterministic: the same bits on
  every run).
dgrad and wgrad can also apply the forward epilogue's gradient themselves (ReLU mask from the saved output,
residual_scale, and in wgrad the bias gradient), so a conv backward needs no separate pass over grad_out.
The launchers are in ``conv_triton``; the op (autograd, registered ops, argument checks) in ``conv``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence

import torch

from .. import _backend
from ..utils import record_launch
from ._registry import KernelSpec, register_kernel
from ._tile import last_to_arrive, reset_arrivals
from ._triton import tl, triton

MAX_KERNEL = 7

# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _store_stats(v, mask_m, offs_c, mask_c, pid_m, first, M, C, cnt_ptr, mean_ptr, m2_ptr, BLOCK_M: tl.constexpr):
    """BN partial statistics of the fp32 tile ``v`` (rows ``mask_m`` of row tile ``pid_m``, channels ``offs_c``):
    row count, mean and centred sum of squares M2 by the corrected two-pass algorithm over registers (Chan, Golub
    and LeVeque): the deviations from the first mean are exact, their sum corrects the mean for the rounding of the
    plain sum (on a mean that dwarfs the spread that rounding dominated the variance error) and M2 for the corrected
    mean; the partials are combined later in a fixed order by ``bn_finalize`` (Chan et al.). Layout of
    ``conv_triton.stats_partials``: a row per STATS_ROWS output rows; the tile's partial goes to the first of its
    rows and (by the ``first`` program of the row tile) count 0 to the others, so nothing is zero-filled first."""
    cnt = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M)
    t_mean = tl.sum(tl.where(mask_m[:, None], v, 0.0), axis=0) / cnt
    dev = tl.where(mask_m[:, None], v - t_mean[None, :], 0.0)
    d_sum = tl.sum(dev, axis=0)
    row = pid_m * (BLOCK_M // STATS_ROWS)
    tl.store(mean_ptr + row * C + offs_c, t_mean + d_sum / cnt, mask=mask_c)
    m2 = tl.maximum(tl.sum(dev * dev, axis=0) - d_sum * d_sum / cnt, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(m2_ptr + row * C + offs_c, m2, mask=mask_c)  # (M2 ≥ 0 exactly; a constant tile could round below)
    if first:
        tl.store(cnt_ptr + row, cnt.to(tl.float32))
        if BLOCK_M > STATS_ROWS:
            j = tl.arange(0, BLOCK_M // STATS_ROWS)
            tl.store(cnt_ptr + row + j, tl.zeros(j.shape, tl.float32),
                     mask=(j > 0) & (row + j < tl.cdiv(M, STATS_ROWS)))  # fmt: skip


@triton.jit
def bn_coefs(coef_ptr, offs, mask, C):
    """The per-channel rows of a BN backward's coefficient buffer ((6, C) fp32, written by the reduction of
    ``batchnorm._bn_act_bwd_reduce``): mean, invstd, γ, β, dβ/M, dγ/M."""
    mean = tl.load(coef_ptr + offs, mask=mask, other=0.0)
    invstd = tl.load(coef_ptr + C + offs, mask=mask, other=0.0)
    w = tl.load(coef_ptr + 2 * C + offs, mask=mask, other=0.0)
    b = tl.load(coef_ptr + 3 * C + offs, mask=mask, other=0.0)
    gb = tl.load(coef_ptr + 4 * C + offs, mask=mask, other=0.0)
    gw = tl.load(coef_ptr + 5 * C + offs, mask=mask, other=0.0)
    return mean, invstd, w, b, gb, gw


@triton.jit
def bn_grad(g, v, mean, invstd, w, b, gb, gw, RELU: tl.constexpr):
    """The gradient entering a training-mode BN (+ ReLU) from the one leaving it, on an fp32 tile whose axis 1 is
    the channel (vectors of :func:`bn_coefs`): g the output's gradient, v the BN input.
    x̂ = (v − mean)·invstd, g' = g·[x̂·γ + β > 0] (the mask recomputed), dz = γ·invstd·(g' − dβ/M − x̂·dγ/M)."""
    xhat = (v - mean[None, :]) * invstd[None, :]
    if RELU:
        g = tl.where(xhat * w[None, :] + b[None, :] > 0, g, 0.0)
    return (w * invstd)[None, :] * (g - gb[None, :] - xhat * gw[None, :])


@triton.jit
def _fwd_epilogue(
    acc, n, p, q, offs_n, mask_m, mask_n, pid_m, pid_n, M, K,
    out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr, st_cnt_ptr, st_mean_ptr, st_m2_ptr,
    son, sok, sop, soq, srn, srk, srp, srq, s2n, s2k, s2p, s2q, res_scale, k_split,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    HAS_OUT2: tl.constexpr, STATS: tl.constexpr, IDX_T: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """The forward epilogue shared by every forward kernel (v1 ``_conv_fwd`` and ``conv_v2``): on the fp32
    accumulator tile of rows (n, p, q) x channels ``offs_n``: scale, bias, residual_scale, + residual, ReLU, BN
    partial statistics of row tile ``pid_m``, then the store into ``out`` (and ``out2`` past ``k_split``)."""
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = acc * res_scale
    n64 = n.to(IDX_T)
    p64 = p.to(IDX_T)
    q64 = q.to(IDX_T)
    mask_out = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        r_ptrs = res_ptr + (n64 * srn + p64 * srp + q64 * srq)[:, None] + offs_n.to(IDX_T)[None, :] * srk
        acc = acc + tl.load(r_ptrs, mask=mask_out, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as torch.relu
    if STATS:
        # Batch-norm statistics of this tile (BLOCK_M rows x BLOCK_N channels) from the fp32 accumulator
        _store_stats(acc, mask_m, offs_n, mask_n, pid_m, pid_n == 0, M, K, st_cnt_ptr, st_mean_ptr, st_m2_ptr,
                     BLOCK_M)  # fmt: skip
    if HAS_OUT2:
        # Horizontal fusion: output channels [0, k_split) go to out, [k_split, K) to out2 (channel 0 onwards).
        first = offs_n < k_split
        o_ptrs = out_ptr + (n64 * son + p64 * sop + q64 * soq)[:, None] + offs_n.to(IDX_T)[None, :] * sok
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_out & first[None, :])
        k2 = (offs_n - k_split).to(IDX_T)
        o2_ptrs = out2_ptr + (n64 * s2n + p64 * s2p + q64 * s2q)[:, None] + k2[None, :] * s2k
        tl.store(o2_ptrs, acc.to(out2_ptr.dtype.element_ty), mask=mask_out & (~first)[None, :])
    else:
        o_ptrs = out_ptr + (n64 * son + p64 * sop + q64 * soq)[:, None] + offs_n.to(IDX_T)[None, :] * sok
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_out)


def _conv_fwd(
    x_ptr, w_ptr, out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr,
    st_cnt_ptr, st_mean_ptr, st_m2_ptr,
    N, C, H, W, K, P, Q,
    sxn, sxc, sxh, sxw,
    son, sok, sop, soq,
    srn, srk, srp, srq,
    s2n, s2k, s2p, s2q,
    stride_h, stride_w, pad_t, pad_l,
    res_scale, k_split,
    R: tl.constexpr, S: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    HAS_OUT2: tl.constexpr, STATS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    M = N * P * Q
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(K, BLOCK_N)
    # Grouped tile order: GROUP_M row tiles share the weight columns while they sit in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_n = offs_n < K
    q = offs_m % Q
    t = offs_m // Q
    p = t % P
    n = t // P
    h_base = p * stride_h - pad_t
    w_base = q * stride_w - pad_l
    x_row = x_ptr + n.to(IDX_T) * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    num_cb = tl.cdiv(C, BLOCK_C)
    # One flat loop over (r, s, c-block) so the compiler software-pipelines across taps too.
    for it in range(R * S * num_cb):
        cb = it % num_cb
        rs = it // num_cb
        r = rs // S
        s = rs % S
        h = h_base + r
        w = w_base + s
        valid = mask_m & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        cc = cb * BLOCK_C + offs_c
        mask_c = cc < C
        a_ptrs = (x_row + h.to(IDX_T) * sxh + w.to(IDX_T) * sxw)[:, None] + cc.to(IDX_T)[None, :] * sxc
        a = tl.load(a_ptrs, mask=valid[:, None] & mask_c[None, :], other=0.0)
        b_ptrs = w_ptr + (rs * C + cc)[:, None] + offs_n[None, :] * (R * S * C)
        b = tl.load(b_ptrs, mask=mask_c[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    _fwd_epilogue(
        acc, n, p, q, offs_n, mask_m, mask_n, pid_m, pid_n, M, K,
        out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr, st_cnt_ptr, st_mean_ptr, st_m2_ptr,
        son, sok, sop, soq, srn, srk, srp, srq, s2n, s2k, s2p, s2q, res_scale, k_split,
        HAS_SCALE, HAS_BIAS, HAS_RES, RELU, HAS_OUT2, STATS, IDX_T, BLOCK_M,
    )  # fmt: skip


def _epilogue_bwd(
    g_ptr, y_ptr, gp_ptr, gres_ptr, gbias_ptr,
    M, K, P, Q,
    sgn, sgk, sgp, sgq,
    syn, syk, syp, syq,
    res_scale,
    RELU: tl.constexpr, WRITE_GRES: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """gz = grad_out · [y > 0]; gres = gz; gp = residual_scale · gz (contiguous NHWC); bias partials Σ_m gp."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_k = offs_k < K
    mask = mask_m[:, None] & mask_k[None, :]
    q = (offs_m % Q).to(IDX_T)
    t = offs_m // Q
    p = (t % P).to(IDX_T)
    n = (t // P).to(IDX_T)
    k64 = offs_k.to(IDX_T)
    g = tl.load(g_ptr + (n * sgn + p * sgp + q * sgq)[:, None] + k64[None, :] * sgk, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if RELU:
        y = tl.load(y_ptr + (n * syn + p * syp + q * syq)[:, None] + k64[None, :] * syk, mask=mask, other=0.0)
        g = tl.where(y > 0, g, 0.0)
    dense = offs_m.to(IDX_T)[:, None] * K + k64[None, :]
    if WRITE_GRES:
        tl.store(gres_ptr + dense, g.to(gres_ptr.dtype.element_ty), mask=mask)
    gp = g * res_scale
    tl.store(gp_ptr + dense, gp.to(gp_ptr.dtype.element_ty), mask=mask)
    tl.store(gbias_ptr + pid_m * K + offs_k, tl.sum(gp, axis=0), mask=mask_k)


def _conv_dgrad(
    g_ptr, w_ptr, dx_ptr, y_ptr, bn_ptr,
    N, C, H, W, K, P, Q,
    sgn, sgk, sgp, sgq,
    sdn, sdc, sdh, sdw,
    syn, syk, syp, syq,
    stride_h, stride_w, pad_t, pad_l,
    res_scale,
    R: tl.constexpr, S: tl.constexpr,
    RELU: tl.constexpr, SCALE_G: tl.constexpr, BN_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """dx[n, h, w, c] = Σ_{r, s, k} g[n, p, q, k] · w[k, r, s, c] (the channels_last weight) with
    h = p·stride_h − pad_t + r.

    Program axis 1 is the stride phase (a, b): it owns the input pixels with (h + pad_t) % stride_h == a and
    (w + pad_l) % stride_w == b, which receive exactly the taps r ≡ a, s ≡ b; so every loaded row is a real
    contribution. Pixels that no tap reaches get an explicit zero.

    The forward epilogue's gradient folded in (the backward then needs no pass over grad_out): ``RELU`` masks
    g with [y > 0] in the A-operand load (y: the saved output, with its own strides; the one addition to the
    mainloop), ``SCALE_G`` multiplies the fp32 accumulator by ``res_scale`` (linear, so exact to do last). The
    per-channel scale is always in the weight operand (a scaled copy). Both off: the mainloop is the plain GEMM, as before.

    ``BN_G``: g is the gradient of a training-mode BN (+ ReLU with ``RELU``) that follows the conv, y the BN's
    input (the conv's output), and the A operand is the gradient entering the BN (:func:`bn_grad` from the
    coefficients at ``bn_ptr``), zero on taps outside the output: the BN backward's dx pass is not needed.
    """
    pid = tl.program_id(0)
    phase = tl.program_id(1)
    a = phase // stride_w
    b = phase % stride_w
    Hs = tl.cdiv(H, stride_h)
    Ws = tl.cdiv(W, stride_w)
    M = N * Hs * Ws
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(C, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < C
    j = offs_m % Ws
    t = offs_m // Ws
    i = t % Hs
    n = t // Hs
    h = (a - pad_t % stride_h + stride_h) % stride_h + i * stride_h
    w = (b - pad_l % stride_w + stride_w) % stride_w + j * stride_w
    mask_m = (offs_m < M) & (h < H) & (w < W)
    hb = (h + pad_t) // stride_h
    wb = (w + pad_l) // stride_w
    g_row = g_ptr + n.to(IDX_T) * sgn
    if RELU or BN_G:
        y_row = y_ptr + n.to(IDX_T) * syn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    taps_r = (R - a + stride_h - 1) // stride_h
    taps_s = (S - b + stride_w - 1) // stride_w
    num_kb = tl.cdiv(K, BLOCK_K)
    for it in range(taps_r * taps_s * num_kb):
        kb = it % num_kb
        tap = it // num_kb
        jr = tap // taps_s
        js = tap % taps_s
        r = a + jr * stride_h
        s = b + js * stride_w
        p = hb - jr
        q = wb - js
        valid = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        kk = kb * BLOCK_K + offs_k
        mask_k = kk < K
        live = valid[:, None] & mask_k[None, :]
        a_ptrs = (g_row + p.to(IDX_T) * sgp + q.to(IDX_T) * sgq)[:, None] + kk.to(IDX_T)[None, :] * sgk
        g = tl.load(a_ptrs, mask=live, other=0.0)
        if RELU or BN_G:
            y_ptrs = (y_row + p.to(IDX_T) * syp + q.to(IDX_T) * syq)[:, None] + kk.to(IDX_T)[None, :] * syk
            yv = tl.load(y_ptrs, mask=live, other=0.0)
        if BN_G:
            mean, invstd, bw, bb, gb, gw = bn_coefs(bn_ptr, kk, mask_k, K)
            dz = bn_grad(g.to(tl.float32), yv.to(tl.float32), mean, invstd, bw, bb, gb, gw, RELU)
            g = tl.where(live, dz, 0.0).to(g_ptr.dtype.element_ty)
        elif RELU:
            g = tl.where(yv > 0, g, 0.0)
        b_ptrs = w_ptr + (kk * (R * S * C) + (r * S + s) * C)[:, None] + offs_n[None, :]
        wt = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(g, wt, acc, input_precision=DOT_PRECISION)
    if SCALE_G:
        acc = acc * res_scale

    d_ptrs = (
        dx_ptr
        + (n.to(IDX_T) * sdn + h.to(IDX_T) * sdh + w.to(IDX_T) * sdw)[:, None]
        + offs_n.to(IDX_T)[None, :] * sdc
    )
    tl.store(d_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _conv_wgrad(
    x_ptr, g_ptr, ws_ptr, dw_ptr, y_ptr, db_ptr, cnt_ptr, dres_ptr, bn_ptr, xm_ptr, xs_ptr, xw_ptr, xb_ptr,
    N, C, H, W, K, P, Q,
    sxn, sxc, sxh, sxw,
    sgn, sgk, sgp, sgq,
    syn, syk, syp, syq,
    stride_h, stride_w, pad_t, pad_l,
    rows_per_split, num_splits, res_scale,
    R: tl.constexpr, S: tl.constexpr,
    RELU: tl.constexpr, SCALE_G: tl.constexpr, BIAS_GRAD: tl.constexpr, SPLIT: tl.constexpr,
    WRITE_RES: tl.constexpr, BN_G: tl.constexpr, X_BN: tl.constexpr, X_RELU: tl.constexpr, DW_CL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Weight gradient dw[k, c, r, s] = Σ_m g[m, k] · x[m ⊕ (r, s), c] (fp32, unscaled), split-K, in one launch.

    Here BLOCK_M tiles K (output rows), BLOCK_N tiles C, BLOCK_K tiles the N·P·Q reduction; program axis 2 is
    the split. ``dw`` is dense, contiguous or with ``DW_CL`` channels_last (the weight's layout). Without ``SPLIT``
    (one split) a program writes its tile of ``dw`` directly. With ``SPLIT`` each program writes its fp32 partial
    into its slab of ``ws`` (num_splits slabs in dw's layout); the last program of an
    output tile to finish (counted in ``cnt_ptr``, one int32 per tile, zero on entry and reset to zero by that
    program) sums the slabs in split order 0, 1, ..., num_splits − 1 and writes ``dw``: a fixed order whoever
    arrives last, so the same inputs give the same bits on every run.

    The forward epilogue's gradient folded in, as in ``_conv_dgrad``: ``RELU`` masks the g load with [y > 0],
    ``SCALE_G`` multiplies the fp32 accumulators by ``res_scale`` after the mainloop. ``BIAS_GRAD``: the programs
    of the first (tap, C-block) column also sum their masked g rows per channel in fp32, so ``db`` (K,) =
    res_scale · Σ_m mask·g[m, k], through the same per-split partials (stored after the weight slabs in ``ws``)
    and the same fixed-order reduction. The last program reduces in 16-row chunks of its tile (few registers
    live next to the mainloop's). ``WRITE_RES``: those same programs (each g row of their K-block seen exactly
    once over the splits) also store the masked, unscaled g tile into ``dres``, the residual's gradient (a dense
    (N·P·Q, K) channels_last tensor of g's dtype): the residual case needs no pass over grad_out either.
    ``BN_G``: g through a training-mode BN's backward on load, as in ``_conv_dgrad`` (the coefficients of the
    program's K-block loaded once). ``X_BN``: x is the pre-BN tensor of the training BN (+ ReLU with ``X_RELU``)
    that produced the conv's input, and the B operand is that input rebuilt on load, as ``batchnorm._bn_act_fwd``
    computes it (mean, invstd, γ, β at ``xm_ptr``, ``xs_ptr``, ``xw_ptr``, ``xb_ptr``; zero on padded taps): the
    backward needs no rebuild pass over the input.
    """
    pid_m = tl.program_id(0)
    pid_1 = tl.program_id(1)
    split = tl.program_id(2)
    num_cb = tl.cdiv(C, BLOCK_N)
    rs = pid_1 // num_cb
    cb = pid_1 % num_cb
    r = rs // S
    s = rs % S
    offs_k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < K
    mask_c = offs_c < C
    NPQ = N * P * Q
    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, NPQ)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if BIAS_GRAD:
        bacc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if BN_G:
        mean, invstd, bw, bb, gb, gw = bn_coefs(bn_ptr, offs_k, mask_k, K)
    if X_BN:
        x_mean = tl.load(xm_ptr + offs_c, mask=mask_c, other=0.0)
        x_scale = tl.load(xs_ptr + offs_c, mask=mask_c, other=0.0) * tl.load(
            xw_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)  # fmt: skip
        x_shift = tl.load(xb_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    for m0 in range(start, stop, BLOCK_K):
        offs_r = m0 + tl.arange(0, BLOCK_K)
        mask_r = offs_r < stop
        q = offs_r % Q
        t = offs_r // Q
        p = t % P
        n = (t // P).to(IDX_T)
        h = p * stride_h - pad_t + r
        w = q * stride_w - pad_l + s
        valid = mask_r & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        g_ptrs = (
            g_ptr
            + (n * sgn + p.to(IDX_T) * sgp + q.to(IDX_T) * sgq)[:, None]
            + offs_k.to(IDX_T)[None, :] * sgk
        )
        live = mask_r[:, None] & mask_k[None, :]
        g = tl.load(g_ptrs, mask=live, other=0.0)
        if RELU or BN_G:
            y_ptrs = (
                y_ptr
                + (n * syn + p.to(IDX_T) * syp + q.to(IDX_T) * syq)[:, None]
                + offs_k.to(IDX_T)[None, :] * syk
            )
            yv = tl.load(y_ptrs, mask=live, other=0.0)
        if BN_G:
            dz = bn_grad(g.to(tl.float32), yv.to(tl.float32), mean, invstd, bw, bb, gb, gw, RELU)
            g = tl.where(live, dz, 0.0).to(g_ptr.dtype.element_ty)
        elif RELU:
            g = tl.where(yv > 0, g, 0.0)
        if BIAS_GRAD:
            if pid_1 == 0:
                bacc += tl.sum(g.to(tl.float32), axis=0)
        if WRITE_RES:
            if pid_1 == 0:
                r_ptrs = dres_ptr + offs_r.to(IDX_T)[:, None] * K + offs_k.to(IDX_T)[None, :]
                tl.store(r_ptrs, g.to(dres_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_k[None, :])
        x_ptrs = (
            x_ptr
            + (n * sxn + h.to(IDX_T) * sxh + w.to(IDX_T) * sxw)[:, None]
            + offs_c.to(IDX_T)[None, :] * sxc
        )
        x_live = valid[:, None] & mask_c[None, :]
        xv = tl.load(x_ptrs, mask=x_live, other=0.0)
        if X_BN:
            xz = (xv.to(tl.float32) - x_mean[None, :]) * x_scale[None, :] + x_shift[None, :]
            if X_RELU:
                xz = tl.maximum(xz, 0.0, propagate_nan=tl.PropagateNan.ALL)
            xv = tl.where(x_live, xz, 0.0).to(x_ptr.dtype.element_ty)
        acc = tl.dot(tl.trans(g), xv, acc, input_precision=DOT_PRECISION)
    if SCALE_G:
        acc = acc * res_scale
        if BIAS_GRAD:
            bacc = bacc * res_scale
    if DW_CL:
        tile_off = ((offs_k[:, None] * (R * S) + rs) * C + offs_c[None, :]).to(IDX_T)
    else:
        tile_off = (offs_k[:, None] * C + offs_c[None, :]).to(IDX_T) * (R * S) + rs
    tile_mask = mask_k[:, None] & mask_c[None, :]
    if SPLIT:
        slab = K * C * (R * S)
        tl.store(ws_ptr + split.to(IDX_T) * slab + tile_off, acc, mask=tile_mask)
        if BIAS_GRAD:
            bias_parts = ws_ptr + num_splits.to(IDX_T) * slab
            if pid_1 == 0:
                tl.store(bias_parts + split * K + offs_k, bacc, mask=mask_k)
        tile = pid_m * tl.num_programs(1) + pid_1
        if last_to_arrive(cnt_ptr + tile, num_splits):
            for k0 in range(0, BLOCK_M, 16):
                rk = pid_m * BLOCK_M + k0 + tl.arange(0, 16)
                if DW_CL:
                    off = ((rk[:, None] * (R * S) + rs) * C + offs_c[None, :]).to(IDX_T)
                else:
                    off = (rk[:, None] * C + offs_c[None, :]).to(IDX_T) * (R * S) + rs
                msk = (rk < K)[:, None] & mask_c[None, :]
                tot = tl.zeros((16, BLOCK_N), dtype=tl.float32)
                src = ws_ptr + off
                for _ in range(num_splits):  # split order 0, 1, ...: the pointers step one slab (64-bit)
                    tot += tl.load(src, mask=msk, other=0.0, cache_modifier=".cg")
                    src += slab
                tl.store(dw_ptr + off, tot, mask=msk)
            if BIAS_GRAD:
                if pid_1 == 0:
                    btot = tl.zeros((BLOCK_M,), dtype=tl.float32)
                    for i in range(num_splits):
                        btot += tl.load(
                            bias_parts + i * K + offs_k, mask=mask_k, other=0.0, cache_modifier=".cg"
                        )
                    tl.store(db_ptr + offs_k, btot, mask=mask_k)
            reset_arrivals(cnt_ptr + tile)
    else:
        tl.store(dw_ptr + tile_off, acc, mask=tile_mask)
        if BIAS_GRAD:
            if pid_1 == 0:
                tl.store(db_ptr + offs_k, bacc, mask=mask_k)


# ----------------------------------------------------------------------------------------------------------
# Autotune configs and the pruning rule (shared by GPU autotuning, the interpreter and the AOT check)
# ----------------------------------------------------------------------------------------------------------
def _cfg(
    bm: int, bn: int, bk_name: str, bk: int, warps: int, stages: int, maxnreg: int | None = None, **extra
) -> triton.Config:
    opts = {} if maxnreg is None else {"maxnreg": maxnreg}
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, bk_name: bk, **extra}, num_warps=warps, num_stages=stages, **opts
    )


# ``.maxnreg 255`` for the dgrad configs marked with it below. Without one, ptxas aims at an occupancy step (96 or
# 128 registers for 128 threads) and spills a loop-crossing scalar to reach it: the plain fp32 dgrad's 8 B spills
# on sm_80 (BM64_BN64_BK32 at 128 registers, BM64_BN16_BK32 at 96); with it they use 152 and 114, no spill, and
# no other variant or dtype of those two configs spills (AOT-checked). Not for every config: with an explicit
# limit ptxas uses registers up to it, and most folded variants then spill (measured: up to 96 B).
PIN_REGS = 255


# (BLOCK_M, BLOCK_N, BLOCK_C, warps, stages): big tiles for wide layers, narrow-N tiles for K = 32..96,
# BLOCK_C = 16 for the C = 3 stem.
FWD_CONFIGS = tuple(
    _cfg(bm, bn, "BLOCK_C", bc, w, st, GROUP_M=8)
    for bm, bn, bc, w, st in [
        (128, 128, 32, 8, 3),
        (128, 128, 64, 8, 3),
        (128, 64, 32, 4, 4),
        (128, 64, 64, 4, 3),
        (64, 128, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 64, 4, 3),
        (128, 64, 16, 4, 4),
        (64, 32, 16, 4, 4),
        # few output pixels (8x8 and smaller grids at batch 1): short M tiles, deep channel blocks
        (32, 64, 64, 4, 3),
        (16, 64, 64, 4, 3),
    ]
)
# Output rows per BN-statistics partial row: the smallest BLOCK_M of any forward config (v1 here, v2's are no
# smaller; every BLOCK_M is a power-of-two multiple of it). A constexpr: the forward epilogue reads it.
_STATS_ROWS = min(c.kwargs["BLOCK_M"] for c in FWD_CONFIGS)
STATS_ROWS = tl.constexpr(_STATS_ROWS) if _backend.triton_available() else _STATS_ROWS  # (no kernel runs without)
# dgrad: BLOCK_N tiles C, BLOCK_K tiles the K reduction.
DGRAD_CONFIGS = tuple(
    _cfg(bm, bn, "BLOCK_K", bk, w, st, regs, GROUP_M=8)
    for bm, bn, bk, w, st, regs in [
        (128, 128, 32, 8, 3, None),
        (128, 64, 32, 4, 4, None),
        (64, 128, 32, 4, 4, None),
        (64, 64, 32, 4, 4, PIN_REGS),
        (128, 32, 32, 4, 4, None),
        (64, 32, 64, 4, 3, None),
        (64, 16, 32, 4, 4, PIN_REGS),
        (32, 64, 64, 4, 3, None),
        (16, 64, 64, 4, 3, None),
    ]
)
# wgrad: BLOCK_M tiles K, BLOCK_N tiles C, BLOCK_K tiles N·P·Q.
WGRAD_CONFIGS = tuple(
    _cfg(bm, bn, "BLOCK_K", bk, w, st)
    for bm, bn, bk, w, st in [
        (128, 128, 32, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (64, 32, 64, 4, 3),
        (32, 32, 64, 4, 3),
        (32, 16, 64, 4, 3),
        (16, 16, 64, 4, 3),
    ]
)
EPILOGUE_BWD_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=1)

_SMEM_BUDGET = 160 * 1024  # fits sm_80 (164 KB) and sm_90 (227 KB)

# Register budget of the backward kernels, in 32-bit words per thread of the tiles one mainloop step holds (see
# register_tile_words), by element size. Measured with the AOT check (triton 3.8, sm_80 and sm_90): the fp32
# (TF32) folded configs up to 128 words compile without spills, those at 144 and more spilled (104-504 B); the
# 16-bit ones up to 144 words compile without spills; the residual variant spilled (8-40 B) at 128-192 fp32 and
# 160 16-bit words as counted below. Conservative at the edge: the plain fp32 wgrad BM64_BN128_BK64 (160 words,
# 244-254 registers, no spill) and the residual variant's BM128_BN64_BK64 in 16-bit (208) are kept off too.
# With the weight gradient written in the weight's layout (2026-12-04) the 16-bit wgrad_relu_bias BM128_BN64_BK64
# (144 words, 255 registers) spilled 16 B on sm_90: the 16-bit budget is 136.
_REG_TILE_BUDGET = {4: 128, 2: 136}
# The BN-folded variants (``BN_G``: a training BN's backward on the g load) launch with ``.maxnreg`` PIN_REGS
# (:func:`launch_options`): without it ptxas aims at the 168-register occupancy step and spilled 8 B in five
# (config, dtype, arch) cases (among them BM128_BN32_BK32 16-bit and BM64_BN32_BK64 fp32 on sm_90); pinned, only
# the 16-bit dgrad BM128_BN64_BK32 (120 words) and wgrad BM64_BN128_BK64 (144) spilled (8 B at 255 registers,
# sm_80), so their 16-bit budget is lower (AOT check, triton 3.8, 2026-12-03).
_BN_TILE_BUDGET = {4: 128, 2: 112}

# Kernel flags that route the grad_out tile through registers (mask, sum, store) instead of straight into the MMA.
_FOLDED_FLAGS = ("RELU", "BIAS_GRAD", "WRITE_RES", "BN_G", "X_BN")


def folded(flags: dict) -> int:
    """How a dgrad / wgrad launch (its constexpr ``flags``) applies the epilogue's gradient in its mainloop: 0 not
    (grad_out straight into the MMA), 1 (mask and / or bias sum: one more grad_out-sized tile in registers), 2 (a
    BN's backward on load: the saved tile and fp32 temporaries), 3 (it also writes the residual's gradient)."""
    if flags.get("WRITE_RES"):
        return 3
    if flags.get("BN_G"):
        return 2
    return int(any(bool(flags.get(name)) for name in _FOLDED_FLAGS))


# The forward's budget in the same words (:func:`register_tile_words` with BLOCK_C as the reduction block): the
# fp32 (TF32) BM128_BN64_BC64 on 4 warps (160 words, 255 registers) spilled 40-48 B on sm_80 with the (R, S, C, K)
# weight and 32-88 B on sm_80 and sm_90 with the channels_last one (AOT check, triton 3.8, 2026-12-04); every other
# forward config is at most 128 words in fp32. 16-bit forwards are not limited.
_FWD_TILE_BUDGET = {4: 144}


def register_tile_words(cfg: triton.Config, elem_bytes: int, is_folded: int) -> float:
    """32-bit words per thread of the tiles a backward mainloop step holds in registers: the fp32 accumulator
    (BLOCK_M x BLOCK_N), the A (BLOCK_M x BLOCK_K: grad_out) and B operands, and ``is_folded`` (:func:`folded`)
    more A-sized tiles: the saved output the ReLU mask reads, and for the residual's gradient the masked tile in
    the store's layout with its addresses."""
    kw = cfg.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw.get("BLOCK_K", kw.get("BLOCK_C"))
    words = bm * bn + ((1 + int(is_folded)) * bm * bk + bk * bn) * elem_bytes / 4
    return words / (32 * cfg.num_warps)


def fits_registers(cfg: triton.Config, elem_bytes: int, is_folded: int | None) -> bool:
    """The one rule that keeps launches off configs that spill (``is_folded`` None: a forward config, limited by
    :data:`_FWD_TILE_BUDGET`). Used by :func:`prune_configs` (the heuristic, the autotuner's pruning) and by the
    AOT check's ``applies`` of the conv kernels, so neither picks nor compiles a config this rule rejects."""
    if is_folded is None:
        return register_tile_words(cfg, elem_bytes, 0) <= _FWD_TILE_BUDGET.get(elem_bytes, math.inf)
    budget = _BN_TILE_BUDGET if is_folded == 2 else _REG_TILE_BUDGET
    return register_tile_words(cfg, elem_bytes, is_folded) <= budget.get(elem_bytes, 128)


def launch_options(cfg: triton.Config, flags: dict) -> triton.Config:
    """The config a launch with these constexpr ``flags`` compiles with: the BN-folded variants pinned to
    ``.maxnreg`` PIN_REGS (see ``_BN_TILE_BUDGET``), every other launch the config as it is. The AOT check
    registers those variants with the pinned configs, so it compiles what the launchers run."""
    if not flags.get("BN_G") or getattr(cfg, "maxnreg", None) == PIN_REGS:
        return cfg
    return triton.Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=PIN_REGS)


def _dim_cap(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def prune_configs(
    configs: Sequence[triton.Config], dims: dict[str, int], elem_bytes: int, is_folded: int | None = None
) -> list[triton.Config]:
    """Keep the configs whose tiles do not exceed the problem (beyond the 16 that ``tl.dot`` needs).

    ``dims`` maps each block name to the extent it tiles, output blocks first and the reduction block last. A
    config survives when, for every block, the tile is at most the next power of two of the extent, the
    pipelined tiles fit the shared-memory budget, and (a backward kernel: ``is_folded`` not None) its register
    tiles fit :func:`fits_registers`. If none survives, the reduction block's limit is dropped (a short reduction
    only wastes part of one loop step; oversized output tiles multiply idle programs); if still none, the config
    with the smallest tiles is kept.
    """

    def fits(cfg, limits) -> bool:
        kw = cfg.kwargs
        if any(kw[name] > _dim_cap(extent) for name, extent in limits.items()):
            return False
        if not fits_registers(cfg, elem_bytes, is_folded):
            return False
        bk = kw.get("BLOCK_C", kw.get("BLOCK_K"))
        smem = max(cfg.num_stages - 1, 1) * (kw["BLOCK_M"] * bk + bk * kw["BLOCK_N"]) * elem_bytes
        return smem <= _SMEM_BUDGET

    kept = [cfg for cfg in configs if fits(cfg, dims)]
    if not kept:
        output_only = dict(list(dims.items())[:-1])
        kept = [cfg for cfg in configs if fits(cfg, output_only)]
    if not kept:
        kept = [min(configs, key=_tile_volume)]
    return kept


def _early_prune(dim_args: dict[str, str], backward: bool):
    """An ``early_config_prune`` hook mapping block names to the kernel arguments they tile."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        dims = {blk: _dim_value(args, arg) for blk, arg in dim_args.items()}
        elem = args["x_ptr" if "x_ptr" in args else "g_ptr"].element_size()
        return prune_configs(configs, dims, elem, folded(args) if backward else None)

    return prune


def _dim_value(args: dict, expr: str) -> int:
    # "N*P*Q" style products of integer arguments.
    return math.prod(int(args[name]) for name in expr.split("*"))


_FWD_DIMS = {"BLOCK_M": "N*P*Q", "BLOCK_N": "K", "BLOCK_C": "C"}
_DGRAD_DIMS = {"BLOCK_M": "N*H*W", "BLOCK_N": "C", "BLOCK_K": "K"}
_WGRAD_DIMS = {"BLOCK_M": "K", "BLOCK_N": "C", "BLOCK_K": "N*P*Q"}

_AUTOTUNE_KEYS = ["N", "C", "H", "W", "K", "P", "Q", "stride_h", "stride_w", "R", "S"]


def _jit(fn, configs, dims, backward=False):
    kernel = triton.jit(fn)
    prune = _early_prune(dims, backward)
    # a backward kernel's folded and plain launches prune differently (fits_registers): tuned apart
    keys = _AUTOTUNE_KEYS + list(_FOLDED_FLAGS) if backward else _AUTOTUNE_KEYS
    return triton.autotune(configs=list(configs), key=keys, prune_configs_by={"early_config_prune": prune})(kernel)


_conv_fwd_kernel = _jit(_conv_fwd, FWD_CONFIGS, _FWD_DIMS)
_conv_dgrad_kernel = _jit(_conv_dgrad, DGRAD_CONFIGS, _DGRAD_DIMS, backward=True)
_conv_wgrad_kernel = _jit(_conv_wgrad, WGRAD_CONFIGS, _WGRAD_DIMS, backward=True)
_epilogue_bwd_kernel = triton.jit(_epilogue_bwd)


def _tile_volume(cfg: triton.Config) -> int:
    return math.prod(v for k, v in cfg.kwargs.items() if k.startswith("BLOCK"))


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        # The interpreter: one program is a "wave", so the heuristic picks the largest tiles (the interpreter's
        # cost is per program and per loop step, not per element); tests pass other configs explicitly.
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=4096)
def heuristic_config(
    kind: str, dims: tuple, elem_bytes: int, programs_per_tile: int, sms: int, is_folded: int = 0
) -> triton.Config:
    """One config without timing anything: the largest output tile that still gives every SM a program.

    ``dims`` = ((block name, extent), ...); the first two blocks tile the output; ``is_folded``: a dgrad /
    wgrad launch with the epilogue's gradient in its mainloop (:func:`folded`). Among the configs that survive
    :func:`prune_configs`, pick the largest BLOCK_M·BLOCK_N whose grid (times ``programs_per_tile``, the stride
    phases or split-K slabs) is at least one wave of ``sms`` programs, then the deepest reduction block; if no
    config fills a wave, the one with the most programs.
    """
    configs = {"fwd": FWD_CONFIGS, "dgrad": DGRAD_CONFIGS, "wgrad": WGRAD_CONFIGS}[kind]
    d = dict(dims)
    kept = prune_configs(configs, d, elem_bytes, None if kind == "fwd" else is_folded)

    def programs(c):
        return math.ceil(d["BLOCK_M"] / c.kwargs["BLOCK_M"]) * math.ceil(d["BLOCK_N"] / c.kwargs["BLOCK_N"])

    red = "BLOCK_C" if kind == "fwd" else "BLOCK_K"
    full = [c for c in kept if programs(c) * programs_per_tile >= sms]
    if full:
        return max(
            full, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.kwargs[red], -c.num_stages)
        )
    return max(kept, key=lambda c: (programs(c), c.kwargs[red]))


def launcher(kernel, kind, grid, dims, elem_bytes, config, programs_per_tile, device, **kwargs):
    """What launching ``kernel`` (a triton.autotune object) with these compile-time arguments takes, decided once:
    returns ``launch(*args)`` for the run-time arguments. The config: the given one; else the autotuner when enabled
    on a GPU; else the heuristic config -- also in the interpreter, which has no GPU to time configs on (every other
    config is exercised there by the tests that pass ``config`` explicitly)."""
    if config is None:
        if _backend.autotune_enabled() and not _backend.interpreter_active():

            def tuned(*args):
                record_launch()
                kernel[grid](*args, **kwargs)

            return tuned
        is_folded = 0 if kind == "fwd" else folded(kwargs)
        config = heuristic_config(kind, tuple(dims.items()), elem_bytes, programs_per_tile, _num_sms(device), is_folded)
    config = launch_options(config, kwargs)
    meta = {**kwargs, **config.kwargs}
    run = kernel.fn[grid(meta)]
    meta.update(num_warps=config.num_warps, num_stages=config.num_stages)
    if getattr(config, "maxnreg", None) is not None:
        meta["maxnreg"] = config.maxnreg

    def launch(*args):
        record_launch()
        run(*args, **meta)

    return launch


# ----------------------------------------------------------------------------------------------------------
# AOT registration: the Triton types of each kernel's runtime arguments per dtype
# ----------------------------------------------------------------------------------------------------------
# The AOT table describes the common run-time case: channels_last tensors and weights whose channel counts are
# multiples of 16. The JIT then specializes the channel stride to the constant 1 and marks the other strides
# 16-divisible.
_UNIT_STRIDES = {"sxc": 1, "sok": 1, "srk": 1, "sgk": 1, "sdc": 1, "syk": 1, "s2k": 1}


def _for(fn, types: dict) -> dict:
    """Keep the entries that name parameters of ``fn`` (the shared stride table names all kernels' strides)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in types.items() if k in params}


def _types(names: str, ty: str) -> dict[str, str]:
    return {n.strip(): ty for n in names.split(",") if n.strip()}


@functools.cache
def _fwd_arg_types(dt: str) -> dict[str, object]:
    return _for(_conv_fwd, {
        **_types("x_ptr, w_ptr, out_ptr, res_ptr, out2_ptr", f"*{dt}"),
        **_types("scale_ptr, bias_ptr, st_cnt_ptr, st_mean_ptr, st_m2_ptr", "*fp32"),
        **_types("N, H, W, P, Q", "i32"),
        **_types("C, K", "i32:16"),
        **_types("sxn, sxh, sxw, son, sop, soq, srn, srp, srq, s2n, s2p, s2q", "i32:16"),
        "k_split": "i32",
        **_types("stride_h, stride_w, pad_t, pad_l", "i32"),
        "res_scale": "fp32",
        "R": 3, "S": 3, "HAS_SCALE": True, "HAS_BIAS": True, "HAS_RES": True, "RELU": True, "HAS_OUT2": False,
        "STATS": False, "DOT_PRECISION": "tf32" if dt == "fp32" else "ieee", "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


@functools.cache
def _dgrad_arg_types(dt: str) -> dict[str, object]:
    return _for(_conv_dgrad, {
        **_types("g_ptr, w_ptr, dx_ptr, y_ptr", f"*{dt}"),
        "bn_ptr": "*fp32",
        **_types("N, H, W, P, Q", "i32"),
        **_types("C, K", "i32:16"),
        **_types("sgn, sgp, sgq, sdn, sdh, sdw, syn, syp, syq", "i32:16"),
        **_types("stride_h, stride_w, pad_t, pad_l", "i32"),
        "res_scale": "fp32",
        "R": 3, "S": 3, "RELU": False, "SCALE_G": False, "BN_G": False,
        "DOT_PRECISION": "tf32" if dt == "fp32" else "ieee", "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


@functools.cache
def _dgrad_relu_arg_types(dt: str) -> dict[str, object]:
    """The backward of a conv + ReLU (a frozen BN's, say): mask in the A-operand load, residual_scale last."""
    return {**_dgrad_arg_types(dt), "RELU": True, "SCALE_G": True}


@functools.cache
def _dgrad_bn_arg_types(dt: str) -> dict[str, object]:
    """The backward of a conv → training BN → ReLU: the BN's backward in the A-operand load."""
    return {**_dgrad_arg_types(dt), "RELU": True, "BN_G": True}


@functools.cache
def _wgrad_arg_types(dt: str) -> dict[str, object]:
    return _for(_conv_wgrad, {
        **_types("x_ptr, g_ptr, y_ptr, dres_ptr", f"*{dt}"),
        **_types("ws_ptr, dw_ptr, db_ptr, bn_ptr, xm_ptr, xs_ptr, xw_ptr, xb_ptr", "*fp32"),
        "cnt_ptr": "*i32",
        **_types("N, H, W, P, Q", "i32"),
        **_types("C, K", "i32:16"),
        **_types("sxn, sxh, sxw, sgn, sgp, sgq, syn, syp, syq", "i32:16"),
        **_types("stride_h, stride_w, pad_t, pad_l, rows_per_split, num_splits", "i32"),
        "res_scale": "fp32",
        "R": 3, "S": 3, "RELU": False, "SCALE_G": False, "BIAS_GRAD": False, "SPLIT": True, "WRITE_RES": False,
        "BN_G": False, "X_BN": False, "X_RELU": False, "DW_CL": True, "DOT_PRECISION": "tf32" if dt == "fp32" else "ieee", "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


@functools.cache
def _wgrad_relu_bias_arg_types(dt: str) -> dict[str, object]:
    """ReLU mask, residual_scale and the bias gradient folded in, split-K reduced in the launch."""
    return {**_wgrad_arg_types(dt), "RELU": True, "SCALE_G": True, "BIAS_GRAD": True}


@functools.cache
def _wgrad_bn_arg_types(dt: str) -> dict[str, object]:
    """The weight gradient of a conv → training BN → ReLU: the BN's backward on the g load, split-K."""
    return {**_wgrad_arg_types(dt), "RELU": True, "BN_G": True}


@functools.cache
def _wgrad_bn_nchw_arg_types(dt: str) -> dict[str, object]:
    """... for a (K, C, R, S)-contiguous weight: dw written in that layout."""
    return {**_wgrad_bn_arg_types(dt), "DW_CL": False}


@functools.cache
def _wgrad_bn_xbn_arg_types(dt: str) -> dict[str, object]:
    """... whose input is itself a training BN + ReLU's output, rebuilt on the x load."""
    return {**_wgrad_bn_arg_types(dt), "X_BN": True, "X_RELU": True}


@functools.cache
def _wgrad_one_split_arg_types(dt: str) -> dict[str, object]:
    return {**_wgrad_relu_bias_arg_types(dt), "SPLIT": False}


@functools.cache
def _wgrad_residual_arg_types(dt: str) -> dict[str, object]:
    """The residual conv's backward: the folded variant that also writes the residual's gradient."""
    return {**_wgrad_relu_bias_arg_types(dt), "WRITE_RES": True}


_ELEM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _conv_applies(arg_types, forward: bool = False):
    """``KernelSpec.applies`` of a conv variant: the configs :func:`fits_registers` lets it launch."""

    def applies(cfg, dt: str, arch: int) -> bool:
        return fits_registers(cfg, _ELEM_BYTES[dt], None if forward else folded(arg_types(dt)))

    return applies


@functools.cache
def _epi_arg_types(dt: str) -> dict[str, object]:
    return _for(_epilogue_bwd, {
        **_types("g_ptr, y_ptr, gp_ptr, gres_ptr", f"*{dt}"),
        "gbias_ptr": "*fp32",
        **_types("M, P, Q", "i32"),
        **_types("K", "i32:16"),
        **_types("sgn, sgp, sgq, syn, syp, syq", "i32:16"),
        "res_scale": "fp32",
        "RELU": True, "WRITE_GRES": True, "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


register_kernel(KernelSpec("conv2d_fwd", _conv_fwd, FWD_CONFIGS, _fwd_arg_types, _conv_applies(None, forward=True)))


@functools.cache
def _fwd_stats_arg_types(dt: str) -> dict[str, object]:
    """The training-mode variant: plain conv output with the BN-statistics epilogue (ops.batchnorm)."""
    return {**_fwd_arg_types(dt), "HAS_SCALE": False, "HAS_BIAS": False, "HAS_RES": False, "RELU": False,
            "STATS": True, "R": 1, "S": 1}  # fmt: skip


register_kernel(KernelSpec("conv2d_fwd_stats", _conv_fwd, FWD_CONFIGS, _fwd_stats_arg_types,
                           _conv_applies(None, forward=True)))
for _name, _fn, _configs, _types_of in [
    ("conv2d_dgrad", _conv_dgrad, DGRAD_CONFIGS, _dgrad_arg_types),
    ("conv2d_dgrad_relu", _conv_dgrad, DGRAD_CONFIGS, _dgrad_relu_arg_types),
    ("conv2d_dgrad_bn", _conv_dgrad, tuple(launch_options(c, {"BN_G": True}) for c in DGRAD_CONFIGS),
     _dgrad_bn_arg_types),
    ("conv2d_wgrad", _conv_wgrad, WGRAD_CONFIGS, _wgrad_arg_types),
    ("conv2d_wgrad_relu_bias", _conv_wgrad, WGRAD_CONFIGS, _wgrad_relu_bias_arg_types),
    ("conv2d_wgrad_bn", _conv_wgrad, tuple(launch_options(c, {"BN_G": True}) for c in WGRAD_CONFIGS),
     _wgrad_bn_arg_types),
    ("conv2d_wgrad_bn_nchw", _conv_wgrad, tuple(launch_options(c, {"BN_G": True}) for c in WGRAD_CONFIGS),
     _wgrad_bn_nchw_arg_types),
    ("conv2d_wgrad_bn_xbn", _conv_wgrad, tuple(launch_options(c, {"BN_G": True}) for c in WGRAD_CONFIGS),
     _wgrad_bn_xbn_arg_types),
    ("conv2d_wgrad_1split", _conv_wgrad, WGRAD_CONFIGS, _wgrad_one_split_arg_types),
    ("conv2d_wgrad_residual", _conv_wgrad, WGRAD_CONFIGS, _wgrad_residual_arg_types),
]:
    register_kernel(KernelSpec(_name, _fn, _configs, _types_of, _conv_applies(_types_of)))
register_kernel(KernelSpec("conv2d_epilogue_bwd", _epilogue_bwd, (EPILOGUE_BWD_CONFIG,), _epi_arg_types))
