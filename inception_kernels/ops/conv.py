"""The fused conv op: :func:`conv2d` (argument checks, the eager autograd Functions), its ``torch.library``
registration for torch.compile, and the forward / backward compositions every route shares.

    y = act(residual + residual_scale * (conv(x, w; stride, padding) * scale[k] + bias[k]))

Which implementation runs is the dispatch layer's choice (``dispatch``): ``conv_triton`` (our v1 kernels,
``conv_kernels``), ``conv_v2``, ``conv_cudnn`` (PyTorch's GEMM + our epilogue), ``conv_reference``. Backward first
runs one memory-bound pass over grad_out (ReLU mask from the saved output, residual grad, bias-grad partial sums),
then dgrad and wgrad, each by its own chosen implementation -- except when both run on our triton kernels (and
wgrad runs, or neither the bias nor the residual gradient is needed): then they apply that gradient in their
operand loads, wgrad reduces the bias gradient and writes the residual's, no pass over grad_out (see
:func:`conv_bwd`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _backend
from . import _args, _library, _recompute, _tile, _weights, amp, dispatch, reference
from .conv_kernels import MAX_KERNEL
from .conv_reference import _reference_bwd, _reference_fwd
from .conv_triton import dgrad_triton, epilogue_grad, wgrad_triton


def bwd_impls(x, weight, stride, padding, need) -> dict:
    """The implementations the dispatch layer chooses for the GEMMs a conv backward needs ({"dgrad": name or None,
    "wgrad": name or None}; ``need`` as in :func:`conv_bwd`)."""
    need_x, need_w, need_scale = need[:3]
    return {
        "dgrad": dispatch.choose_conv("conv_dgrad", x, weight, stride, padding).name if need_x else None,
        "wgrad": dispatch.choose_conv("conv_wgrad", x, weight, stride, padding).name if need_w or need_scale else None,
    }


def folds_bn(impls: dict, need) -> bool:
    """Whether a conv backward on these implementations (:func:`bwd_impls`) can take the backward of a training BN
    that follows the conv in its loads (``conv_bwd(bn=...)``): every GEMM it runs is ours (Triton), and there is
    one to run."""
    dg, wg = impls.get("dgrad"), impls.get("wgrad")
    return (dg or wg) is not None and dg in (None, "triton") and wg in (None, "triton") and not any(need[3:])


def conv_bwd(
    grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need, configs=None, splits=None,
    impls=None, bn=None, x_bn=None, slot=None,
):  # fmt: skip
    """Gradients (dx, dw, dscale, dbias, dres) of the fused conv; entries not in ``need`` are None.

    dgrad and wgrad by the implementations the dispatch layer chooses (or ``impls`` = {"dgrad": name,
    "wgrad": name}); ``configs``/``splits`` pin the Triton kernels' tiles (tests). When both run on our
    ``triton`` kernels, they apply the epilogue's gradient themselves (the ReLU mask from the saved output in
    their grad_out loads, residual_scale on their accumulators) and wgrad reduces the bias gradient and writes the
    residual's (the masked grad_out, unscaled): dgrad + wgrad, two launches (plus dgrad's scaled weight copy, cached,
    when the weight or the scale changed), with a residual too. Otherwise our epilogue-gradient pass over
    grad_out runs first (skipped when the epilogue is the identity): a bias or residual gradient without wgrad
    (the pass writes dres and the bias partials: pass, bias sum, dgrad -- three launches at most), a grad_out of
    another dtype, another route.

    ``bn``: the (6, K) coefficients of :func:`~inception_kernels.ops.batchnorm.bn_act_bwd_coefs`; then
    ``grad_out`` is the gradient of a training-mode BN (+ ReLU with ``relu``) applied to the conv's output ``y``
    (no scale, bias or residual), and dgrad and wgrad take the BN's backward in their loads (only where
    :func:`folds_bn` holds and grad_out has x's dtype). ``x_bn`` = (mean, invstd, γ, β, relu): ``x`` is the
    pre-BN tensor of the training BN (+ ReLU) that produced the conv's input, which the Triton wgrad rebuilds on
    load (``wgrad_triton(x_bn=...)``; dgrad reads only x's shape); wgrad, when needed, must run on Triton.
    ``slot``: passed to the Triton dgrad / wgrad of the folded route (a plan's launch decisions, see
    ``conv_triton.wgrad_triton``)."""
    _backend.check_interpretable(x)
    need_x, need_w, need_scale, need_bias, need_res = need
    configs = configs or {}
    need_g = need_w or need_scale
    if impls is None:
        impls = bwd_impls(x, weight, stride, padding, need)
    dg, wg = impls.get("dgrad") if need_x else None, impls.get("wgrad") if need_g else None
    if bn is not None and not (folds_bn({"dgrad": dg, "wgrad": wg}, need) and grad_out.dtype == x.dtype
                               and scale is None and residual_scale == 1.0):  # fmt: skip
        raise ValueError("conv_bwd(bn=...): the BN backward folds only into Triton dgrad / wgrad, with grad_out of "
                         "x's dtype, no scale, bias or residual")  # fmt: skip
    if x_bn is not None and wg not in (None, "triton"):
        raise ValueError(f"conv_bwd(x_bn=...): the input is rebuilt on load only by the Triton wgrad, not {wg!r}")
    epilogue = bn is not None or relu or need_bias or need_res or residual_scale != 1.0 or grad_out.dtype != x.dtype
    folded = (
        epilogue
        and dg in (None, "triton")
        and wg in (None, "triton")
        and (dg or wg) is not None
        and grad_out.dtype == x.dtype
        and (wg is not None or not (need_bias or need_res))  # wgrad reduces dbias and writes dres
    )
    dx = g_unscaled = dbias = dres = None
    if folded:
        fold = {"y": y, "relu": relu, "residual_scale": residual_scale, "bn": bn}
        if dg is not None:
            kw = {"config": configs["dgrad"]} if "dgrad" in configs else {}
            dx = dgrad_triton(grad_out, x, weight, scale, stride, padding, **kw, **fold, slot=slot)
        if wg is not None:
            kw = {"config": configs["wgrad"]} if "wgrad" in configs else {}
            kw.update({"splits": splits} if splits else {})
            got = wgrad_triton(grad_out, x, weight, stride, padding, **kw, **fold, need_bias=need_bias,
                               need_res=need_res, x_bn=x_bn, slot=slot)  # fmt: skip
            g_unscaled, dbias, dres = got if (need_bias or need_res) else (got, None, None)
    else:
        if epilogue:
            gp, dbias, dres = epilogue_grad(grad_out, x, y, residual_scale, relu, need_bias, need_res)
        else:
            # an identity epilogue (a conv feeding a BN in training, say): dgrad and wgrad read grad_out as it is
            # (every route takes any strides), no pass over it
            gp = grad_out
        if dg == "cudnn" and wg == "cudnn":
            from .conv_cudnn import conv_bwd_cudnn

            # one ATen call
            dx, g_unscaled = conv_bwd_cudnn(gp, x, weight, scale, stride, padding, True, True)
        else:
            if dg is not None:
                kw = {"config": configs["dgrad"]} if "dgrad" in configs else {}
                dgrad = dispatch.implementations("conv_dgrad")[dg].fn
                dx = dgrad(gp, x, weight, scale, stride, padding, **kw)
            if wg is not None:
                kw = {"config": configs["wgrad"]} if "wgrad" in configs else {}
                kw.update({"splits": splits} if splits else {})
                wgrad = dispatch.implementations("conv_wgrad")[wg].fn
                kw.update({"x_bn": x_bn} if x_bn is not None else {})
                g_unscaled = wgrad(gp, x, weight, stride, padding, **kw)
    dw = dscale = None
    if need_w:
        dw = g_unscaled if scale is None else g_unscaled * scale.float().view(-1, 1, 1, 1)
        dw = dw.to(weight.dtype)
    if need_scale:
        dscale = (g_unscaled * weight.float()).sum((1, 2, 3))
    return dx, dw, dscale, dbias, dres


def conv_forward(
    x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out=None, out2=None, stats=None,
    backend=None,
):  # fmt: skip
    """The fused conv forward by the implementation the dispatch layer chooses for this problem; returns the
    output (``out`` when given, else a new channels_last tensor). Arguments as :func:`conv_fwd_into`;
    ``backend``: ``dispatch.requested()`` when the caller has read it."""
    impl = dispatch.choose_conv(
        "conv_fwd", x, weight, stride, padding, residual, relu, scale, bias, stats is not None, out2 is not None,
        backend,
    )
    return impl.fn(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats)


def plan_forward(x, weight, *, stride=1, padding=0, scale=None, bias=None, activation=None, residual_scale=1.0,
                 out=None, out2=None):  # fmt: skip
    """:func:`conv2d` without a residual or autograd, decided once for one call signature.

    Validates the arguments, asks the dispatch layer which implementation serves them, and lets it do its
    per-signature work (the triton route packs the weight and fixes the launch); returns ``run(x, out=None,
    out2=None)``, which computes ``conv2d(x, weight, ...)`` for any later ``x`` (and ``out``, ``out2``) of the same
    shape, strides, dtype and device as the ones given here. ``out2`` (a split destination, as
    :func:`conv_forward`'s: ``out`` takes the first ``out.shape[1]`` channels, ``out2`` the rest) needs ``out``. ``weight``, ``scale`` and ``bias`` are bound: whoever keeps the plan keys
    it on their versions (``nn.layers.ConvBNAct`` does). Only for eager calls our kernels serve
    (:func:`plannable`)."""
    if out2 is None:
        st, pad, scale, bias = _validate(x, weight, stride, padding, scale, bias, activation, None, residual_scale,
                                         out)  # fmt: skip
    else:
        if out is None:
            raise ValueError("out2 (a split destination) needs out")
        st, pad, scale, bias = _validate(x, weight, stride, padding, scale, bias, activation, None, residual_scale,
                                         None)  # fmt: skip
        N, K, P, Q = _args.conv_out_shape(x.shape, weight.shape, st, pad)
        for name, t, k in (("out", out, out.shape[1]), ("out2", out2, K - out.shape[1])):
            _args.out_tensor(t, (N, k, P, Q), x, name=name)
            _check_no_alias(t, x, None)
        _args.no_overlap(out2, {"out": out}, name="out2")
    if not plannable(x):
        raise ValueError("plan_forward needs a channels_last x that our kernels serve, outside tracing")
    relu, rs = activation == "relu", float(residual_scale)
    impl = dispatch.choose_conv("conv_fwd", x, weight, st, pad, None, relu, scale, bias, False, out2 is not None)
    if impl.plan is not None:
        return impl.plan(x, weight, scale, bias, st, pad, rs, relu, out, out2)
    return lambda x, out=None, out2=None: impl.fn(x, weight, scale, bias, None, st, pad, rs, relu, out, out2, None)


def plannable(x: torch.Tensor) -> bool:
    """Whether :func:`plan_forward` may serve calls on tensors like ``x``: an eager, non-empty channels_last
    tensor our kernels run on, and no dispatch recording in progress (it must see every choice)."""
    return (x.numel() > 0 and _eager_direct(x) and _args.is_nhwc_strided(x) and not dispatch.recording_active()
            and not dispatch.is_reference(x))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------------
def _ours(t: torch.Tensor, backend: str | None = None) -> bool:
    """Our kernels (either conv route) can run where ``t`` lives, and the reference backend is not forced
    (``backend``: ``dispatch.requested()``, when the caller has read it)."""
    backend = backend if backend is not None else dispatch.requested()
    # a forced backend always takes our path, where the chooser raises if it cannot serve the input
    return backend != "reference" and (backend != "auto" or _backend.triton_can_run(t))


def _conv2d_fwd_impl(
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
    return _tile.new_cl(y.shape, x).copy_(y)


def _conv2d_fwd_fake(x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
    return _tile.new_cl(_args.conv_out_shape(x.shape, weight.shape, stride, padding), x)


def _conv2d_fwd_out_impl(
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


def _conv2d_fwd_out_fake(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out):
    return None


def _conv2d_bwd_impl(
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
        lambda: _tile.new_cl(x.shape, x),
        lambda: torch.empty_like(weight, memory_format=_weights.weight_format(weight)),
        lambda: torch.empty(K, dtype=torch.float32, device=x.device),
        lambda: torch.empty(K, dtype=torch.float32, device=x.device),
        lambda: _tile.new_cl(grad_out.shape, x, dtype=grad_out.dtype),
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
            out.append(_library.no_tensor(x))
    return tuple(out)


def _conv2d_bwd_fake(grad_out, x, weight, scale, y, stride, padding, residual_scale, relu, need):
    return tuple(
        make() if wanted else _library.no_tensor(x)
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
    if direct and not _library.traced(grad_out):
        # the forward ran our kernels directly: so does the backward, on the forward's backend
        with dispatch.use_backend(ctx.backend):
            return conv_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need)
    grads = torch.ops.inception_kernels.conv2d_bwd(
        grad_out, x, weight, scale, y, list(stride), list(padding), residual_scale, relu, list(need)
    )
    return tuple(g if wanted else None for g, wanted in zip(grads, need))


def _eager_direct(x: torch.Tensor, backend: str | None = None) -> bool:
    """Outside torch.compile, call the launchers directly: the torch.library dispatch of a Python custom op
    costs tens of microseconds per call, more than a small Inception layer takes on the GPU. Under
    torch.compile the registered ops are used, so graphs see opaque, correctly-faked ops."""
    return not _library.traced(x) and _ours(x, backend)


def _save_conf(ctx, scale, bias, residual, stride, padding, residual_scale, relu):
    ctx.conf = (tuple(stride), tuple(padding), float(residual_scale), bool(relu))
    ctx.has_scale = scale is not None
    ctx.has_bias = bias is not None
    ctx.has_res = residual is not None
    # the backward runs on the route the forward ran (a model's or a scope's backend is not in force any more)
    dispatch.remember_backend(ctx)


_library.define("conv2d_fwd_out", _conv2d_fwd_out_impl, fake=_conv2d_fwd_out_fake, mutates_args=("out",))
_library.define("conv2d_bwd", _conv2d_bwd_impl, fake=_conv2d_bwd_fake)
_library.define("conv2d_fwd", _conv2d_fwd_impl, fake=_conv2d_fwd_fake, backward=_fwd_backward,
                setup_context=_fwd_setup_context)  # fmt: skip


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
_RUNS: dict = {}


def _signature(x, weight, scale, bias, residual, stride, padding, activation, residual_scale, out):
    """:func:`_args.call_signature` of a :func:`conv2d` call without ``out`` outside tracing (a dict filled while
    Dynamo traces breaks its guards), else None: the key of its checks (:func:`_validate`) and of its run."""
    if out is not None or torch.compiler.is_compiling():
        return None
    return _args.call_signature((x, weight, scale, bias, residual), (stride, padding, activation, residual_scale))


def _run_key(sig, x, weight, scale, bias, residual, backend):
    """The memo key of an eager, gradient-free :func:`conv2d` call of signature ``sig`` (:func:`_signature`, not
    None): with everything else that decides its implementation and launch (the explicit backend, the dispatch
    tables' generation, TF32, autotuning, the interpreter switch for CPU tensors); None for a call the memo does
    not serve (a dispatch recording, gradients, an unreadable backend variable)."""
    if backend is None or dispatch.recording_active():
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, scale, bias, residual)):
        return None
    cpu_interp = x.device.type == "cpu" and _backend.interpreter_active()
    return (sig, backend, dispatch.generation(), torch.backends.cudnn.allow_tf32, _backend.autotune_enabled(),
            cpu_interp)  # fmt: skip


def _functional_run(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, backend):
    """What later calls of this signature run: ``run(x, weight, scale, bias, residual)``, the implementation
    chosen (and on the triton route the launch fixed) now."""
    impl = dispatch.choose_conv("conv_fwd", x, weight, stride, padding, residual, relu, scale, bias, False, False,
                                backend)  # fmt: skip
    if impl.runner is not None:
        return impl.runner(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
    return lambda x, weight, scale, bias, residual: impl.fn(x, weight, scale, bias, residual, stride, padding,
                                                             residual_scale, relu, None, None, None)  # fmt: skip


_VALIDATED: dict = {}
_UNSET = object()


def _validate(x, weight, stride, padding, scale, bias, activation, residual, residual_scale, out, master=False,
              sig=_UNSET):  # fmt: skip
    """Checks every argument of :func:`conv2d`; returns (stride, padding 4-tuple, scale, bias), the per-channel
    tensors contiguous (the kernels read them with unit stride). ``master``: the weight may be a float32 master
    weight of a 16-bit x (a planned training step under autocast, ``ops.batchnorm.plan_conv_bn_act``).

    A call without ``out`` whose signature (:func:`_args.call_signature`: every tensor's shape, strides, dtype and
    device, the other arguments by type and value) passed before returns the stride and padding found then:
    nothing the checks read differs. ``out`` is checked every call (its aliasing depends on addresses). ``sig``:
    the call's :func:`_signature`, when the caller has it."""
    if sig is _UNSET:
        sig = _signature(x, weight, scale, bias, residual, stride, padding, activation, residual_scale, out)
    key = None if sig is None else (sig, master)
    if key is not None:
        hit = _VALIDATED.get(key)
        if hit is not None:
            return hit[0], hit[1], scale, bias
    st, pad, scale_c, bias_c = _check_args(x, weight, stride, padding, scale, bias, activation, residual,
                                           residual_scale, out, master)  # fmt: skip
    if key is not None and scale_c is scale and bias_c is bias:  # nothing copied: the same call needs no copy
        _args.remember(_VALIDATED, key, (st, pad))
    return st, pad, scale_c, bias_c


def _check_args(x, weight, stride, padding, scale, bias, activation, residual, residual_scale, out, master):
    _args.float_activation(x, "x")
    _args.tensor(weight, "weight", dims=4, like=x, dtype_of_like=not master)
    if master and weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"weight has dtype {weight.dtype}: a master weight is float32 or x's dtype ({x.dtype})")
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
    _, _, P, Q = _args.conv_out_shape(x.shape, weight.shape, st, pad)
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


@amp.conv_family
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
    try:  # read once: each read of the environment costs about a microsecond
        backend = dispatch.requested()
    except ValueError:  # a bad INCEPTION_KERNELS_BACKEND: raised below, after the argument checks, as ever
        backend = None
    sig = _signature(x, weight, scale, bias, residual, stride, padding, activation, residual_scale, out)
    key = None if sig is None else _run_key(sig, x, weight, scale, bias, residual, backend)
    if key is not None:
        run = _RUNS.get(key)
        if run is not None:
            return run(x, weight, scale, bias, residual)
    stride_t, pad, scale_c, bias_c = _validate(
        x, weight, stride, padding, scale, bias, activation, residual, residual_scale, out, sig=sig
    )
    if scale_c is not scale or bias_c is not bias:
        key, scale, bias = None, scale_c, bias_c  # copied for this call: the next one copies again
    x_cl = x.contiguous(memory_format=torch.channels_last) if not _args.is_nhwc_strided(x) else x
    if x_cl is not x:
        key, x = None, x_cl
    relu = activation == "relu"
    rs = float(residual_scale)
    backend = backend if backend is not None else dispatch.requested()
    if dispatch.is_reference(x, backend) or x.numel() == 0 or weight.shape[0] == 0:
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
        if not _eager_direct(x, backend):
            # torch.compile / export / fake tensors: the registered op, with its registered autograd.
            return torch.ops.inception_kernels.conv2d_fwd(
                x, weight, scale, bias, residual, list(stride_t), list(pad), rs, relu
            )
        if needs_grad:
            return _Conv2dFn.apply(x, weight, scale, bias, residual, stride_t, pad, rs, relu)
        if key is not None:
            run = _args.remember(_RUNS, key, _functional_run(x, weight, scale, bias, residual, stride_t, pad, rs,
                                                             relu, backend))  # fmt: skip
            return run(x, weight, scale, bias, residual)
        return conv_forward(x, weight, scale, bias, residual, stride_t, pad, rs, relu, backend=backend)
    if needs_grad:
        # Dynamo cannot trace autograd.Function.mark_dirty: under torch.compile use the functional form for
        # training (or the block engine, which owns its buffer's backward).
        return _Conv2dIntoSlice.apply(out, x, weight, scale, bias, residual, stride_t, pad, rs, relu)
    _fwd_into(x, weight, scale, bias, residual, stride_t, pad, rs, relu, out)
    return out
