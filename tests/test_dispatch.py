"""The dispatch layer (ops/dispatch.py), the ``cudnn`` conv route (ops/conv_cudnn.py) and ``tune``.

The cudnn route runs PyTorch's convolution for the GEMM (on a CPU: ATen's CPU convolution) and our Triton kernels
(in the interpreter here) for everything around it; it is held to the same fp64 rule as the triton route, on the
same awkward shapes, with NaN-poisoned allocations.
"""

import json
import warnings

import pytest
import torch
from helpers import rel_err

from inception_kernels.bench.timing import FakeTimer
from inception_kernels.ops import _tile, conv, conv_triton, dispatch, reference
from inception_kernels.ops.batchnorm import conv_bn_act

TOL = 2e-5  # fp32 vs fp64, as tests/test_conv.py (interpreter dot products are IEEE fp32)

# (N, C, H, W, K, R, S, stride, padding (t, b, l, r))
SHAPES = [
    (2, 3, 9, 9, 8, 3, 3, (2, 2), (0, 0, 0, 0)),  # C = 3 stem, stride 2, odd input
    (1, 5, 7, 6, 6, 1, 7, (1, 1), (0, 0, 3, 3)),  # 1x7, C not a multiple of 16
    (2, 6, 6, 7, 5, 7, 1, (1, 1), (3, 3, 0, 0)),  # 7x1
    (1, 4, 1, 1, 3, 1, 1, (1, 1), (0, 0, 0, 0)),  # H = W = 1
    (2, 4, 7, 5, 6, 3, 3, (2, 1), (1, 0, 2, 1)),  # asymmetric padding (ATen needs a padded copy), mixed stride
    (1, 17, 5, 5, 18, 5, 5, (1, 1), (2, 2, 2, 2)),  # 5x5, odd channel counts
]


@pytest.fixture
def cudnn(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "cudnn")


@pytest.fixture(autouse=True)
def _fresh_tables(tmp_path, monkeypatch):
    """Every test sees an empty tuning-table folder and no memoized choice."""
    monkeypatch.setenv("INCEPTION_KERNELS_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.reload()
    yield
    dispatch.reload()


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _ref_fwd(x, w, st, pad, **kw):
    return reference.conv2d(x.double(), w.double(), stride=st, padding=pad,
                            **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cudnn_route_forward_and_every_gradient(shape, cudnn, poison):
    N, C, H, W, K, R, S, st, pad = shape
    x = _cl(torch.randn(N, C, H, W)).requires_grad_()
    w = (torch.randn(K, C, R, S) * 0.3).requires_grad_()
    scale = (torch.rand(K) + 0.5).requires_grad_()
    bias = torch.randn(K).requires_grad_()
    P = (H + pad[0] + pad[1] - R) // st[0] + 1
    Q = (W + pad[2] + pad[3] - S) // st[1] + 1
    res = _cl(torch.randn(N, K, P, Q)).requires_grad_()
    kw = dict(scale=scale, bias=bias, activation="relu", residual=res, residual_scale=0.3)
    with dispatch.recording() as log:
        y = conv.conv2d(x, w, stride=st, padding=pad, **kw)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, w, scale, bias, res), g)
    assert {(f, c.impl) for f, _, c, _ in log} == {("conv_fwd", "cudnn"), ("conv_dgrad", "cudnn"),
                                                   ("conv_wgrad", "cudnn")}  # fmt: skip
    leaves = [t.detach().double().requires_grad_() for t in (x, w, scale, bias, res)]
    want = reference.conv2d(leaves[0], leaves[1], stride=st, padding=pad, scale=leaves[2], bias=leaves[3],
                            activation="relu", residual=leaves[4], residual_scale=0.3)  # fmt: skip
    want_grads = torch.autograd.grad(want, leaves, g.double())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, want) < TOL
    for name, a, b in zip(("x", "weight", "scale", "bias", "residual"), grads, want_grads):
        assert rel_err(a, b) < TOL, name


