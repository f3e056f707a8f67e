"""Every argument form a user may pass to the public ops, against the PyTorch functionals.

Property tests (hypothesis, fixed example counts, derandomized: the same examples on every run) draw tiny shapes
-- channel counts 1-5 and 17, H or W of 1, empty batches -- and each argument form ``F.conv2d`` /
``F.max_pool2d`` / ``F.avg_pool2d`` / ``F.batch_norm`` accepts (ints, 1-tuples, pairs, lists, ``torch.Size``,
"same"/"valid", stride None or ``()``), sometimes with NaN/Inf inputs, and check that each op gives PyTorch's
answer (fp32 rule: error vs fp64 <= 2x the same-dtype PyTorch op's error plus a tiny floor; NaN/Inf where
PyTorch has them) or, where PyTorch raises, a ValueError/TypeError. They run on our kernels (the interpreter
without a GPU) and on the reference backend. Table-driven tests check that each bad input raises the stated
exception with a message naming the argument.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inception_kernels import ops
from inception_kernels.ops import _args, reference

BACKENDS = ["triton", "reference"]
# our kernels run on CUDA tensors with a GPU, in the interpreter on CPU tensors without one (tests/conftest.py)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dev(t):
    """``t`` on DEVICE with the same strides and storage offset (channel slices stay slices); None stays None."""
    if t is None or t.device == DEVICE:
        return t
    n = t.untyped_storage().nbytes() // t.element_size()
    return (
        torch.empty(n, dtype=t.dtype, device=DEVICE)
        .as_strided(t.shape, t.stride(), t.storage_offset())
        .copy_(t)
    )


def _settings(n):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _with_specials(t, gen, specials):
    """Put NaN / +Inf / -Inf at a few random positions (``specials`` of them)."""
    if specials == 0 or t.numel() == 0:
        return t
    t = t.clone()
    flat = t.view(-1) if t.is_contiguous() else None
    idx = torch.randint(0, t.numel(), (specials,), generator=gen)
    vals = torch.tensor([float("nan"), float("inf"), float("-inf")])[torch.arange(specials) % 3]
    if flat is not None:
        flat[idx] = vals.to(t.dtype)
    return t


def assert_fp32_rule(ours, expected64, torch32, floor=1e-6):
    """ours vs fp64: NaN and Inf exactly where the fp64 result has them; elsewhere max error <= 2x PyTorch's
    same-dtype error + floor·max(1, |expected|)."""
    o, e, t = (
        ours.detach().cpu().double(),
        expected64.detach().cpu().double(),
        torch32.detach().cpu().double(),
    )
    assert o.shape == e.shape, (o.shape, e.shape)
    if e.numel() == 0:
        return
    assert torch.equal(o.isnan(), e.isnan()), "NaN positions differ from PyTorch's"
    inf = e.isinf()
    assert torch.equal(o.isinf(), inf) and torch.equal(o[inf], e[inf]), "Inf values differ from PyTorch's"
    fin = ~(e.isnan() | inf)
    if not fin.any():
        return
    err = (o - e)[fin].abs().max().item()
    base = (t - e)[fin].abs().max().item()
    assert err <= 2 * base + floor * max(1.0, e[fin].abs().max().item()), (err, base)


@contextlib.contextmanager
def _backend(monkeypatch, name):
    with monkeypatch.context() as m:
        m.setenv("INCEPTION_KERNELS_BACKEND", name)
        yield


def _raises_like_pytorch(fn, torch_fn):
    """If the PyTorch functional raises, ours must raise a ValueError or TypeError; returns whether it raised."""
    try:
        torch_fn()
    except (RuntimeError, ValueError, TypeError):
        event("PyTorch raises")
        with pytest.raises((ValueError, TypeError)):
            fn()
        return True
    event("compared with PyTorch")
    return False


# ------------------------------------------------------------------------------------------- argument forms
def _int_form(draw, v: tuple[int, int], allow_pair=True):
    """One of PyTorch's spellings of the pair ``v``: int / (v,) / [v] / (a, b) / [a, b] / torch.Size."""
    forms = []
    if v[0] == v[1]:
        forms += [v[0], (v[0],), [v[0]]]
    if allow_pair:
        forms += [tuple(v), list(v), torch.Size(v)]
    return draw(st.sampled_from(forms))


