"""ops.conv2d: our kernels against the fp64 reference, forward and every gradient, on awkward shapes.

On a machine without a GPU the kernels run in the Triton interpreter (fp32, IEEE); with a GPU they run compiled.
"""

import math

import pytest
import torch

from inception_kernels.ops import _args, _tile, conv, conv2d, conv_kernels, conv_triton, reference
from inception_kernels.utils import rel_err

# (N, C, H, W, K, (R, S), stride, padding)
CASES = {
    "1x1": (2, 5, 6, 6, 7, (1, 1), 1, 0),
    "3x3_multiblock": (1, 20, 5, 7, 37, (3, 3), 1, 1),
    "5x5": (2, 4, 7, 7, 6, (5, 5), 1, 2),
    "7x7_s2_stem_C3": (1, 3, 11, 11, 8, (7, 7), 2, 3),
    "1x3": (1, 6, 5, 6, 9, (1, 3), 1, (0, 1)),
    "3x1": (2, 6, 6, 5, 9, (3, 1), 1, (1, 0)),
    "1x7": (1, 10, 7, 9, 12, (1, 7), 1, (0, 3)),
    "7x1": (1, 10, 9, 7, 12, (7, 1), 1, (3, 0)),
    "3x3_s2_valid_odd": (2, 5, 9, 9, 6, (3, 3), 2, 0),
    "3x3_s2_HneW_odd": (3, 4, 9, 7, 5, (3, 3), 2, 1),
    "3x3_HW1": (2, 5, 1, 1, 6, (3, 3), 1, 1),
    "1x1_HW1": (3, 5, 1, 1, 6, (1, 1), 1, 0),
    "1x1_s2_odd": (1, 4, 7, 5, 5, (1, 1), 2, 0),
    "asym_pad_s2": (1, 4, 8, 8, 5, (3, 3), 2, (0, 1, 1, 0)),
    "2x2_s2_mixed_stride": (1, 3, 7, 8, 4, (2, 2), (2, 1), 0),
}

TOL = {torch.float32: 2e-5 if conv._backend.interpreter_active() else 1e-4}