def test_cudnn_route_writes_slices_and_only_them(cudnn, poison):
    """x a channel slice at a nonzero offset, out a slice of a NaN buffer, a strided slice of a larger gradient."""
    N, C, H, W, K = 2, 5, 6, 5, 7
    big_x = _cl(torch.randn(N, C + 6, H, W))
    x = big_x[:, 4 : 4 + C]
    w = torch.randn(K, C, 3, 3) * 0.3
    scale, bias = torch.rand(K) + 0.5, torch.randn(K)
    buf = _cl(torch.full((N, K + 9, H, W), float("nan")))
    out = buf[:, 3 : 3 + K]
    conv.conv2d(x, w, padding=1, scale=scale, bias=bias, activation="relu", out=out)
    want = _ref_fwd(x, w, (1, 1), (1, 1, 1, 1), scale=scale, bias=bias, activation="relu")
    assert rel_err(out, want) < TOL
    assert torch.isnan(buf[:, :3]).all() and torch.isnan(buf[:, 3 + K :]).all()
    # backward from a strided channel slice of a larger gradient
    xg = x.detach().clone().requires_grad_()
    y = conv.conv2d(xg, w, padding=1, scale=scale, bias=bias, activation="relu")
    gbig = _cl(torch.randn(N, K + 4, H, W))
    (dx,) = torch.autograd.grad(y, xg, gbig[:, 2 : 2 + K])
    xd = x.detach().double().requires_grad_()
    yd = reference.conv2d(xd, w.double(), padding=(1, 1, 1, 1), scale=scale.double(), bias=bias.double(),
                          activation="relu")  # fmt: skip
    (dxd,) = torch.autograd.grad(yd, xd, gbig[:, 2 : 2 + K].double())
    assert rel_err(dx, dxd) < TOL


def test_cudnn_route_split_destinations(cudnn, poison):
    """Horizontal fusion: one GEMM, the first k1 channels to one buffer, the rest to another."""
    x = _cl(torch.randn(2, 6, 5, 5))
    w = torch.randn(9, 6, 1, 1)
    scale, bias = torch.rand(9) + 0.5, torch.randn(9)
    a = _cl(torch.full((2, 11, 5, 5), float("nan")))[:, 2:6]
    b = _tile.new_cl((2, 5, 5, 5), x)
    conv.conv_forward(x, w, scale, bias, None, (1, 1), (0, 0, 0, 0), 1.0, True, a, out2=b)
    want = _ref_fwd(x, w, (1, 1), (0, 0, 0, 0), scale=scale, bias=bias, activation="relu")
    assert rel_err(a, want[:, :4]) < TOL and rel_err(b, want[:, 4:]) < TOL


