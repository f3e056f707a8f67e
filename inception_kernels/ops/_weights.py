"""Weight operands of the conv GEMMs: the weight as a kernel reads it (layout, dtype, a folded per-channel scale),
copied at most once per weight version and cached, and the layout its gradient is written in. Shared by the routes
(the v1 Triton kernels read channels_last weights; forward v2 an (R, S, C, K) pack; the cudnn route a cast under
autocast), so a forward and a backward that read the same operand share one copy.
"""

from __future__ import annotations

import weakref

import torch

from ..utils import record_launch
from . import _tile

_PACK_CACHE: dict = {}
_PACK_CACHE_MAX = 1024


def weight_operand(weight: torch.Tensor, scale: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """The (K, C, R, S) weight as the v1 forward and dgrad read it, channels_last (physically K, R, S, C): the
    weight itself when it is channels_last-contiguous (any contiguous 1×1 weight is) in ``dtype`` (default: its
    own) and no ``scale`` is folded in; else a channels_last copy, times ``scale`` over K if given, cast in the
    same copy (an fp32 master weight under autocast). One copy serves the forward and the dgrad of a training
    step: a (K, C, R, S)-contiguous R×S weight costs one copy per step, a channels_last one none. Cached as
    :func:`packed_weight`."""
    dtype = weight.dtype if dtype is None else dtype
    if scale is None and dtype == weight.dtype and weight.is_contiguous(memory_format=torch.channels_last):
        return weight
    return _cached_copy(weight, "channels_last", scale, dtype, weight, 0, torch.channels_last)


def packed_weight(
    weight: torch.Tensor, perm: tuple[int, ...], scale: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``weight.permute(perm)`` materialized contiguously (times ``scale`` over K if given) in ``dtype`` (default:
    the weight's; an fp32 master weight under autocast is cast by the same copy), in one kernel (forward v2's
    (R, S, C, K) layout; v1 reads :func:`weight_operand`).

    Copies are cached per weight tensor (for a scaled copy: and its scale tensor) and reused while their
    ``_version`` and storage are unchanged (an optimizer step, any in-place write or a ``.data`` rebinding
    invalidates them), so inference copies each weight once and a training step once per weight and layout.
    A permutation that is already contiguous, in the weight's own dtype, is the weight itself: no copy.
    """
    dtype = weight.dtype if dtype is None else dtype
    src = weight.permute(*perm)
    if scale is None and dtype == weight.dtype and src.is_contiguous():
        return src
    return _cached_copy(weight, perm, scale, dtype, src, perm.index(0), torch.contiguous_format)


def _cached_copy(weight, layout, scale, dtype, src, k_dim, memory_format):
    """``src`` (a view of ``weight``; times ``scale`` along ``k_dim``) copied into a new ``dtype`` tensor of its
    shape in ``memory_format``, cached per (weight, layout, scaled-ness, dtype) while the weight's and the scale's
    versions and storages stay."""
    cacheable = not torch.compiler.is_compiling() and not (
        weight.is_cuda and torch.cuda.is_current_stream_capturing()
    )
    # one entry per weight, layout and scaled-ness: a new scale tensor (a BN folded again) replaces the entry
    key = (id(weight), layout, scale is not None, dtype)
    stamp = (weight._version, weight.data_ptr())
    if scale is not None:
        stamp += (scale._version, scale.data_ptr())
    if cacheable:
        hit = _PACK_CACHE.get(key)
        if (hit is not None and hit[0]() is weight and (scale is None or hit[1]() is scale)
                and hit[2] == stamp):  # fmt: skip
            return hit[3]
    out = torch.empty(src.shape, dtype=dtype, device=weight.device, memory_format=memory_format)
    record_launch(aten=True)
    if scale is None:
        out.copy_(src)
    else:
        view = [1] * weight.dim()
        view[k_dim] = -1
        torch.mul(src, scale.to(weight.dtype).view(view), out=out)
    if cacheable:
        if len(_PACK_CACHE) >= _PACK_CACHE_MAX:
            _PACK_CACHE.clear()
        scale_ref = None if scale is None else weakref.ref(scale)
        _PACK_CACHE[key] = (weakref.ref(weight), scale_ref, stamp, out)
    return out


def weight_format(weight: torch.Tensor) -> torch.memory_format:
    """The memory format of ``weight``'s gradient: channels_last for a channels_last (and not also contiguous)
    weight, else contiguous -- the layout autograd accumulates into ``.grad`` without a copy."""
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def grad_weight_buf(weight: torch.Tensor) -> torch.Tensor:
    """An empty float32 buffer for ``weight``'s gradient in :func:`weight_format` (from ``_tile.new_buf``, which
    the tests poison)."""
    return _tile.new_buf(weight.shape, weight.device, memory_format=weight_format(weight))
