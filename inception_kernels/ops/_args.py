"""Argument normalization and checks shared by the public ops (conv, batch norm, pooling, residual).

One place decides which argument forms an op accepts -- PyTorch's: an int, or a sequence (tuple, list,
``torch.Size``) of one or two ints where ``F.conv2d`` / ``F.max_pool2d`` take one; the padding strings
``"same"`` / ``"valid"`` where ``F.conv2d`` takes them -- and every rejection is a ``TypeError`` (wrong type or
form) or ``ValueError`` (wrong value, shape, layout, device) whose message starts with the argument's name and
says what is accepted. Nothing here launches a kernel; the checks are cheap attribute reads.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NULL = contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------
# Integer tuples and padding
# ----------------------------------------------------------------------------------------------------------
def _int(v, name: str, forms: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be {forms}, got {v!r} (a bool)")
    try:
        return operator.index(v)  # int, numpy integers, 0-d integer tensors; not float, not str
    except TypeError:
        raise TypeError(f"{name} must be {forms}, got {v!r}") from None


def int_tuple(v, name: str, n: int = 2) -> tuple[int, ...]:
    """``v`` as an n-tuple of ints: an int (repeated), or a sequence of 1 (repeated) or n ints.

    These are the forms ``F.conv2d`` and the 2-D pooling functionals accept for stride, padding and kernel
    size; anything else is a ``TypeError`` naming ``name``.
    """
    if type(v) is int:  # the common cases first: this runs on every op call
        return (v,) * n
    if type(v) is tuple and len(v) == n and all(type(i) is int for i in v):
        return v
    forms = f"an int or a sequence of 1 or {n} ints"
    if isinstance(v, (tuple, list, torch.Size)):
        items = tuple(_int(i, name, forms) for i in v)
        if len(items) == 1:
            return items * n
        if len(items) == n:
            return items
        raise TypeError(f"{name} must be {forms}, got {v!r} ({len(items)} elements)")
    return (_int(v, name, forms),) * n


def pair(v, name: str = "value") -> tuple[int, int]:
    """``v`` as (int, int): the one copy of this (ops, layers, the block engine, convert)."""
    return int_tuple(v, name, 2)


_CONV_PADDING_FORMS = "an int, a sequence of 1 or 2 ints, (top, bottom, left, right), 'same' or 'valid'"


def conv_out_hw(H: int, W: int, R: int, S: int, stride, padding) -> tuple[int, int]:
    """(P, Q): the output height and width of an R×S conv with ``stride`` (sh, sw) and ``padding`` (top, bottom,
    left, right) on an H×W input -- the one copy of this arithmetic (ops, dispatch problems, benchmarks)."""
    top, bottom, left, right = padding
    return (H + top + bottom - R) // stride[0] + 1, (W + left + right - S) // stride[1] + 1


def window_out_size(size: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    """Output length of a conv or pooling window of ``k`` with stride ``s`` and padding ``p`` on both sides
    (dilation 1) -- PyTorch's arithmetic, ``ceil``: pooling's ceil_mode (a last window must start inside the
    input or its left padding). The one copy (pooling ops, the CUDA extension's shapes, the block engine)."""
    span = size + 2 * p - k
    n = (-(-span // s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + p:
        n -= 1
    return n


def conv_out_shape(x_shape, w_shape, stride, padding) -> tuple[int, int, int, int]:
    """(N, K, P, Q) of a conv of an (N, C, H, W) input with a (K, C, R, S) weight."""
    N, _, H, W = x_shape
    K, _, R, S = w_shape
    return (N, K, *conv_out_hw(H, W, R, S, stride, padding))


def conv_padding(padding, kernel_size=None, stride=(1, 1)) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding from ``F.conv2d``'s forms or an explicit 4-tuple.

    ``"valid"`` is no padding; ``"same"`` (stride 1 only, as in ``F.conv2d``) pads ``k - 1`` in total per
    dimension, the odd element at the bottom / right, exactly as PyTorch does for even kernels.
    ``kernel_size`` (R, S) is needed for ``"same"`` only.
    """
    if type(padding) is int and padding >= 0:
        return (padding,) * 4
    if type(padding) is tuple and len(padding) == 4 and all(type(i) is int and i >= 0 for i in padding):
        return padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
        if tuple(stride) != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in F.conv2d), got stride {tuple(stride)}")
        if kernel_size is None:
            raise ValueError("padding='same' needs the kernel size to resolve it")
        r, s = kernel_size
        return ((r - 1) // 2, r // 2, (s - 1) // 2, s // 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pad = tuple(_int(i, "padding", _CONV_PADDING_FORMS) for i in padding)
    else:
        try:
            ph, pw = pair(padding, "padding")
        except TypeError:
            raise TypeError(f"padding must be {_CONV_PADDING_FORMS}; got {padding!r}") from None
        pad = (ph, ph, pw, pw)
    if any(p < 0 for p in pad):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pad


def pool_geometry(kernel_size, stride, padding) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, padding) pairs with ``F.max_pool2d`` / ``F.avg_pool2d``'s rules: stride None (or an
    empty sequence) means the kernel size; kernel and stride positive; 0 <= padding <= kernel // 2."""
    kernel = pair(kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list, torch.Size)) and len(stride) == 0):
        stride = kernel
    else:
        stride = pair(stride, "stride")
    if isinstance(padding, str):
        raise TypeError(f"padding must be an int or a sequence of 1 or 2 ints (pooling takes no padding strings), "
                        f"got {padding!r}")  # fmt: skip
    padding = pair(padding, "padding")
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel_size must be positive, got {kernel}")
    if any(s < 1 for s in stride):
        raise ValueError(f"stride must be positive, got {stride}")
    if any(p < 0 for p in padding):
        raise ValueError(f"padding must be non-negative, got {padding}")
    if any(p > k // 2 for k, p in zip(kernel, padding)):
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding {padding}, kernel_size {kernel}"
        )
    return kernel, stride, padding


# ----------------------------------------------------------------------------------------------------------
# Scalars
# ----------------------------------------------------------------------------------------------------------
def real(v, name: str, *, finite: bool = True, minimum: float | None = None) -> float:
    """A Python float from a real number (int, float, numpy scalar; not bool, str or tensor)."""
    if type(v) is float or type(v) is int:
        v = float(v)
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(v).__name__} {v!r}")
    else:
        v = float(v)
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and not v >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def flag(v, name: str) -> bool:
    """A bool from True/False (or the ints 0/1, numpy bools); a string or None is a TypeError, not truthy."""
    if v is True or v is False or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, numbers.Integral) and v in (0, 1):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")


