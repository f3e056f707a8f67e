"""The ``triton`` route of the conv families: launchers of the v1 kernels (``conv_kernels``) for the forward, dgrad
and wgrad, the backward's epilogue-gradient pass (shared by every route), and the BN-statistics partial buffers (the
weight operands they read: ``ops._weights``). Tensors arrive validated and channels_last-strided (``conv.conv2d`` checks them).
"""

from __future__ import annotations

import torch

from .. import _backend
from ..utils import record_launch
from . import _args, _tile, dispatch
from . import conv_kernels as kernels
from ._weights import grad_weight_buf, weight_operand


def _dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    if dtype != torch.float32 or device.type != "cuda":
        return "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


STATS_ROWS = kernels._STATS_ROWS


def stats_partials(M: int, K: int, device: torch.device):
    """Buffers for the forward kernel's BN-statistics epilogue: (count, mean, M2) per row tile of the output.

    Sized for the smallest BLOCK_M any config may use (a row per ``STATS_ROWS`` output rows); a tile of a config
    with larger tiles writes its partial into the first of its rows and count 0 into the others, so nothing is
    zero-filled here. The count buffer is (T,), mean and M2 are (T, K) float32; the mean and M2 of a row whose
    count is 0 are unspecified.
    """
    tiles = _tile.cdiv(M, STATS_ROWS)
    return (
        _tile.new_buf((tiles,), device),
        _tile.new_buf((tiles, K), device),
        _tile.new_buf((tiles, K), device),
    )