@st.composite
def conv_cases(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    N = draw(st.sampled_from([0, 1, 2]))
    C = draw(st.sampled_from([1, 2, 3, 5, 17]))
    K = draw(st.sampled_from([1, 3, 4, 17]))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    square = draw(st.booleans())
    stride = (draw(st.sampled_from([1, 2])),) * 2 if square else (draw(st.sampled_from([1, 2])),
                                                                   draw(st.sampled_from([1, 2])))  # fmt: skip
    stride_form = _int_form(draw, stride)
    kind = draw(st.sampled_from(["int", "pair", "four", "same", "valid"]))
    if kind == "same" and stride != (1, 1):
        kind = "valid"
    if kind in ("same", "valid"):
        padding = kind
    elif kind == "four":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    else:
        p = (
            (draw(st.integers(0, 2)),) * 2
            if kind == "int"
            else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        )
        padding = _int_form(draw, p)
    x = _randn(gen, N, C, H, W)
    x = _with_specials(x, gen, draw(st.sampled_from([0, 0, 0, 2])))
    layout = draw(st.sampled_from(["cl", "cl", "nchw", "slice"]))
    if layout == "cl":
        x = _cl(x)
    elif layout == "slice":
        big = _cl(torch.zeros(N, C + 3, H, W))
        big[:, 1 : 1 + C] = x
        x = big[:, 1 : 1 + C]
    w = _randn(gen, K, C, R, S)
    bias = _randn(gen, 2 * K)[::2] if draw(st.booleans()) else None  # a strided (K,) view when present
    relu = draw(st.booleans())
    return x, w, stride_form, padding, bias, relu


def _torch_conv(x, w, stride, padding, bias):
    if isinstance(padding, tuple) and len(padding) == 4:
        t, b, left, r = padding
        return F.conv2d(F.pad(x, (left, r, t, b)), w, bias, stride=stride)
    return F.conv2d(x, w, bias, stride=stride, padding=padding)


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(30)
@given(case=conv_cases())
def test_conv2d_argument_forms(case, backend, monkeypatch, poison):
    x, w, stride, padding, bias, relu = case

    def torch_ref(dtype):
        y = _torch_conv(x.to(dtype), w.to(dtype), stride, padding, None if bias is None else bias.to(dtype))
        return torch.relu(y) if relu else y

    with _backend(monkeypatch, backend):
        ours = lambda: ops.conv2d(  # noqa: E731
            _dev(x),
            _dev(w),
            stride=stride,
            padding=padding,
            bias=_dev(bias),
            activation="relu" if relu else None,
        )
        if _raises_like_pytorch(ours, lambda: torch_ref(torch.float64)):
            return
        y = ours()
    assert y.is_contiguous(memory_format=torch.channels_last) or y.numel() == 0
    assert_fp32_rule(y, torch_ref(torch.float64), torch_ref(torch.float32))


@st.composite
def pool_cases(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["max", "avg"]))
    N = draw(st.sampled_from([0, 1, 2]))
    C = draw(st.sampled_from([1, 2, 3, 4, 5, 17]))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if draw(st.booleans()):
        k = (k[0], k[0])
    kernel = _int_form(draw, k)
    s = draw(st.sampled_from(["none", "empty", (1, 1), (2, 2), (1, 2), (2, 1), (3, 3)]))
    if s == "none":
        stride = None
    elif s == "empty":
        stride = draw(st.sampled_from([(), []]))  # PyTorch: the kernel size
    else:
        stride = _int_form(draw, s)
    if draw(st.integers(0, 3)) == 0:  # often more than kernel // 2: PyTorch raises
        p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    if draw(st.booleans()):
        p = (p[0], p[0])
    padding = _int_form(draw, p)
    x = _with_specials(_randn(gen, N, C, H, W), gen, draw(st.sampled_from([0, 0, 3])))
    x = _cl(x)
    if draw(st.booleans()):  # a channel slice of a wider channels_last buffer
        big = _cl(torch.zeros(N, C + 2, H, W))
        big[:, 2:] = x
        x = big[:, 2:]
    return kind, x, kernel, stride, padding, draw(st.booleans()), draw(st.booleans())


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(60)
@given(case=pool_cases())
def test_pool2d_argument_forms(case, backend, monkeypatch, poison):
    kind, x, kernel, stride, padding, ceil_mode, count_include_pad = case

    def torch_ref(dtype):
        xd = x.to(dtype)
        if kind == "max":
            return F.max_pool2d(xd, kernel, stride, padding, ceil_mode=ceil_mode)
        return F.avg_pool2d(
            xd, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad
        )

    with _backend(monkeypatch, backend):
        ours = lambda: ops.pool2d(_dev(x), kind, kernel, stride, padding, ceil_mode, count_include_pad)  # noqa: E731
        if _raises_like_pytorch(ours, lambda: torch_ref(torch.float64)):
            return
        y = ours()
    if kind == "max":
        assert torch.equal(y.isnan(), torch_ref(torch.float32).isnan())
        assert torch.equal(y.nan_to_num(0.0), torch_ref(torch.float32).nan_to_num(0.0))  # max is exact
    else:
        assert_fp32_rule(y, torch_ref(torch.float64), torch_ref(torch.float32))


