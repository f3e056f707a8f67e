"""conv2d as a PyTorch op: bad input, torch.library.opcheck, torch.compile(fullgraph=True)."""

import pytest
import torch

from inception_kernels.ops import conv2d, conv_triton, reference


def cl(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype).to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ bad input
def _ok(device):
    return dict(x=cl(2, 4, 6, 6, device=device), weight=torch.randn(8, 4, 3, 3, device=device))


BAD = [
    ("x not a tensor", lambda d, dev: {**d, "x": [1.0]}, TypeError, "x must be a torch.Tensor"),
    ("x not 4-D", lambda d, dev: {**d, "x": torch.randn(4, 6, 6, device=dev)}, ValueError, "x must be 4-D"),
    ("int dtype", lambda d, dev: {**d, "x": d["x"].to(torch.int32)}, TypeError, "x must be float32"),
    (
        "weight not 4-D",
        lambda d, dev: {**d, "weight": torch.randn(8, 4, 3, device=dev)},
        ValueError,
        "weight must be 4-D",
    ),
    (
        "channel mismatch",
        lambda d, dev: {**d, "weight": torch.randn(8, 5, 3, 3, device=dev)},
        ValueError,
        "weight has 5 input channels but x has 4",
    ),
    ("dtype mix", lambda d, dev: {**d, "weight": d["weight"].double()}, TypeError, "weight has dtype"),
    ("device mix", lambda d, dev: {**d, "weight": d["weight"].to("meta")}, ValueError, "weight is on meta"),
    (
        "kernel 9x9",
        lambda d, dev: {**d, "weight": torch.randn(8, 4, 9, 9, device=dev)},
        ValueError,
        "kernel size 9x9 is not supported",
    ),
    ("stride 3", lambda d, dev: {**d, "stride": 3}, ValueError, "stride must be 1 or 2"),
    ("stride bad type", lambda d, dev: {**d, "stride": "2"}, TypeError, "stride must be an int"),
    ("negative padding", lambda d, dev: {**d, "padding": -1}, ValueError, "padding must be non-negative"),
    ("padding 3-tuple", lambda d, dev: {**d, "padding": (1, 1, 1)}, TypeError, "padding must be an int"),
    (
        "too small",
        lambda d, dev: {**d, "x": cl(2, 4, 2, 2, device=dev)},
        ValueError,
        "smaller than the 3x3 kernel",
    ),
    (
        "scale length",
        lambda d, dev: {**d, "scale": torch.ones(7, device=dev)},
        ValueError,
        "scale must have length K=8",
    ),
    (
        "bias length",
        lambda d, dev: {**d, "bias": torch.ones(9, device=dev)},
        ValueError,
        "bias must have length K=8",
    ),
    ("bias 2-D", lambda d, dev: {**d, "bias": torch.ones(8, 1, device=dev)}, ValueError, "bias must be 1-D"),
    (
        "scale fp64",
        lambda d, dev: {**d, "scale": torch.ones(8, device=dev, dtype=torch.float64)},
        TypeError,
        "scale must be float32",
    ),
    (
        "activation",
        lambda d, dev: {**d, "activation": "gelu"},
        ValueError,
        "activation must be None or 'relu'",
    ),
    (
        "residual shape",
        lambda d, dev: {**d, "residual": cl(2, 8, 5, 5, device=dev)},
        ValueError,
        "residual must have shape",
    ),
    (
        "residual dtype",
        lambda d, dev: {**d, "residual": cl(2, 8, 4, 4, device=dev).double()},
        TypeError,
        "residual has dtype",
    ),
    (
        "residual_scale type",
        lambda d, dev: {**d, "residual_scale": "0.1"},
        TypeError,
        "residual_scale must be a float",
    ),
    ("out shape", lambda d, dev: {**d, "out": cl(2, 7, 4, 4, device=dev)}, ValueError, "out must have shape"),
    ("out dtype", lambda d, dev: {**d, "out": cl(2, 8, 4, 4, device=dev).half()}, TypeError, "out has dtype"),
    (
        "out device",
        lambda d, dev: {**d, "out": torch.empty(2, 8, 4, 4, device="meta")},
        ValueError,
        "out is on meta",
    ),
    (
        "out NCHW",
        lambda d, dev: {**d, "out": torch.empty(2, 8, 4, 4, device=dev)},
        ValueError,
        "out must be channels_last or a channel slice",
    ),
    (
        "out NCHW slice",
        lambda d, dev: {**d, "out": torch.empty(2, 12, 4, 4, device=dev)[:, 2:10]},
        ValueError,
        "out must be channels_last or a channel slice",
    ),
    (
        "out aliases x",
        lambda d, dev: {
            **d,
            "x": (b := cl(2, 12, 4, 4, device=dev))[:, :4],
            "weight": torch.randn(8, 4, 1, 1, device=dev),
            "out": b[:, 4:12],
        },
        ValueError,
        "out must not share memory with x",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(case, device):
    _, mutate, exc, msg = case
    kwargs = mutate(_ok(device), device)
    x, w = kwargs.pop("x"), kwargs.pop("weight")
    with pytest.raises(exc, match=msg):
        conv2d(x, w, **kwargs)


def test_valid_slice_and_fp32_scale_with_half_input_are_accepted(device):
    d = _ok(device)
    buf = cl(2, 20, 4, 4, device=device)
    y = conv2d(d["x"], d["weight"], out=buf[:, 5:13], scale=torch.ones(8, device=device))
    assert y.data_ptr() == buf[:, 5].data_ptr()


# ------------------------------------------------------------------------------------------------ opcheck
def _op_args(device, requires_grad):
    x = cl(2, 5, 6, 7, device=device)
    w = torch.randn(6, 5, 3, 3, device=device)
    sc = torch.rand(6, device=device) + 0.5
    b = torch.randn(6, device=device)
    res = cl(2, 6, 3, 4, device=device)
    if requires_grad:
        for t in (x, w, sc, b, res):
            t.requires_grad_()
    return x, w, sc, b, res


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_conv2d_fwd(requires_grad, device):
    x, w, sc, b, res = _op_args(device, requires_grad)
    args = (x, w, sc, b, res, [2, 2], [1, 1, 1, 1], 0.3, True)
    torch.library.opcheck(torch.ops.inception_kernels.conv2d_fwd.default, args)
    args = (x, w, None, None, None, [1, 1], [0, 2, 1, 0], 1.0, False)
    torch.library.opcheck(torch.ops.inception_kernels.conv2d_fwd.default, args)


def test_opcheck_conv2d_fwd_out(device):
    x, w, sc, b, res = _op_args(device, False)
    buf = cl(2, 10, 3, 4, device=device)
    args = (x, w, sc, b, res, [2, 2], [1, 1, 1, 1], 0.3, True, buf[:, 2:8])
    torch.library.opcheck(torch.ops.inception_kernels.conv2d_fwd_out.default, args)


def test_opcheck_conv2d_bwd(device):
    x, w, sc, b, res = _op_args(device, False)
    y = torch.ops.inception_kernels.conv2d_fwd(x, w, sc, b, res, [2, 2], [1, 1, 1, 1], 0.3, True)
    g = torch.randn_like(y)
    for need in (
        [True, True, True, True, True],
        [True, False, False, True, False],
        [False, True, True, False, False],
    ):
        args = (g, x, w, sc, y, [2, 2], [1, 1, 1, 1], 0.3, True, need)
        torch.library.opcheck(torch.ops.inception_kernels.conv2d_bwd.default, args)


# ------------------------------------------------------------------------------------------------ torch.compile
def _block(x, w1, b1, w2, sc2, b2):
    # two fused convs in a chain, the second with a residual-free folded-BN epilogue
    h = conv2d(x, w1, padding=(0, 1), bias=b1, activation="relu")
    return conv2d(
        h, w2, padding=(1, 0), scale=sc2, bias=b2, activation="relu", residual=h, residual_scale=0.5
    )


def test_torch_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    x = cl(2, 5, 6, 6, device=device).requires_grad_()
    w1 = torch.randn(7, 5, 1, 3, device=device, requires_grad=True)
    b1 = torch.randn(7, device=device, requires_grad=True)
    w2 = torch.randn(7, 7, 3, 1, device=device, requires_grad=True)
    sc2 = torch.rand(7, device=device).add(0.5).requires_grad_()
    b2 = torch.randn(7, device=device, requires_grad=True)
    leaves = [x, w1, b1, w2, sc2, b2]
    y_eager = _block(*leaves)
    g = torch.randn_like(y_eager)
    grads_eager = torch.autograd.grad(y_eager, leaves, g)
    compiled = torch.compile(_block, fullgraph=True)
    y_c = compiled(*leaves)
    grads_c = torch.autograd.grad(y_c, leaves, g)
    torch.testing.assert_close(y_c, y_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_c, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and both match the reference
    ref = reference.conv2d(x, w1, padding=(0, 0, 1, 1), bias=b1, activation="relu")
    ref = reference.conv2d(
        ref, w2, padding=(1, 1, 0, 0), scale=sc2, bias=b2, activation="relu", residual=ref, residual_scale=0.5
    )
    torch.testing.assert_close(y_eager, ref, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph_out_slice(device):
    """The concat-free form under torch.compile: two convs write slices of one buffer (inference)."""
    torch._dynamo.reset()
    x = cl(2, 5, 6, 6, device=device)
    w1, w2 = torch.randn(4, 5, 1, 1, device=device), torch.randn(3, 5, 3, 3, device=device)

    def two_branches(x, w1, w2):
        buf = torch.empty(2, 9, 6, 6, device=x.device).to(memory_format=torch.channels_last)
        conv2d(x, w1, activation="relu", out=buf[:, 0:4])
        conv2d(x, w2, padding=1, activation="relu", out=buf[:, 4:7])
        buf[:, 7:9] = 0
        return buf

    with torch.no_grad():
        eager = two_branches(x, w1, w2)
        compiled = torch.compile(two_branches, fullgraph=True)(x, w1, w2)
    torch.testing.assert_close(compiled, eager)
    ref = torch.cat(
        [
            torch.relu(torch.nn.functional.conv2d(x, w1)),
            torch.relu(torch.nn.functional.conv2d(x, w2, padding=1)),
        ],
        1,
    )
    torch.testing.assert_close(eager[:, :7], ref, rtol=1e-4, atol=1e-4)


def test_reference_path_uses_no_kernels(monkeypatch, device):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    monkeypatch.setattr(conv_triton, "conv_fwd_into", None)
    d = _ok(device)
    y = conv2d(d["x"], d["weight"], padding=1)
    assert y.shape == (2, 8, 6, 6)


def test_registered_ops_reference_path_matches_kernels(monkeypatch, device):
    """The registered ops also serve tensors Triton cannot run on (reference math inside the op): same results,
    including the backward op, which must not rely on autograd (op implementations run below the autograd key)."""
    x, w, sc, b, res = _op_args(device, False)
    args = (x, w, sc, b, res, [2, 2], [1, 0, 1, 2], 0.3, True)
    y_k = torch.ops.inception_kernels.conv2d_fwd(*args)
    g = torch.randn_like(y_k)
    need = [True, True, True, True, True]
    grads_k = torch.ops.inception_kernels.conv2d_bwd(g, x, w, sc, y_k, [2, 2], [1, 0, 1, 2], 0.3, True, need)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    y_r = torch.ops.inception_kernels.conv2d_fwd(*args)
    grads_r = torch.ops.inception_kernels.conv2d_bwd(g, x, w, sc, y_r, [2, 2], [1, 0, 1, 2], 0.3, True, need)
    torch.testing.assert_close(y_r, y_k, rtol=1e-4, atol=1e-5)
    for a, b_ in zip(grads_r, grads_k):
        assert a.shape == b_.shape and a.dtype == b_.dtype
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-4)
