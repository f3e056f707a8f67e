"""ops.conv_v2 (the v2 forward kernel) against the fp64 reference, on awkward shapes and every config.

Without a GPU the kernel runs in the Triton interpreter (fp32/fp16, IEEE). The interpreter runs host-side tensor
descriptors (``triton.tools.tensor_descriptor.TensorDescriptor``; out-of-range box elements read as zeros), so
both twins of the kernel are interpreted here: the descriptor path (weights through a 3-D descriptor, and for
1x1 stride-1 convs the activation through a 2-D one) and the pointer path. Each case checks which path it took
(``desc_plan``), since a descriptor needs 16-byte aligned rows and silently falls back to pointers otherwise.
What the interpreter cannot show — that the descriptor loads lower to TMA (UTMALDG) and the dots to wgmma
(HGMMA) on sm_90 without spills — is checked by the AOT compile test (tests/test_aot.py::test_conv_v2_sm90_*).
"""

import math

import pytest
import torch
import triton.language as tl
from test_conv import TOL, make_inputs, reference_fp64

from inception_kernels.ops import _args, _tile, _weights, batchnorm, conv, conv_triton, conv_v2
from inception_kernels.utils import rel_err

# (N, C, H, W, K, (R, S), stride, padding): K a multiple of 4 where the descriptor path should engage (fp32 rows
# of 16 bytes), odd K where it must fall back.
CASES = {
    "stem_C3_s2": (1, 3, 9, 9, 8, (3, 3), 2, 0),
    "7x7_s2_C3": (1, 3, 11, 11, 8, (7, 7), 2, 3),
    "3x3_oddC5": (2, 5, 6, 6, 12, (3, 3), 1, 1),
    "3x3_C20_multiblock": (1, 20, 5, 7, 36, (3, 3), 1, 1),
    "3x3_s2_odd": (2, 5, 9, 7, 8, (3, 3), 2, 1),
    "3x3_s2_valid_odd": (1, 6, 9, 9, 12, (3, 3), 2, 0),
    "asym_pad_s2": (1, 4, 8, 8, 8, (3, 3), 2, (0, 1, 1, 0)),
    "1x7": (1, 10, 7, 9, 16, (1, 7), 1, (0, 3)),
    "7x1": (1, 10, 9, 7, 16, (7, 1), 1, (3, 0)),
    "1x3_oddK": (1, 6, 5, 6, 9, (1, 3), 1, (0, 1)),
    "3x3_HW1": (2, 5, 1, 1, 8, (3, 3), 1, 1),
    "1x1_HW1": (3, 8, 1, 1, 12, (1, 1), 1, 0),
    "1x1_gemm": (2, 16, 4, 5, 24, (1, 1), 1, 0),
    "1x1_gemm_oddC": (2, 5, 4, 4, 24, (1, 1), 1, 0),
    "1x1_s2_odd": (1, 4, 7, 5, 8, (1, 1), 2, 0),
    "2x2_mixed_stride": (1, 3, 7, 8, 4, (2, 2), (2, 1), 0),
}
# Which operands go through descriptors in the descriptor twin (fp32): (A_DESC, B_DESC)
EXPECT_PLAN = {"1x3_oddK": (False, False), "1x1_gemm": (True, True), "1x1_gemm_oddC": (False, True),
               "1x1_HW1": (True, True)}  # fmt: skip


ONE_TILE = [c for c in conv_v2.V2_CONFIGS if not conv_v2.is_persistent(c)]
PERSISTENT = [c for c in conv_v2.V2_CONFIGS if conv_v2.is_persistent(c)]
# Test-only persistent config with small tiles, so that the tiny shapes of CASES have several tiles to walk (16 rows:
# mma.sync on a GPU; the same loop and epilogue as the space's persistent configs), and its one-tile twin.
SMALL_PERSISTENT = conv_v2._cfg(16, 16, 16, 4, 2, persistent=2)
SMALL_ONE_TILE = conv_v2._cfg(16, 16, 16, 4, 2)