@st.composite
def bn_cases(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    N, C = draw(st.sampled_from([0, 1, 2, 3])), draw(st.sampled_from([1, 2, 3, 5, 17]))
    H, W = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = _cl(_randn(gen, N, C, H, W) * 3 + 1)

    def vec(lo, hi):
        form = draw(st.sampled_from(["none", "dense", "strided"]))
        if form == "none":
            return None
        v = torch.empty(2 * C).uniform_(lo, hi, generator=gen)
        return v[::2] if form == "strided" else v[:C].clone()

    weight, bias = vec(0.5, 1.5), vec(-0.5, 0.5)
    stats = draw(st.sampled_from(["none", "fp32", "strided"]))
    if stats == "none":
        rm = rv = None
    else:
        rm, rv = (
            torch.empty(2 * C).uniform_(-1, 1, generator=gen),
            torch.empty(2 * C).uniform_(0.5, 2, generator=gen),
        )
        rm, rv = (rm[::2], rv[::2]) if stats == "strided" else (rm[:C].clone(), rv[:C].clone())
    momentum = draw(st.sampled_from([0.1, 0.0, 1.0, 0.37]))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.5]))
    return x, weight, bias, rm, rv, momentum, eps, draw(st.booleans())


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(30)
@given(case=bn_cases())
def test_batch_norm_act_vs_f_batch_norm(case, backend, monkeypatch, poison):
    x, weight, bias, rm, rv, momentum, eps, relu = case

    def torch_ref(dtype):
        rmd = None if rm is None else rm.to(dtype, copy=True)  # copies: the originals stay untouched
        rvd = None if rv is None else rv.to(dtype, copy=True)
        w, b = (None if t is None else t.to(dtype) for t in (weight, bias))
        y = F.batch_norm(x.to(dtype), rmd, rvd, w, b, True, momentum, eps)
        return (torch.relu(y) if relu else y), rmd, rvd

    def fresh(t):  # an independent copy in the same form: a strided view stays a strided view
        return (
            None
            if t is None
            else _dev(t.clone() if t.is_contiguous() else torch.zeros(2 * t.numel())[::2].copy_(t))
        )

    ours_rm, ours_rv = fresh(rm), fresh(rv)
    with _backend(monkeypatch, backend):
        ours = lambda: ops.batch_norm_act(  # noqa: E731
            _dev(x), _dev(weight), _dev(bias), ours_rm, ours_rv, momentum, eps, relu
        )
        if _raises_like_pytorch(ours, lambda: torch_ref(torch.float64)):
            return
        y = ours()
    y64, rm64, rv64 = torch_ref(torch.float64)
    y32, rm32, rv32 = torch_ref(torch.float32)
    assert_fp32_rule(y, y64, y32, floor=1e-5)
    if rm is not None:
        assert_fp32_rule(ours_rm, rm64, rm32, floor=1e-6)
        assert_fp32_rule(ours_rv, rv64, rv32, floor=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(20)
@given(case=bn_cases(), inplace=st.booleans())
def test_bn_stats_and_bn_act(case, inplace, backend, monkeypatch, poison):
    x, weight, bias, rm, rv, _, eps, relu = case
    x64 = x.double()
    with _backend(monkeypatch, backend):
        mean, var = ops.bn_stats(_dev(x))
        if x.numel() == 0:
            assert mean.shape == var.shape == (x.shape[1],) and mean.isnan().all() and var.isnan().all()
            return
        var64, mean64 = torch.var_mean(x64, (0, 2, 3), unbiased=False)
        var32, mean32 = torch.var_mean(x, (0, 2, 3), unbiased=False)
        assert_fp32_rule(mean, mean64, mean32)
        assert_fp32_rule(var, var64, var32, floor=1e-5)
        invstd = torch.rsqrt(var64 + eps).float()
        xin = _dev(x.clone())
        y = ops.bn_act(
            xin,
            _dev(mean64.float()),
            _dev(invstd),
            _dev(weight),
            _dev(bias),
            relu,
            out=xin if inplace else None,
        )
        if inplace:
            assert y.data_ptr() == xin.data_ptr()
    expected = reference.bn_act(x64, mean64.float().double(), invstd.double(), weight, bias, relu)
    same = reference.bn_act(x, mean64.float(), invstd, weight, bias, relu)
    assert_fp32_rule(y, expected, same)


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(12)
@given(case=conv_cases(), momentum=st.sampled_from([0.1, 0.5]))
def test_conv_bn_act_argument_forms(case, momentum, backend, monkeypatch, poison):
    x, w, stride, padding, _, relu = case
    x = x.nan_to_num(0.0, 0.0, 0.0)  # NaN/Inf through BN statistics: covered by the conv and BN tests
    K = w.shape[0]
    gamma, beta = torch.linspace(0.5, 1.5, K), torch.linspace(-0.2, 0.2, K)

    def torch_ref(dtype):
        rm, rv = torch.zeros(K, dtype=dtype), torch.ones(K, dtype=dtype)
        y = _torch_conv(x.to(dtype), w.to(dtype), stride, padding, None)
        y = F.batch_norm(y, rm, rv, gamma.to(dtype), beta.to(dtype), True, momentum, 1e-3)
        return (torch.relu(y) if relu else y), rm, rv

    rm, rv = _dev(torch.zeros(K)), _dev(torch.ones(K))
    with _backend(monkeypatch, backend):
        ours = lambda: ops.conv_bn_act(  # noqa: E731
            _dev(x),
            _dev(w),
            _dev(gamma),
            _dev(beta),
            rm,
            rv,
            momentum=momentum,
            eps=1e-3,
            stride=stride,
            padding=padding,
            relu=relu,
        )
        if _raises_like_pytorch(ours, lambda: torch_ref(torch.float64)):
            return
        y = ours()
    (y64, rm64, rv64), (y32, rm32, rv32) = torch_ref(torch.float64), torch_ref(torch.float32)
    assert_fp32_rule(y, y64, y32, floor=1e-4)
    assert_fp32_rule(rm, rm64, rm32, floor=1e-5)
    assert_fp32_rule(rv, rv64, rv32, floor=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(20)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(
        st.sampled_from([0, 1, 2]), st.sampled_from([1, 3, 5, 17]), st.integers(1, 4), st.integers(1, 4)
    ),
    scale=st.sampled_from([0.17, 1, -2.0, 0.0]),
    relu=st.booleans(),
    out=st.sampled_from(["new", "x", "y", "slice"]),
    specials=st.sampled_from([0, 0, 3]),
)
def test_scaled_residual_forms(seed, shape, scale, relu, out, specials, backend, monkeypatch, poison):
    gen = torch.Generator().manual_seed(seed)
    x = _cl(_with_specials(_randn(gen, *shape), gen, specials))
    y = _cl(_randn(gen, *shape))
    expected = reference.scaled_residual(x.double(), y.double(), scale, relu)
    same = reference.scaled_residual(x, y, scale, relu)
    xo, yo = _dev(x.clone()), _dev(y.clone())
    big = _cl(torch.full((shape[0], shape[1] + 4, *shape[2:]), float("nan"), device=DEVICE))
    dest = {"new": None, "x": xo, "y": yo, "slice": big[:, 2 : 2 + shape[1]]}[out]
    with _backend(monkeypatch, backend), torch.no_grad():
        z = ops.scaled_residual(xo, yo, scale, relu, out=dest)
    assert_fp32_rule(z, expected, same)
    if out == "slice":
        assert big[:, :2].isnan().all() and big[:, 2 + shape[1] :].isnan().all()


# ------------------------------------------------------------------------------------------- bad input
def _x(*shape):
    return _cl(torch.randn(*shape))


X = _x(2, 3, 6, 6)
W = torch.randn(4, 3, 3, 3)
M3, V3 = torch.zeros(3), torch.ones(3)
BUF = _x(2, 8, 6, 6)

BAD = [
    # (id, call, exception, words the message must contain)
    ("pool kernel 3-tuple", lambda: ops.pool2d(X, "max", (3, 3, 3)), TypeError, "kernel_size"),
    ("pool kernel str", lambda: ops.pool2d(X, "max", "3"), TypeError, "kernel_size"),
    ("pool kernel float", lambda: ops.pool2d(X, "max", 3.0), TypeError, "kernel_size"),
    ("pool kernel bool", lambda: ops.pool2d(X, "max", True), TypeError, "kernel_size"),
    ("pool kernel 0", lambda: ops.pool2d(X, "max", 0), ValueError, "kernel_size"),
    ("pool kernel > 127", lambda: ops.pool2d(X, "avg", (1, 128)), ValueError, "kernel_size"),
    ("pool max window > 127", lambda: ops.pool2d(X, "max", (2, 64)), ValueError, "kernel_size"),
    ("pool stride 0", lambda: ops.pool2d(X, "max", 3, 0), ValueError, "stride"),
    ("pool stride -1", lambda: ops.pool2d(X, "max", 3, -1), ValueError, "stride"),
    ("pool stride 3-tuple", lambda: ops.pool2d(X, "max", 3, (1, 1, 1)), TypeError, "stride"),
    ("pool padding > k/2", lambda: ops.pool2d(X, "max", 3, 1, 2), ValueError, "padding"),
    ("pool padding negative", lambda: ops.pool2d(X, "max", 3, 1, -1), ValueError, "padding"),
    ("pool padding string", lambda: ops.pool2d(X, "max", 3, 1, "same"), TypeError, "padding"),
    ("pool padding empty", lambda: ops.pool2d(X, "max", 3, 1, ()), TypeError, "padding"),
    ("pool ceil_mode str", lambda: ops.pool2d(X, "max", 3, 1, 0, "yes"), TypeError, "ceil_mode"),
    (
        "pool count_include_pad None",
        lambda: ops.pool2d(X, "avg", 3, 1, 0, False, None),
        TypeError,
        "count_include_pad",
    ),
    ("pool kind", lambda: ops.pool2d(X, "mean", 3), ValueError, "kind"),
    ("pool x 3-D", lambda: ops.pool2d(torch.randn(3, 6, 6), "max", 3), ValueError, "x"),
    (
        "pool x NCHW",
        lambda: ops.pool2d(torch.randn(2, 3, 6, 6), "max", 3),
        ValueError,
        "x must be a 4-D channels_last",
    ),
    ("pool x int", lambda: ops.pool2d(X.int(), "max", 3), TypeError, "x must be float32"),
    ("pool x fp64", lambda: ops.pool2d(X.double(), "max", 3), TypeError, "x must be float32"),
    ("pool x list", lambda: ops.pool2d([[1.0]], "max", 3), TypeError, "x"),
    (
        "pool x no channels",
        lambda: ops.pool2d(_x(2, 0, 6, 6), "max", 3),
        ValueError,
        "x must have non-zero C",
    ),
    ("pool too small", lambda: ops.pool2d(_x(1, 3, 2, 2), "max", 3), ValueError, "kernel_size"),
    (
        "pool out shape",
        lambda: ops.pool2d(X, "max", 3, out=_x(2, 3, 3, 3)),
        ValueError,
        "out must have shape",
    ),
    (
        "pool out dtype",
        lambda: ops.pool2d(X, "max", 3, out=_x(2, 3, 2, 2).half()),
        TypeError,
        "out has dtype",
    ),
    (
        "pool out device",
        lambda: ops.pool2d(X, "max", 3, out=torch.empty(2, 3, 2, 2, device="meta")),
        ValueError,
        "out is on meta",
    ),  # fmt: skip
    (
        "pool out NCHW",
        lambda: ops.pool2d(X, "max", 3, out=torch.empty(2, 3, 2, 2)),
        ValueError,
        "out must be channels_last",
    ),
    (
        "pool out expanded",
        lambda: ops.pool2d(X, "max", 3, out=torch.empty(1, 3, 1, 1).expand(2, 3, 2, 2)),
        ValueError,
        "out must be channels_last",
    ),  # fmt: skip
    (
        "pool out is x",
        lambda: ops.pool2d(BUF[:, :3], "max", 1, out=BUF[:, :3]),
        ValueError,
        "out must not share memory with x",
    ),
    (
        "pool out overlaps x",
        lambda: ops.pool2d(BUF[:, :3], "max", 3, 1, 1, out=BUF[:, 2:5]),
        ValueError,
        "out must not share memory with x",
    ),  # fmt: skip
    (
        "conv same + stride 2",
        lambda: ops.conv2d(X, W, stride=2, padding="same"),
        ValueError,
        "padding='same'",
    ),
    ("conv padding string", lambda: ops.conv2d(X, W, padding="SAME"), ValueError, "padding"),
    ("conv padding ()", lambda: ops.conv2d(X, W, padding=()), TypeError, "padding"),
    ("conv padding float", lambda: ops.conv2d(X, W, padding=1.0), TypeError, "padding"),
    ("conv padding 4 with float", lambda: ops.conv2d(X, W, padding=(1, 1, 1.0, 1)), TypeError, "padding"),
    ("conv stride ()", lambda: ops.conv2d(X, W, stride=()), TypeError, "stride"),
    ("conv stride 3-tuple", lambda: ops.conv2d(X, W, stride=(1, 1, 1)), TypeError, "stride"),
    ("conv stride 0", lambda: ops.conv2d(X, W, stride=0), ValueError, "stride"),
    ("conv stride bool", lambda: ops.conv2d(X, W, stride=True), TypeError, "stride"),
    ("conv no output channels", lambda: ops.conv2d(X, W[:0]), ValueError, "weight"),
    (
        "conv weight 5 channels",
        lambda: ops.conv2d(X, torch.randn(4, 5, 3, 3)),
        ValueError,
        "weight has 5 input channels",
    ),
    ("conv x 3-D", lambda: ops.conv2d(X[0], W), ValueError, "x must be 4-D"),
    ("conv x int", lambda: ops.conv2d(X.int(), W), TypeError, "x must be float32"),
    ("conv half x fp32 weight", lambda: ops.conv2d(X.half(), W), TypeError, "weight has dtype"),
    (
        "conv residual_scale nan",
        lambda: ops.conv2d(X, W, residual_scale=float("nan")),
        ValueError,
        "residual_scale",
    ),
    (
        "conv residual_scale tensor",
        lambda: ops.conv2d(X, W, residual_scale=torch.tensor(0.5)),
        TypeError,
        "residual_scale",
    ),  # fmt: skip
    ("conv scale int", lambda: ops.conv2d(X, W, scale=torch.ones(4, dtype=torch.int64)), TypeError, "scale"),
    ("conv bias list", lambda: ops.conv2d(X, W, bias=[0.0] * 4), TypeError, "bias"),
    (
        "conv residual device",
        lambda: ops.conv2d(X, W, residual=torch.empty(2, 4, 4, 4, device="meta")),
        ValueError,
        "residual is on meta",
    ),  # fmt: skip
    (
        "conv out expanded",
        lambda: ops.conv2d(X, W, out=torch.empty(1, 4, 1, 1).expand(2, 4, 4, 4)),
        ValueError,
        "out must be channels_last",
    ),  # fmt: skip
    (
        "conv out overlaps x",
        lambda: ops.conv2d(BUF[:, :3], W, padding=1, out=BUF[:, 2:6]),
        ValueError,
        "out must not share memory with x",
    ),  # fmt: skip
    (
        "conv out is residual",
        lambda: ops.conv2d(X, W, residual=(r := _x(2, 4, 4, 4)), out=r),
        ValueError,
        "out must not share memory with residual",
    ),  # fmt: skip
    (
        "bn_stats x NCHW",
        lambda: ops.bn_stats(torch.randn(2, 3, 4, 4)),
        ValueError,
        "x must be a 4-D channels_last",
    ),
    ("bn_stats x 2-D", lambda: ops.bn_stats(torch.randn(4, 3)), ValueError, "x must be 4-D"),
    ("bn_stats x int", lambda: ops.bn_stats(X.int()), TypeError, "x must be float32"),
    ("bn_act mean None", lambda: ops.bn_act(X, None, V3), TypeError, "mean"),
    (
        "bn_act mean length",
        lambda: ops.bn_act(X, torch.zeros(4), V3),
        ValueError,
        "mean must have length C=3",
    ),
    ("bn_act invstd 2-D", lambda: ops.bn_act(X, M3, V3.view(3, 1)), ValueError, "invstd must be 1-D"),
    ("bn_act mean int", lambda: ops.bn_act(X, M3.long(), V3), TypeError, "mean"),
    ("bn_act mean device", lambda: ops.bn_act(X, M3.to("meta"), V3), ValueError, "mean is on meta"),
    ("bn_act weight length", lambda: ops.bn_act(X, M3, V3, torch.ones(2)), ValueError, "weight"),
    ("bn_act relu str", lambda: ops.bn_act(X, M3, V3, relu="no"), TypeError, "relu"),
    (
        "bn_act out NCHW",
        lambda: ops.bn_act(X, M3, V3, out=torch.empty(2, 3, 6, 6)),
        ValueError,
        "out must be channels_last",
    ),
    (
        "bn_act out overlaps x",
        lambda: ops.bn_act(BUF[:, :3], M3, V3, out=BUF[:, 1:4]),
        ValueError,
        "out must not share memory with x",
    ),  # fmt: skip
    (
        "batch_norm_act running_var missing",
        lambda: ops.batch_norm_act(X, None, None, M3.clone(), None),
        ValueError,
        "running_var",
    ),  # fmt: skip
    (
        "batch_norm_act running_mean length",
        lambda: ops.batch_norm_act(X, None, None, torch.zeros(4), torch.ones(4)),
        ValueError,
        "running_mean must have length C=3",
    ),  # fmt: skip
    (
        "batch_norm_act running_mean int",
        lambda: ops.batch_norm_act(X, None, None, M3.long(), V3.long()),
        TypeError,
        "running_mean",
    ),  # fmt: skip
    (
        "batch_norm_act weight length",
        lambda: ops.batch_norm_act(X, torch.ones(4), None),
        ValueError,
        "weight",
    ),
    (
        "batch_norm_act momentum None",
        lambda: ops.batch_norm_act(X, None, None, None, None, None),
        TypeError,
        "momentum",
    ),
    (
        "batch_norm_act eps negative",
        lambda: ops.batch_norm_act(X, None, None, None, None, 0.1, -1.0),
        ValueError,
        "eps",
    ),
    ("batch_norm_act relu None", lambda: ops.batch_norm_act(X, relu=None), TypeError, "relu"),
    ("batch_norm_act one value", lambda: ops.batch_norm_act(_x(1, 3, 1, 1)), ValueError, "more than 1 value"),
    (
        "batch_norm_act x NCHW",
        lambda: ops.batch_norm_act(torch.randn(2, 3, 4, 4)),
        ValueError,
        "x must be a 4-D channels_last",
    ),
    (
        "conv_bn_act channels",
        lambda: ops.conv_bn_act(X, torch.randn(4, 5, 3, 3), None, None, None, None, momentum=0.1, eps=1e-3),
        ValueError,
        "weight has 5 input channels",
    ),  # fmt: skip
    (
        "conv_bn_act gamma length",
        lambda: ops.conv_bn_act(X, W, torch.ones(3), None, None, None, momentum=0.1, eps=1e-3),
        ValueError,
        "gamma must have length K=4",
    ),  # fmt: skip
    (
        "conv_bn_act stride 3",
        lambda: ops.conv_bn_act(X, W, None, None, None, None, momentum=0.1, eps=1e-3, stride=3),
        ValueError,
        "stride",
    ),  # fmt: skip
    (
        "conv_bn_act kernel 9",
        lambda: ops.conv_bn_act(
            _x(2, 3, 9, 9), torch.randn(4, 3, 9, 9), None, None, None, None, momentum=0.1, eps=1e-3
        ),
        ValueError,
        "kernel size 9x9",
    ),  # fmt: skip
    (
        "conv_bn_act running stats length",
        lambda: ops.conv_bn_act(X, W, None, None, M3.clone(), V3.clone(), momentum=0.1, eps=1e-3),
        ValueError,
        "running_mean must have length K=4",
    ),  # fmt: skip
    (
        "conv_bn_act out shape",
        lambda: ops.conv_bn_act(X, W, None, None, None, None, momentum=0.1, eps=1e-3, out=_x(2, 4, 6, 6)),
        ValueError,
        "out must have shape",
    ),  # fmt: skip
    (
        "conv_bn_act out overlaps x",
        lambda: ops.conv_bn_act(
            BUF[:, :3], W, None, None, None, None, momentum=0.1, eps=1e-3, padding=1, out=BUF[:, 3:7]
        ),
        ValueError,
        "out must not share memory with x",
    ),  # fmt: skip
    (
        "conv_bn_act momentum str",
        lambda: ops.conv_bn_act(X, W, None, None, None, None, momentum="0.1", eps=1e-3),
        TypeError,
        "momentum",
    ),  # fmt: skip
    ("residual y shape", lambda: ops.scaled_residual(X, X[:1]), ValueError, "y must match x's shape"),
    ("residual y dtype", lambda: ops.scaled_residual(X, X.half()), TypeError, "y has dtype"),
    (
        "residual y device",
        lambda: ops.scaled_residual(X, _cl(torch.empty(2, 3, 6, 6, device="meta"))),
        ValueError,
        "y is on meta",
    ),  # fmt: skip
    (
        "residual y NCHW",
        lambda: ops.scaled_residual(X, torch.randn(2, 3, 6, 6)),
        ValueError,
        "y must be a 4-D channels_last",
    ),
    ("residual scale str", lambda: ops.scaled_residual(X, X, "0.5"), TypeError, "scale"),
    ("residual relu str", lambda: ops.scaled_residual(X, X, 0.5, "no"), TypeError, "relu"),
    (
        "residual out overlaps x",
        lambda: ops.scaled_residual(BUF[:, :3], BUF[:, 4:7], out=BUF[:, 1:4]),
        ValueError,
        "out must not share memory with x",
    ),  # fmt: skip
    ("residual out dtype", lambda: ops.scaled_residual(X, X, out=X.half()), TypeError, "out has dtype"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_naming_the_argument(case, backend, monkeypatch):
    _, call, exc, words = case
    with _backend(monkeypatch, backend), pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert type(info.value) is exc  # not a subclass (e.g. an IndexError is no ValueError, but be exact)


# Arguments equal as Python values to those of a passing call (True == 1, 1.0 == 1, (1, True) == (1, 1)), or of
# another dtype, each of which conv2d refuses.
LOOKALIKES = [
    ({"stride": True}, TypeError, "stride"),
    ({"stride": (1, True)}, TypeError, "stride"),
    ({"padding": True}, TypeError, "padding"),
    ({"padding": 1.0}, TypeError, "padding"),
    ({"padding": (1, 1, 1, True)}, TypeError, "padding"),
    ({"residual_scale": True}, TypeError, "residual_scale"),
    ({"residual_scale": float("nan")}, ValueError, "residual_scale"),
    ({"scale": torch.ones(4, dtype=torch.float64)}, TypeError, "scale"),
    ({"activation": "Relu"}, ValueError, "activation"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_signature_memo_refuses_lookalikes(backend, monkeypatch, poison):
    """conv2d remembers the signatures of calls that passed its checks (``_args.call_signature``); a call that
    looks equal to one of them but is refused by the checks is refused every time, after it as before it."""
    x, w = _x(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    good = {"stride": 1, "padding": 1, "residual_scale": 1, "scale": _dev(torch.ones(4)), "activation": "relu"}
    want = F.relu(F.conv2d(x, w, padding=1))
    with _backend(monkeypatch, backend):
        for _ in range(2):  # the second call is served by the memo
            assert_fp32_rule(ops.conv2d(_dev(x), _dev(w), **good), F.relu(F.conv2d(x.double(), w.double(), padding=1)),
                             want)  # fmt: skip
        for bad, exc, word in LOOKALIKES:
            for _ in range(2):
                with pytest.raises(exc, match=word):
                    ops.conv2d(_dev(x), _dev(w), **{**good, **{k: _dev(v) if isinstance(v, torch.Tensor) else v for k, v in bad.items()}})
        # a strided scale is copied (contiguous) on every call, not remembered as the strided view
        scale = torch.ones(8)[::2]
        for _ in range(2):
            y = ops.conv2d(_dev(x), _dev(w), **{**good, "scale": _dev(scale)})
            assert_fp32_rule(y, F.relu(F.conv2d(x.double(), w.double(), padding=1)), want)
        # 0-d integer tensors as stride / padding (accepted like ints) are read on every call, never keyed by
        # their metadata: tensor(1) and tensor(2) have the same shape, dtype and device
        for _ in range(2):
            for st, pad in ((1, 1), (2, 1), (1, 0), (2, 0)):
                y = ops.conv2d(_dev(x), _dev(w), **{**good, "stride": torch.tensor(st), "padding": torch.tensor(pad)})
                assert y.shape == F.conv2d(x, w, stride=st, padding=pad).shape
            for bad, word in (({"stride": torch.tensor(3)}, "stride"), ({"padding": torch.tensor(-1)}, "padding")):
                with pytest.raises(ValueError, match=word):
                    ops.conv2d(_dev(x), _dev(w), **{**good, **bad})
        # a plain value in a tensor's place is a TypeError naming it, also with gradients on
        for name in ("scale", "bias", "residual"):
            with pytest.raises(TypeError, match=name):
                ops.conv2d(_dev(x), _dev(w), **{**good, name: 1.0})


def test_call_signature_tells_apart_what_the_checks_tell_apart():
    """The memo key (``_args.call_signature``): values by type and bits, tensors by metadata in tensor slots
    only; fake / functional tensors and tensors in value slots give no key."""
    sig = _args.call_signature
    t = torch.ones(3)
    assert sig((t,), (1,)) == sig((torch.zeros(3),), (1,))
    for a, b in ((1, True), (1, 1.0), ((1, 1), (1, True)), (0.0, -0.0), ("1", 1.0), (None, 0)):
        assert sig((t,), (a,)) != sig((t,), (b,)), (a, b)
    assert sig((t,), (torch.tensor(1),)) is None and sig((1.0,), ()) is None and sig((t,), ([1, 1],)) is None
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert sig((torch.empty(3),), ()) is None


def test_conv2d_traces_with_symbolic_shapes():
    """make_fx with symbolic sizes (no torch.compile: the memo is not switched off by is_compiling) records our op;
    the memo never sees its SymInt sizes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x, w = _x(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    for mode in ("fake", "symbolic"):
        g = make_fx(lambda x, w: ops.conv2d(x, w, padding=1, activation="relu"), tracing_mode=mode)(x, w)
        assert any("inception_kernels.conv2d_fwd" in str(n.target) for n in g.graph.nodes), mode


def test_a_bad_backend_variable_is_reported_after_the_argument_checks(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "bogus")
    x, w = _x(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ops.conv2d(x, w, stride=3)
    with pytest.raises(ValueError, match="INCEPTION_KERNELS_BACKEND"):
        ops.conv2d(x, w)


def test_the_reported_pool_padding_bug():
    """F.avg_pool2d accepts a one-element padding tuple; pool2d died with an IndexError."""
    x = _x(2, 3, 8, 8)
    y = ops.pool2d(_dev(x), "avg", (4, 4), (2, 2), (2,), True)
    assert_fp32_rule(
        y, F.avg_pool2d(x.double(), (4, 4), (2, 2), (2,), True), F.avg_pool2d(x, (4, 4), (2, 2), (2,), True)
    )


@pytest.mark.parametrize("R,S", [(2, 2), (2, 3), (4, 1), (1, 4), (3, 3)])
def test_conv_same_padding_matches_pytorch_for_even_kernels(R, S, poison):
    """ "same" with an even kernel pads one more at the bottom / right, as F.conv2d does."""
    assert _args.conv_padding("same", (R, S)) == ((R - 1) // 2, R // 2, (S - 1) // 2, S // 2)
    x, w = _x(2, 3, 5, 6), torch.randn(4, 3, R, S)
    y = ops.conv2d(_dev(x), _dev(w), padding="same")
    assert_fp32_rule(y, F.conv2d(x.double(), w.double(), padding="same"), F.conv2d(x, w, padding="same"))


@pytest.mark.parametrize("route", ["triton", "cudnn", "triton_v2"])
def test_conv_relu_keeps_nan(route, monkeypatch):
    """relu(NaN) = NaN in every conv route's epilogue, as torch.relu (the epilogues' max propagates NaN)."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", route)
    x = _x(1, 2, 3, 3)
    x[0, 0, 1, 1] = float("nan")
    y = ops.conv2d(_dev(x), _dev(torch.ones(1, 2, 1, 1)), activation="relu")
    assert y[0, 0, 1, 1].isnan() and not y[0, 0, 0, 0].isnan()


def test_first_argument_by_keyword(poison):
    """The device guard around the public entries keeps their signatures: x may be passed by keyword."""
    x, w = _x(1, 3, 4, 4), torch.randn(2, 3, 1, 1)
    y = ops.conv2d(x=_dev(x), weight=_dev(w))
    assert_fp32_rule(y, F.conv2d(x.double(), w.double()), F.conv2d(x, w))
    z = ops.pool2d(x=_dev(x), kind="max", kernel=2)
    assert torch.equal(z.cpu(), F.max_pool2d(x, 2))


def test_int_like_arguments_are_accepted():
    """numpy integers and 0-d integer tensors are ints to PyTorch's argument parser; bools are not."""
    np = pytest.importorskip("numpy")
    assert _args.pair(np.int64(2), "stride") == (2, 2)
    assert _args.pair(torch.tensor(3), "stride") == (3, 3)
    assert _args.pair([np.int32(1), 2], "stride") == (1, 2)
    assert _args.pair(torch.Size([4]), "kernel_size") == (4, 4)
    with pytest.raises(TypeError, match="stride"):
        _args.pair((True, 1), "stride")


# ------------------------------------------------------------------------------------------- devices
class _RecordingDevice:
    def __init__(self, log, dev):
        self.log, self.dev = log, dev

    def __enter__(self):
        self.log.append(("enter", self.dev))

    def __exit__(self, *exc):
        self.log.append(("exit", self.dev))


def test_device_guard_switches_only_for_another_cuda_device(monkeypatch):
    """The guard enters torch.cuda.device(t.device) exactly when t is on a CUDA device that is not current."""
    log = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda dev: _RecordingDevice(log, dev))

    class FakeCuda:
        def __init__(self, index):
            self.device = torch.device("cuda", index)

    with _args.device_guard(torch.zeros(1)):
        pass
    with _args.device_guard(FakeCuda(0)):
        pass
    assert log == []
    with _args.device_guard(FakeCuda(1)):
        assert log == [("enter", torch.device("cuda", 1))]
    assert log[-1] == ("exit", torch.device("cuda", 1))


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (inputs on a non-default device)"
)
def test_ops_run_on_the_inputs_cuda_device():
    """Inputs on cuda:1 while cuda:0 is current: every op launches there and matches the CPU reference."""
    dev = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    x = _x(2, 5, 7, 7)
    w = torch.randn(6, 5, 3, 3)
    xd, wd = x.to(dev), w.to(dev)
    with torch.backends.cudnn.flags(allow_tf32=False):
        y = ops.conv2d(xd, wd, padding=1, activation="relu")
        torch.testing.assert_close(y.cpu(), torch.relu(F.conv2d(x, w, padding=1)), rtol=1e-4, atol=1e-4)
        z = ops.conv_bn_act(xd, wd, None, None, None, None, momentum=0.1, eps=1e-3, padding=1)
        ref = torch.relu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, None, None, True, 0.1, 1e-3))
        torch.testing.assert_close(z.cpu(), ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ops.pool2d(xd, "max", 3, 2).cpu(), F.max_pool2d(x, 3, 2))
    torch.testing.assert_close(
        ops.pool2d(xd, "avg", 3, 1, 1).cpu(), F.avg_pool2d(x, 3, 1, 1), rtol=1e-5, atol=1e-5
    )
    mean, var = ops.bn_stats(xd)
    torch.testing.assert_close(var.cpu(), x.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
    y = ops.batch_norm_act(xd)
    torch.testing.assert_close(
        y.cpu(), torch.relu(F.batch_norm(x, None, None, training=True)), rtol=1e-4, atol=1e-4
    )
    r = ops.scaled_residual(xd, xd, 0.5)
    torch.testing.assert_close(r.cpu(), torch.relu(1.5 * x))
    assert torch.cuda.current_device() == 0