@pytest.mark.parametrize("route", ["triton", "cudnn"])
def test_conv_bn_act_on_both_routes(route, monkeypatch, poison):
    """Training conv → BN (batch statistics) → ReLU: outputs, running stats and gradients on either route."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", route)
    x = _cl(torch.randn(3, 5, 7, 7) * 2 + 1).requires_grad_()
    w = (torch.randn(6, 5, 3, 3) * 0.3).requires_grad_()
    gamma, beta = (torch.rand(6) + 0.5).requires_grad_(), torch.randn(6).requires_grad_()
    rm, rv = torch.zeros(6), torch.ones(6)
    y = conv_bn_act(x, w, gamma, beta, rm, rv, momentum=0.1, eps=1e-3, stride=(2, 2), padding=(1, 1, 1, 1))
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, gamma, beta), g)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, gamma, beta)]
    rm64, rv64 = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    z = torch.nn.functional.conv2d(leaves[0], leaves[1], stride=2, padding=1)
    want = torch.relu(torch.nn.functional.batch_norm(z, rm64, rv64, leaves[2], leaves[3], True, 0.1, 1e-3))
    want_grads = torch.autograd.grad(want, leaves, g.double())
    assert rel_err(y, want) < TOL
    assert rel_err(rm, rm64) < TOL and rel_err(rv, rv64) < TOL
    for a, b in zip(grads, want_grads):
        assert rel_err(a, b) < 1e-4


def test_model_backend_runs_every_conv_of_a_block_on_that_route():
    """``create_model(..., backend="cudnn")``: every conv of the model, forward and backward, takes the cudnn route
    whatever the environment says; an Inception block (horizontal 1x1 fusion in eval, the concat-free join in
    training) gives the fp64 reference's output and gradients on it."""
    import copy

    from inception_kernels.models import create_model

    torch.manual_seed(0)
    m = create_model("inception_v3", width_mult=0.25, num_classes=7, aux_logits=False, backend="cudnn")
    block = m.Mixed_5b
    x = _cl(torch.randn(2, block.in_channels, 9, 9))
    ref = copy.deepcopy(block).double()
    for mode in ("eval", "train"):
        block.train(mode == "train")
        ref.train(mode == "train")
        xg = x.clone().requires_grad_()
        with dispatch.use_backend("cudnn"), dispatch.recording() as log:
            y = block(xg)
            (dx,) = torch.autograd.grad(y, xg, torch.ones_like(y))
        assert {c.impl for f, _, c, _ in log if f in dispatch.CONV_FAMILIES} == {"cudnn"}, mode
        xd = x.double().requires_grad_()
        with dispatch.use_backend("reference"):
            yd = ref(xd)
            (dxd,) = torch.autograd.grad(yd, xd, torch.ones_like(yd))
        assert rel_err(y, yd) < 1e-4 and rel_err(dx, dxd) < 1e-4, mode
    # the model-level binding (what create_model(..., backend=) installs): the environment says triton, the
    # bound module runs cudnn, forward and backward
    assert m._ik_backend == "cudnn"
    sub = dispatch.bind_backend(copy.deepcopy(block).train(), "cudnn")
    with dispatch.recording() as log:
        sub(x.clone().requires_grad_()).sum().backward()
    assert {c.impl for f, _, c, _ in log if f in dispatch.CONV_FAMILIES} == {"cudnn"}
    assert dispatch.requested() == "triton"
    dispatch.bind_backend(sub, None)
    with dispatch.recording() as log:
        sub(x)
    assert {c.impl for f, _, c, _ in log if f in dispatch.CONV_FAMILIES} == {"triton"}


# ----------------------------------------------------------------------------------------------------------
# The chooser
# ----------------------------------------------------------------------------------------------------------
def _problem(device="cuda:NVIDIA H100 80GB HBM3", dtype=torch.bfloat16, **flags):
    base = dict(N=32, C=768, H=17, W=17, K=192, R=1, S=1, stride=(1, 1), padding=(0, 0, 0, 0))
    base.update({k: flags.pop(k) for k in list(flags) if k in base})
    return dispatch.ConvProblem(**base, dtype=dtype, device=device, **flags)