# ----------------------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------------------
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not fake, functional or other tracing subclasses


def _value_key(v):
    """``v`` as a memo-key element that equals another only for an argument the checks treat alike, or
    :data:`_NO_KEY`: an int, bool, str or None by (type, value) (``True == 1`` and ``1.0 == 1`` hash alike); a
    float by its bits (``-0.0 == 0.0`` would share a key, NaN match none); a tuple of ints. Anything else (a
    tensor, a list, a numpy scalar) has no key: such a call is checked every time."""
    t = type(v)
    if t is int or t is bool or t is str or v is None:
        return (t, v)
    if t is float:
        return v.hex()  # (a str: never equal to an int's or a str argument's (type, value) pair)
    if t is tuple and all(type(i) is int for i in v):
        return (t, v)
    return _NO_KEY


_NO_KEY = object()


def call_signature(tensors: tuple, values: tuple) -> tuple | None:
    """A memo key for an op call whose checks read only its tensors' metadata and its other arguments' values:
    each of ``tensors`` (None or a plain tensor) as (shape, strides, dtype, device), each of ``values`` as
    :func:`_value_key`. None when the call cannot be keyed (it is then checked on every call): a tensor slot
    holding something else (the checks name it), a fake / functional / other tensor subclass (tracing: its sizes
    may be symbolic), a value without a key."""
    key = []
    for a in tensors:
        if a is None:
            key.append(None)
        elif type(a) in _PLAIN_TENSORS:
            key.append((a.shape, a.stride(), a.dtype, a.device))
        else:
            return None
    for v in values:
        k = _value_key(v)
        if k is _NO_KEY:
            return None
        key.append(k)
    return tuple(key)


MEMO_MAX = 4096  # distinct call signatures a memo keeps; past that it starts again (a shape sweep)


def remember(memo: dict, key, value):
    """``memo[key] = value`` in one of the call memos keyed by :func:`call_signature`, bounded by
    :data:`MEMO_MAX`; returns ``value``."""
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo[key] = value
    return value


def memoized(memo: dict, key, build):
    """``memo[key]``, made by ``build()`` the first time (:func:`remember`): a launch decided once per signature."""
    value = memo.get(key)
    if value is None:
        value = remember(memo, key, build())
    return value


def memoized_in(slot: dict | None, name: str, memo: dict, key, build):
    """:func:`memoized` with the key made by ``key()``, and the value also kept in ``slot[name]``: a caller that
    knows its calls share one signature (a plan) passes its ``slot`` and later calls skip building the key."""
    value = slot.get(name) if slot is not None else None
    if value is None:
        value = memoized(memo, key(), build)
        if slot is not None:
            slot[name] = value
    return value


def is_nhwc_strided(t: torch.Tensor) -> bool:
    """Channels innermost and (n, h, w) laid out without overlap: a channels_last tensor or a channel slice."""
    N, K, P, Q = t.shape
    sn, sk, sp, sq = t.stride()
    return (
        (sk == 1 or K == 1) and (sq >= K or Q == 1) and (sp >= Q * sq or P == 1) and (sn >= P * sp or N == 1)
    )


def is_channels_inner(t: torch.Tensor) -> bool:
    """4-D with unit channel stride (channels_last storage, possibly a channel slice of a larger buffer)."""
    return t.dim() == 4 and (t.shape[1] == 1 or t.stride(1) == 1)