def fwd_launcher(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, config=None, out2=None,
    stats=None,
):  # fmt: skip
    """Everything about one forward launch that stays while the tensors keep their shapes, strides and flags,
    decided once: returns ``run(x, wp, out, scale=None, bias=None, res=None, o2=None, stats=None)`` taking the
    tensors of one call (``wp``: :func:`weight_operand` of the weight in x's dtype; an absent operand is passed
    to the kernel as a tensor of the call it never reads). Arguments as :func:`conv_fwd_into`, whose tensors only
    lend their shapes and strides here."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, K1, P, Q = out.shape
    if out2 is not None and (K1 + out2.shape[1] != K or residual is not None):
        raise ValueError("out and out2 must split the K output channels, without a residual")
    res = residual if residual is not None else out
    o2 = out2 if out2 is not None else out
    grid = lambda meta: (_tile.cdiv(N * P * Q, meta["BLOCK_M"]) * _tile.cdiv(K, meta["BLOCK_N"]),)
    dims = {"BLOCK_M": N * P * Q, "BLOCK_N": K, "BLOCK_C": C}
    if stats is not None and config is None:
        # never the timing autotuner here: its trial runs of other tile sizes would leave partial-statistics rows
        # (and counts) behind that the final config does not overwrite
        config = kernels.heuristic_config("fwd", tuple(dims.items()), x.element_size(), 1, kernels._num_sms(x.device))
    launch = kernels.launcher(
        kernels._conv_fwd_kernel, "fwd", grid, dims, x.element_size(), config, 1, x.device,
        R=R, S=S, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        RELU=bool(relu), HAS_OUT2=out2 is not None, STATS=stats is not None,
        DOT_PRECISION=_dot_precision(x.dtype, x.device), IDX_T=_tile.tl_index_type(x, out, residual, out2),
    )  # fmt: skip
    ints = (
        N, C, H, W, K, P, Q, *x.stride(), *out.stride(), *res.stride(), *o2.stride(),
        stride[0], stride[1], padding[0], padding[2], float(residual_scale), K1 if out2 is not None else K,
    )  # fmt: skip

    def run(x, wp, out, scale=None, bias=None, res=None, o2=None, stats=None):
        cnt, mean, m2 = stats if stats is not None else (wp, wp, wp)
        launch(x, wp, out, scale if scale is not None else wp, bias if bias is not None else wp,
               res if res is not None else out, o2 if o2 is not None else out, cnt, mean, m2, *ints)  # fmt: skip

    return run


# Every launch decision of the v1 kernels for calls that no plan serves (an unplanned forward, an ``out=`` call, each
# backward's dgrad and wgrad), memoized on what it reads: the kind, the tensors' shapes and strides (the index
# type follows from them: :func:`_tile.fits_int32`), dtypes, device, flags, and :func:`_launch_env`. Bounded
# (``_args.remember``).
_LAUNCHERS: dict = {}


def _launch_env() -> tuple:
    """What a v1 launch decision reads besides its tensors and flags: the TF32 switch (``DOT_PRECISION``), and the
    autotune and interpreter switches (``kernels.launcher``: the timing autotuner or the heuristic config)."""
    return torch.backends.cudnn.allow_tf32, _backend.autotune_enabled(), _backend.interpreter_active()


def _memo_fwd_launcher(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    """:func:`fwd_launcher` (default config) memoized in ``_LAUNCHERS``. A call that no plan serves (an unplanned
    training step, an ``out=`` call) then skips the launch decision after its first call per signature."""
    key = (
        "fwd", _args.geometry(x, out, residual, out2), weight.shape, x.dtype, x.device, scale is None, bias is None,
        stats is None, tuple(stride), tuple(padding), float(residual_scale).hex(), bool(relu), _launch_env(),
    )  # fmt: skip
    return _args.memoized(_LAUNCHERS, key, lambda: fwd_launcher(x, weight, scale, bias, residual, stride, padding,
                                                                residual_scale, relu, out, None, out2, stats))  # fmt: skip


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
    _backend.check_interpretable(x)
    if config is None:
        run = _memo_fwd_launcher(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2,
                                 stats)  # fmt: skip
    else:
        run = fwd_launcher(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, config,
                           out2, stats)  # fmt: skip
    run(x, weight_operand(weight, dtype=x.dtype), out, scale, bias, residual, out2, stats)
    return out


def _fwd_triton_plan(x, weight, scale, bias, stride, padding, residual_scale, relu, out, out2=None):
    """The eval forward's plan (``dispatch.Impl.plan``): weight packed, launch decided once; ``(x, out=None,
    out2=None)`` then runs one kernel."""
    _backend.check_interpretable(x)
    shape = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
    example = out if out is not None else _tile.new_cl(shape, x)
    run = fwd_launcher(x, weight, scale, bias, None, stride, padding, residual_scale, relu, example, out2=out2)
    wp = weight_operand(weight, dtype=x.dtype)
    planned = _args.geometry(x, out, out2)

    def plan(x, out=None, out2=None):
        if _args.geometry(x, out, out2) != planned:
            _args.check_plan_geometry(planned, x, out, out2, what="conv plan")
        if out is None:
            out = _tile.new_cl(shape, x)
        run(x, wp, out, scale, bias, None, out2)
        return out

    return plan


def _fwd_triton_runner(x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
    """The forward's ``dispatch.Impl.runner``: the launch of calls of this signature decided once; ``run(x, weight,
    scale, bias, residual)`` then allocates the output and launches (the weight operand looked up per call)."""
    _backend.check_interpretable(x)
    shape = _args.conv_out_shape(x.shape, weight.shape, stride, padding)
    launch = fwd_launcher(x, weight, scale, bias, residual, stride, padding, residual_scale, relu,
                          _tile.new_cl(shape, x))  # fmt: skip

    def run(x, weight, scale, bias, residual):
        out = _tile.new_cl(shape, x)
        launch(x, weight_operand(weight, dtype=x.dtype), out, scale, bias, residual)
        return out

    return run


def _wgrad_splits(tiles: int, rows: int, device: torch.device) -> int:
    """Split-K count for wgrad: enough programs to fill the GPU, each split keeping >= 256 reduction rows."""
    sms = kernels._num_sms(device)
    want = max(1, (2 * sms + tiles - 1) // tiles)
    return int(max(1, min(want, rows // 256 if device.type == "cuda" else rows // 16, 64)))


def epilogue_grad(grad_out, x, y, residual_scale, relu, need_bias: bool, need_res: bool):
    """Our pass over grad_out that every conv backward starts with, whichever GEMMs follow: the ReLU mask from the
    saved output ``y``, the residual gradient, and the bias-gradient partials. Returns (gp = residual_scale ·
    masked grad as a dense channels_last tensor, dbias float32 or None, dres or None)."""
    N, K, P, Q = grad_out.shape
    M = N * P * Q
    gp = _tile.new_cl((N, K, P, Q), x, dtype=grad_out.dtype)
    gres = _tile.new_cl((N, K, P, Q), x, dtype=grad_out.dtype) if need_res else gp
    cfg = kernels.EPILOGUE_BWD_CONFIG
    bm, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_K"]
    gbias_part = _tile.new_buf((_tile.cdiv(M, bm), K), x.device)
    ysrc = y if relu else grad_out
    record_launch()
    kernels._epilogue_bwd_kernel[(_tile.cdiv(M, bm), _tile.cdiv(K, bk))](
        grad_out, ysrc, gp, gres, gbias_part,
        M, K, P, Q, *grad_out.stride(), *ysrc.stride(),
        float(residual_scale),
        RELU=bool(relu), WRITE_GRES=bool(need_res), IDX_T=_tile.tl_index_type(grad_out, y, gp), BLOCK_M=bm, BLOCK_K=bk,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if need_bias:
        record_launch(aten=True)
    return gp, (gbias_part.sum(0) if need_bias else None), (gres if need_res else None)


def dgrad_triton(
    gp, x, weight, scale, stride, padding, config=None, *, y=None, relu=False, residual_scale=1.0, bn=None,
    slot=None,
):
    """dx of the conv from ``gp`` (any NHWC strides): stride-phase implicit GEMM reading
    :func:`weight_operand` (with a scale: a scaled copy, cached while weight and scale keep their versions; without
    one: the forward's operand, no copy of its own).

    As a dispatch implementation ``gp`` is the epilogue's gradient. With ``relu`` or ``residual_scale`` != 1,
    ``gp`` is the raw grad_out and the kernel applies the epilogue's gradient itself: the mask [y > 0] from the
    saved output ``y`` in its A-operand load, ``residual_scale`` on its accumulator. With ``bn`` (the (6, K)
    coefficients of :func:`~inception_kernels.ops.batchnorm.bn_act_bwd_coefs`) ``gp`` is the gradient of the
    training-mode BN (+ ReLU with ``relu``) that follows the conv, ``y`` that BN's input, and the kernel takes the
    BN's backward in its load. The launch is decided once per signature (``_LAUNCHERS``) unless ``config`` is
    given. ``slot``: a dict in which a caller that holds a plan keeps this launch (under "dgrad") for calls it knows
    to have the same signature (see :func:`wgrad_triton`)."""
    wd = weight_operand(weight, scale, dtype=x.dtype)  # the scale folded in: a scaled channels_last copy
    dx = _tile.new_cl(x.shape, x)
    ysrc = y if relu or bn is not None else gp
    bn_arg = _bn_coefs_arg(bn, wd)
    if config is not None:
        run = _dgrad_launcher(gp, x, weight, stride, padding, config, relu, residual_scale, bn is not None, ysrc, dx)
    else:
        run = _args.memoized_in(
            slot, "dgrad", _LAUNCHERS,
            lambda: ("dgrad", _args.geometry(gp, x, ysrc), weight.shape, x.dtype, gp.dtype, x.device, tuple(stride),
                     tuple(padding), bool(relu), float(residual_scale).hex(), bn is None, _launch_env()),
            lambda: _dgrad_launcher(gp, x, weight, stride, padding, None, relu, residual_scale, bn is not None, ysrc,
                                    dx),
        )  # fmt: skip
    run(gp, wd, dx, ysrc, bn_arg)
    return dx


def _dgrad_launcher(gp, x, weight, stride, padding, config, relu, residual_scale, has_bn, ysrc, dx):
    """:func:`dgrad_triton`'s launch for tensors of these shapes and strides: ``run(gp, wd, dx, ysrc, bn)``."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = gp.shape
    phases = stride[0] * stride[1]
    Hs, Ws = _tile.cdiv(H, stride[0]), _tile.cdiv(W, stride[1])
    grid = lambda meta: (
        _tile.cdiv(N * Hs * Ws, meta["BLOCK_M"]) * _tile.cdiv(C, meta["BLOCK_N"]),
        phases,
    )
    launch = kernels.launcher(
        kernels._conv_dgrad_kernel, "dgrad", grid, {"BLOCK_M": N * Hs * Ws, "BLOCK_N": C, "BLOCK_K": K},
        x.element_size(), config, phases, x.device,
        R=R, S=S, RELU=bool(relu), SCALE_G=residual_scale != 1.0, BN_G=has_bn,
        DOT_PRECISION=_dot_precision(x.dtype, x.device), IDX_T=_tile.tl_index_type(gp, x, dx, ysrc),
    )  # fmt: skip
    ints = (
        N, C, H, W, K, P, Q, *gp.stride(), *dx.stride(), *ysrc.stride(),
        stride[0], stride[1], padding[0], padding[2], float(residual_scale),
    )  # fmt: skip

    def run(gp, wd, dx, ysrc, bn):
        launch(gp, wd, dx, ysrc, bn, *ints)

    return run


def _bn_coefs_arg(bn, dummy):
    """The kernels' ``bn_ptr``: the BN coefficients (fp32 (6, K), contiguous), or an unread ``dummy``."""
    if bn is None:
        return dummy
    if bn.dtype != torch.float32 or bn.dim() != 2 or bn.shape[0] != 6 or not bn.is_contiguous():
        raise ValueError(f"bn must be the contiguous float32 (6, K) BN coefficients, got {bn.dtype} {tuple(bn.shape)}")
    return bn


def _x_bn_args(x_bn, C: int, dummy):
    """The wgrad's (xm_ptr, xs_ptr, xw_ptr, xb_ptr): the input BN's mean, invstd, γ, β, or four unread dummies."""
    if x_bn is None:
        return (dummy,) * 4
    vecs = x_bn[:4]
    for name, t in zip(("mean", "invstd", "gamma", "beta"), vecs):
        if t is None or t.dtype != torch.float32 or t.shape != (C,) or not t.is_contiguous():
            raise ValueError(f"x_bn {name} must be a contiguous float32 ({C},) vector, got "
                             f"{None if t is None else (t.dtype, tuple(t.shape))}")  # fmt: skip
    return vecs


_WGRAD_MIN_TILE = (
    min(c.kwargs["BLOCK_M"] for c in kernels.WGRAD_CONFIGS),
    min(c.kwargs["BLOCK_N"] for c in kernels.WGRAD_CONFIGS),
)
_COUNTERS: dict = {}


def _tile_counters(device: torch.device, n: int) -> torch.Tensor:
    """The wgrad split-K arrival counters: int32, zero between launches (the kernel's last program of each tile
    resets its counter), one set per device and stream (launches on one stream run in order), grown on demand
    (a zero-fill the first time only; during CUDA graph capture, one per launch inside the graph)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # a zero-fill captured into the graph (it runs on every replay); a cached buffer first filled here would
        # hold garbage for eager launches, since a captured fill does not run at capture time
        record_launch(aten=True)
        return torch.zeros(n, dtype=torch.int32, device=device)
    key = (device, torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        record_launch(aten=True)
        buf = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf


def wgrad_triton(gp, x, weight, stride, padding, config=None, splits=None, *, y=None, relu=False,
                 residual_scale=1.0, need_bias=False, need_res=False, bn=None, x_bn=None, slot=None):  # fmt: skip
    """The weight gradient without scale, float32 (K, C, R, S) in the weight's memory format
    (:func:`grad_weight_buf`): a deterministic split-K implicit GEMM in one
    launch (the slabs are summed in split order inside the kernel, see ``_conv_wgrad``).

    As a dispatch implementation ``gp`` is the epilogue's gradient. With ``relu`` (mask [y > 0] from the saved
    output ``y``) or ``residual_scale`` != 1, ``gp`` is the raw grad_out and the kernel applies that gradient
    (the mask in its g load, ``residual_scale`` on its accumulators); with ``need_bias`` it also reduces the
    bias gradient Σ_m gp[m, k] (float32 (K,)), with ``need_res`` it also writes the residual's gradient (the
    masked, unscaled grad_out: a new channels_last tensor of its dtype), and returns (dw, dbias, dres), the
    ones not asked for None; without either, dw alone. ``bn``: a following training-mode BN's backward on the
    g load, as in :func:`dgrad_triton` (not with ``need_bias`` / ``need_res``). ``x_bn`` = (mean, invstd, γ, β,
    relu), float32 (C,) vectors: ``x`` is the pre-BN tensor of the training BN (+ ReLU) whose output the conv read,
    and the kernel rebuilds that input on load (``_conv_wgrad``'s ``X_BN``).

    ``slot`` (here and in :func:`dgrad_triton`): a dict in which a caller that holds a plan keeps the launch
    decision (under "wgrad", "dgrad") for later calls it knows to have the same signature -- shapes, strides,
    dtypes, device, flags and launch switches (``ops.batchnorm.ConvBNActPlan.backward_slot``) -- which then skip
    building the memo's key."""
    if bn is not None and (need_bias or need_res):
        raise ValueError("wgrad_triton: bn does not combine with need_bias / need_res")
    dev = x.device
    flags = dict(RELU=bool(relu), SCALE_G=residual_scale != 1.0, BIAS_GRAD=bool(need_bias), WRITE_RES=bool(need_res),
                 BN_G=bn is not None, X_BN=x_bn is not None, X_RELU=x_bn is not None and bool(x_bn[4]))  # fmt: skip
    ysrc = y if relu or bn is not None else gp
    key = None
    known = slot.get("wgrad") if slot is not None and config is None and splits is None else None
    if known is None and config is None and splits is None:
        key = ("wgrad", _args.geometry(gp, x, ysrc, weight), x.dtype, gp.dtype, dev, tuple(stride), tuple(padding),
               float(residual_scale).hex(), tuple(flags.values()), _launch_env())  # fmt: skip
        known = _LAUNCHERS.get(key)
        if known is not None and slot is not None:
            slot["wgrad"] = known
    nsplit, most = known[:2] if known is not None else _wgrad_split_plan(gp, x, weight, config, splits, flags)
    K, C, R, S = weight.shape
    dw = grad_weight_buf(weight)
    dbias = _tile.new_buf((K,), dev) if need_bias else dw
    if nsplit > 1:
        # the slabs, then the bias partials (num_splits, K)
        ws = _tile.new_buf((nsplit * (K * C * R * S + K),), dev)
        cnt = _tile_counters(dev, most)
    else:
        ws = cnt = dw
    dres = _tile.new_cl(gp.shape, x, dtype=gp.dtype) if need_res else dw
    if known is not None:
        run = known[2]
    else:
        run = _wgrad_launcher(gp, x, weight, stride, padding, config, nsplit, flags, residual_scale, ysrc, ws, dw,
                              dres)  # fmt: skip
        if key is not None:
            _args.remember(_LAUNCHERS, key, (nsplit, most, run))
            if slot is not None:
                slot["wgrad"] = (nsplit, most, run)
    run(x, gp, ws, dw, ysrc, dbias, cnt, dres, _bn_coefs_arg(bn, dw), *_x_bn_args(x_bn, C, dw))
    if need_bias or need_res:
        return dw, (dbias if need_bias else None), (dres if need_res else None)
    return dw


def _wgrad_split_plan(gp, x, weight, config, splits, flags) -> tuple[int, int]:
    """(split-K count, arrival counters to reserve) of :func:`wgrad_triton`: ``splits`` or enough slabs to fill the
    GPU with the tiles of the config it will run; counters for the smallest tiles any config may use (the timing
    autotuner tries them all)."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    M = N * gp.shape[2] * gp.shape[3]
    dev = x.device
    wdims = {"BLOCK_M": K, "BLOCK_N": C, "BLOCK_K": M}
    probe = config or kernels.heuristic_config("wgrad", tuple(wdims.items()), x.element_size(),
                                               _wgrad_splits(1, M, dev), kernels._num_sms(dev),
                                               kernels.folded(flags))  # fmt: skip
    tiles = _tile.cdiv(K, probe.kwargs["BLOCK_M"]) * _tile.cdiv(C, probe.kwargs["BLOCK_N"]) * R * S
    nsplit = splits or _wgrad_splits(tiles, M, dev)
    most = _tile.cdiv(K, _WGRAD_MIN_TILE[0]) * _tile.cdiv(C, _WGRAD_MIN_TILE[1]) * R * S
    return nsplit, most


def _wgrad_launcher(gp, x, weight, stride, padding, config, nsplit, flags, residual_scale, ysrc, ws, dw, dres):
    """:func:`wgrad_triton`'s launch for tensors of these shapes and strides: ``run(x, gp, ws, dw, ysrc, dbias,
    cnt, dres, bn, xm, xs, xw, xb)``."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    _, _, P, Q = gp.shape
    M = N * P * Q
    dev = x.device
    wdims = {"BLOCK_M": K, "BLOCK_N": C, "BLOCK_K": M}
    grid = lambda meta: (
        _tile.cdiv(K, meta["BLOCK_M"]), R * S * _tile.cdiv(C, meta["BLOCK_N"]), nsplit
    )  # fmt: skip
    launch = kernels.launcher(
        kernels._conv_wgrad_kernel, "wgrad", grid, wdims, x.element_size(), config, nsplit, dev,
        R=R, S=S, **flags, SPLIT=nsplit > 1, DW_CL=not dw.is_contiguous(),
        DOT_PRECISION=_dot_precision(x.dtype, dev), IDX_T=_tile.tl_index_type(gp, x, ysrc, ws, dres),
    )  # fmt: skip
    ints = (
        N, C, H, W, K, P, Q, *x.stride(), *gp.stride(), *ysrc.stride(),
        stride[0], stride[1], padding[0], padding[2],
        _tile.cdiv(M, nsplit), nsplit, float(residual_scale),
    )  # fmt: skip

    def run(*tensors):
        launch(*tensors, *ints)

    return run


def _fwd_triton(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    if out is None:
        out = _tile.new_cl(_args.conv_out_shape(x.shape, weight.shape, stride, padding), x)
    return conv_fwd_into(
        x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2=out2, stats=stats
    )


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


dispatch.register(dispatch.Impl("conv_fwd", "triton", _triton_reasons, _fwd_triton, _fwd_triton_plan,
                                _fwd_triton_runner))  # fmt: skip
dispatch.register(dispatch.Impl("conv_dgrad", "triton", _triton_reasons, dgrad_triton))
dispatch.register(dispatch.Impl("conv_wgrad", "triton", _triton_reasons, wgrad_triton))