def test_rule_on_a_gpu(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    mem = _problem(C=128, H=35, W=35, K=320, residual=True, relu=True, bias=True)
    assert dispatch.choose("conv_fwd", mem).impl == "triton"
    comp = _problem(relu=True, scale=True, bias=True)  # 17x17 1x1 768->192: 151 FLOP/B
    assert dispatch.intensity(comp) > dispatch.MEMORY_BOUND_FLOP_PER_BYTE
    assert dispatch.choose("conv_fwd", comp).impl == "cudnn"
    small = _problem(N=1, C=64, H=8, W=8, K=64, relu=True)  # 1x1 64->64: 16 FLOP/B, memory-bound
    assert dispatch.choose("conv_fwd", small).impl == "triton"
    for fam in ("conv_dgrad", "conv_wgrad"):
        assert dispatch.choose(fam, dispatch.backward_problem(comp)).impl == "cudnn"
    assert "rule" in dispatch.choose("conv_fwd", comp).why


def test_shipped_defaults_name_their_source_and_match_the_gpu_family(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    entries = dispatch.shipped_defaults()
    assert entries, "shipped_defaults.json has entries"
    import pathlib

    root = pathlib.Path(__file__).parents[1]
    for e in entries:
        assert (root / e["source"]).is_file(), e["source"]
    # the 17x17 1x7 128->128 forward measured 1.19x cuDNN on the H100: triton there, the rule elsewhere
    p = _problem(C=128, K=128, S=7, padding=(0, 0, 3, 3), relu=True, scale=True, bias=True)
    h100 = dispatch.choose("conv_fwd", p)
    assert h100.impl == "triton" and "shipped default" in h100.why and "results" in h100.why
    h200 = dispatch.choose("conv_fwd", _problem(device="cuda:NVIDIA H200", C=128, K=128, S=7,
                                                padding=(0, 0, 3, 3), relu=True, scale=True, bias=True))  # fmt: skip
    assert h200.why.startswith("rule")


def test_forced_backend_scope_and_environment(monkeypatch):
    p = _problem(device="cpu-interpreter", dtype=torch.float32)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "triton")
    assert dispatch.choose("conv_fwd", p).impl == "triton"
    with dispatch.use_backend("cudnn"):
        assert dispatch.choose("conv_fwd", p).impl == "cudnn"
        assert dispatch.choose("bn_act", torch.zeros(1)).impl == "triton"  # the cudnn route: our memory-bound ops
        with dispatch.use_backend("reference"):
            assert dispatch.choose("conv_dgrad", p).impl == "reference"
        assert dispatch.choose("conv_dgrad", p).impl == "cudnn"
    assert dispatch.choose("conv_fwd", p).impl == "triton"
    with pytest.raises(ValueError, match="backend"):
        with dispatch.use_backend("fast"):
            pass
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="INCEPTION_KERNELS_BACKEND"):
        dispatch.choose("conv_fwd", p)


def test_environment_switches_are_read_afresh_at_every_call(monkeypatch):
    """``_backend.getenv`` (the launch path's cheap read of the environment) answers what ``os.environ.get``
    answers after each way a program changes the environment: ``setenv``, ``delenv``, ``mock.patch.dict``, a
    plain assignment, and an ``os.environ`` replaced by a plain dict (read through ``get``)."""
    import os
    from unittest import mock

    from inception_kernels import _backend

    name = "INCEPTION_KERNELS_TEST_SWITCH"
    monkeypatch.delenv(name, raising=False)
    assert _backend.getenv(name) is None and _backend.getenv(name, "d") == "d"
    monkeypatch.setenv(name, "1")
    assert _backend.getenv(name, "0") == "1"
    os.environ[name] = "é2"  # a value that is not ASCII decodes as os.environ decodes it
    assert _backend.getenv(name) == os.environ.get(name) == "é2"
    with mock.patch.dict(os.environ, {name: "3"}):
        assert _backend.getenv(name) == "3"
    assert _backend.getenv(name) == "é2"
    del os.environ[name]
    assert _backend.getenv(name, "gone") == "gone"
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    assert dispatch.requested() == "reference"
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "cudnn")
    assert dispatch.requested() == "cudnn"
    monkeypatch.setattr(os, "environ", {name: "plain", "TRITON_INTERPRET": "0"})
    assert _backend.getenv(name) == "plain" and not _backend.interpreter_active()


