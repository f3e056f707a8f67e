"""Forward convolution "v2": the implicit-GEMM mainloop rebuilt for Hopper, with v1's fused epilogue.

Same function, arguments and output semantics as :func:`inception_kernels.ops.conv_triton.conv_fwd_into` (v1):

    y = act(residual + residual_scale * (conv(x, w; stride, padding) * scale[k] + bias[k]))

with ``out`` / ``residual`` / ``x`` any NHWC-strided views (channel slices included), the split destination
``out2`` and the per-tile BN statistics partials. The epilogue is literally v1's (``conv_kernels._fwd_epilogue``, one
``@triton.jit`` helper both kernels call); what differs is the mainloop:

* **address arithmetic out of the reduction loop.** v1 recomputes per step ``it % num_cb``, ``it // num_cb``,
  the (h, w) of every row and a full [BLOCK_M, BLOCK_C] pointer tile from (n, h, w, c). v2 builds the A offsets
  of tap (0, 0) / channel block 0 once, and each step adds one scalar (``r·sxh + s·sxw + c0·sxc``, kept as
  loop-carried counters r, s, cb: no division in the loop). The loop order is taps outside, contiguous channel
  blocks inside, flattened into one loop so that Triton's software pipeliner (which pipelines innermost loops
  only) overlaps the loads of the next tap with the MMAs of this one. The row mask needs two compares per row
  per step; with ``EVEN_C`` (C a multiple of BLOCK_C) there is no channel mask at all.
* **weights through a tensor descriptor (TMA) on sm_90** (``B_DESC``): the packed (R·S, C, K) weight is a 3-D
  descriptor loaded with box [1, BLOCK_C, BLOCK_N]; out-of-range channels (C not a multiple of BLOCK_C) and
  output channels come back as zeros from the copy engine, so odd C needs no mask either.
* **1×1 stride-1 unpadded convs as plain GEMMs** (``A_DESC``): when x is dense over (n, h, w) (a channel slice
  is fine) the activation is the 2-D matrix (N·H·W, C) with row stride ``sxw`` and goes through a descriptor
  too, so both operands arrive by TMA and the loop has no integer work besides the two coordinates.
* **a wider config space** (BLOCK_N up to 256, 4–8 warps, 3–5 stages), pruned per shape with v1's
  :func:`~inception_kernels.ops.conv_kernels.prune_configs` rule plus a shared-memory estimate of the stages, and one
  config per shape chosen without timing by the same rule as v1's heuristic.

* **persistent configs** (``PERSISTENT`` = programs per SM, four of them, see :data:`V2_CONFIGS`): the grid is
  min(tiles, SMs × programs per SM) (:func:`launch_grid`) and each program walks the tiles pid, pid + grid, ...
  in a plain grid-stride loop, every tile in GROUP_M order with its full mainloop and the same fused epilogue
  (its BN-statistics partials land in the row of its own row tile, so the statistics consumer sees the layout of
  a one-tile launch). The one-tile kernel is compiled from the same per-tile helper without the loop, so its code
  is what it was. The loop is not flattened with the mainloop and not warp-specialized: the epilogue of one tile
  and the first loads of the next do not overlap within a program (only across programs, as before).
  Unmeasured on a GPU, so the heuristic never picks one; they are asked for with ``config=``.

Descriptors are used on CUDA devices of compute capability >= 9 when the strides allow (16-byte aligned rows and
base), and in the Triton interpreter when asked (the tests run both the descriptor and the pointer twin there);
elsewhere the pointer twin runs (same kernel, ``A_DESC = B_DESC = False``).

Not done here (see benchmarks/NOTES.md): warp specialization (and a tile loop flattened into the mainloop), a TMA
store epilogue.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .. import _backend
from ..utils import record_launch
from . import _args, _tile, _weights, conv_kernels, conv_triton, dispatch
from ._registry import KernelSpec, register_kernel
from ._triton import tl, triton
from .conv_kernels import _fwd_epilogue

try:  # host-side tensor descriptors: triton >= 3.3 (3.6 on the GPU machines, 3.8 here)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the pointer twin only
    TensorDescriptor = None


# ----------------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------------
def _conv_v2_tile(
    tile,
    x_ptr, x_desc, w_ptr, w_desc, out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr,
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
    A_DESC: tl.constexpr, B_DESC: tl.constexpr, EVEN_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Output tile number ``tile`` (in GROUP_M-swizzled order): its mainloop and the fused epilogue."""
    M = N * P * Q
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(K, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile % num_pid_in_group) % group_size_m
    pid_n = (tile % num_pid_in_group) // group_size_m

    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_n = offs_n < K
    q = offs_m % Q
    t = offs_m // Q
    p = t % P
    n = t // P

    # weight operand by pointers: offsets of channel block 0 of tap 0, advanced by a scalar per step
    b_off = offs_c[:, None] * K + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    num_cb = tl.cdiv(C, BLOCK_C)
    if A_DESC:
        # 1x1 / stride 1 / no padding on dense rows: the GEMM (M, C) @ (C, K), both operands by TMA (zero fill
        # past M, C and K).
        for cb in range(num_cb):
            c0 = cb * BLOCK_C
            a = x_desc.load([m0, c0])
            if B_DESC:
                b = tl.reshape(w_desc.load([0, c0, n0]), (BLOCK_C, BLOCK_N))
            else:
                bm = ((c0 + offs_c) < C)[:, None] & mask_n[None, :]
                b = tl.load(w_ptr + (b_off + c0 * K), mask=bm, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    else:
        h_base = p * stride_h - pad_t
        w_base = q * stride_w - pad_l
        # A offsets of tap (0, 0), channel block 0: rows and channels kept apart (a hoisted [BLOCK_M, BLOCK_C]
        # tile would hold BLOCK_M·BLOCK_C/threads registers); a step adds one scalar to the row offsets
        a_row = n.to(IDX_T) * sxn + h_base.to(IDX_T) * sxh + w_base.to(IDX_T) * sxw
        a_col = offs_c.to(IDX_T) * sxc
        zero = tile * 0
        r = zero
        s = zero
        cb = zero
        for _ in range(R * S * num_cb):
            c0 = cb * BLOCK_C
            h = h_base + r
            w = w_base + s
            valid = mask_m & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            step = r.to(IDX_T) * sxh + s.to(IDX_T) * sxw + c0.to(IDX_T) * sxc
            if EVEN_C:
                a = tl.load(x_ptr + (a_row + step)[:, None] + a_col[None, :], mask=valid[:, None], other=0.0)
            else:
                a_mask = valid[:, None] & ((c0 + offs_c) < C)[None, :]
                a = tl.load(x_ptr + (a_row + step)[:, None] + a_col[None, :], mask=a_mask, other=0.0)
            rs = r * S + s
            if B_DESC:
                b = tl.reshape(w_desc.load([rs, c0, n0]), (BLOCK_C, BLOCK_N))
            else:
                if EVEN_C:
                    b_mask = mask_n[None, :]
                else:
                    b_mask = ((c0 + offs_c) < C)[:, None] & mask_n[None, :]
                b = tl.load(w_ptr + (b_off + (rs * C + c0) * K), mask=b_mask, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            # next (r, s, channel block): counters instead of divisions
            cb = cb + 1
            tap_done = cb == num_cb
            cb = tl.where(tap_done, 0, cb)
            s = tl.where(tap_done, s + 1, s)
            row_done = s == S
            s = tl.where(row_done, 0, s)
            r = tl.where(row_done, r + 1, r)

    _fwd_epilogue(
        acc, n, p, q, offs_n, mask_m, mask_n, pid_m, pid_n, M, K,
        out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr, st_cnt_ptr, st_mean_ptr, st_m2_ptr,
        son, sok, sop, soq, srn, srk, srp, srq, s2n, s2k, s2p, s2q, res_scale, k_split,
        HAS_SCALE, HAS_BIAS, HAS_RES, RELU, HAS_OUT2, STATS, IDX_T, BLOCK_M,
    )  # fmt: skip


_conv_v2_tile_jit = triton.jit(_conv_v2_tile)


def _conv_fwd_v2(
    x_ptr, x_desc, w_ptr, w_desc, out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr,
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
    A_DESC: tl.constexpr, B_DESC: tl.constexpr, EVEN_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr = 0,
):  # fmt: skip
    """(BLOCK_M output pixels) x (BLOCK_N output channels) tiles; reduction over (r, s, c), c innermost.

    One tile per program (the grid has one program per tile), or with ``PERSISTENT`` > 0 (the launcher's programs
    per SM; the kernel only tests it for zero) a grid-stride loop: program
    ``pid`` of ``G`` computes tiles pid, pid + G, pid + 2G, ... (each in full, epilogue included, before the next;
    the last round is ragged when G does not divide the tile count).

    ``x_desc``: 2-D descriptor of x as (N·H·W, C) when ``A_DESC`` (1×1, stride 1, no padding, dense rows), else
    unused. ``w_desc``: 3-D descriptor of the packed (R·S, C, K) weight, box [1, BLOCK_C, BLOCK_N], when
    ``B_DESC``, else unused (``w_ptr`` is read instead).
    """
    pid = tl.program_id(0)
    if PERSISTENT:
        num_tiles = tl.cdiv(N * P * Q, BLOCK_M) * tl.cdiv(K, BLOCK_N)
        for tile in range(pid, num_tiles, tl.num_programs(0)):
            _conv_v2_tile_jit(
                tile, x_ptr, x_desc, w_ptr, w_desc, out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr,
                st_cnt_ptr, st_mean_ptr, st_m2_ptr, N, C, H, W, K, P, Q,
                sxn, sxc, sxh, sxw, son, sok, sop, soq, srn, srk, srp, srq, s2n, s2k, s2p, s2q,
                stride_h, stride_w, pad_t, pad_l, res_scale, k_split,
                R, S, HAS_SCALE, HAS_BIAS, HAS_RES, RELU, HAS_OUT2, STATS, DOT_PRECISION, IDX_T,
                A_DESC, B_DESC, EVEN_C, BLOCK_M, BLOCK_N, BLOCK_C, GROUP_M,
            )  # fmt: skip
    else:
        _conv_v2_tile_jit(
            pid, x_ptr, x_desc, w_ptr, w_desc, out_ptr, scale_ptr, bias_ptr, res_ptr, out2_ptr,
            st_cnt_ptr, st_mean_ptr, st_m2_ptr, N, C, H, W, K, P, Q,
            sxn, sxc, sxh, sxw, son, sok, sop, soq, srn, srk, srp, srq, s2n, s2k, s2p, s2q,
            stride_h, stride_w, pad_t, pad_l, res_scale, k_split,
            R, S, HAS_SCALE, HAS_BIAS, HAS_RES, RELU, HAS_OUT2, STATS, DOT_PRECISION, IDX_T,
            A_DESC, B_DESC, EVEN_C, BLOCK_M, BLOCK_N, BLOCK_C, GROUP_M,
        )  # fmt: skip


_conv_fwd_v2_kernel = triton.jit(_conv_fwd_v2)


# ----------------------------------------------------------------------------------------------------------
# Configs and the per-shape choice
# ----------------------------------------------------------------------------------------------------------
def _cfg(bm, bn, bc, warps, stages, persistent=0) -> triton.Config:
    """``persistent``: 0 for one tile per program, else the programs per SM of a persistent launch."""
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_C": bc, "GROUP_M": 8}
    if persistent:  # only then in kwargs: the one-tile configs keep their names (and AOT rows)
        kw["PERSISTENT"] = persistent
    return triton.Config(kw, num_warps=warps, num_stages=stages)


def is_persistent(cfg: triton.Config) -> bool:
    return cfg.kwargs.get("PERSISTENT", 0) > 0


# (BLOCK_M, BLOCK_N, BLOCK_C, warps, stages). BLOCK_C = 64 gives 128-byte 16-bit rows (the widest swizzle);
# 128-row tiles run on 8 warps (two warpgroups of 64 rows: at 4 warps the 128x128 fp32 accumulator plus the
# epilogue spill on sm_90), BLOCK_N = 256 as 64x256 on 8 warps (128x256 spills); 16-channel blocks for the C = 3
# stem; 3-5 stages; short M tiles for tiny grids (8x8 at small batch; below 64 rows the dot is mma.sync).
# BLOCK_N must be a power of two (tl.arange), so no 192.
# Persistent twins of four of them (last field: programs per SM, what the compiled kernel's registers allow on
# the 64K-register file, checked by tests/test_aot.py): the 8-warp 128x128 tile (1), the 4-warp 128x64 and
# 64x64 (2), and the stem's 64x32x16 (4: ~100 registers; thousands of tiny tiles are where a tile loop can save
# the most program starts). Never the heuristic's choice, only asked for (config=) until a GPU times them.
V2_CONFIGS = tuple(
    _cfg(*c)
    for c in [
        (128, 128, 64, 8, 4),
        (128, 128, 64, 8, 3),
        (128, 128, 32, 8, 5),
        (64, 256, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 4, 5),
        (128, 32, 64, 4, 4),
        (64, 32, 64, 4, 3),
        (128, 64, 16, 4, 3),
        (64, 32, 16, 4, 3),
        (32, 64, 64, 4, 3),
        (16, 64, 64, 4, 3),
    ]
) + tuple(
    _cfg(*c[:5], persistent=c[5])
    for c in [
        (128, 128, 64, 8, 3, 1),
        (128, 64, 64, 4, 4, 2),
        (64, 64, 64, 4, 5, 2),
        (64, 32, 16, 4, 3, 4),
    ]
)

# Shared memory for the pipelined operand tiles: num_stages buffers of A and B (what the descriptor pipeline
# allocates on sm_90; the pointer pipeline allocates the same or one fewer).
SMEM_BUDGET = {80: 160 * 1024, 90: 220 * 1024}


def smem_bytes(cfg: triton.Config, elem_bytes: int) -> int:
    kw = cfg.kwargs
    return cfg.num_stages * (kw["BLOCK_M"] * kw["BLOCK_C"] + kw["BLOCK_C"] * kw["BLOCK_N"]) * elem_bytes


# Operand bytes each thread stages per pipeline step, at most: (BLOCK_M + BLOCK_N)·BLOCK_C·elem / threads. Above
# it the pointer twin runs out of registers (fp32 128x64x64 on 4 warps: 384 bytes, 255 registers and a spill on
# sm_90); every 16-bit config is at most 192.
MAX_STAGED_BYTES_PER_THREAD = 256
# A persistent config keeps the tile loop's state live beside the tile (sm_90 bf16: 20-40 registers more than its
# one-tile twin, 128x64x64 w4 166 -> 202), so it also bounds the fp32 accumulator plus the staged operands per
# thread: 448 bytes (bf16 128x64x64 w4, 249 registers on sm_80, no spill) pass, 512 (fp32 128x128x64 w8: 255
# registers, 24 B of spills through the weight descriptor on sm_90) do not.
MAX_PERSISTENT_BYTES_PER_THREAD = 448


def configs_for(elem_bytes: int, arch: int = 90) -> list[triton.Config]:
    """The configs whose pipelined tiles fit ``arch``'s shared memory at this element size and whose per-thread
    operand staging stays within :data:`MAX_STAGED_BYTES_PER_THREAD` (this prunes three fp32 configs); persistent
    ones also within :data:`MAX_PERSISTENT_BYTES_PER_THREAD` (this prunes the fp32 128x128 one)."""
    budget = SMEM_BUDGET[80 if arch < 90 else 90]

    def staged(c):
        kw = c.kwargs
        return (kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_C"] * elem_bytes // (32 * c.num_warps)

    def held(c):  # fp32 accumulator + staged operands, bytes per thread
        return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * 4 // (32 * c.num_warps) + staged(c)

    return [
        c
        for c in V2_CONFIGS
        if smem_bytes(c, elem_bytes) <= budget
        and staged(c) <= MAX_STAGED_BYTES_PER_THREAD
        and (not is_persistent(c) or held(c) <= MAX_PERSISTENT_BYTES_PER_THREAD)
    ]


# Cost of one reduction step of one program, in SM clocks: the larger of the tensor-core time at the sm_90 16-bit
# peak (2048 multiply-adds per clock per SM) and the issue time of the mainloop on one SM sub-partition (warps/4
# warps x loop instructions at one per clock). The loop length is fitted to the static proxy of the v2 kernel with
# the weight descriptor (``python -m inception_kernels.aot --compare-v2``): about 85 instructions plus 2.5 per
# activation element a thread loads per step (128x128x64 on 8 warps: 163; 128x64x64 on 4 warps: 245).
# Unmeasured: to be checked when a GPU times the configs.
FMA_PER_CLOCK = 2048
LOOP_BASE_INSTR = 85
LOOP_INSTR_PER_A_ELEM = 2.5


def step_clocks(cfg: triton.Config) -> float:
    kw = cfg.kwargs
    bm, bn, bc, warps = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_C"], cfg.num_warps
    mma = bm * bn * bc / FMA_PER_CLOCK
    issue = warps / 4 * (LOOP_BASE_INSTR + LOOP_INSTR_PER_A_ELEM * bm * bc / (32 * warps))
    return max(mma, issue)


def estimated_cost(cfg: triton.Config, dims: dict, sms: int) -> float:
    """A model of a config's run time on ``sms`` SMs, in clocks per tap: waves · steps · :func:`step_clocks`, with
    waves = ⌈tiles / sms⌉ and steps = ⌈C / BLOCK_C⌉ (the R·S factor is common to all configs). It charges what
    v1's rule ignores: the padding of K to BLOCK_N (K = 160 on 128-wide tiles computes 256 columns), of C to
    BLOCK_C, wave quantization, and narrow tiles whose loop cannot issue fast enough to feed the tensor cores."""
    kw = cfg.kwargs
    tiles = math.ceil(dims["BLOCK_M"] / kw["BLOCK_M"]) * math.ceil(dims["BLOCK_N"] / kw["BLOCK_N"])
    waves = math.ceil(tiles / max(1, sms))
    steps = math.ceil(dims["BLOCK_C"] / kw["BLOCK_C"])
    return waves * steps * step_clocks(cfg)


# Configs whose estimated cost is within this factor of the cheapest count as tied (the model is coarse); the
# largest tile among them wins.
_COST_TIE = 1.05


@functools.lru_cache(maxsize=4096)
def heuristic_config_v2(dims: tuple, elem_bytes: int, sms: int, arch: int = 90) -> triton.Config:
    """One config per shape without timing: among the configs that fit (:func:`configs_for`) and survive v1's
    :func:`~inception_kernels.ops.conv_kernels.prune_configs`, those within 5 % of the lowest :func:`estimated_cost`; of
    these the largest tile, then the deeper channel block, more warps, fewer stages. Persistent configs are not
    candidates (no GPU has timed them). ``dims`` = (("BLOCK_M", N·P·Q), ("BLOCK_N", K), ("BLOCK_C", C))."""
    d = dict(dims)
    one_tile = [c for c in configs_for(elem_bytes, arch) if not is_persistent(c)]
    kept = conv_kernels.prune_configs(one_tile, d, elem_bytes)
    best = min(estimated_cost(c, d, sms) for c in kept)
    near = [c for c in kept if estimated_cost(c, d, sms) <= _COST_TIE * best]
    return max(
        near,
        key=lambda c: (
            c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"],
            c.kwargs["BLOCK_C"],
            c.num_warps,
            -c.num_stages,
        ),
    )


def persistent_twin(cfg: triton.Config, elem_bytes: int, arch: int = 90) -> triton.Config | None:
    """The persistent config with ``cfg``'s tile, warps and stages among :func:`configs_for`, if there is one."""

    def key(c):
        return ({k: v for k, v in c.kwargs.items() if k != "PERSISTENT"}, c.num_warps, c.num_stages)

    return next((c for c in configs_for(elem_bytes, arch) if is_persistent(c) and key(c) == key(cfg)), None)


def resident_programs(cfg: triton.Config, elem_bytes: int, arch: int = 90) -> int:
    """Programs per SM of a persistent launch: the config's ``PERSISTENT`` count, fewer where shared memory
    (:func:`smem_bytes` against :data:`SMEM_BUDGET`) holds fewer at this element size (fp32 64x64x64: one)."""
    by_smem = SMEM_BUDGET[80 if arch < 90 else 90] // max(1, smem_bytes(cfg, elem_bytes))
    return max(1, min(cfg.kwargs.get("PERSISTENT", 1), by_smem))


_FORCE_PROGRAMS: int | None = None  # tests: the program count of a persistent launch (None: per device)


def launch_grid(cfg: triton.Config, M: int, K: int, elem_bytes: int, sms: int, arch: int = 90) -> tuple[int]:
    """The grid of one launch on ``sms`` SMs of ``arch``: a program per (BLOCK_M x BLOCK_N) tile of the (M, K)
    output; for a persistent config one per resident slot of every SM (:func:`resident_programs`), at most one per
    tile, or ``_FORCE_PROGRAMS`` (tests). The interpreter counts as 1 SM: 1-2 programs walk all the tiles."""
    tiles = _tile.cdiv(M, cfg.kwargs["BLOCK_M"]) * _tile.cdiv(K, cfg.kwargs["BLOCK_N"])
    if not is_persistent(cfg):
        return (tiles,)
    programs = _FORCE_PROGRAMS if _FORCE_PROGRAMS is not None else sms * resident_programs(cfg, elem_bytes, arch)
    return (max(1, min(tiles, programs)),)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------
_FORCE_DESC: bool | None = None  # tests: True/False forces the descriptor / pointer path (None: automatic)


def _device_arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 90  # the interpreter: the sm_90 config space (descriptors optional, see _use_desc)
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _use_desc(device: torch.device) -> bool:
    if TensorDescriptor is None:
        return False
    if _FORCE_DESC is not None:
        return _FORCE_DESC
    # the interpreter runs descriptors, but the pointer twin is the default there (tests force both)
    return device.type == "cuda" and _device_arch(device) >= 90


def _aligned(nbytes: int) -> bool:
    return nbytes % 16 == 0


def desc_plan(x, wp, stride, padding, out_shape) -> tuple[bool, bool]:
    """(A_DESC, B_DESC): which operands can go through TMA descriptors (layouts only; see :func:`_use_desc`).

    B (the packed (R·S, C, K) weight): 16-byte aligned rows, i.e. K·elem_size % 16 == 0.
    A (x as (N·H·W, C)): 1×1, stride 1, no padding, x dense over (n, h, w) with unit channel stride, 16-byte
    aligned start and row stride (a channel slice at a 16-byte offset qualifies).
    """
    eb = x.element_size()
    K = wp.shape[-1]
    b_ok = _aligned(K * eb) and _aligned(wp.data_ptr())
    N, C, H, W = x.shape
    sxn, sxc, sxh, sxw = x.stride()
    R, S = wp.shape[0], wp.shape[1]
    rs = a_row_stride(x)
    a_ok = (
        R == 1
        and S == 1
        and tuple(stride) == (1, 1)
        and tuple(padding) == (0, 0, 0, 0)
        and (sxc == 1 or C == 1)
        and (W == 1 or sxw == rs)
        and (H == 1 or sxh == W * rs)
        and (N == 1 or sxn == H * W * rs)
        and _aligned(rs * eb)
        and _aligned(x.data_ptr())
        and b_ok
    )
    return a_ok, b_ok


def a_row_stride(x) -> int:
    """Stride between consecutive (n, h, w) pixels when x is dense over them (the innermost non-trivial one; the
    stride of a size-1 dimension is arbitrary in PyTorch and must not be used)."""
    N, C, H, W = x.shape
    sxn, _, sxh, sxw = x.stride()
    return sxw if W > 1 else sxh if H > 1 else sxn if N > 1 else max(C, 1)


def supports_v2(
    x, weight, stride=(1, 1), padding=(0, 0, 0, 0), out=None, residual=None, out2=None
) -> str | None:
    """None when :func:`conv_fwd_v2_into` can compute this call, else the reason it cannot (xformers-style).

    v2 serves every input v1 serves (all layouts fall back to its pointer twin); the reasons are the device and
    the interpreter's missing bfloat16 arithmetic.
    """
    if not _backend.triton_can_run(x):
        return f"Triton cannot run on {x.device} here (no GPU and no TRITON_INTERPRET)"
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        return "the Triton interpreter has no bfloat16 arithmetic"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {x.dtype} is not supported"
    K, _, R, S = weight.shape
    if not (1 <= R <= conv_kernels.MAX_KERNEL and 1 <= S <= conv_kernels.MAX_KERNEL):
        return f"kernel size {R}x{S} is not supported"
    if any(s not in (1, 2) for s in stride):
        return f"stride {tuple(stride)} is not supported"
    return None


def conv_fwd_v2_into(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, config=None, out2=None,
    stats=None,
):  # fmt: skip
    """v2 of :func:`conv_triton.conv_fwd_into`: same arguments, same result, same writes (only ``out``'s view, ``out2``
    and the ``stats`` partials). ``config`` is one of :data:`V2_CONFIGS` (default: :func:`heuristic_config_v2`);
    ``stats`` are the buffers of :func:`conv_triton.stats_partials`."""
    _backend.check_interpretable(x)
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, K1, P, Q = out.shape
    if out2 is not None and (K1 + out2.shape[1] != K or residual is not None):
        raise ValueError("out and out2 must split the K output channels, without a residual")
    wp = _weights.packed_weight(weight, (2, 3, 1, 0), dtype=x.dtype)  # (R, S, C, K)
    eb = x.element_size()
    sms, arch = conv_kernels._num_sms(x.device), _device_arch(x.device)
    if config is None:
        dims = (("BLOCK_M", N * P * Q), ("BLOCK_N", K), ("BLOCK_C", C))
        config = heuristic_config_v2(dims, eb, sms, arch)
    kw = config.kwargs
    bm, bn, bc = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_C"]
    a_desc = b_desc = False
    if _use_desc(x.device):
        a_desc, b_desc = desc_plan(x, wp, stride, padding, out.shape)
    x_arg = TensorDescriptor(x, [N * H * W, C], [a_row_stride(x), 1], [bm, bc]) if a_desc else x
    w_arg = TensorDescriptor(wp, [R * S, C, K], [C * K, K, 1], [1, bc, bn]) if b_desc else wp
    dummy = wp
    res = residual if residual is not None else out
    o2 = out2 if out2 is not None else out
    grid = launch_grid(config, N * P * Q, K, eb, sms, arch)
    record_launch()
    _conv_fwd_v2_kernel[grid](
        x, x_arg, wp, w_arg, out,
        scale if scale is not None else dummy, bias if bias is not None else dummy, res, o2,
        *(stats if stats is not None else (dummy, dummy, dummy)),
        N, C, H, W, K, P, Q,
        *x.stride(), *out.stride(), *res.stride(), *o2.stride(),
        stride[0], stride[1], padding[0], padding[2],
        float(residual_scale), K1 if out2 is not None else K,
        R=R, S=S, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        RELU=bool(relu), HAS_OUT2=out2 is not None, STATS=stats is not None,
        DOT_PRECISION=conv_triton._dot_precision(x.dtype, x.device), IDX_T=_tile.tl_index_type(x, out, residual, out2),
        A_DESC=a_desc, B_DESC=b_desc, EVEN_C=C % bc == 0,
        **kw, num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------
# AOT registration (inception_kernels.aot): pointer twin on every arch, descriptor variants on sm_90
# ----------------------------------------------------------------------------------------------------------
def _desc_type(dt: str, block: Sequence[int]) -> str:
    return f"tensordesc<{dt}[{', '.join(str(b) for b in block)}]>"


def _v2_arg_types(dt: str, config=None, *, R=3, S=3, a_desc=False, b_desc=False, **over) -> dict[str, object]:
    base = conv_kernels._for(_conv_fwd_v2, conv_kernels._fwd_arg_types(dt))
    base.update(R=R, S=S, A_DESC=a_desc, B_DESC=b_desc, EVEN_C=True)
    kw = config.kwargs if config is not None else {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 64}
    base["x_desc"] = _desc_type(dt, (kw["BLOCK_M"], kw["BLOCK_C"])) if a_desc else f"*{dt}"
    base["w_desc"] = _desc_type(dt, (1, kw["BLOCK_C"], kw["BLOCK_N"])) if b_desc else f"*{dt}"
    base.update(over)
    return base


def _applies(min_arch: int):
    def applies(config, dtype: str, arch: int) -> bool:
        eb = 4 if dtype == "fp32" else 2
        return arch >= min_arch and config in configs_for(eb, arch)

    return applies


def _variant_specs(prefix: str, configs: tuple) -> tuple[KernelSpec, ...]:
    """The three AOT variants (pointer twin, weight descriptor, 1x1 GEMM with both descriptors) of ``configs``."""
    return (
        KernelSpec(f"{prefix}conv2d_fwd_v2", _conv_fwd_v2, configs, _v2_arg_types, applies=_applies(0)),
        KernelSpec(
            f"{prefix}conv2d_fwd_v2_tma", _conv_fwd_v2, configs,
            functools.partial(_v2_arg_types, b_desc=True), applies=_applies(90),
        ),
        KernelSpec(
            f"{prefix}conv2d_fwd_v2_gemm_tma", _conv_fwd_v2, configs,
            functools.partial(_v2_arg_types, R=1, S=1, a_desc=True, b_desc=True), applies=_applies(90),
        ),
    )  # fmt: skip


for _spec in _variant_specs("", V2_CONFIGS):
    register_kernel(_spec)

# Subsets for tests (not registered: the registry above holds every config), module-level so that fresh compile
# processes find them: three one-tile configs of each variant (128x128 on 8 warps, 64x256 on 8 warps, 128x64 on 4
# warps), and the persistent configs.
_QUICK = (V2_CONFIGS[0], V2_CONFIGS[3], V2_CONFIGS[4])
AOT_QUICK_SPECS = _variant_specs("quick_", _QUICK)
AOT_PERSISTENT_SPECS = _variant_specs("persistent_", tuple(c for c in V2_CONFIGS if is_persistent(c)))


# ----------------------------------------------------------------------------------------------------------
# The dispatch layer lists v2 as a conv forward implementation of its own: chosen when forced
# (INCEPTION_KERNELS_BACKEND=triton_v2) or when a tuning table measured it fastest on this GPU; never by the
# rule or the shipped defaults until a committed GPU result shows it faster (issue 14).
# ----------------------------------------------------------------------------------------------------------
def _dispatch_reasons(problem) -> list[str]:
    return conv_triton._triton_reasons(problem)


def _dispatch_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    if out is None:
        out = _tile.new_cl(_args.conv_out_shape(x.shape, weight.shape, stride, padding), x)
    return conv_fwd_v2_into(
        x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2=out2, stats=stats
    )


dispatch.register(dispatch.Impl("conv_fwd", "triton_v2", _dispatch_reasons, _dispatch_fwd))