@pytest.fixture(params=["ptr", "desc"])
def path(request, monkeypatch):
    monkeypatch.setattr(conv_v2, "_FORCE_DESC", request.param == "desc")
    return request.param


class _GridSpy:
    """Stands in for the kernel object: records each launch grid, then launches."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(tuple(grid))
        return self.kernel[grid]


@pytest.fixture
def grids(monkeypatch):
    spy = _GridSpy(conv_v2._conv_fwd_v2_kernel)
    monkeypatch.setattr(conv_v2, "_conv_fwd_v2_kernel", spy)
    return spy.grids


def _tiles(cfg, M, K):
    return math.ceil(M / cfg.kwargs["BLOCK_M"]) * math.ceil(K / cfg.kwargs["BLOCK_N"])


def ragged_programs(tiles):
    """The fewest programs (>= 2) that do not divide ``tiles``: some program walks more tiles than another, so
    the grid-stride loop runs several rounds and the last one is ragged (None below 3 tiles)."""
    return next((g for g in range(2, tiles) if tiles % g), None)


def _plan(x, w, stride, padding, path):
    if path == "ptr":
        return (False, False)
    wp = _weights.packed_weight(w, (2, 3, 1, 0))
    return conv_v2.desc_plan(x, wp, _args.pair(stride, "s"), _args.conv_padding(padding), None)


def _stats_case(name, device, bias):
    """Inputs of CASES[name] without BN scale (the statistics are of the conv output), stride, padding, y's shape."""
    case = CASES[name]
    inp = make_inputs(case, device, scale=False, bias=bias)
    st, pad = _args.pair(case[6], "s"), _args.conv_padding(case[7])
    return inp, st, pad, _args.conv_out_shape(inp["x"].shape, inp["weight"].shape, st, pad)