def test_a_forced_backend_that_cannot_serve_raises_with_its_reasons(monkeypatch):
    p16 = _problem(device="cpu-interpreter", dtype=torch.bfloat16)
    for name in ("triton", "cudnn"):
        with dispatch.use_backend(name), pytest.raises(NotImplementedError, match="no bfloat16"):
            dispatch.choose("conv_fwd", p16)
    with dispatch.use_backend("triton"), pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        dispatch.choose("conv_fwd", _problem(device="cpu", dtype=torch.float32))
    assert dispatch.reasons("conv_fwd", "triton", _problem()) == []
    assert "no implementation" in dispatch.reasons("conv_fwd", "tensorrt", _problem())[0]


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_tuned_table_wins_and_bad_tables_are_ignored_with_one_warning(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    tag = "cuda:NVIDIA H100 80GB HBM3"
    p = _problem(relu=True, scale=True, bias=True)
    key = p.key("conv_fwd")
    path = dispatch.cache_path(tag)
    good = {"format": dispatch.TUNE_FORMAT, "version": dispatch.TUNE_VERSION, "device": tag,
            "entries": {key: {"impl": "triton", "times_ms": {"triton": 1.0, "cudnn": 2.0}}}}  # fmt: skip
    _write(path, good)
    c = dispatch.choose("conv_fwd", p)
    assert c.impl == "triton" and c.why.startswith("tuned")
    bad_tables = {
        "corrupt": "{not json",
        "foreign": {"format": "something-else", "entries": {}},
        "stale": {**good, "version": dispatch.TUNE_VERSION + 1},
        "other GPU": {**good, "device": "cuda:NVIDIA A100"},
        "malformed": {**good, "entries": {key: "triton"}},
    }
    for what, data in bad_tables.items():
        _write(path, data)
        dispatch.reload()
        dispatch._WARNED.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = dispatch.choose("conv_fwd", p)
            dispatch.choose("conv_fwd", _problem(relu=True))
        assert first.impl == "cudnn" and first.why.startswith("rule"), what
        assert len([w for w in caught if "tuning table" in str(w.message)]) == 1, what
    # an entry naming an implementation that does not exist, or cannot serve the problem, is skipped
    _write(path, {**good, "entries": {key: {"impl": "tensorrt"}}})
    dispatch.reload()
    assert dispatch.choose("conv_fwd", p).impl == "cudnn"
    tag_cpu = "cpu-interpreter"
    p16 = _problem(device=tag_cpu, dtype=torch.bfloat16)
    _write(dispatch.cache_path(tag_cpu), {**good, "device": tag_cpu,
                                          "entries": {p16.key("conv_fwd"): {"impl": "triton"}}})  # fmt: skip
    dispatch.reload()
    assert dispatch.choose("conv_fwd", p16).impl == "reference"  # the rule on a CPU; triton cannot do bf16 here


def test_functional_call_memo_follows_the_backend_and_the_tables(monkeypatch, poison):
    """``ops.conv2d`` remembers, per call signature, which implementation runs it: a forced backend, a scope, or a
    tuning table read again (``dispatch.reload``) changes the answer for the same signature."""
    from inception_kernels.ops import conv_cudnn

    gemms = []
    real_aten_conv = conv_cudnn._aten_conv
    monkeypatch.setattr(conv_cudnn, "_aten_conv", lambda *a: gemms.append("cudnn") or real_aten_conv(*a))
    real_reference = reference.conv2d
    monkeypatch.setattr(reference, "conv2d", lambda *a, **k: gemms.append("reference") or real_reference(*a, **k))
    torch.manual_seed(0)
    x, w, b = _cl(torch.randn(2, 5, 6, 6)), torch.randn(7, 5, 3, 3), torch.randn(7)
    want = _ref_fwd(x, w, (1, 1), (1, 1, 1, 1), bias=b, activation="relu")

    def call(expect):
        gemms.clear()
        for _ in range(2):  # the second call is served by the memo
            assert rel_err(conv.conv2d(x, w, padding=1, bias=b, activation="relu"), want) < TOL
        assert gemms == [expect] * 2 if expect else gemms == []

    for backend, expect in (("triton", None), ("cudnn", "cudnn"), ("reference", "reference"), ("triton", None)):
        monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", backend)
        call(expect)
    with dispatch.use_backend("cudnn"):
        call("cudnn")
    # auto: a tuning table decides (our kernels taken to serve CPU tensors, as on a GPU, where a table applies)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    monkeypatch.setattr(dispatch, "is_reference", lambda t, forced=None: False)
    tag = "cpu-interpreter"
    key = dispatch.conv_problem(x, w, (1, 1), (1, 1, 1, 1), relu=True, bias=True).key("conv_fwd")
    for impl, expect in (("triton", None), ("cudnn", "cudnn"), ("triton", None)):
        _write(dispatch.cache_path(tag), {"format": dispatch.TUNE_FORMAT, "version": dispatch.TUNE_VERSION,
                                          "device": tag, "entries": {key: {"impl": impl}}})  # fmt: skip
        dispatch.reload()
        call(expect)


# ----------------------------------------------------------------------------------------------------------
# tune
# ----------------------------------------------------------------------------------------------------------
def test_measure_checks_first_then_picks_the_fastest(monkeypatch):
    from inception_kernels import tune

    p = dispatch.ConvProblem(2, 5, 6, 6, 7, 3, 3, (1, 1), (1, 1, 1, 1), torch.float32, "cpu-interpreter",
                             relu=True, scale=True, bias=True)  # fmt: skip
    timer = FakeTimer({"/cudnn/": 2.0, "/triton/": 1.0, "/triton_v2/": 1.5})
    row = tune.measure("conv_fwd", p, torch.device("cpu"), timer)
    assert row.times_ms == {"triton": 1.0, "cudnn": 2.0, "triton_v2": 1.5} and row.winner == "triton"
    # a wrong implementation is never timed, whatever its speed
    good = dispatch.implementations("conv_fwd")["cudnn"]
    broken = dispatch.Impl("conv_fwd", "cudnn", good.reasons, lambda *a: good.fn(*a) * 1.01)
    monkeypatch.setitem(dispatch._IMPLS["conv_fwd"], "cudnn", broken)
    row = tune.measure("conv_fwd", p, torch.device("cpu"),
                       FakeTimer({"/cudnn/": 0.1, "/triton/": 1.0, "/triton_v2/": 3.0}))  # fmt: skip
    assert row.winner == "triton" and "check failed" in row.failed["cudnn"]
    for fam in ("conv_dgrad", "conv_wgrad"):
        row = tune.measure(fam, dispatch.backward_problem(p), torch.device("cpu"),
                           FakeTimer({"/cudnn/": 0.5, "/triton/": 1.0}))  # fmt: skip
        assert row.winner == "cudnn" and set(row.times_ms) == {"triton", "cudnn"}


def test_tune_model_writes_a_table_that_auto_then_follows(monkeypatch):
    """End to end with a fake timer: record a small network's conv problems (forward and backward), measure them,
    write the table; the chooser under ``auto`` then runs the measured winners, per direction."""
    from inception_kernels import tune
    from inception_kernels.nn import ConvBNAct

    torch.manual_seed(0)
    model = torch.nn.Sequential(ConvBNAct(3, 8, 3, stride=2), ConvBNAct(8, 6, (1, 3), padding=(0, 1)))
    x = _cl(torch.randn(2, 3, 9, 9))
    timer = FakeTimer({"conv_fwd/cudnn/": 1.0, "conv_fwd/triton/": 2.0, "conv_fwd/triton_v2/": 3.0,
                       "conv_dgrad/triton/": 1.0,
                       "conv_dgrad/cudnn/": 3.0, "conv_wgrad/cudnn/": 1.0, "conv_wgrad/triton/": 4.0})  # fmt: skip
    with dispatch.use_backend("triton"):
        rows = tune.tune_model(model, x, train=True, timer=timer)
    assert [r.family for r in rows].count("conv_fwd") == 2 and {r.family for r in rows} == set(dispatch.CONV_FAMILIES)
    assert [r.layer for r in rows if r.family == "conv_fwd"] == ["0", "1"]
    winners = {r.family: r.winner for r in rows}
    assert winners == {"conv_fwd": "cudnn", "conv_dgrad": "triton", "conv_wgrad": "cudnn"}
    data = json.loads(dispatch.cache_path("cpu-interpreter").read_text())
    assert data["device"] == "cpu-interpreter" and len(data["entries"]) == len(rows)
    assert "| layer |" in tune.format_rows(rows)
    # auto follows the table (the rule alone would say reference on a CPU)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")
    for r in rows:
        assert dispatch.choose(r.family, r.problem).impl == r.winner
    with dispatch.recording() as log:
        stats = conv_triton.stats_partials(2 * 4 * 4, 8, x.device)  # the training problem (BN statistics epilogue)
        y = conv.conv_forward(x, model[0].conv.weight, None, None, None, (2, 2), (0, 0, 0, 0), 1.0, False,
                              stats=stats)  # fmt: skip
    assert log[0][2].impl == "cudnn" and log[0][2].why.startswith("tuned")
    assert y.shape == (2, 8, 4, 4)


def test_tune_cli_show_and_dry_run(tmp_path, capsys):
    from inception_kernels.cli import main

    args = ["tune", "--model", "inception_v3", "--width", "0.25", "--image-size", "75", "--batch", "1",
            "--dtype", "fp32"]  # fmt: skip
    assert main([*args, "--show", "--markdown", str(tmp_path / "show.md")]) == 0
    shown = (tmp_path / "show.md").read_text()
    assert "Mixed_5b" in shown and "Conv2d_1a_3x3" in shown and "forced" in shown
    assert main(["tune", "--model", "googlenet", "--width", "0.5"]) == 2
    assert "width" in capsys.readouterr().out


def test_cudnn_route_saves_what_the_triton_route_saves():
    """Saved activations of an inception_v3 training step (75x75, batch 2) on the cudnn route: within 10 % of the
    triton route's (the same recipes: pre-BN outputs and statistics; the GEMM does not change what is saved).
    Triton launches are stubbed (the saved tensors do not depend on their values); ATen's convolution runs."""
    from inception_kernels.bench.counting import stubbed_launches
    from inception_kernels.bench.memory import saved_activation_bytes
    from inception_kernels.models import create_model

    torch.manual_seed(0)
    model = create_model("inception_v3", aux_logits=False).train()
    x = _cl(torch.randn(2, 3, 75, 75))
    with stubbed_launches():
        triton_bytes = saved_activation_bytes(model, x)
        with dispatch.use_backend("cudnn"), dispatch.recording() as log:
            cudnn_bytes = saved_activation_bytes(model, x)
    assert {c.impl for f, _, c, _ in log if f == "conv_fwd"} == {"cudnn"}
    assert abs(cudnn_bytes / triton_bytes - 1) <= 0.10, (cudnn_bytes, triton_bytes)


def test_optimize_binds_a_backend():
    import inception_kernels

    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
                              torch.nn.ReLU()).eval()  # fmt: skip
    with pytest.raises(ValueError, match="backend"):
        inception_kernels.optimize(seq, backend="fastest")
    opt = inception_kernels.optimize(seq, backend="cudnn")
    x = _cl(torch.randn(2, 4, 5, 5))
    with torch.no_grad(), dispatch.recording() as log:
        y = opt(x)
    assert {c.impl for f, _, c, _ in log if f == "conv_fwd"} == {"cudnn"}
    with torch.no_grad():
        assert rel_err(y, seq(x)) < 1e-5