def tensor(
    t, name: str, *, dims: int | None = None, like: torch.Tensor | None = None, dtype_of_like: bool = True
):
    """``t`` is a tensor of ``dims`` dimensions on ``like``'s device (and of its dtype, if asked)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but x is on {like.device}")
        if dtype_of_like and t.dtype != like.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but x has {like.dtype}; all tensors must share x's dtype"
            )


def float_activation(t, name: str) -> None:
    """A 4-D (N, C, H, W) float32/bfloat16/float16 tensor (any memory format)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def activation(t, name: str) -> None:
    """A 4-D float tensor with channels innermost: channels_last, or a channel slice of a channels_last buffer."""
    float_activation(t, name)
    if not is_channels_inner(t):
        raise ValueError(
            f"{name} must be a 4-D channels_last tensor (or a channel slice of one); got shape "
            f"{tuple(t.shape)} with strides {t.stride()}"
        )


def out_tensor(out, shape, like: torch.Tensor, name: str = "out") -> None:
    """``out`` can be written by our kernels: ``like``'s dtype and device, ``shape``, channels_last or a channel
    slice of a channels_last buffer, no two elements at one address."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.dim() != 4:
        raise ValueError(f"{name} must be 4-D, got shape {tuple(out.shape)}")
    if out.device != like.device:
        raise ValueError(f"{name} is on {out.device} but x is on {like.device}")
    if out.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {out.dtype} but x has {like.dtype}; out must have x's dtype")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if not is_nhwc_strided(out):
        raise ValueError(
            f"{name} must be channels_last or a channel slice of a channels_last tensor, got strides {out.stride()}"
        )


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Could ``a`` and ``b`` touch the same bytes? (same storage and intersecting address ranges)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def no_overlap(out: torch.Tensor, inputs: dict, *, elementwise: bool = False, name: str = "out") -> None:
    """``out`` must not share memory with any input (an elementwise op may write exactly onto an input)."""
    for iname, t in inputs.items():
        if t is None or not overlaps(out, t):
            continue
        if elementwise and same_view(out, t):
            continue
        extra = " (only an identical view is allowed: in-place)" if elementwise else ""
        raise ValueError(f"{name} must not share memory with {iname}{extra}")


def channel_vector(t, name: str, C: int, like: torch.Tensor, *, dtypes=None, what: str = "C") -> torch.Tensor:
    """A per-channel (C,) tensor on x's device; returned contiguous (a strided view is copied once)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D ({what},), got shape {tuple(t.shape)}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}")
    allowed = dtypes if dtypes is not None else (torch.float32, like.dtype)
    if t.dtype not in allowed:
        names = ", ".join(sorted({str(d).replace("torch.", "") for d in allowed}))
        raise TypeError(f"{name} must be float32 or x's dtype ({names}), got {t.dtype}")
    if t.shape[0] != C:
        raise ValueError(f"{name} must have length {what}={C}, got {t.shape[0]}")
    return t if t.stride(0) == 1 or C <= 1 else t.contiguous()


# ----------------------------------------------------------------------------------------------------------
# CUDA device of the inputs
# ----------------------------------------------------------------------------------------------------------
def device_guard(t: torch.Tensor):
    """``torch.cuda.device(t.device)`` when ``t`` lives on a CUDA device other than the current one (Triton
    launches on the current device), else a no-op context: one attribute read on the common path."""
    dev = t.device
    if dev.type == "cuda" and dev.index is not None and dev.index != torch.cuda.current_device():
        return torch.cuda.device(dev)
    return _NULL


def on_input_device(fn):
    """Run ``fn(t, ...)`` under :func:`device_guard` of its first argument (a tensor): for the Triton launchers
    and public entries, so inputs on a non-default GPU launch there. A plain call on CPU and on the current
    device; under torch.compile the compiled code sets the device itself."""

    first = next(iter(inspect.signature(fn).parameters))  # its name, for calls that pass it by keyword

    @functools.wraps(fn)
    def run(*args, **kwargs):
        t = args[0] if args else kwargs.get(first)
        if isinstance(t, torch.Tensor) and t.is_cuda and not torch.compiler.is_compiling():
            with device_guard(t):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


def geometry(*tensors: torch.Tensor | None) -> tuple:
    """Shapes and strides of ``tensors`` (None for an absent one): what a plan's fixed launch arguments assume."""
    return tuple(None if t is None else (tuple(t.shape), t.stride()) for t in tensors)


def check_plan_geometry(planned: tuple, *tensors: torch.Tensor | None, what: str = "plan") -> None:
    """A plan's launch arguments (strides, sizes) are fixed: tensors of another geometry would be written out of
    bounds, so they are refused."""
    got = geometry(*tensors)
    if got != planned:
        raise ValueError(f"this {what} was made for tensors of shapes and strides {planned}, got {got}")