def make_inputs(case, device, dtype=torch.float32, *, scale=True, bias=True, residual=False):
    N, C, H, W, K, (R, S), stride, padding = case
    x = torch.randn(N, C, H, W, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(K, C, R, S, device=device, dtype=dtype) / math.sqrt(C * R * S)
    sc = (torch.rand(K, device=device) + 0.5) if scale else None
    b = torch.randn(K, device=device) if bias else None
    st = _args.pair(stride, "stride")
    pad = _args.conv_padding(padding)
    shape = _args.conv_out_shape(x.shape, w.shape, st, pad)
    res = (
        torch.randn(shape, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        if residual
        else None
    )
    return dict(x=x, weight=w, scale=sc, bias=b, residual=res, stride=stride, padding=padding)


def reference_fp64(inp, activation, residual_scale):
    def lift(v):
        if not isinstance(v, torch.Tensor) or (v.dtype == torch.float64 and v.requires_grad):
            return v  # already a float64 leaf of another reference graph (shared input)
        return v.detach().double().requires_grad_()

    d = {k: lift(v) for k, v in inp.items()}
    y = reference.conv2d(
        d["x"], d["weight"], stride=_args.pair(d["stride"], "stride"), padding=_args.conv_padding(d["padding"]),
        scale=d["scale"], bias=d["bias"], activation=activation, residual=d["residual"],
        residual_scale=residual_scale,
    )  # fmt: skip
    return y, d


def grads_of(inp):
    return {k: v for k, v in inp.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("epilogue", ["bn_relu", "residual", "plain"])
def test_forward_backward_vs_fp64(name, epilogue, device, poison):
    case = CASES[name]
    act = None if epilogue == "plain" else "relu"
    rs = 0.17 if epilogue == "residual" else 1.0
    inp = make_inputs(case, device, scale=epilogue != "plain", bias=True, residual=epilogue == "residual")
    leaves = grads_of(inp)
    for t in leaves.values():
        t.requires_grad_()
    y = conv2d(**inp, activation=act, residual_scale=rs)
    y_ref, dref = reference_fp64(inp, act, rs)
    assert y.shape == y_ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert not y.isnan().any(), "unwritten output elements"
    assert rel_err(y, y_ref) < TOL[torch.float32]

    g = torch.randn_like(y)
    names = list(leaves)
    ours = torch.autograd.grad(y, [leaves[k] for k in names], g)
    theirs = torch.autograd.grad(y_ref, [dref[k] for k in names], g.double())
    for k, a, b in zip(names, ours, theirs):
        assert a.shape == b.shape, k
        assert not a.isnan().any(), f"grad {k} has unwritten elements"
        assert rel_err(a, b) < TOL[torch.float32], f"grad {k}: {rel_err(a, b):.2e}"


def _weight_in_layout(w: torch.Tensor, layout: str) -> torch.Tensor:
    """``w``'s values in another storage layout: a leaf of the same shape and values."""
    K, C, R, S = w.shape
    if layout == "channels_last":  # read as it is
        return w.contiguous(memory_format=torch.channels_last)
    if layout == "cl_channel_slice":  # C the unit stride, wider R / S strides, a storage offset: copied
        big = torch.full((K, C + 3, R, S), float("nan"), device=w.device, dtype=w.dtype)
        big = big.contiguous(memory_format=torch.channels_last)
        big[:, 2 : 2 + C] = w
        return big[:, 2 : 2 + C]
    if layout == "channel_slice":  # a contiguous weight's channel slice: C stride R·S, copied
        big = torch.full((K, C + 3, R, S), float("nan"), device=w.device, dtype=w.dtype)
        big[:, 1 : 1 + C] = w
        return big[:, 1 : 1 + C]
    if layout == "rsck":  # (R, S, C, K) storage: K the unit stride, copied
        return w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["channels_last", "cl_channel_slice", "channel_slice", "rsck"])
@pytest.mark.parametrize("name", ["1x1", "7x7_s2_stem_C3", "1x7", "3x3_s2_HneW_odd", "3x3_HW1"])
def test_weight_layouts_vs_fp64(name, layout, device, poison):
    """The forward and dgrad read a channels_last weight as it is and a copy of any other (a channel slice, even
    of a channels_last weight, is copied), and wgrad writes dw in the weight's layout: every weight layout gives
    the fp64 reference's output and gradients, with a residual, scale, bias and ReLU, and a channels_last weight
    gets a channels_last gradient (autograd accumulates it without a copy)."""
    inp = make_inputs(CASES[name], device, scale=True, bias=True, residual=True)
    inp["weight"] = _weight_in_layout(inp["weight"], layout)
    leaves = grads_of(inp)
    for t in leaves.values():
        t.requires_grad_()
    y = conv2d(**inp, activation="relu", residual_scale=0.5)
    y_ref, dref = reference_fp64(inp, "relu", 0.5)
    assert not y.isnan().any() and rel_err(y, y_ref) < TOL[torch.float32]
    g = torch.randn_like(y)
    names = list(leaves)
    ours = torch.autograd.grad(y, [leaves[k] for k in names], g, retain_graph=True)
    theirs = torch.autograd.grad(y_ref, [dref[k] for k in names], g.double())
    for k, a, b in zip(names, ours, theirs):
        assert not a.isnan().any() and rel_err(a, b) < TOL[torch.float32], f"grad {k}: {rel_err(a, b):.2e}"
    y.backward(g)
    w = inp["weight"]
    if layout == "channels_last":
        assert w.grad.stride() == w.stride()


@pytest.mark.parametrize("name", ["3x3_multiblock", "7x7_s2_stem_C3", "1x7", "3x3_s2_HneW_odd"])
def test_out_slice_concat_free_and_strided_grad(name, device, poison):
    """Two convs write disjoint channel slices of one NaN-poisoned buffer; gradients flow back through the buffer.

    (PyTorch's CopySlices hands an in-place-on-view op a contiguous clone of its gradient slice; the block engine
    avoids that by owning the buffer's backward. The kernels' strided-slice path is tested below.)
    """
    N, C, H, W, K, RS, stride, padding = CASES[name]
    inp1 = make_inputs(CASES[name], device)
    K2 = 5
    inp2 = make_inputs((N, C, H, W, K2, RS, stride, padding), device, scale=False)
    inp2["x"] = inp1["x"]
    x = inp1["x"].requires_grad_()
    for d in (inp1, inp2):
        for k in ("weight", "scale", "bias"):
            if d[k] is not None:
                d[k].requires_grad_()
    _, _, P, Q = _args.conv_out_shape(
        x.shape, inp1["weight"].shape, _args.pair(stride, "s"), _args.conv_padding(padding)
    )
    off1, off2, total = 3, 3 + K + 2, 3 + K + 2 + K2 + 4
    buf = torch.full((N, total, P, Q), float("nan"), device=device).to(memory_format=torch.channels_last)
    o1 = conv2d(**inp1, activation="relu", out=buf[:, off1 : off1 + K])
    o2 = conv2d(**inp2, activation=None, out=buf[:, off2 : off2 + K2])
    assert o1.data_ptr() == buf[:, off1].data_ptr() and o2.data_ptr() == buf[:, off2].data_ptr()
    # nothing outside the two slices was touched
    outside = torch.ones(total, dtype=torch.bool)
    outside[off1 : off1 + K] = False
    outside[off2 : off2 + K2] = False
    assert buf[:, outside].isnan().all()
    y1, d1 = reference_fp64(inp1, "relu", 1.0)
    y2, d2 = reference_fp64({**inp2, "x": d1["x"]}, None, 1.0)
    assert rel_err(buf[:, off1 : off1 + K], y1) < TOL[torch.float32]
    assert rel_err(buf[:, off2 : off2 + K2], y2) < TOL[torch.float32]

    # backward through the buffer: each op receives a strided channel slice of the buffer's gradient
    seen = []
    orig = conv.conv_bwd

    def spy(grad_out, *a, **k):
        seen.append(grad_out.shape)
        return orig(grad_out, *a, **k)

    conv.conv_bwd = spy
    try:
        # As in a network, the buffer's gradient is a channels_last tensor (NaN outside the slices stays
        # out of every leaf's gradient because nothing there depends on a leaf).
        gbuf = torch.randn(N, total, P, Q, device=device).to(memory_format=torch.channels_last)
        loss_ours = (buf * gbuf).sum()
        leaves = [x, inp1["weight"], inp1["scale"], inp1["bias"], inp2["weight"], inp2["bias"]]
        ours = torch.autograd.grad(loss_ours, leaves)
    finally:
        conv.conv_bwd = orig
    assert sorted(s[1] for s in seen) == sorted([K, K2]), "both slice writers ran their backward kernels"
    loss_ref = (y1 * gbuf[:, off1 : off1 + K].double()).sum() + (
        y2 * gbuf[:, off2 : off2 + K2].double()
    ).sum()
    refs = torch.autograd.grad(
        loss_ref, [d1["x"], d1["weight"], d1["scale"], d1["bias"], d2["weight"], d2["bias"]]
    )
    for a, b in zip(ours, refs):
        assert rel_err(a, b) < TOL[torch.float32]


def test_strided_grad_out_functional(device):
    """A grad_out that is a channel slice of a larger tensor reaches the kernels as is (no .contiguous())."""
    inp = make_inputs(CASES["3x3_s2_HneW_odd"], device, residual=True)
    for t in grads_of(inp).values():
        t.requires_grad_()
    y = conv2d(**inp, activation="relu", residual_scale=0.5)
    N, K, P, Q = y.shape
    big = torch.randn(N, K + 7, P, Q, device=device).to(memory_format=torch.channels_last)
    g = big[:, 4 : 4 + K]
    seen = []
    orig = conv.conv_bwd

    def spy(grad_out, *a, **k):
        seen.append(grad_out.stride())
        return orig(grad_out, *a, **k)

    conv.conv_bwd = spy
    try:
        ours = torch.autograd.grad(y, list(grads_of(inp).values()), g)
    finally:
        conv.conv_bwd = orig
    assert seen == [g.stride()]
    y_ref, d = reference_fp64(inp, "relu", 0.5)
    refs = torch.autograd.grad(y_ref, [d[k] for k in grads_of(inp)], g.double())
    for a, b in zip(ours, refs):
        assert rel_err(a, b) < TOL[torch.float32]


@pytest.mark.parametrize("which", ["fwd", "dgrad", "wgrad"])
def test_every_autotune_config(which, device, poison):
    """Each config the autotuner may pick computes the same function (tile edges, masks, grouped order)."""
    case = (2, 20, 7, 9, 35, (3, 3), 2, 1)
    inp = make_inputs(case, device, residual=True)
    x, w, sc, b, res = inp["x"], inp["weight"], inp["scale"], inp["bias"], inp["residual"]
    st, pad = (2, 2), (1, 1, 1, 1)
    y_ref, d = reference_fp64(inp, "relu", 0.3)
    g = torch.randn(y_ref.shape, device=device).to(memory_format=torch.channels_last)
    gx, gw, gb, gres = torch.autograd.grad(y_ref, [d["x"], d["weight"], d["bias"], d["residual"]], g.double())
    configs = {"fwd": conv_kernels.FWD_CONFIGS, "dgrad": conv_kernels.DGRAD_CONFIGS, "wgrad": conv_kernels.WGRAD_CONFIGS}[which]
    for cfg in configs:
        if which == "fwd":
            out = _tile.new_cl(y_ref.shape, x)
            conv_triton.conv_fwd_into(x, w, sc, b, res, st, pad, 0.3, True, out, config=cfg)
            assert rel_err(out, y_ref) < TOL[torch.float32], cfg
            continue
        y = _tile.new_cl(y_ref.shape, x)
        conv_triton.conv_fwd_into(x, w, sc, b, res, st, pad, 0.3, True, y)
        # wgrad: several split-K slabs reduced inside the launch, and the bias gradient with them
        # wgrad: several split-K slabs reduced inside the launch, the bias gradient with them, and the residual's
        # gradient written by its first (tap, C-block) column
        wg = which == "wgrad"
        grads = conv.conv_bwd(
            g, x, w, sc, y, 0.3, True, st, pad, (True, True, False, wg, wg), configs={which: cfg},
            splits=3 if wg else None,
        )  # fmt: skip
        ref = gx if which == "dgrad" else gw
        got = grads[0] if which == "dgrad" else grads[1]
        assert rel_err(got, ref) < TOL[torch.float32], cfg
        if wg:
            assert rel_err(grads[3], gb) < TOL[torch.float32], cfg
            assert not grads[4].isnan().any() and rel_err(grads[4], gres) < TOL[torch.float32], cfg


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_wgrad_split_k_deterministic(splits, device):
    inp = make_inputs((3, 6, 9, 9, 10, (3, 3), 1, 1), device)
    x, w, sc = inp["x"], inp["weight"], inp["scale"]
    y_ref, d = reference_fp64(inp, None, 1.0)
    g = torch.randn(y_ref.shape, device=device).to(memory_format=torch.channels_last)
    (gw_ref,) = torch.autograd.grad(y_ref, [d["weight"]], g.double())
    args = (g, x, w, sc, g, 1.0, False, (1, 1), (1, 1, 1, 1), (False, True, False, False, False))
    first = conv.conv_bwd(*args, splits=splits)[1]
    again = conv.conv_bwd(*args, splits=splits)[1]
    assert torch.equal(first, again), "wgrad must give the same bits on every run"
    assert rel_err(first, gw_ref) < TOL[torch.float32]


def test_nchw_input_accepted(device):
    inp = make_inputs(CASES["3x3_multiblock"], device)
    x_nchw = inp["x"].contiguous()
    assert not x_nchw.is_contiguous(memory_format=torch.channels_last)
    y = conv2d(**{**inp, "x": x_nchw}, activation="relu")
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, y_ref) < TOL[torch.float32]


def test_input_slice_at_channel_offset(device):
    """x itself may be a channel slice of a larger channels_last buffer (a branch reading part of a block)."""
    inp = make_inputs(CASES["1x3"], device)
    N, C, H, W = inp["x"].shape
    big = torch.randn(N, C + 9, H, W, device=device).to(memory_format=torch.channels_last)
    big[:, 4 : 4 + C] = inp["x"]
    xs = big[:, 4 : 4 + C].requires_grad_(False)
    y = conv2d(**{**inp, "x": xs}, activation="relu")
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(y, y_ref) < TOL[torch.float32]


def _spy_launch_decisions(monkeypatch) -> list:
    """The kinds ("fwd", "dgrad", "wgrad") of the v1 launch decisions made from now on, in order."""
    seen = []
    real_launcher = conv_kernels.launcher

    def spy(kernel, kind, *args, **kwargs):
        seen.append(kind)
        return real_launcher(kernel, kind, *args, **kwargs)

    monkeypatch.setattr(conv_kernels, "launcher", spy)
    return seen


def test_functional_calls_reuse_a_launch_only_for_the_same_geometry(device, poison, monkeypatch):
    """A functional ``conv2d`` call reuses the launch decided by an earlier call of the same signature (with and
    without gradients, through ``out=``); another layout of equal shape (x a channel slice) gets a launch of its
    own."""
    seen = _spy_launch_decisions(monkeypatch)
    case = (2, 6, 5, 6, 9, (1, 3), 1, (0, 1))  # found in no other test: its first call here decides a launch
    inp = make_inputs(case, device)
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    for _ in range(3):
        assert rel_err(conv2d(**inp, activation="relu"), y_ref) < TOL[torch.float32]
    assert seen == ["fwd"]  # decided once
    N, C, H, W = inp["x"].shape
    big = torch.randn(N, C + 5, H, W, device=device).to(memory_format=torch.channels_last)
    big[:, 3 : 3 + C] = inp["x"]
    for _ in range(2):
        assert rel_err(conv2d(**{**inp, "x": big[:, 3 : 3 + C]}, activation="relu"), y_ref) < TOL[torch.float32]
    assert seen == ["fwd", "fwd"]  # the slice's strides: a launch of its own
    out = torch.full(y_ref.shape, float("nan"), device=device).to(memory_format=torch.channels_last)
    for _ in range(2):  # the out= form and the autograd form: the launch memo below the call memo
        assert rel_err(conv2d(**inp, activation="relu", out=out), y_ref) < TOL[torch.float32]
        x = inp["x"].clone().requires_grad_()
        assert rel_err(conv2d(**{**inp, "x": x}, activation="relu"), y_ref) < TOL[torch.float32]
    assert seen == ["fwd", "fwd", "fwd"]  # the out= and autograd calls share the first call's launch


def test_backward_launches_decided_once_per_geometry(device, poison, monkeypatch):
    """A conv backward's dgrad and wgrad launches are decided once per shapes, strides and flags (the launch memo)
    and read every tensor at each call: three steps with new values each match fp64; a grad_out of other strides
    (a channel slice) decides launches of its own. Every ReLU input > 10x fp32 rounding from 0 in fp64 (a closer one
    flips a mask entry by luck)."""
    from helpers import draw_off_relu_kink

    seen = _spy_launch_decisions(monkeypatch)
    case = (2, 7, 6, 5, 11, (3, 1), 2, (1, 0))  # found in no other test: its first step here decides the launches
    names = ("x", "weight", "scale", "bias")

    def pre_relu(x, w, s, b):
        st, pad = _args.pair(case[6], "stride"), _args.conv_padding(case[7])
        return reference.conv2d(x, w, stride=st, padding=pad, scale=s, bias=b)

    def draw():
        inp = make_inputs(case, device, bias=True)
        return tuple(inp[k] for k in names)

    for step in range(3):
        drawn = draw_off_relu_kink(draw, pre_relu)
        inp = {**make_inputs(case, device, bias=True), **dict(zip(names, drawn))}
        leaves = grads_of(inp)
        for t in leaves.values():
            t.requires_grad_()
        y = conv2d(**inp, activation="relu")
        y_ref, dref = reference_fp64(inp, "relu", 1.0)
        g = torch.randn_like(y)
        if step == 2:
            g = torch.randn(*g.shape[:1], g.shape[1] + 4, *g.shape[2:], device=device)
            g = g.to(memory_format=torch.channels_last)[:, 2 : 2 + y.shape[1]]
        names = list(leaves)
        ours = torch.autograd.grad(y, [leaves[k] for k in names], g)
        theirs = torch.autograd.grad(y_ref, [dref[k] for k in names], g.double())
        for k, a, b in zip(names, ours, theirs):
            assert rel_err(a, b) < TOL[torch.float32], (step, k)
        if step == 1:
            assert sorted(seen) == ["dgrad", "fwd", "wgrad"]  # decided at the first step only
    assert sorted(seen) == ["dgrad", "dgrad", "fwd", "wgrad", "wgrad"]  # the sliced grad_out: launches of its own


def test_index_type_depends_only_on_shape_and_strides():
    """The launch memos key on shapes and strides: the index type must follow from them, whatever the storage."""
    import triton.language as tl

    for shape, span_ok in (((8, 64, 35, 35), True), ((80, 16, 1300, 1300), False)):
        small = torch.empty(shape, device="meta").to(memory_format=torch.channels_last)
        in_huge = torch.empty(2**33, device="meta").as_strided(small.shape, small.stride(), 7)
        assert _tile.tl_index_type(small) == _tile.tl_index_type(in_huge) == (tl.int32 if span_ok else tl.int64)


def test_reference_backend_switch(monkeypatch, device):
    inp = make_inputs(CASES["1x1"], device)
    called = []
    real_fwd = conv_triton.conv_fwd_into
    monkeypatch.setattr(conv_triton, "conv_fwd_into", lambda *a, **k: called.append(1))
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    y = conv2d(**inp, activation="relu")
    assert not called
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(y, y_ref) < 1e-6
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="INCEPTION_KERNELS_BACKEND"):
        conv2d(**inp)
    # cuda forces the CUDA C++ versions of the ops that have one; the convolution has none and stays on Triton
    monkeypatch.setattr(conv_triton, "conv_fwd_into", real_fwd)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "cuda")
    assert rel_err(conv2d(**inp, activation="relu"), y_ref) < 1e-5