def test_conv_v2_is_listed_and_runs_when_forced(poison):
    """Forward v2 (ops/conv_v2.py) is an implementation of the dispatch layer: forced with
    INCEPTION_KERNELS_BACKEND=triton_v2 (backward on v1), never chosen by the rule."""
    x = _cl(torch.randn(2, 5, 7, 6)).requires_grad_()
    w = (torch.randn(6, 5, 3, 1) * 0.3).requires_grad_()
    with dispatch.use_backend("triton_v2"), dispatch.recording() as log:
        y = conv.conv2d(x, w, stride=(2, 1), padding=(1, 0), activation="relu")
        dx, dw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert {(f, c.impl) for f, _, c, _ in log} == {("conv_fwd", "triton_v2"), ("conv_dgrad", "triton"),
                                                   ("conv_wgrad", "triton")}  # fmt: skip
    xd, wd = (t.detach().double().requires_grad_() for t in (x, w))
    yd = reference.conv2d(xd, wd, stride=(2, 1), padding=(1, 1, 0, 0), activation="relu")
    dxd, dwd = torch.autograd.grad(yd, (xd, wd), torch.ones_like(yd))
    assert rel_err(y, yd) < TOL and rel_err(dx, dxd) < TOL and rel_err(dw, dwd) < TOL
    for p in (_problem(), _problem(residual=True, relu=True), _problem(C=16, K=16, N=1, H=4, W=4)):
        assert dispatch.rule("conv_fwd", p)[0] != "triton_v2"