def _run(inp, act, rs, config=None, out=None, dtype=torch.float32):
    x = inp["x"]
    st, pad = _args.pair(inp["stride"], "s"), _args.conv_padding(inp["padding"])
    shape = _args.conv_out_shape(x.shape, inp["weight"].shape, st, pad)
    if out is None:
        out = torch.full(shape, float("nan"), dtype=dtype).to(memory_format=torch.channels_last)
    conv_v2.conv_fwd_v2_into(
        x, inp["weight"], inp["scale"], inp["bias"], inp["residual"], st, pad, rs, act == "relu", out,
        config=config,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("epilogue", ["bn_relu", "residual", "plain"])
def test_v2_forward_vs_fp64(name, epilogue, path, device, poison):
    case = CASES[name]
    act = None if epilogue == "plain" else "relu"
    rs = 0.17 if epilogue == "residual" else 1.0
    inp = make_inputs(case, device, scale=epilogue != "plain", bias=epilogue != "plain",
                      residual=epilogue == "residual")  # fmt: skip
    y = _run(inp, act, rs)
    y_ref, _ = reference_fp64(inp, act, rs)
    assert not y.isnan().any(), "unwritten output elements"
    assert rel_err(y, y_ref) < TOL[torch.float32]
    plan = _plan(inp["x"], inp["weight"], inp["stride"], inp["padding"], path)
    if path == "desc":
        K = case[4]
        assert plan == EXPECT_PLAN.get(name, (False, K % 4 == 0)), plan


# One case per kernel family, every config: the 3x3 stride-2 implicit GEMM (C = 48: BLOCK_C 16 divides it, 32
# and 64 do not, so both EVEN_C branches run) and the 1x1 GEMM (both operands by descriptor in the desc twin).
ALL_CONFIG_CASES = {"3x3_s2": (2, 48, 7, 5, 40, (3, 3), 2, 1), "1x1_gemm": (2, 40, 3, 5, 48, (1, 1), 1, 0)}


@pytest.mark.parametrize("name", list(ALL_CONFIG_CASES))
def test_every_v2_config(name, path, device, poison):
    inp = make_inputs(ALL_CONFIG_CASES[name], device, residual=True)
    y_ref, _ = reference_fp64(inp, "relu", 0.3)
    for cfg in conv_v2.V2_CONFIGS:
        y = _run(inp, "relu", 0.3, config=cfg)
        assert not y.isnan().any(), cfg
        assert rel_err(y, y_ref) < TOL[torch.float32], cfg
    if path == "desc":
        assert _plan(inp["x"], inp["weight"], inp["stride"], inp["padding"], path) == (
            name == "1x1_gemm",
            True,
        )


# ----------------------------------------------------------------------------------------------------------
# Persistent configs (PERSISTENT: a grid-stride loop over the output tiles, each with the full epilogue)
# ----------------------------------------------------------------------------------------------------------
PERSISTENT_CASES = ["stem_C3_s2", "7x7_s2_C3", "3x3_oddC5", "3x3_C20_multiblock", "3x3_s2_odd", "3x3_HW1",
                    "1x1_HW1", "1x1_gemm", "1x1_gemm_oddC", "1x3_oddK"]  # fmt: skip


@pytest.mark.parametrize("name", PERSISTENT_CASES)
@pytest.mark.parametrize("epilogue", ["bn_relu", "residual"])
def test_persistent_vs_fp64(name, epilogue, path, device, poison, grids, monkeypatch):
    """The small persistent config on the awkward shapes, with 2 programs (a cdiv(tiles, 2)-round loop, ragged
    when the tile count is odd) into a NaN-poisoned output: every tile written once, right."""
    case = CASES[name]
    monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", 2)
    rs = 0.17 if epilogue == "residual" else 1.0
    inp = make_inputs(case, device, residual=epilogue == "residual")
    y = _run(inp, "relu", rs, config=SMALL_PERSISTENT)
    y_ref, _ = reference_fp64(inp, "relu", rs)
    assert not y.isnan().any(), "unwritten output elements"
    assert rel_err(y, y_ref) < TOL[torch.float32]
    N, K, P, Q = y.shape
    tiles = _tiles(SMALL_PERSISTENT, N * P * Q, K)
    assert grids == [(min(tiles, 2),)]
    if name in ("3x3_oddC5", "3x3_C20_multiblock", "1x1_gemm"):
        assert tiles >= 5, tiles  # 3 rounds, the last ragged for 5 and 9 tiles


# Big enough for the space's persistent tiles (64 and 128 rows) to be several: M = 288 output pixels, K = 72
PERSISTENT_BIG = {"3x3": (2, 8, 12, 12, 72, (3, 3), 1, 1), "1x1_gemm": (2, 16, 12, 12, 72, (1, 1), 1, 0)}


@pytest.mark.parametrize("name", list(PERSISTENT_BIG))
def test_every_persistent_config_ragged_rounds(name, path, device, poison, grids, monkeypatch):
    """Each persistent config of the space with a program count that leaves the last round ragged."""
    case = PERSISTENT_BIG[name]
    inp = make_inputs(case, device, residual=True)
    y_ref, _ = reference_fp64(inp, "relu", 0.3)
    M, K = case[0] * case[2] * case[3], case[4]
    assert PERSISTENT
    for cfg in PERSISTENT:
        tiles = _tiles(cfg, M, K)
        programs = ragged_programs(tiles)
        assert programs is not None, (cfg, tiles)
        monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", programs)
        y = _run(inp, "relu", 0.3, config=cfg)
        assert not y.isnan().any(), cfg
        assert rel_err(y, y_ref) < TOL[torch.float32], cfg
        assert grids[-1] == (programs,), cfg
    if path == "desc":
        assert _plan(inp["x"], inp["weight"], case[6], case[7], path) == (name == "1x1_gemm", True)


@pytest.mark.parametrize("name", ["3x3_s2_odd", "1x1_gemm", "3x3_C20_multiblock"])
def test_persistent_stats_partials_match_one_tile_kernel(name, path, device, grids, monkeypatch):
    """BN-statistics partials (and y) of the persistent kernel are bit for bit those of its one-tile twin: the
    same reduction of the same tile into the same row of the partials, whichever program computes it."""
    inp, st, pad, shape = _stats_case(name, device, bias=True)
    x, w = inp["x"], inp["weight"]
    N, K, P, Q = shape
    tiles = _tiles(SMALL_PERSISTENT, N * P * Q, K)
    monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", ragged_programs(tiles))
    results = []
    for cfg in (SMALL_ONE_TILE, SMALL_PERSISTENT):
        y = torch.full(shape, float("nan"), device=device).to(memory_format=torch.channels_last)
        parts = conv_triton.stats_partials(N * P * Q, K, x.device)
        for buf in parts[1:]:
            buf.fill_(float("nan"))  # rows no tile writes stay NaN in both
        conv_v2.conv_fwd_v2_into(x, w, None, inp["bias"], None, st, pad, 1.0, True, y, config=cfg, stats=parts)
        results.append((y, *parts))
    assert grids == [(tiles,), (ragged_programs(tiles),)] and tiles > grids[1][0]
    for one, pers in zip(*results, strict=True):
        assert torch.equal(one.isnan(), pers.isnan())
        assert torch.equal(torch.nan_to_num(one), torch.nan_to_num(pers))
    y, cnt, mean, m2 = results[1]
    assert (cnt > 0).all() and not mean.isnan().any() and not m2.isnan().any()  # 16-row tiles: every row
    m, v, _ = batchnorm.bn_finalize((cnt, mean, m2), N * P * Q, 1e-5)
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(m, y_ref.mean((0, 2, 3))) < 1e-5
    assert rel_err(v, y_ref.var((0, 2, 3), unbiased=False)) < 1e-5


def test_persistent_grid_and_heuristic(monkeypatch):
    """Persistent launch: min(tiles, SMs x programs per SM); one-tile launch: a program per tile; the heuristic
    never picks a persistent config (unmeasured)."""
    big, w4, small, stem = PERSISTENT
    assert [conv_v2.resident_programs(c, 2) for c in PERSISTENT] == [1, 2, 2, 4]
    assert conv_v2.resident_programs(small, 4) == 1  # fp32: 5 stages of 64x64x64 take 160 KB
    M, K = 32 * 17 * 17, 768  # 9248 x 768: 73 x 6 = 438 tiles of 128x128
    assert conv_v2.launch_grid(big, M, K, 2, 132) == (132,)
    assert conv_v2.launch_grid(w4, M, K, 2, 132) == (264,)
    assert conv_v2.launch_grid(stem, 32 * 149 * 149, 32, 2, 132) == (528,)
    assert conv_v2.launch_grid(w4, 256, 64, 2, 132) == (2,)  # fewer tiles than slots: one program each
    assert conv_v2.launch_grid(ONE_TILE[0], M, K, 2, 132) == (438,)
    monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", 5)
    assert conv_v2.launch_grid(big, M, K, 2, 132) == (5,)
    assert conv_v2.launch_grid(ONE_TILE[0], M, K, 2, 132) == (438,)
    for cfg in ONE_TILE:
        twin = conv_v2.persistent_twin(cfg, 2)
        assert twin is None or (twin.kwargs["BLOCK_M"], twin.num_stages) == (cfg.kwargs["BLOCK_M"], cfg.num_stages)
    assert sum(conv_v2.persistent_twin(c, 2) is not None for c in ONE_TILE) == len(PERSISTENT)
    for m in (64, 2048, 9248, 100352):
        for k, c in ((32, 3), (192, 768), (384, 1280)):
            dims = (("BLOCK_M", m), ("BLOCK_N", k), ("BLOCK_C", c))
            for eb, arch in ((2, 90), (4, 90), (2, 80)):
                assert not conv_v2.is_persistent(conv_v2.heuristic_config_v2(dims, eb, 132, arch)), dims
    for eb, arch in ((2, 90), (4, 90), (2, 80), (4, 80)):
        assert any(conv_v2.is_persistent(c) for c in conv_v2.configs_for(eb, arch)), (eb, arch)


@pytest.mark.parametrize("name", ["3x3_C20_multiblock", "1x1_gemm", "7x1"])
@pytest.mark.parametrize("x_off", [8, 3])
@pytest.mark.parametrize("persistent", [False, True])
def test_slices_x_out_residual(name, x_off, persistent, path, device, grids, monkeypatch):
    """x, residual and out are channel slices of larger NaN-poisoned buffers; only out's slice is written. An x
    offset of 8 floats (32 bytes) keeps the 1x1 activation descriptor usable, 3 (12 bytes) forces pointers.
    ``persistent``: the small persistent config, 2 programs for its 4-9 tiles."""
    N, C, H, W, K, RS, stride, padding = CASES[name]
    inp = make_inputs(CASES[name], device, residual=True)
    st, pad = _args.pair(stride, "s"), _args.conv_padding(padding)
    _, _, P, Q = _args.conv_out_shape(inp["x"].shape, inp["weight"].shape, st, pad)
    xbig = torch.randn(N, C + 16, H, W, device=device).to(memory_format=torch.channels_last)
    xbig[:, x_off : x_off + C] = inp["x"]
    rbig = torch.full((N, K + 9, P, Q), float("nan"), device=device).to(memory_format=torch.channels_last)
    rbig[:, 5 : 5 + K] = inp["residual"]
    obig = torch.full((N, K + 11, P, Q), float("nan"), device=device).to(memory_format=torch.channels_last)
    off = 4
    sliced = {**inp, "x": xbig[:, x_off : x_off + C], "residual": rbig[:, 5 : 5 + K]}
    monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", 2)
    _run(sliced, "relu", 0.5, out=obig[:, off : off + K], config=SMALL_PERSISTENT if persistent else None)
    if persistent:
        assert grids == [(2,)] and _tiles(SMALL_PERSISTENT, N * P * Q, K) >= 4  # 2+ rounds each
    y_ref, _ = reference_fp64(inp, "relu", 0.5)
    assert rel_err(obig[:, off : off + K], y_ref) < TOL[torch.float32]
    assert obig[:, :off].isnan().all() and obig[:, off + K :].isnan().all()
    if path == "desc" and name == "1x1_gemm":
        assert _plan(sliced["x"], inp["weight"], stride, padding, path)[0] == (x_off == 8)


def test_1x1_gemm_descriptor_row_stride_of_size_1_dims(path, device):
    """H = W = 1: the stride of a size-1 dimension is arbitrary in PyTorch; the GEMM's row stride is sxn then."""
    inp = make_inputs(CASES["1x1_HW1"], device)
    x = inp["x"]
    odd = torch.as_strided(x.clone(), x.shape, (x.stride(0), 1, x.stride(0), 4))  # sxw = 4 != sxn = sxh = 8
    y = _run({**inp, "x": odd}, "relu", 1.0)
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(y, y_ref) < TOL[torch.float32]
    if path == "desc":
        assert _plan(odd, inp["weight"], 1, 0, path) == (True, True)


@pytest.mark.parametrize("persistent", [False, True])
def test_out2_split_destination(persistent, path, device, poison, grids, monkeypatch):
    """Horizontal fusion: channels [0, K1) into a slice of a block buffer, [K1, K) into a poisoned temporary.
    ``persistent``: the small persistent config, 3 programs for its 8 tiles (the first N tile, channels 0-15,
    straddles the split K1 = 11)."""
    inp = make_inputs((2, 16, 5, 6, 32, (1, 1), 1, 0), device)
    x, w, sc, b = inp["x"], inp["weight"], inp["scale"], inp["bias"]
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    buf = torch.full((2, 40, 5, 6), float("nan"), device=device).to(memory_format=torch.channels_last)
    tmp = _tile.new_cl((2, 21, 5, 6), x)
    cfg = SMALL_PERSISTENT if persistent else None
    monkeypatch.setattr(conv_v2, "_FORCE_PROGRAMS", 3)
    conv_v2.conv_fwd_v2_into(
        x, w, sc, b, None, (1, 1), (0, 0, 0, 0), 1.0, True, buf[:, 7:18], out2=tmp, config=cfg
    )
    if persistent:
        assert grids == [(3,)] and _tiles(SMALL_PERSISTENT, 60, 32) == 8
    assert rel_err(buf[:, 7:18], y_ref[:, :11]) < TOL[torch.float32]
    assert rel_err(tmp, y_ref[:, 11:]) < TOL[torch.float32]
    assert buf[:, :7].isnan().all() and buf[:, 18:].isnan().all()
    with pytest.raises(ValueError, match="split the K output channels"):
        conv_v2.conv_fwd_v2_into(
            x, w, sc, b, None, (1, 1), (0, 0, 0, 0), 1.0, True, buf[:, 7:18], out2=tmp[:, :5]
        )


@pytest.mark.parametrize("cfg_index", [0, len(ONE_TILE) - 1])
@pytest.mark.parametrize("name", ["3x3_s2_odd", "1x1_gemm"])
def test_bn_statistics_partials(name, cfg_index, path, device, poison):
    """The BN-statistics epilogue (training mode): partials finalize to the batch mean and variance of y."""
    inp, st, pad, shape = _stats_case(name, device, bias=False)
    x, w = inp["x"], inp["weight"]
    N, K, P, Q = shape
    y = _tile.new_cl(shape, x)
    parts = conv_triton.stats_partials(N * P * Q, K, x.device)
    cfg = ONE_TILE[cfg_index]
    conv_v2.conv_fwd_v2_into(x, w, None, None, None, st, pad, 1.0, False, y, config=cfg, stats=parts)
    mean, var, _ = batchnorm.bn_finalize(parts, N * P * Q, 1e-5)
    y_ref, _ = reference_fp64(inp, None, 1.0)
    assert rel_err(y, y_ref) < TOL[torch.float32]
    assert rel_err(mean, y_ref.mean((0, 2, 3))) < 1e-5
    assert rel_err(var, y_ref.var((0, 2, 3), unbiased=False)) < 1e-5
    tiles = math.ceil(N * P * Q / cfg.kwargs["BLOCK_M"])
    assert (parts[0][tiles:] == 0).all() and (parts[0][:tiles] > 0).all()


@pytest.mark.parametrize("name", ["3x3_s2_odd", "1x1_gemm", "1x7"])
def test_64_bit_index_path(name, path, device, monkeypatch, poison):
    """IDX_T = int64 (what a tensor spanning 2**31 elements gets) computes the same function."""
    monkeypatch.setattr(_tile, "tl_index_type", lambda *t: tl.int64)
    inp = make_inputs(CASES[name], device, residual=True)
    y = _run(inp, "relu", 0.7)
    y_ref, _ = reference_fp64(inp, "relu", 0.7)
    assert rel_err(y, y_ref) < TOL[torch.float32]


@pytest.mark.skipif(not conv._backend.interpreter_active(), reason="interpreter-only behaviour")
@pytest.mark.parametrize("name", ["3x3_C20_multiblock", "1x1_gemm"])
def test_fp16(name, path, device):
    inp = make_inputs(CASES[name], device, dtype=torch.float16)
    y = _run(inp, "relu", 1.0, dtype=torch.float16)
    y_ref, _ = reference_fp64(inp, "relu", 1.0)
    assert rel_err(y, y_ref) < 2e-3


def test_same_bits_as_v1_epilogue_semantics_on_nan_free_inputs(device):
    """v1 and v2 agree (both against fp64 and with each other) on one shape with every epilogue feature on."""
    inp = make_inputs(CASES["3x3_s2_odd"], device, residual=True)
    y2 = _run(inp, "relu", 0.3)
    y1 = torch.empty_like(y2)
    st, pad = _args.pair(inp["stride"], "s"), _args.conv_padding(inp["padding"])
    conv_triton.conv_fwd_into(
        inp["x"], inp["weight"], inp["scale"], inp["bias"], inp["residual"], st, pad, 0.3, True, y1
    )
    assert rel_err(y2, y1) < TOL[torch.float32]


def test_supports_v2_and_heuristic(device):
    x = torch.randn(1, 4, 5, 5, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 3, 3, device=device)
    assert conv_v2.supports_v2(x, w, (1, 1)) is None
    assert "stride" in conv_v2.supports_v2(x, w, (3, 1))
    assert "kernel size" in conv_v2.supports_v2(x, torch.randn(8, 4, 9, 9), (1, 1))
    if device.type == "cpu":
        assert "bfloat16" in conv_v2.supports_v2(x.bfloat16(), w.bfloat16(), (1, 1))
        with pytest.raises(NotImplementedError, match="no bfloat16"):
            y = torch.empty(1, 8, 3, 3, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            conv_v2.conv_fwd_v2_into(
                x.bfloat16(), w.bfloat16(), None, None, None, (1, 1), (0,) * 4, 1.0, False, y
            )
    # a big problem gets a large tile with a full wave of programs; every chosen config fits shared memory
    big = (("BLOCK_M", 32 * 17 * 17), ("BLOCK_N", 192), ("BLOCK_C", 768))
    cfg = conv_v2.heuristic_config_v2(big, 2, 132, 90)
    grid = math.ceil(big[0][1] / cfg.kwargs["BLOCK_M"]) * math.ceil(192 / cfg.kwargs["BLOCK_N"])
    assert grid >= 132 and cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] >= 64 * 128
    for eb, arch in ((2, 90), (4, 90), (2, 80), (4, 80)):
        fits = conv_v2.configs_for(eb, arch)
        assert fits and all(conv_v2.smem_bytes(c, eb) <= conv_v2.SMEM_BUDGET[arch] for c in fits)
    assert min(c.kwargs["BLOCK_M"] for c in conv_v2.V2_CONFIGS) >= conv_triton.STATS_ROWS


# ----------------------------------------------------------------------------------------------------------
# Model equivalence on v2 (issue 14: "all conv tests and the model equivalence tests pass on v2")
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~1 min in the interpreter
def test_v2_whole_network_eval_and_train_block(device, monkeypatch):
    """Forced onto v2 (``INCEPTION_KERNELS_BACKEND=triton_v2``: every conv forward on v2, the backward on v1): a
    whole Inception-v3 in eval at its smallest input against torchvision's in fp64 (folded BN, slice writes,
    horizontally fused 1x1 GEMMs, the aux head), and a v3 block in train mode (BN statistics in v2's epilogue)
    against the reference backend in fp64, forward and every gradient."""
    torchvision = pytest.importorskip("torchvision")
    from helpers import check_eval_on_our_kernels, check_train_block, randomize_bn

    from inception_kernels.models import create_model
    from inception_kernels.models import inception_v3 as v3
    from inception_kernels.nn.engine import InceptionBlock
    from inception_kernels.ops import dispatch

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "triton_v2")
    ref = randomize_bn(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True))
    ours = create_model("inception_v3", aux_logits=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    with dispatch.recording() as log:
        check_eval_on_our_kernels(ours, ref, torch.randn(1, 3, 75, 75), device)
    convs = {choice.impl for family, _, choice, _ in log if family == "conv_fwd"}
    assert convs == {"triton_v2"}, convs
    with dispatch.recording() as log:
        check_train_block(InceptionBlock(40, v3.block_c(24)), 5, device, monkeypatch, batch=2)
    convs = {(family, choice.impl) for family, _, choice, _ in log if family.startswith("conv")}
    assert convs == {("conv_fwd", "triton_v2"), ("conv_dgrad", "triton"), ("conv_wgrad", "triton")}, convs