def test_auto_backend_on_cpu_is_reference(monkeypatch):
    from inception_kernels.ops import dispatch

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    assert dispatch.is_reference(torch.zeros(1))
    assert dispatch.choose("bn_act", torch.zeros(1)).impl == "reference"


@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_heuristic_config_fills_the_gpu_and_fits_the_problem(kind):
    configs = {"fwd": conv_kernels.FWD_CONFIGS, "dgrad": conv_kernels.DGRAD_CONFIGS, "wgrad": conv_kernels.WGRAD_CONFIGS}[kind]
    red = "BLOCK_C" if kind == "fwd" else "BLOCK_K"
    # big problem: a large tile and a full wave; tiny problem: tiles no larger than the extents allow
    big = (("BLOCK_M", 32 * 17 * 17), ("BLOCK_N", 192), (red, 768))
    cfg = conv_kernels.heuristic_config(kind, big, 2, 1, 132)
    assert cfg in configs
    grid = math.ceil(big[0][1] / cfg.kwargs["BLOCK_M"]) * math.ceil(192 / cfg.kwargs["BLOCK_N"])
    assert grid >= 132 and cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] >= 64 * 64
    small = (("BLOCK_M", 20), ("BLOCK_N", 3), (red, 5))
    cfg = conv_kernels.heuristic_config(kind, small, 4, 1, 132)
    assert cfg.kwargs["BLOCK_N"] <= 16 or cfg is min(configs, key=conv_kernels._tile_volume)


