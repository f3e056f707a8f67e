"""Fused NHWC convolution: implicit-GEMM Triton kernels, launchers, ``torch.library`` registration, autograd.

    y = act(residual + residual_scale * (conv(x, w; stride, padding) * scale[k] + bias[k]))

Layout: tensors are logical NCHW stored channels_last (physically NHWC); weights keep PyTorch's (K, C, R, S)
layout and are repacked per call into the GEMM-friendly layouts the kernels read ((R, S, C, K) forward,
(R, S, K, C) for dgrad). All kernels take explicit element strides, so an input, a residual, ``out`` and
``grad_out`` may each be a channel slice of a larger channels_last buffer.

GEMM views (M rows, N columns, reduction):
* forward: M = N·P·Q output pixels, N = K output channels, reduction over (r, s, c) with c innermost.
* dgrad:   M = N·H·W input pixels, split into stride_h·stride_w phases so that every (pixel, tap) pair the
  kernel visits is a real one (no zero-insertion, no wasted MMAs for stride 2), N = C, reduction (r, s, k).
* wgrad:   M = K, N = C per tap (r, s), reduction over N·P·Q, split-K into a fixed number of slabs summed in
  a fixed order (deterministic: the same bits on every run).
Backward first runs one memory-bound pass over grad_out (ReLU mask from the saved output, residual grad,
bias-grad partial sums), then dgrad and wgrad read its result.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import _backend
from ..utils import record_launch
from . import _args, _recompute, dispatch, reference
from ._registry import KernelSpec, register_kernel

_TORCH_TO_TL = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MAX_KERNEL = 7


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
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
        # Batch-norm statistics of this tile (BLOCK_M rows x BLOCK_N channels) from the fp32 accumulator: row
        # count, mean and centred sum of squares M2 (two passes over registers: no cancellation when the mean
        # dwarfs the spread). bn_finalize combines the per-tile partials in a fixed order (Chan et al.).
        cnt = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M)
        t_mean = tl.sum(tl.where(mask_m[:, None], acc, 0.0), axis=0) / cnt
        dev = tl.where(mask_m[:, None], acc - t_mean[None, :], 0.0)
        t_m2 = tl.sum(dev * dev, axis=0)
        tl.store(st_mean_ptr + pid_m * K + offs_n, t_mean, mask=mask_n)
        tl.store(st_m2_ptr + pid_m * K + offs_n, t_m2, mask=mask_n)
        if pid_n == 0:
            tl.store(st_cnt_ptr + pid_m, cnt.to(tl.float32))
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
        b_ptrs = w_ptr + (rs * C + cc)[:, None] * K + offs_n[None, :]
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
    g_ptr, w_ptr, dx_ptr,
    N, C, H, W, K, P, Q,
    sgn, sgk, sgp, sgq,
    sdn, sdc, sdh, sdw,
    stride_h, stride_w, pad_t, pad_l,
    R: tl.constexpr, S: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """dx[n, h, w, c] = Σ_{r, s, k} g[n, p, q, k] · w[r, s, k, c] with h = p·stride_h − pad_t + r.

    Program axis 1 is the stride phase (a, b): it owns the input pixels with (h + pad_t) % stride_h == a and
    (w + pad_l) % stride_w == b, which receive exactly the taps r ≡ a, s ≡ b; so every loaded row is a real
    contribution. Pixels that no tap reaches get an explicit zero.
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
        a_ptrs = (g_row + p.to(IDX_T) * sgp + q.to(IDX_T) * sgq)[:, None] + kk.to(IDX_T)[None, :] * sgk
        g = tl.load(a_ptrs, mask=valid[:, None] & mask_k[None, :], other=0.0)
        b_ptrs = w_ptr + ((r * S + s) * K + kk)[:, None] * C + offs_n[None, :]
        wt = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(g, wt, acc, input_precision=DOT_PRECISION)

    d_ptrs = (
        dx_ptr
        + (n.to(IDX_T) * sdn + h.to(IDX_T) * sdh + w.to(IDX_T) * sdw)[:, None]
        + offs_n.to(IDX_T)[None, :] * sdc
    )
    tl.store(d_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _conv_wgrad(
    x_ptr, g_ptr, ws_ptr,
    N, C, H, W, K, P, Q,
    sxn, sxc, sxh, sxw,
    sgn, sgk, sgp, sgq,
    stride_h, stride_w, pad_t, pad_l,
    rows_per_split,
    R: tl.constexpr, S: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IDX_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Partial weight gradient of one split: ws[split, k, c, r, s] = Σ_{m in split} g[m, k] · x[m ⊕ (r, s), c].

    Here BLOCK_M tiles K (output rows), BLOCK_N tiles C, BLOCK_K tiles the N·P·Q reduction. Each split writes
    its own fp32 slab; the launcher sums the slabs in a fixed order.
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
        g = tl.load(g_ptrs, mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        x_ptrs = (
            x_ptr
            + (n * sxn + h.to(IDX_T) * sxh + w.to(IDX_T) * sxw)[:, None]
            + offs_c.to(IDX_T)[None, :] * sxc
        )
        xv = tl.load(x_ptrs, mask=valid[:, None] & mask_c[None, :], other=0.0)
        acc = tl.dot(tl.trans(g), xv, acc, input_precision=DOT_PRECISION)
    ws_ptrs = (
        ws_ptr
        + split.to(IDX_T) * K * C * (R * S)
        + (offs_k[:, None] * C + offs_c[None, :]).to(IDX_T) * (R * S)
        + rs
    )
    tl.store(ws_ptrs, acc, mask=mask_k[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------------------
# Autotune configs and the pruning rule (shared by GPU autotuning, the interpreter and the AOT check)
# ----------------------------------------------------------------------------------------------------------
def _cfg(bm: int, bn: int, bk_name: str, bk: int, warps: int, stages: int, **extra) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, bk_name: bk, **extra}, num_warps=warps, num_stages=stages
    )


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
# dgrad: BLOCK_N tiles C, BLOCK_K tiles the K reduction.
DGRAD_CONFIGS = tuple(
    _cfg(bm, bn, "BLOCK_K", bk, w, st, GROUP_M=8)
    for bm, bn, bk, w, st in [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 64, 4, 3),
        (64, 16, 32, 4, 4),
        (32, 64, 64, 4, 3),
        (16, 64, 64, 4, 3),
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


def _dim_cap(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def prune_configs(
    configs: Sequence[triton.Config], dims: dict[str, int], elem_bytes: int
) -> list[triton.Config]:
    """Keep the configs whose tiles do not exceed the problem (beyond the 16 that ``tl.dot`` needs).

    ``dims`` maps each block name to the extent it tiles, output blocks first and the reduction block last. A
    config survives when, for every block, the tile is at most the next power of two of the extent, and the
    pipelined tiles fit the shared-memory budget. If none survives, the reduction block's limit is dropped (a
    short reduction only wastes part of one loop step; oversized output tiles multiply idle programs); if still
    none, the config with the smallest tiles is kept.
    """

    def fits(cfg, limits) -> bool:
        kw = cfg.kwargs
        if any(kw[name] > _dim_cap(extent) for name, extent in limits.items()):
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


def _early_prune(dim_args: dict[str, str]):
    """An ``early_config_prune`` hook mapping block names to the kernel arguments they tile."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        dims = {blk: _dim_value(args, arg) for blk, arg in dim_args.items()}
        return prune_configs(configs, dims, args["x_ptr" if "x_ptr" in args else "g_ptr"].element_size())

    return prune


def _dim_value(args: dict, expr: str) -> int:
    # "N*P*Q" style products of integer arguments.
    return math.prod(int(args[name]) for name in expr.split("*"))


_FWD_DIMS = {"BLOCK_M": "N*P*Q", "BLOCK_N": "K", "BLOCK_C": "C"}
_DGRAD_DIMS = {"BLOCK_M": "N*H*W", "BLOCK_N": "C", "BLOCK_K": "K"}
_WGRAD_DIMS = {"BLOCK_M": "K", "BLOCK_N": "C", "BLOCK_K": "N*P*Q"}

_AUTOTUNE_KEYS = ["N", "C", "H", "W", "K", "P", "Q", "stride_h", "stride_w", "R", "S"]


def _jit(fn, configs, dims):
    kernel = triton.jit(fn)
    return triton.autotune(
        configs=list(configs), key=_AUTOTUNE_KEYS, prune_configs_by={"early_config_prune": _early_prune(dims)}
    )(kernel)


_conv_fwd_kernel = _jit(_conv_fwd, FWD_CONFIGS, _FWD_DIMS)
_conv_dgrad_kernel = _jit(_conv_dgrad, DGRAD_CONFIGS, _DGRAD_DIMS)
_conv_wgrad_kernel = _jit(_conv_wgrad, WGRAD_CONFIGS, _WGRAD_DIMS)
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
    kind: str, dims: tuple, elem_bytes: int, programs_per_tile: int, sms: int
) -> triton.Config:
    """One config without timing anything: the largest output tile that still gives every SM a program.

    ``dims`` = ((block name, extent), ...); the first two blocks tile the output. Among the configs that survive
    :func:`prune_configs`, pick the largest BLOCK_M·BLOCK_N whose grid (times ``programs_per_tile``, the stride
    phases or split-K slabs) is at least one wave of ``sms`` programs, then the deepest reduction block; if no
    config fills a wave, the one with the most programs.
    """
    configs = {"fwd": FWD_CONFIGS, "dgrad": DGRAD_CONFIGS, "wgrad": WGRAD_CONFIGS}[kind]
    d = dict(dims)
    kept = prune_configs(configs, d, elem_bytes)

    def programs(c):
        return math.ceil(d["BLOCK_M"] / c.kwargs["BLOCK_M"]) * math.ceil(d["BLOCK_N"] / c.kwargs["BLOCK_N"])

    red = "BLOCK_C" if kind == "fwd" else "BLOCK_K"
    full = [c for c in kept if programs(c) * programs_per_tile >= sms]
    if full:
        return max(
            full, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.kwargs[red], -c.num_stages)
        )
    return max(kept, key=lambda c: (programs(c), c.kwargs[red]))


def autotune_enabled() -> bool:
    """``INCEPTION_KERNELS_AUTOTUNE=1`` times every surviving config per shape (slow first call, best speed);
    the default picks one config per shape with :func:`heuristic_config` (no timing, one compile)."""
    return os.environ.get("INCEPTION_KERNELS_AUTOTUNE", "0") not in ("", "0")


def _launch(kernel, kind, grid, dims, elem_bytes, config, programs_per_tile, device, *args, **kwargs):
    """Launch ``kernel`` (a triton.autotune object) with: the given config; else the autotuner when enabled on a
    GPU; else the heuristic config -- also in the interpreter, which has no GPU to time configs on (every other
    config is exercised there by the tests that pass ``config`` explicitly)."""
    if config is None:
        if autotune_enabled() and not _backend.interpreter_active():
            record_launch()
            kernel[grid](*args, **kwargs)
            return
        else:
            config = heuristic_config(
                kind, tuple(dims.items()), elem_bytes, programs_per_tile, _num_sms(device)
            )
    meta = dict(config.kwargs)
    record_launch()
    kernel.fn[lambda _: grid({**kwargs, **meta})](
        *args, **kwargs, **meta, num_warps=config.num_warps, num_stages=config.num_stages
    )


# ----------------------------------------------------------------------------------------------------------
# Launchers (tensors already validated; all channels_last-strided)
# ----------------------------------------------------------------------------------------------------------
def index_type(*tensors: torch.Tensor | None):
    """tl.int32 offsets when every element of every tensor is reachable in 31 bits, else tl.int64.

    64-bit offset arithmetic costs registers in every [BLOCK, BLOCK] pointer tile; it is only paid for when a
    tensor really spans 2**31 elements (checked from sizes and strides, so slices of huge buffers count)."""
    for t in tensors:
        if t is not None and sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0) >= 2**31 - 1:
            return tl.int64
    return tl.int32


def _dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    if dtype != torch.float32 or device.type != "cuda":
        return "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def out_shape(x_shape, w_shape, stride, padding) -> tuple[int, int, int, int]:
    N, _, H, W = x_shape
    K, _, R, S = w_shape
    return (N, K, *_args.conv_out_hw(H, W, R, S, stride, padding))


def _new_cl(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Every tensor a launcher allocates comes from here or :func:`_new_buf` (tests poison them with NaN)."""
    return torch.empty(
        shape, device=like.device, dtype=dtype or like.dtype, memory_format=torch.channels_last
    )


def _new_buf(shape, device, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, device=device, dtype=dtype)


STATS_ROWS = min(c.kwargs["BLOCK_M"] for c in FWD_CONFIGS)


def stats_partials(M: int, K: int, device: torch.device):
    """Buffers for the forward kernel's BN-statistics epilogue: (count, mean, M2) per row tile of the output.

    Sized for the smallest BLOCK_M any config may use (``STATS_ROWS`` rows per partial); a config with larger
    tiles fills fewer rows, and the zeroed counts mark the rest empty. The count buffer is (T,), mean and M2
    are (T, K) float32.
    """
    tiles = triton.cdiv(M, STATS_ROWS)
    return (
        torch.zeros(tiles, device=device, dtype=torch.float32),
        _new_buf((tiles, K), device),
        _new_buf((tiles, K), device),
    )


_PACK_CACHE: dict = {}
_PACK_CACHE_MAX = 1024


def packed_weight(
    weight: torch.Tensor, perm: tuple[int, ...], scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight.permute(perm)`` materialized contiguously (times ``scale`` over K if given), in one kernel.

    Unscaled packs are cached per weight tensor and reused while ``weight._version`` is unchanged (an
    optimizer step or any in-place write invalidates them), so inference repacks each weight once.
    """
    cacheable = (
        scale is None
        and not torch.compiler.is_compiling()
        and not (weight.is_cuda and torch.cuda.is_current_stream_capturing())
    )
    key = (id(weight), perm)
    if cacheable:
        hit = _PACK_CACHE.get(key)
        if hit is not None and hit[0]() is weight and hit[1] == weight._version:
            return hit[2]
    src = weight.permute(*perm)
    out = torch.empty(src.shape, dtype=weight.dtype, device=weight.device)
    record_launch()
    if scale is None:
        out.copy_(src)
    else:
        k_dim = perm.index(0)
        view = [1] * weight.dim()
        view[k_dim] = -1
        torch.mul(src, scale.to(weight.dtype).view(view), out=out)
    if cacheable:
        if len(_PACK_CACHE) >= _PACK_CACHE_MAX:
            _PACK_CACHE.clear()
        _PACK_CACHE[key] = (weakref.ref(weight), weight._version, out)
    return out


def conv_fwd_into(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, config=None, out2=None,
    stats=None,
):  # fmt: skip
    """Launch the forward kernel writing ``out`` (any NHWC-strided (N, K, P, Q) view).

    With ``out2`` (horizontal fusion), ``out`` receives the first ``out.shape[1]`` output channels and ``out2``
    the remaining ones: one GEMM serves sibling convolutions whose results go to different buffers.
    With ``stats`` (the buffers of :func:`stats_partials`), the epilogue also writes per-tile batch-norm
    partial statistics of the output (see ``ops.batchnorm.bn_finalize``).
    """
    _check_interpretable(x)
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, K1, P, Q = out.shape
    if out2 is not None and (K1 + out2.shape[1] != K or residual is not None):
        raise ValueError("out and out2 must split the K output channels, without a residual")
    wp = packed_weight(weight, (2, 3, 1, 0))  # (R, S, C, K)
    dummy = wp
    res = residual if residual is not None else out
    o2 = out2 if out2 is not None else out
    grid = lambda meta: (triton.cdiv(N * P * Q, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_N"]),)
    dims = {"BLOCK_M": N * P * Q, "BLOCK_N": K, "BLOCK_C": C}
    if stats is not None and config is None:
        # never the timing autotuner here: its trial runs of other tile sizes would leave partial-statistics rows
        # (and counts) behind that the final config does not overwrite
        config = heuristic_config("fwd", tuple(dims.items()), x.element_size(), 1, _num_sms(x.device))
    _launch(
        _conv_fwd_kernel, "fwd", grid, dims, x.element_size(), config, 1, x.device,
        x, wp, out,
        scale if scale is not None else dummy, bias if bias is not None else dummy, res, o2,
        *(stats if stats is not None else (dummy, dummy, dummy)),
        N, C, H, W, K, P, Q,
        *x.stride(), *out.stride(), *res.stride(), *o2.stride(),
        stride[0], stride[1], padding[0], padding[2],
        float(residual_scale), K1 if out2 is not None else K,
        R=R, S=S, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        RELU=bool(relu), HAS_OUT2=out2 is not None, STATS=stats is not None,
        DOT_PRECISION=_dot_precision(x.dtype, x.device), IDX_T=index_type(x, out, residual, out2),
    )  # fmt: skip
    return out


def _check_interpretable(x: torch.Tensor) -> None:
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and _backend.interpreter_active():
        raise NotImplementedError(
            "the Triton interpreter has no bfloat16 arithmetic (its results would be wrong): run bfloat16 on a "
            "GPU, or use float32/float16, or INCEPTION_KERNELS_BACKEND=reference"
        )


def _wgrad_splits(tiles: int, rows: int, device: torch.device) -> int:
    """Split-K count for wgrad: enough programs to fill the GPU, each split keeping >= 256 reduction rows."""
    sms = _num_sms(device)
    want = max(1, (2 * sms + tiles - 1) // tiles)
    return int(max(1, min(want, rows // 256 if device.type == "cuda" else rows // 16, 64)))


def epilogue_grad(grad_out, x, y, residual_scale, relu, need_bias: bool, need_res: bool):
    """Our pass over grad_out that every conv backward starts with, whichever GEMMs follow: the ReLU mask from the
    saved output ``y``, the residual gradient, and the bias-gradient partials. Returns (gp = residual_scale ·
    masked grad as a dense channels_last tensor, dbias float32 or None, dres or None)."""
    N, K, P, Q = grad_out.shape
    M = N * P * Q
    gp = _new_cl((N, K, P, Q), x, dtype=grad_out.dtype)
    gres = _new_cl((N, K, P, Q), x, dtype=grad_out.dtype) if need_res else gp
    cfg = EPILOGUE_BWD_CONFIG
    bm, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_K"]
    gbias_part = _new_buf((triton.cdiv(M, bm), K), x.device)
    ysrc = y if relu else grad_out
    record_launch()
    _epilogue_bwd_kernel[(triton.cdiv(M, bm), triton.cdiv(K, bk))](
        grad_out, ysrc, gp, gres, gbias_part,
        M, K, P, Q, *grad_out.stride(), *ysrc.stride(),
        float(residual_scale),
        RELU=bool(relu), WRITE_GRES=bool(need_res), IDX_T=index_type(grad_out, y, gp), BLOCK_M=bm, BLOCK_K=bk,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return gp, (gbias_part.sum(0) if need_bias else None), (gres if need_res else None)


def dgrad_triton(gp, x, weight, scale, stride, padding, config=None):
    """dx of the conv from ``gp`` (dense channels_last): stride-phase implicit GEMM, scale folded into the
    repacked (R, S, K, C) weight."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = gp.shape
    wd = packed_weight(weight, (2, 3, 0, 1), scale)  # (R, S, K, C), scale folded in
    dx = _new_cl((N, C, H, W), x)
    phases = stride[0] * stride[1]
    Hs, Ws = triton.cdiv(H, stride[0]), triton.cdiv(W, stride[1])
    grid = lambda meta: (
        triton.cdiv(N * Hs * Ws, meta["BLOCK_M"]) * triton.cdiv(C, meta["BLOCK_N"]),
        phases,
    )
    _launch(
        _conv_dgrad_kernel, "dgrad", grid, {"BLOCK_M": N * Hs * Ws, "BLOCK_N": C, "BLOCK_K": K},
        x.element_size(), config, phases, x.device,
        gp, wd, dx,
        N, C, H, W, K, P, Q, *gp.stride(), *dx.stride(),
        stride[0], stride[1], padding[0], padding[2],
        R=R, S=S, DOT_PRECISION=_dot_precision(x.dtype, x.device), IDX_T=index_type(gp, x, dx),
    )  # fmt: skip
    return dx


def wgrad_triton(gp, x, weight, stride, padding, config=None, splits=None):
    """The weight gradient without scale, float32 (K, C, R, S): deterministic split-K implicit GEMM."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = gp.shape
    M = N * P * Q
    dev = x.device
    wdims = {"BLOCK_M": K, "BLOCK_N": C, "BLOCK_K": M}
    max_split = _wgrad_splits(1, M, dev)
    probe = config or heuristic_config("wgrad", tuple(wdims.items()), x.element_size(), max_split, _num_sms(dev))
    tiles = triton.cdiv(K, probe.kwargs["BLOCK_M"]) * triton.cdiv(C, probe.kwargs["BLOCK_N"]) * R * S
    nsplit = splits or _wgrad_splits(tiles, M, dev)
    rows = triton.cdiv(M, nsplit)
    ws = _new_buf((nsplit, K, C, R, S), dev)
    grid = lambda meta: (
        triton.cdiv(K, meta["BLOCK_M"]), R * S * triton.cdiv(C, meta["BLOCK_N"]), nsplit
    )  # fmt: skip
    _launch(
        _conv_wgrad_kernel, "wgrad", grid, wdims,
        x.element_size(), config, nsplit, dev,
        x, gp, ws,
        N, C, H, W, K, P, Q, *x.stride(), *gp.stride(),
        stride[0], stride[1], padding[0], padding[2],
        rows,
        R=R, S=S, DOT_PRECISION=_dot_precision(x.dtype, dev), IDX_T=index_type(gp, x),
    )  # fmt: skip
    return ws.sum(0)  # fixed-order reduction over splits: deterministic


def dgrad_reference(gp, x, weight, scale, stride, padding):
    top, bottom, left, right = padding
    g = gp if scale is None else gp * scale.to(gp.dtype).view(1, -1, 1, 1)
    shape = (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
    dxp = torch.nn.grad.conv2d_input(shape, weight, g, stride=tuple(stride))
    dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    return dx.contiguous(memory_format=torch.channels_last)


def wgrad_reference(gp, x, weight, stride, padding):
    top, bottom, left, right = padding
    xp = F.pad(x, (left, right, top, bottom))
    return torch.nn.grad.conv2d_weight(xp, weight.shape, gp, stride=tuple(stride)).float()


def conv_bwd(
    grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need, configs=None, splits=None,
    impls=None,
):  # fmt: skip
    """Gradients (dx, dw, dscale, dbias, dres) of the fused conv; entries not in ``need`` are None.

    Our epilogue-gradient pass, then dgrad and wgrad by the implementations the dispatch layer chooses (or
    ``impls`` = {"dgrad": name, "wgrad": name}); ``configs``/``splits`` pin the Triton kernels' tiles (tests)."""
    _check_interpretable(x)
    need_x, need_w, need_scale, need_bias, need_res = need
    configs = configs or {}
    gp, dbias, dres = epilogue_grad(grad_out, x, y, residual_scale, relu, need_bias, need_res)
    need_g = need_w or need_scale
    if impls is None:
        impls = {
            "dgrad": dispatch.choose_conv("conv_dgrad", x, weight, stride, padding).name if need_x else None,
            "wgrad": dispatch.choose_conv("conv_wgrad", x, weight, stride, padding).name if need_g else None,
        }
    dg, wg = impls.get("dgrad") if need_x else None, impls.get("wgrad") if need_g else None
    dx = g_unscaled = None
    if dg == "cudnn" and wg == "cudnn":
        from .conv_cudnn import conv_bwd_cudnn

        dx, g_unscaled = conv_bwd_cudnn(gp, x, weight, scale, stride, padding, True, True)  # one ATen call
    else:
        if dg is not None:
            kw = {"config": configs["dgrad"]} if "dgrad" in configs else {}
            dx = dispatch.implementations("conv_dgrad")[dg].fn(gp, x, weight, scale, stride, padding, **kw)
        if wg is not None:
            kw = {"config": configs["wgrad"]} if "wgrad" in configs else {}
            kw.update({"splits": splits} if splits else {})
            g_unscaled = dispatch.implementations("conv_wgrad")[wg].fn(gp, x, weight, stride, padding, **kw)
    dw = dscale = None
    if need_w:
        dw = g_unscaled if scale is None else g_unscaled * scale.float().view(-1, 1, 1, 1)
        dw = dw.to(weight.dtype)
    if need_scale:
        dscale = (g_unscaled * weight.float()).sum((1, 2, 3))
    return dx, dw, dscale, dbias, dres


def conv_forward(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out=None, out2=None, stats=None,
):  # fmt: skip
    """The fused conv forward by the implementation the dispatch layer chooses for this problem; returns the
    output (``out`` when given, else a new channels_last tensor). Arguments as :func:`conv_fwd_into`."""
    impl = dispatch.choose_conv(
        "conv_fwd", x, weight, stride, padding, residual, relu, scale, bias, stats is not None, out2 is not None
    )
    return impl.fn(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats)


def _fwd_triton(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    if out is None:
        out = _new_cl(out_shape(x.shape, weight.shape, stride, padding), x)
    return conv_fwd_into(
        x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2=out2, stats=stats
    )


def _fwd_reference(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    y = _reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
    if out is None:
        return y.contiguous(memory_format=torch.channels_last)
    if out2 is None:
        return out.copy_(y)
    k1 = out.shape[1]
    out.copy_(y[:, :k1])
    out2.copy_(y[:, k1:])
    return out


def _triton_reasons(problem) -> list[str]:
    why = []
    if not _backend.triton_available():
        why.append("triton is not installed")
    if problem.device.startswith("cpu"):
        if problem.device != "cpu-interpreter":
            why.append("Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 on a CPU")
        elif problem.dtype == torch.bfloat16:
            why.append("the Triton interpreter has no bfloat16 arithmetic")
    return why


def _reference_reasons(problem) -> list[str]:
    return ["BN partial statistics are our kernels' format"] if problem.stats else []


dispatch.register(dispatch.Impl("conv_fwd", "triton", _triton_reasons, _fwd_triton))
dispatch.register(dispatch.Impl("conv_fwd", "reference", _reference_reasons, _fwd_reference))
dispatch.register(dispatch.Impl("conv_dgrad", "triton", _triton_reasons, dgrad_triton))
dispatch.register(dispatch.Impl("conv_dgrad", "reference", lambda problem: [], dgrad_reference))
dispatch.register(dispatch.Impl("conv_wgrad", "triton", _triton_reasons, wgrad_triton))
dispatch.register(dispatch.Impl("conv_wgrad", "reference", lambda problem: [], wgrad_reference))


# ----------------------------------------------------------------------------------------------------------
# Reference math for the custom ops when Triton cannot run on the tensors' device (e.g. a CPU tensor without
# the interpreter): keeps torch.ops.inception_kernels.* usable everywhere.
# ----------------------------------------------------------------------------------------------------------
def _reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
    return reference.conv2d(
        x, weight, stride=tuple(stride), padding=tuple(padding), scale=scale, bias=bias,
        activation="relu" if relu else None, residual=residual, residual_scale=residual_scale,
    )  # fmt: skip


def _reference_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need):
    """Explicit PyTorch gradients (no autograd: custom-op implementations run below the autograd key)."""
    top, bottom, left, right = padding
    mask = y > 0 if relu else None
    gz = grad_out if mask is None else torch.where(mask, grad_out, torch.zeros((), dtype=grad_out.dtype))
    gp = gz * residual_scale
    xp = F.pad(x, (left, right, top, bottom))
    dx = dw = dscale = None
    if need[0]:
        g_conv = gp if scale is None else gp * scale.to(gp.dtype).view(1, -1, 1, 1)
        dxp = torch.nn.grad.conv2d_input(xp.shape, weight, g_conv, stride=tuple(stride))
        dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    if need[1] or need[2]:
        g_unscaled = torch.nn.grad.conv2d_weight(xp, weight.shape, gp, stride=tuple(stride)).float()
        if need[1]:
            dw = g_unscaled if scale is None else g_unscaled * scale.float().view(-1, 1, 1, 1)
        if need[2]:
            dscale = (g_unscaled * weight.float()).sum((1, 2, 3))
    dbias = gp.float().sum((0, 2, 3)) if need[3] else None
    return dx, dw, dscale, dbias, gz


# ----------------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------------
def _ours(t: torch.Tensor) -> bool:
    """Our kernels (either conv route) can run where ``t`` lives, and the reference backend is not forced."""
    backend = dispatch.requested()
    # a forced backend always takes our path, where the chooser raises if it cannot serve the input
    return backend != "reference" and (backend != "auto" or _backend.triton_can_run(t))


@torch.library.custom_op("inception_kernels::conv2d_fwd", mutates_args=())
def _conv2d_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    residual_scale: float,
    relu: bool,
) -> torch.Tensor:
    if _ours(x):
        return conv_forward(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
    y = _reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
    return _new_cl(y.shape, x).copy_(y)


@_conv2d_fwd_op.register_fake
def _(x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
    return _new_cl(out_shape(x.shape, weight.shape, stride, padding), x)


@torch.library.custom_op("inception_kernels::conv2d_fwd_out", mutates_args=("out",))
def _conv2d_fwd_out_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    residual_scale: float,
    relu: bool,
    out: torch.Tensor,
) -> None:
    _check_no_alias(out, x, residual)
    if _ours(x):
        conv_forward(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out)
    else:
        out.copy_(_reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu))


@_conv2d_fwd_out_op.register_fake
def _(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out):
    return None


@torch.library.custom_op("inception_kernels::conv2d_bwd", mutates_args=())
def _conv2d_bwd_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    y: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    residual_scale: float,
    relu: bool,
    need: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    need = tuple(bool(v) for v in need)
    if _ours(x):
        grads = conv_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need)
    else:
        grads = _reference_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need)
    return _pack_grads(grads, need, grad_out, x, weight, scale)


def _grad_templates(grad_out, x, weight, scale):
    # dscale and dbias come back in float32; autograd casts them to the parameters' dtype.
    K = weight.shape[0]
    return (
        lambda: _new_cl(x.shape, x),
        lambda: torch.empty_like(weight, memory_format=torch.contiguous_format),
        lambda: torch.empty(K, dtype=torch.float32, device=x.device),
        lambda: torch.empty(K, dtype=torch.float32, device=x.device),
        lambda: _new_cl(grad_out.shape, x, dtype=grad_out.dtype),
    )


def _pack_grads(grads, need, grad_out, x, weight, scale):
    """Custom ops return real tensors only: a gradient that was not asked for comes back as an empty tensor."""
    out = []
    for g, wanted, make in zip(grads, need, _grad_templates(grad_out, x, weight, scale)):
        if wanted and g is not None:
            t = make()
            if g.dtype == t.dtype and g.stride() == t.stride():
                out.append(g)  # already in the promised layout: no copy
            else:
                out.append(t.copy_(g))
        else:
            out.append(x.new_empty(0))
    return tuple(out)


@_conv2d_bwd_op.register_fake
def _(grad_out, x, weight, scale, y, stride, padding, residual_scale, relu, need):
    return tuple(
        make() if wanted else x.new_empty(0)
        for wanted, make in zip(need, _grad_templates(grad_out, x, weight, scale))
    )


def _fwd_setup_context(ctx, inputs, output):
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu = inputs
    ctx.save_for_backward(x, weight, scale, output)
    _save_conf(ctx, scale, bias, residual, stride, padding, residual_scale, relu)


def _fwd_backward(ctx, grad_out):
    x, weight, scale, y = ctx.saved_tensors
    stride, padding, residual_scale, relu = ctx.conf
    grads = _run_backward(
        ctx, grad_out, x, weight, scale, y, stride, padding, residual_scale, relu, direct=False
    )
    return grads + (None,) * 4


def _run_backward(
    ctx, grad_out, x, weight, scale, y, stride, padding, residual_scale, relu, first=0, direct=True
):
    """Gradients of (x, weight, scale, bias, residual), whose ``needs_input_grad`` flags start at ``first``."""
    nig = ctx.needs_input_grad[first : first + 5]
    need = (nig[0], nig[1], ctx.has_scale and nig[2], ctx.has_bias and nig[3], ctx.has_res and nig[4])
    if not any(need):
        return (None,) * 5
    if direct and type(grad_out) in _PLAIN_TENSORS and not torch.compiler.is_compiling():
        # the forward ran our kernels directly: so does the backward, on the forward's backend
        with dispatch.use_backend(ctx.backend):
            return conv_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need)
    grads = torch.ops.inception_kernels.conv2d_bwd(
        grad_out, x, weight, scale, y, list(stride), list(padding), residual_scale, relu, list(need)
    )
    return tuple(g if wanted else None for g, wanted in zip(grads, need))


def _eager_direct(x: torch.Tensor) -> bool:
    """Outside torch.compile, call the launchers directly: the torch.library dispatch of a Python custom op
    costs tens of microseconds per call, more than a small Inception layer takes on the GPU. Under
    torch.compile the registered ops are used, so graphs see opaque, correctly-faked ops."""
    return type(x) in _PLAIN_TENSORS and not torch.compiler.is_compiling() and _ours(x)


# Fake, functional and other tracing tensor subclasses must go through the registered ops.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _save_conf(ctx, scale, bias, residual, stride, padding, residual_scale, relu):
    ctx.conf = (tuple(stride), tuple(padding), float(residual_scale), bool(relu))
    ctx.has_scale = scale is not None
    ctx.has_bias = bias is not None
    ctx.has_res = residual is not None
    # the backward runs on the route the forward ran (a model's or a scope's backend is not in force any more)
    dispatch.remember_backend(ctx)


_conv2d_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


class _Conv2dFn(torch.autograd.Function):
    """Eager autograd of the functional form: launchers called directly (no op dispatch); the ReLU mask comes
    from the saved output. Traced code uses the registered op and its ``register_autograd`` instead."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
        y = conv_forward(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
        # x is saved as its recipe when it has one (e.g. a block's concat buffer: its leaves' pre-BN outputs)
        _recompute.save_with_input(ctx, x, weight, scale, y)
        _save_conf(ctx, scale, bias, residual, stride, padding, residual_scale, relu)
        return y

    @staticmethod
    @dispatch.on_forward_backend
    def backward(ctx, grad_out):
        x, (weight, scale, y) = _recompute.load_with_input(ctx)
        return _run_backward(ctx, grad_out, x, weight, scale, y, *ctx.conf, direct=True) + (None,) * 4


class _Conv2dIntoSlice(torch.autograd.Function):
    """Autograd for the ``out=`` form: the op writes a view (a channel slice of a larger buffer) in place.

    The written slice is kept as a plain reference (not ``save_for_backward``): the block engine keeps writing
    *other* slices of the same buffer, which bumps the shared version counter without touching this slice.
    Note: PyTorch's CopySlices hands this node a contiguous *clone* of the gradient slice; the kernels accept
    any strides, and the block engine avoids the clone by owning its buffer's backward.
    ``out`` is the first input because autograd's CopySlices (which rebases the buffer's history onto this
    node) hands the gradient of the written view to input 0.
    """

    @staticmethod
    def forward(ctx, out, x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
        ctx.direct = _eager_direct(x)
        _fwd_into(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out)
        ctx.mark_dirty(out)
        ctx.save_for_backward(x, weight, scale)
        ctx.y = out.detach()
        _save_conf(ctx, scale, bias, residual, stride, padding, residual_scale, relu)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, scale = ctx.saved_tensors
        grads = _run_backward(ctx, grad_out, x, weight, scale, ctx.y, *ctx.conf, first=1, direct=ctx.direct)
        # The old contents of the slice were overwritten: their gradient is zero. CopySlices copies it into the
        # buffer's gradient, so an expanded scalar suffices (None would drop the whole buffer's gradient).
        zero = grad_out.new_zeros(()).expand_as(grad_out)
        return (zero,) + grads + (None,) * 4


def _fwd_into(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out):
    if _eager_direct(x):
        _check_no_alias(out, x, residual)
        conv_forward(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out)
    else:
        torch.ops.inception_kernels.conv2d_fwd_out(
            x, weight, scale, bias, residual, list(stride), list(padding), residual_scale, relu, out
        )


# ----------------------------------------------------------------------------------------------------------
# Public entry point and argument checking
# ----------------------------------------------------------------------------------------------------------
_FLOAT_DTYPES = _args.FLOAT_DTYPES
_pair = _args.pair
_is_nhwc_strided = _args.is_nhwc_strided
_check_tensor = _args.tensor


def _padding4(v, kernel_size=None, stride=(1, 1)) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from any padding form conv2d accepts ("same" needs the kernel size)."""
    return _args.conv_padding(v, kernel_size, stride)


def _validate(x, weight, stride, padding, scale, bias, activation, residual, residual_scale, out):
    """Checks every argument of :func:`conv2d`; returns (stride, padding 4-tuple, scale, bias), the per-channel
    tensors contiguous (the kernels read them with unit stride)."""
    _args.float_activation(x, "x")
    _args.tensor(weight, "weight", dims=4, like=x)
    N, C, H, W = x.shape
    K, Cw, R, S = weight.shape
    if Cw != C:
        raise ValueError(f"weight has {Cw} input channels but x has {C} (weight shape {tuple(weight.shape)})")
    if not (1 <= R <= MAX_KERNEL and 1 <= S <= MAX_KERNEL):
        raise ValueError(f"weight kernel size {R}x{S} is not supported (1..{MAX_KERNEL} in each dimension)")
    if K == 0:
        raise ValueError(f"weight must have at least one output channel, got shape {tuple(weight.shape)}")
    st = _args.pair(stride, "stride")
    if any(s not in (1, 2) for s in st):
        raise ValueError(f"stride must be 1 or 2 in each dimension, got {stride!r}")
    pad = _args.conv_padding(padding, (R, S), st)
    _, _, P, Q = out_shape(x.shape, weight.shape, st, pad)
    if P < 1 or Q < 1:
        raise ValueError(f"x of spatial size {H}x{W} is smaller than the {R}x{S} kernel with padding {pad}")
    scale = None if scale is None else _args.channel_vector(scale, "scale", K, x, what="K")
    bias = None if bias is None else _args.channel_vector(bias, "bias", K, x, what="K")
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    _args.real(residual_scale, "residual_scale")
    if residual is not None:
        _args.tensor(residual, "residual", dims=4, like=x)
        if tuple(residual.shape) != (N, K, P, Q):
            raise ValueError(f"residual must have shape {(N, K, P, Q)}, got {tuple(residual.shape)}")
    if out is not None:
        _args.out_tensor(out, (N, K, P, Q), x)
        if not torch.compiler.is_compiling():  # checked again inside the op at run time
            _check_no_alias(out, x, residual)
    return st, pad, scale, bias


def _check_no_alias(out, x, residual):
    _args.no_overlap(out, {"x": x, "residual": residual})


@_args.on_input_device
def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | tuple[int, int, int, int] = 0,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    residual_scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused convolution ``act(residual + residual_scale * (conv(x, weight) * scale[k] + bias[k]))``.

    Args:
        x: (N, C, H, W) float32/bfloat16/float16, channels_last (a contiguous NCHW input is converted once).
        weight: (K, C, R, S), 1 <= R, S <= 7 (1×n and n×1 included), same dtype as x.
        stride: 1 or 2, or a pair (any form F.conv2d takes). padding: int, (ph, pw), (top, bottom, left, right)
            zeros, "valid", or "same" (stride 1; an even kernel pads one more at the bottom / right, as F.conv2d).
        scale, bias: optional (K,) per-output-channel (folded BN or conv bias); float32 or x's dtype.
        activation: None or "relu".
        residual: optional (N, K, P, Q) tensor added after scaling; absent counts as 0 (residual_scale still
            multiplies the conv term).
        out: optional (N, K, P, Q) channels_last tensor or channel slice ``buf[:, off:off + K]`` of one; the op
            writes there and nowhere else, and returns it.

    Returns: (N, K, P, Q) channels_last tensor (``out`` when given). Accumulation is float32; float32 inputs
    use TF32 on the GPU only when ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default for convs).
    """
    stride_t, pad, scale, bias = _validate(
        x, weight, stride, padding, scale, bias, activation, residual, residual_scale, out
    )
    x = x.contiguous(memory_format=torch.channels_last) if not _is_nhwc_strided(x) else x
    relu = activation == "relu"
    rs = float(residual_scale)
    if dispatch.is_reference(x) or x.numel() == 0 or weight.shape[0] == 0:
        y = reference.conv2d(
            x, weight, stride=stride_t, padding=pad, scale=scale, bias=bias, activation=activation,
            residual=residual, residual_scale=rs,
        )  # fmt: skip
        if out is None:
            return y.contiguous(memory_format=torch.channels_last)
        return out.copy_(y)
    tensors = (x, weight, scale, bias, residual)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if out is None:
        if not _eager_direct(x):
            # torch.compile / export / fake tensors: the registered op, with its registered autograd.
            return torch.ops.inception_kernels.conv2d_fwd(
                x, weight, scale, bias, residual, list(stride_t), list(pad), rs, relu
            )
        if needs_grad:
            return _Conv2dFn.apply(x, weight, scale, bias, residual, stride_t, pad, rs, relu)
        return conv_forward(x, weight, scale, bias, residual, stride_t, pad, rs, relu)
    if needs_grad:
        # Dynamo cannot trace autograd.Function.mark_dirty: under torch.compile use the functional form for
        # training (or the block engine, which owns its buffer's backward).
        return _Conv2dIntoSlice.apply(out, x, weight, scale, bias, residual, stride_t, pad, rs, relu)
    _fwd_into(x, weight, scale, bias, residual, stride_t, pad, rs, relu, out)
    return out


# ----------------------------------------------------------------------------------------------------------
# AOT registration: the Triton types of each kernel's runtime arguments per dtype
# ----------------------------------------------------------------------------------------------------------
# The AOT table describes the common run-time case: channels_last tensors whose channel counts are multiples of
# 16. The JIT then specializes the channel stride to the constant 1 and marks the other strides 16-divisible.
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
        **_types("g_ptr, w_ptr, dx_ptr", f"*{dt}"),
        **_types("N, H, W, P, Q", "i32"),
        **_types("C, K", "i32:16"),
        **_types("sgn, sgp, sgq, sdn, sdh, sdw", "i32:16"),
        **_types("stride_h, stride_w, pad_t, pad_l", "i32"),
        "R": 3, "S": 3, "DOT_PRECISION": "tf32" if dt == "fp32" else "ieee", "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


@functools.cache
def _wgrad_arg_types(dt: str) -> dict[str, object]:
    return _for(_conv_wgrad, {
        **_types("x_ptr, g_ptr", f"*{dt}"),
        "ws_ptr": "*fp32",
        **_types("N, H, W, P, Q", "i32"),
        **_types("C, K", "i32:16"),
        **_types("sxn, sxh, sxw, sgn, sgp, sgq", "i32:16"),
        **_types("stride_h, stride_w, pad_t, pad_l, rows_per_split", "i32"),
        "R": 3, "S": 3, "DOT_PRECISION": "tf32" if dt == "fp32" else "ieee", "IDX_T": tl.int32, **_UNIT_STRIDES,
    })  # fmt: skip


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


register_kernel(KernelSpec("conv2d_fwd", _conv_fwd, FWD_CONFIGS, _fwd_arg_types))


@functools.cache
def _fwd_stats_arg_types(dt: str) -> dict[str, object]:
    """The training-mode variant: plain conv output with the BN-statistics epilogue (ops.batchnorm)."""
    return {**_fwd_arg_types(dt), "HAS_SCALE": False, "HAS_BIAS": False, "HAS_RES": False, "RELU": False,
            "STATS": True, "R": 1, "S": 1}  # fmt: skip


register_kernel(KernelSpec("conv2d_fwd_stats", _conv_fwd, FWD_CONFIGS, _fwd_stats_arg_types))
register_kernel(KernelSpec("conv2d_dgrad", _conv_dgrad, DGRAD_CONFIGS, _dgrad_arg_types))
register_kernel(KernelSpec("conv2d_wgrad", _conv_wgrad, WGRAD_CONFIGS, _wgrad_arg_types))
register_kernel(KernelSpec("conv2d_epilogue_bwd", _epilogue_bwd, (EPILOGUE_BWD_CONFIG,), _epi_arg_types))
