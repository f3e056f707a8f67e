"""Shared pieces of the memory-bound Triton kernels (batch norm, pooling, residual add).

Those kernels view an activation as a (M, C) matrix, M = N·H·W pixels in (n, h, w) order and C channels
contiguous (channels_last), and work on [BLOCK_M, BLOCK_C] tiles. Every tensor comes with its own
(n, c, h, w) element strides, so any of them may be a channel slice of a larger channels_last buffer.
"""

from __future__ import annotations

import torch

from ._triton import tl, triton

# Tile of the elementwise / reduction kernels: 64 pixels x 64 channels, 4 warps (16 KB of fp32 per operand).
BLOCK_M = 64
BLOCK_C = 64
NUM_WARPS = 4


@triton.jit
def pixel_offsets(offs_m, H, W, sn, sh, sw, IDX_T: tl.constexpr):
    """Element offset of pixel m = (n·H + h)·W + w for a tensor with strides (sn, ·, sh, sw)."""
    w = offs_m % W
    t = offs_m // W
    h = t % H
    n = t // H
    return n.to(IDX_T) * sn + h.to(IDX_T) * sh + w.to(IDX_T) * sw


@triton.jit
def tile_2d(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_M pixels, BLOCK_C channels] tile of the (M, C) grid of :func:`grid_2d`:
    (pid_m, pixel indices, channel indices, channel mask, tile mask)."""
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    return pid_m, offs_m, offs_c, mask_c, (offs_m < M)[:, None] & mask_c[None, :]


@triton.jit
def last_to_arrive(counter_ptr, arrivals):
    """The handshake of the kernels whose last program finishes a reduction inside the launch (the BN backward's
    reduction, the finalize, wgrad's split-K): after this program's partial stores, a CTA barrier (every thread's
    stores precede the arrival) and an acq_rel arrival on ``counter_ptr`` (one int32, zero between launches).
    True in the program that arrives last of ``arrivals``: it sees every other program's stores, and resets the
    counter with :func:`reset_arrivals` when done."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == arrivals - 1


@triton.jit
def reset_arrivals(counter_ptr):
    """The last program's reset of its :func:`last_to_arrive` counter: ready for the next launch."""
    tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")


def grid_2d(M: int, C: int):
    return (cdiv(M, BLOCK_M), cdiv(C, BLOCK_C))


def cdiv(a: int, b: int) -> int:
    """Ceiling division of host integers, for grids and buffer sizes (``triton.cdiv`` is a constexpr function in
    Triton 3.8 and costs microseconds per call on the host)."""
    return -(-a // b)


def fits_int32(t: torch.Tensor) -> bool:
    """Whether every element offset of ``t`` (from its first element, through its strides) fits int32: a function
    of its shape and strides alone (the storage-size test only answers the small cases early), so launches
    memoized on shapes and strides keep the right index type."""
    if t.untyped_storage().nbytes() < 2**31 - 1:  # (no offset inside a storage this small can exceed it)
        return True
    return sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0) < 2**31 - 1


def tl_index_type(*tensors: torch.Tensor | None):
    """int32 offsets unless one of the tensors spans 2**31 elements (then int64)."""
    for t in tensors:
        if t is not None and not fits_int32(t):
            return tl.int64
    return tl.int32


def new_cl(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Every activation-shaped tensor these launchers allocate (tests poison them with NaN)."""
    return torch.empty(
        shape, device=like.device, dtype=dtype or like.dtype, memory_format=torch.channels_last
    )


def new_buf(shape, device, dtype=torch.float32, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Every other buffer these launchers allocate (tests poison them with NaN, as :func:`new_cl`)."""
    return torch.empty(shape, device=device, dtype=dtype, memory_format=memory_format)