@pytest.mark.parametrize("kind", ["dgrad", "wgrad"])
def test_backward_configs_that_spill_are_never_picked(kind):
    """The heuristic and the autotuner's pruning keep fp32 backward launches off the configs ``fits_registers``
    rejects (they spill), for every problem size; 16-bit launches keep their big tiles (all but the wgrad's
    BM128_BN64_BK64, which spilled 16 B on sm_90 in 16-bit with the mask folded in)."""
    configs = {"dgrad": conv_kernels.DGRAD_CONFIGS, "wgrad": conv_kernels.WGRAD_CONFIGS}[kind]
    kernel = {"dgrad": conv_kernels._conv_dgrad_kernel, "wgrad": conv_kernels._conv_wgrad_kernel}[kind]
    prune = kernel.early_config_prune
    rejected = [c for c in configs if not conv_kernels.fits_registers(c, 4, 1)]
    rejected16 = [conv_kernels.fits_registers(c, 2, 1) or c.kwargs for c in configs]
    assert rejected and [r for r in rejected16 if r is not True] == (
        [] if kind == "dgrad" else [{"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}])  # fmt: skip
    for m, n, k in [(32 * 17 * 17, 192, 768), (8 * 35 * 35, 64, 288), (2048, 2048, 2048), (20, 3, 5)]:
        dims = (("BLOCK_M", m), ("BLOCK_N", n), ("BLOCK_K", k))
        for sms in (1, 132):
            cfg = conv_kernels.heuristic_config(kind, dims, 4, 1, sms, 1)
            assert cfg not in rejected, (dims, sms)
        kept = conv_kernels.prune_configs(configs, dict(dims), 4, 1)
        assert kept and not set(kept) & set(rejected)
    # the autotuner's hook reads the flags of the launch: the same rule
    g = torch.empty(1, dtype=torch.float32)
    args = dict(N=8, C=2048, H=32, W=32, K=2048, P=32, Q=32, g_ptr=g, x_ptr=g)
    assert not set(prune(list(configs), args, RELU=True)) & set(rejected)
    assert not set(prune(list(configs), args, BIAS_GRAD=True, RELU=False)) & set(rejected)
    assert set(prune(list(configs), {**args, "g_ptr": g.half(), "x_ptr": g.half()}, RELU=True)) & set(rejected)


def test_index_type_switches_to_64_bit_past_2_31_elements():
    import triton.language as tl

    small = torch.empty((8, 64, 35, 35), device="meta").to(memory_format=torch.channels_last)
    assert _tile.tl_index_type(small, None) == tl.int32
    # a channel slice of a huge buffer counts by the span of its strides, not its own numel
    huge_slice = torch.empty((80, 2048, 128, 128), device="meta").to(memory_format=torch.channels_last)[
        :, :16
    ]
    assert huge_slice.numel() < 2**31
    assert _tile.tl_index_type(small, huge_slice) == tl.int64


def test_split_destination_horizontal_fusion(device, poison):
    """One GEMM, two destinations: channels [0, K1) into a slice of a block output, [K1, K) into a temporary."""
    inp = make_inputs((2, 12, 5, 6, 30, (1, 1), 1, 0), device)
    x, w, sc, b = inp["x"], inp["weight"], inp["scale"], inp["bias"]
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    buf = torch.full((2, 40, 5, 6), float("nan"), device=device).to(memory_format=torch.channels_last)
    tmp = _tile.new_cl((2, 19, 5, 6), x)  # poisoned
    conv_triton.conv_fwd_into(x, w, sc, b, None, (1, 1), (0, 0, 0, 0), 1.0, True, buf[:, 7:18], out2=tmp)
    assert rel_err(buf[:, 7:18], y_ref[:, :11]) < TOL[torch.float32]
    assert rel_err(tmp, y_ref[:, 11:]) < TOL[torch.float32]
    assert buf[:, :7].isnan().all() and buf[:, 18:].isnan().all()
    with pytest.raises(ValueError, match="split the K output channels"):
        conv_triton.conv_fwd_into(x, w, sc, b, None, (1, 1), (0, 0, 0, 0), 1.0, True, buf[:, 7:18], out2=tmp[:, :5])


@pytest.mark.skipif(not conv._backend.interpreter_active(), reason="interpreter-only behaviour")
def test_interpreter_refuses_bf16_instead_of_computing_garbage():
    x = torch.randn(1, 4, 5, 5, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w = torch.randn(4, 4, 3, 3, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="no bfloat16"):
        conv2d(x, w, padding=1)


@pytest.mark.skipif(not conv._backend.interpreter_active(), reason="interpreter-only behaviour")
def test_interpreter_fp16(device):
    inp = make_inputs(CASES["3x3_s2_HneW_odd"], device, dtype=torch.float16)
    y = conv2d(**inp, activation="relu")
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(y, y_ref) < 2e-3


# ----------------------------------------------------------------------------------------------------------
# Backward without the side passes: the epilogue's gradient folded into dgrad's and wgrad's operand loads, the
# bias gradient and the split-K reduction inside wgrad
# ----------------------------------------------------------------------------------------------------------
FOLD_CASES = ["7x7_s2_stem_C3", "3x3_multiblock", "1x7", "7x1", "3x3_s2_HneW_odd", "3x3_HW1", "1x1_s2_odd"]
# (activation, scale, bias, residual_scale): every epilogue whose gradient needs no residual tensor
FOLD_EPILOGUES = {
    "relu_bias": ("relu", False, True, 1.0),
    "relu_only": ("relu", False, False, 1.0),
    "relu_scale_bias_rs": ("relu", True, True, 0.37),
    "bias_rs_no_relu": (None, False, True, 0.5),
    "scale_bias_no_relu": (None, True, True, 1.0),
}


def _fold_run(case, epilogue, device, splits, *, y_buf_offset=0, g_offset=0, residual=False, configs=None,
              need_w=True):  # fmt: skip
    """conv_bwd of one fused-epilogue conv on our kernels against the fp64 reference: returns
    (ours, reference) gradients of (x, weight, scale, bias) (None where the epilogue has no such operand), and
    with ``residual`` of the residual too."""
    act, has_scale, has_bias, rs = FOLD_EPILOGUES[epilogue]
    inp = make_inputs(CASES[case], device, scale=has_scale, bias=has_bias, residual=residual)
    x, w, sc, b, res = inp["x"], inp["weight"], inp["scale"], inp["bias"], inp["residual"]
    st = _args.pair(inp["stride"], "stride")
    pad = _args.conv_padding(inp["padding"])
    y_ref, d = reference_fp64(inp, act, rs)
    N, K, P, Q = y_ref.shape
    # the saved output and grad_out as channel slices of larger channels_last buffers (a block's output)
    ybig = _tile.new_cl((N, K + y_buf_offset + 3, P, Q), x)
    y = ybig[:, y_buf_offset : y_buf_offset + K]
    conv_triton.conv_fwd_into(x, w, sc, b, res, st, pad, rs, act == "relu", y)
    gbig = torch.randn(N, K + g_offset + 2, P, Q, device=device).to(memory_format=torch.channels_last)
    g = gbig[:, g_offset : g_offset + K]
    need_s = need_w and sc is not None  # need_w False: a frozen conv (neither weight nor scale), so no wgrad
    need = (True, need_w, need_s, b is not None, residual)
    got = conv.conv_bwd(g, x, w, sc, y, rs, act == "relu", st, pad, need, configs=configs, splits=splits)
    ours = [got[0], got[1], got[2], got[3]] + ([got[4]] if residual else [])
    names = ["x"] + ["weight"] * need_w + ["scale"] * need_s + ["bias"] * (b is not None) + ["residual"] * residual
    refs = dict(zip(names, torch.autograd.grad(y_ref, [d[k] for k in names], g.double())))
    theirs = [refs["x"], refs.get("weight"), refs.get("scale"), refs.get("bias")]
    return ours, theirs + ([refs["residual"]] if residual else [])


@pytest.mark.parametrize(
    "name, epilogue, splits",
    # every case and every epilogue both with one split and with several (alternating, to keep the interpreter
    # time down)
    [(c, e, (1, 3)[(i + j) % 2]) for i, c in enumerate(FOLD_CASES) for j, e in enumerate(FOLD_EPILOGUES)],
)
def test_backward_epilogue_folded_into_gemms_vs_fp64(name, epilogue, splits, device, poison, monkeypatch):
    """dgrad + wgrad applying the ReLU mask (from the saved output), residual_scale and scale in their operand
    loads, wgrad reducing the bias gradient and its split-K slabs itself: every gradient matches fp64, no
    epilogue pass ran, and poisoned (NaN) buffers show no unwritten element."""
    monkeypatch.setattr(conv_triton, "epilogue_grad", lambda *a, **k: pytest.fail("epilogue pass ran"))
    monkeypatch.setattr(conv, "epilogue_grad", lambda *a, **k: pytest.fail("epilogue pass ran"))
    ours, theirs = _fold_run(name, epilogue, device, splits)
    for k, a, b in zip(("x", "weight", "scale", "bias"), ours, theirs):
        assert (a is None) == (b is None), k
        if a is not None:
            assert a.shape == b.shape and not a.isnan().any(), k
            assert rel_err(a, b) < TOL[torch.float32], f"grad {k}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("name", ["3x3_s2_valid_odd", "1x3"])
def test_backward_folded_reads_saved_output_and_grad_slices(name, device, poison):
    """The saved output and grad_out are channel slices at nonzero offsets of larger buffers (each with its own
    strides): the mask is read from the right channels."""
    ours, theirs = _fold_run(name, "relu_scale_bias_rs", device, 2, y_buf_offset=5, g_offset=3)
    for a, b in zip(ours, theirs):
        assert not a.isnan().any() and rel_err(a, b) < TOL[torch.float32]


def test_one_conv_backward_is_two_launches(device):
    """ReLU epilogue with a bias: dgrad + wgrad (mask, bias gradient and split-K reduction inside), nothing
    else, also after the weight changed (an optimizer step): the forward's channels_last copy of an R×S weight
    is the dgrad's operand too (before 2026-12-04 dgrad made its own (R, S, K, C) repack: 3 launches), and a 1×1
    or channels_last weight is read as it is. (Before: epilogue pass, its bias sum, dgrad, wgrad, the slab sum:
    5.) With a residual gradient too: wgrad writes dres, still 2 (it was 4: the epilogue pass writing dres and gp,
    its bias sum, dgrad, wgrad); a frozen weight (no wgrad) keeps the epilogue pass: pass, bias sum, dgrad = 3.
    The forward after a weight change: the copy and the conv for a contiguous R×S weight, the conv alone else."""
    from inception_kernels.utils import count_launches

    conv_triton._tile_counters(device, 1)  # wgrad's split-K counters: zero-filled once per process, not counted here

    def launches(case, residual=False, bump=False, frozen=False, cl_weight=False):
        inp = make_inputs(CASES[case], device, scale=False, bias=True, residual=residual)
        if cl_weight:
            inp["weight"] = inp["weight"].contiguous(memory_format=torch.channels_last)
        for k, t in grads_of(inp).items():
            t.requires_grad_(not (frozen and k == "weight"))
        counts = []
        for _ in range(2):
            if bump:
                with torch.no_grad():
                    inp["weight"].mul_(1.0)
            with count_launches() as f:
                y = conv2d(**inp, activation="relu", residual_scale=0.5 if residual else 1.0)
            with count_launches() as c:
                y.backward(torch.randn_like(y))
            counts.append((f.count, c.count))
        return counts

    assert launches("3x3_multiblock")[1] == (1, 2)
    assert launches("3x3_multiblock", bump=True) == [(2, 2), (2, 2)]
    assert launches("3x3_multiblock", bump=True, cl_weight=True) == [(1, 2), (1, 2)]
    assert launches("1x1", bump=True) == [(1, 2), (1, 2)]
    assert launches("3x3_multiblock", residual=True)[1] == (1, 2)
    assert launches("3x3_multiblock", residual=True, bump=True) == [(2, 2), (2, 2)]
    assert launches("3x3_multiblock", residual=True, frozen=True)[1] == (1, 3)


# (case, epilogue, splits, wgrad config): C = 3, odd C and K, H = W = 1, stride 2 at odd sizes; several split-K
# slabs; small wgrad tiles so that several K-blocks and (tap, C-block) columns write (only column 0 writes dres)
RESIDUAL_RUNS = [
    ("7x7_s2_stem_C3", "relu_scale_bias_rs", 3, None),
    ("3x3_multiblock", "relu_bias", 2, (16, 16, 64)),
    ("1x1", "relu_only", 1, None),
    ("3x3_HW1", "relu_scale_bias_rs", 1, (16, 16, 64)),
    ("3x3_s2_HneW_odd", "bias_rs_no_relu", 3, (32, 16, 64)),
    ("1x7", "scale_bias_no_relu", 2, None),
]


def _wgrad_config(tiles):
    if tiles is None:
        return None  # the heuristic's
    (cfg,) = [c for c in conv_kernels.WGRAD_CONFIGS if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) == tiles]
    return {"wgrad": cfg}


@pytest.mark.parametrize("name, epilogue, splits, wcfg", RESIDUAL_RUNS)
def test_residual_backward_folded_vs_fp64(name, epilogue, splits, wcfg, device, poison, monkeypatch):
    """A conv whose epilogue adds a residual: dgrad + wgrad apply the epilogue's gradient themselves and wgrad
    writes the residual's gradient (the masked, unscaled grad_out) -- no epilogue pass. dx, dw, dscale, dbias and
    dres match fp64; the NaN-poisoned dres has no unwritten element; saved output and grad_out are channel slices
    at nonzero offsets."""
    monkeypatch.setattr(conv, "epilogue_grad", lambda *a, **k: pytest.fail("epilogue pass ran"))
    ours, theirs = _fold_run(name, epilogue, device, splits, y_buf_offset=2, g_offset=1, residual=True,
                             configs=_wgrad_config(wcfg))  # fmt: skip
    for k, a, b in zip(("x", "weight", "scale", "bias", "residual"), ours, theirs):
        assert (a is None) == (b is None), k
        if a is not None:
            assert a.shape == b.shape and not a.isnan().any(), k
            assert rel_err(a, b) < TOL[torch.float32], f"grad {k}: {rel_err(a, b):.2e}"
    dres = ours[4]
    assert dres.is_contiguous(memory_format=torch.channels_last) and dres.dtype == ours[0].dtype


def test_residual_backward_without_wgrad_vs_fp64(device, poison):
    """A frozen weight: no wgrad to write dres, so the epilogue pass does (with the bias partials), then dgrad."""
    ours, theirs = _fold_run("3x3_s2_valid_odd", "relu_scale_bias_rs", device, None, residual=True, need_w=False)
    assert ours[1] is None and ours[2] is None  # neither the weight's nor the scale's gradient asked for
    for k, a, b in zip(("x", "bias", "residual"), ours[::3] + ours[4:], theirs[::3] + theirs[4:]):
        assert not a.isnan().any() and rel_err(a, b) < TOL[torch.float32], k


def test_residual_slice_gradient_through_autograd(device, poison):
    """conv2d(..., residual=buf[:, off:off + K]) with ``buf`` a leaf: the residual's gradient (written by wgrad)
    lands in that channel slice of buf.grad, zero elsewhere, and matches fp64."""
    case = CASES["3x3_s2_HneW_odd"]
    inp = make_inputs(case, device, residual=True)
    N, K, P, Q = inp["residual"].shape
    off = 3
    buf = torch.randn(N, K + off + 4, P, Q, device=device).to(memory_format=torch.channels_last)
    buf[:, off : off + K] = inp["residual"]
    buf.requires_grad_()
    for k in ("x", "weight", "scale", "bias"):
        inp[k].requires_grad_()
    y = conv2d(**{**inp, "residual": buf[:, off : off + K]}, activation="relu", residual_scale=0.3)
    g = torch.randn_like(y)
    gx, gbuf = torch.autograd.grad(y, [inp["x"], buf], g)
    y_ref, d = reference_fp64(inp, "relu", 0.3)
    rx, rres = torch.autograd.grad(y_ref, [d["x"], d["residual"]], g.double())
    assert rel_err(gx, rx) < TOL[torch.float32]
    assert rel_err(gbuf[:, off : off + K], rres) < TOL[torch.float32]
    assert (gbuf[:, :off] == 0).all() and (gbuf[:, off + K :] == 0).all()


@pytest.mark.parametrize("epilogue", ["relu_bias", "relu_scale_bias_rs"])
def test_folded_backward_bitwise_deterministic(epilogue, device):
    """The same inputs give the same bits of dw, dscale and dbias on two runs, with split-K slabs reduced inside
    the wgrad launch."""
    act, has_scale, has_bias, rs = FOLD_EPILOGUES[epilogue]
    inp = make_inputs((3, 6, 9, 9, 10, (3, 3), 1, 1), device, scale=has_scale, bias=has_bias)
    x, w, sc, b = inp["x"], inp["weight"], inp["scale"], inp["bias"]
    y = _tile.new_cl((3, 10, 9, 9), x)
    conv_triton.conv_fwd_into(x, w, sc, b, None, (1, 1), (1, 1, 1, 1), rs, True, y)
    g = torch.randn(y.shape, device=device).to(memory_format=torch.channels_last)
    args = (g, x, w, sc, y, rs, True, (1, 1), (1, 1, 1, 1), (False, True, has_scale, True, False))
    for splits in (5, 7):
        first = conv.conv_bwd(*args, splits=splits)
        again = conv.conv_bwd(*args, splits=splits)
        for a, b2 in zip(first[1:4], again[1:4]):
            assert (a is None and b2 is None) or torch.equal(a, b2)
