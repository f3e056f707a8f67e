"""The CUDA C++ extension (``csrc/``, ``inception_kernels._C``, ``torch.ops.inception_kernels_cuda``).

CPU tests (run everywhere):
- the schemas in ``csrc/bindings.cpp`` equal :data:`inception_kernels.ops._cuda.SCHEMAS`;
- the oracles below agree with PyTorch's autograd / pooling ops (so the GPU tests compare against the contract);
- where the extension is built (``make csrc``; required there via ``INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1``,
  skipped with a reason elsewhere): it loads, registers every op with its schema and a CUDA kernel only, its fake
  implementations give the right shapes/strides on ``meta`` tensors, and the shared library holds SASS for every
  requested arch (``INCEPTION_KERNELS_CUDA_ARCHS``, default 80;90) + PTX for the newest, for every kernel x dtype
  (resource table from ``cuobjdump -res-usage`` printed).

GPU tests (``@pytest.mark.gpu``): every op vs its fp64 oracle on odd channel counts, channel slices at non-zero
offsets, spatially strided views, H = W = 1, stride-2 odd inputs; outputs poisoned with NaN so unwritten elements
and writes outside a slice show up; BN statistics at mean 1e3 / std 1e-2; bitwise determinism of the reductions.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inception_kernels.ops import _args, _cuda

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("INCEPTION_KERNELS_REQUIRE_CUDA_BUILD", "").strip() in ("1", "true", "yes")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (1.6e-2, 1.6e-2), torch.float16: (2e-3, 2e-3)}


def need_ext():
    """Skip (or fail, where the build is required) unless the extension is built and loaded."""
    if _cuda.loaded():
        return
    msg = f"CUDA C++ extension not loaded: {_cuda.why_unavailable()}"
    if REQUIRE:
        pytest.fail(msg + " (INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1)")
    pytest.skip(msg + "; `make csrc` builds and tests it")


def need_gpu_ext():
    need_ext()
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def cuops():
    return _cuda.ops()


# ---------------------------------------------------------------------------------------------------------------
# fp64 oracles (the contracts in csrc/ops.h)
# ---------------------------------------------------------------------------------------------------------------
def _v(t):
    return t.double().view(1, -1, 1, 1)


def bn_stats_oracle(x):
    xd = x.double()
    return xd.mean((0, 2, 3)), xd.var((0, 2, 3), unbiased=False)


def bn_mask(x, mean, invstd, weight, bias):
    """ReLU mask exactly as the kernels decide it: x̂ in fp32 (x − mean, then · invstd, each rounded), then the sign
    of x̂·w + b (an fp32 fma rounds, never flips the sign; fp64 holds the fp32 product exactly)."""
    xh = (x.float() - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
    w = _v(weight) if weight is not None else 1.0
    b = _v(bias) if bias is not None else 0.0
    return xh.double() * w + b > 0


def bn_act_fwd_oracle(x, mean, invstd, weight, bias, relu):
    z = (x.double() - _v(mean)) * _v(invstd)
    if weight is not None:
        z = z * _v(weight)
    if bias is not None:
        z = z + _v(bias)
    return z.clamp_min(0) if relu else z


def bn_act_bwd_oracle(g, x, mean, invstd, weight, bias, relu):
    M = x.shape[0] * x.shape[2] * x.shape[3]
    xhat = (x.double() - _v(mean)) * _v(invstd)
    gm = g.double()
    if relu:
        gm = gm * bn_mask(x, mean, invstd, weight, bias)
    gb = gm.sum((0, 2, 3))
    gw = (gm * xhat).sum((0, 2, 3))
    w = _v(weight) if weight is not None else 1.0
    gx = w * _v(invstd) * (gm - _v(gb) / M - xhat * _v(gw) / M)
    return gx, gw, gb


def _pool_geom(x, kernel, stride, padding, ceil_mode):
    H, W = x.shape[2:]
    P = _args.window_out_size(H, kernel[0], stride[0], padding[0], ceil_mode)
    Q = _args.window_out_size(W, kernel[1], stride[1], padding[1], ceil_mode)
    return P, Q


def _windows(x, kernel, stride, padding, P, Q, fill):
    """(N, C, P, Q, KH*KW) windows of x padded with `fill`, plus the in-bounds mask of each window position."""
    N, C, H, W = x.shape
    Hp, Wp = (P - 1) * stride[0] + kernel[0], (Q - 1) * stride[1] + kernel[1]
    xp = torch.full((N, C, Hp, Wp), fill, dtype=torch.float64)
    valid = torch.zeros(1, 1, Hp, Wp, dtype=torch.float64)
    h = min(H, Hp - padding[0])
    w = min(W, Wp - padding[1])
    xp[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = x.double().cpu()[:, :, :h, :w]
    valid[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = 1

    def unf(t):
        return (
            t.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).reshape(*t.shape[:2], P, Q, -1)
        )

    return unf(xp), unf(valid) > 0


def maxpool_oracle(x, kernel, stride, padding, ceil_mode):
    """(values, int window index r*KW+s): first maximum in row-major window order, NaN is the maximum (the last
    NaN wins, as in PyTorch), padding never chosen."""
    P, Q = _pool_geom(x, kernel, stride, padding, ceil_mode)
    win, valid = _windows(x, kernel, stride, padding, P, Q, -math.inf)
    win = torch.where(valid, win, torch.tensor(-math.inf, dtype=torch.float64))
    m = (
        win.amax(-1)
        if not win.isnan().any()
        else torch.where(win.isnan().any(-1), math.nan, win.nan_to_num(nan=-math.inf).amax(-1))
    )
    first_max = (valid & (win == m[..., None])).to(torch.int8).argmax(-1)  # first True
    nans = (valid & win.isnan()).to(torch.int8)
    last_nan = nans.shape[-1] - 1 - nans.flip(-1).argmax(-1)
    return m, torch.where(m.isnan(), last_nan, first_max)


def maxpool_bwd_oracle(g, idx, kernel, stride, padding, H, W):
    N, C, P, Q = g.shape
    Hp, Wp = (P - 1) * stride[0] + kernel[0], (Q - 1) * stride[1] + kernel[1]
    gp = torch.zeros(N, C, max(Hp, H + padding[0]), max(Wp, W + padding[1]), dtype=torch.float64)
    gd, idx = g.double().cpu(), idx.cpu().long()
    for r in range(kernel[0]):
        for s in range(kernel[1]):
            sl = gp[
                :, :, r : r + (P - 1) * stride[0] + 1 : stride[0], s : s + (Q - 1) * stride[1] + 1 : stride[1]
            ]
            sl += gd * (idx == r * kernel[1] + s)
    return gp[:, :, padding[0] : padding[0] + H, padding[1] : padding[1] + W]


def avgpool_oracle(x, kernel, stride, padding, ceil_mode, cip):
    return F.avg_pool2d(x.double().cpu(), kernel, stride, padding, ceil_mode, cip)


def avgpool_bwd_oracle(g, kernel, stride, padding, ceil_mode, cip, H, W):
    N, C = g.shape[:2]
    x = torch.zeros(N, C, H, W, dtype=torch.float64, requires_grad=True)
    F.avg_pool2d(x, kernel, stride, padding, ceil_mode, cip).backward(g.double().cpu())
    return x.grad


# ---------------------------------------------------------------------------------------------------------------
# CPU tests
# ---------------------------------------------------------------------------------------------------------------
def _bindings_schemas() -> dict[str, str]:
    src = (ROOT / "csrc" / "bindings.cpp").read_text()
    out = {}
    for call in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", src):
        schema = "".join(re.findall(r"\"([^\"]*)\"", call))
        out[schema.split("(", 1)[0]] = schema
    return out


def test_schemas_in_bindings_match_python_table():
    assert _bindings_schemas() == _cuda.SCHEMAS


def test_pool_out_size_matches_pytorch():
    x = torch.zeros(1, 1, 1, 1)
    for size in (1, 2, 5, 8, 9, 10, 17, 35):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                for p in range(k // 2 + 1):
                    for ceil in (False, True):
                        if size + 2 * p < k:
                            continue
                        x = torch.zeros(1, 1, size, 1)
                        ref = F.max_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=ceil).shape[2]
                        assert _args.window_out_size(size, k, s, p, ceil) == ref, (size, k, s, p, ceil)


def test_bn_bwd_oracle_matches_autograd():
    """The fp64 oracle equals autograd through F.batch_norm(training=True) + relu."""
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    w, b = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    g = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5).relu().backward(g)
    mean, var = bn_stats_oracle(x)
    invstd = (var + 1e-5).rsqrt()
    gx, gw, gb = bn_act_bwd_oracle(g, x, mean.float(), invstd.float(), w.float(), b.float(), True)
    # The oracle takes fp32 stats (as the op does): agree to fp32 precision.
    torch.testing.assert_close(gb, br.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, wr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, xr.grad, rtol=1e-4, atol=1e-5)


def test_pool_oracles_match_pytorch():
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    for k, s, p, ceil in [
        ((3, 3), (2, 2), (0, 0), False),
        ((3, 3), (2, 2), (1, 1), True),
        ((3, 3), (1, 1), (1, 1), False),
    ]:
        ref, ref_flat = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
        val, idx = maxpool_oracle(x, k, s, p, ceil)
        torch.testing.assert_close(val, ref)
        # window index -> flat input index: (p*S - pad + r) * W + (q*S - pad + s)
        P, Q = val.shape[2:]
        pp = torch.arange(P).view(1, 1, P, 1) * s[0] - p[0] + idx // k[1]
        qq = torch.arange(Q).view(1, 1, 1, Q) * s[1] - p[1] + idx % k[1]
        assert torch.equal(pp * x.shape[3] + qq, ref_flat)
        g = torch.randn_like(ref)
        xr = x.clone().requires_grad_()
        F.max_pool2d(xr, k, s, p, ceil_mode=ceil).backward(g)
        torch.testing.assert_close(maxpool_bwd_oracle(g, idx, k, s, p, *x.shape[2:]), xr.grad)


def test_maxpool_oracle_nan_and_inf_rules():
    x = torch.full((1, 1, 3, 3), -math.inf, dtype=torch.float64)
    _, idx = maxpool_oracle(x, (3, 3), (1, 1), (1, 1), False)
    assert idx[0, 0, 0, 0] == 4  # window at (-1,-1): first in-bounds element is (0,0) = window position 4
    x = torch.arange(9.0, dtype=torch.float64).view(1, 1, 3, 3)
    x[0, 0, 1, 0] = math.nan
    x[0, 0, 2, 2] = math.nan
    val, idx = maxpool_oracle(x, (3, 3), (1, 1), (0, 0), False)
    assert val.isnan().all() and idx.item() == 8  # the last NaN in row-major order, as PyTorch
    xr = x.clone().requires_grad_()
    F.max_pool2d(xr, 3, 1).backward(torch.ones(1, 1, 1, 1, dtype=torch.float64))
    assert xr.grad[0, 0, 2, 2] == 1 and xr.grad.sum() == 1


def test_extension_loads_and_registers_every_op():
    need_ext()
    ns = getattr(torch.ops, _cuda.NAMESPACE)
    for name, schema in _cuda.SCHEMAS.items():
        assert str(getattr(ns, name).default._schema) == f"{_cuda.NAMESPACE}::{schema}"
    with pytest.raises(NotImplementedError, match="CPU"):
        ns.bn_stats(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))


def _meta_cl(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype).to(memory_format=torch.channels_last)


def test_fake_impls_shapes_on_meta():
    need_ext()
    ops = cuops()
    x = _meta_cl(2, 5, 10, 9, dtype=torch.bfloat16)
    c = torch.empty(5, device="meta")
    mean, var = ops.bn_stats(x)
    assert mean.shape == var.shape == (5,) and mean.dtype == torch.float32
    gx, gw, gb = ops.bn_act_bwd(x, x, c, c, c, None, True)
    assert gx.shape == x.shape and gx.dtype == x.dtype and gx.is_contiguous(memory_format=torch.channels_last)
    assert gw.shape == gb.shape == (5,)
    out = _meta_cl(2, 5, 5, 4, dtype=torch.bfloat16)
    idx = ops.pool2d_fwd(x, 0, [3, 3], [2, 2], [0, 0], True, True, out)
    assert idx.shape == (2, 5, 5, 4) and idx.dtype == torch.int8  # ceil mode: 10 -> 5 (floor: 4), 9 -> 4
    assert idx.is_contiguous(memory_format=torch.channels_last)
    assert ops.pool2d_fwd(x, 1, [3, 3], [1, 1], [1, 1], False, False, x).numel() == 0
    g = ops.pool2d_bwd(out, idx, 0, [3, 3], [2, 2], [0, 0], True, True, [2, 5, 10, 9])
    assert g.shape == x.shape and g.is_contiguous(memory_format=torch.channels_last)
    a, b = ops.scaled_residual_bwd(x, x, 0.2, True)
    assert a.shape == b.shape == x.shape and a.dtype == x.dtype


# kernel template -> its extra template arguments after <T, VEC> (the pool kernels: max = true, avg = false)
KERNELS = {
    "bn_stats_partial_kernel": [""],
    "bn_act_fwd_kernel": [""],
    "bn_bwd_partial_kernel": [""],
    "bn_bwd_dx_kernel": [""],
    "pool_fwd_kernel": [", true", ", false"],
    "pool_bwd_kernel": [", true", ", false"],
    "residual_fwd_kernel": [""],
    "residual_bwd_kernel": [""],
}
CPP_DTYPES = {"float": 4, "c10::BFloat16": 8, "c10::Half": 8}  # C++ type -> 16-byte vector width


def _expected_archs() -> list[str]:
    raw = os.environ.get("INCEPTION_KERNELS_CUDA_ARCHS", "80;90")
    return sorted(
        {"sm_" + re.sub(r"\D", "", t) for t in re.split(r"[;,\s]+", raw) if t}, key=lambda a: int(a[3:])
    )


def test_sass_for_every_arch_kernel_and_dtype(capsys):
    need_ext()
    path = _cuda.library_path()
    if _cuda.find_cuobjdump() is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's copy)")
    archs = _expected_archs()
    got = _cuda.compiled_archs(path)
    assert set(archs) <= set(got["sass"]), f"{path}: SASS {got['sass']}, expected {archs}"
    assert archs[-1] in got["ptx"], f"{path}: PTX {got['ptx']}, expected PTX for {archs[-1]}"
    rows = _cuda.resource_table(path)
    have = {(r["arch"], r["kernel"]) for r in rows}
    for arch in archs:
        for k, extras in KERNELS.items():
            for t, vec in CPP_DTYPES.items():
                for v in (vec, 1):
                    for e in extras:
                        assert (arch, f"{k}<{t}, {v}{e}>") in have, f"missing {k}<{t}, {v}{e}> for {arch}"
        for k in ("bn_stats_finalize_kernel", "bn_bwd_finalize_kernel"):
            assert (arch, k) in have, f"missing {k} for {arch}"
    assert all(r["local"] == 0 for r in rows), "a kernel uses local memory"
    with capsys.disabled():
        print(f"\n{path}\n{got}\n{_cuda.format_resource_table(rows)}")


# ---------------------------------------------------------------------------------------------------------------
# GPU tests
# ---------------------------------------------------------------------------------------------------------------
def _buffer(N, C, H, W, dtype, off, extra, fill=math.nan):
    buf = torch.full((N, C + off + extra, H, W), fill, dtype=dtype, device="cuda")
    buf = buf.to(memory_format=torch.channels_last)
    return buf, buf[:, off : off + C]


def make_input(N, C, H, W, dtype, layout, scale=1.0, shift=0.0):
    """An activation in one of five layouts: 'cl' (channels_last contiguous), 'slice' (channels [3, 3+C) of a
    bigger buffer: unaligned channel offset), 'slice8' (aligned offset 8: vector path), 'spatial' (a
    [:, :, ::2, 1:] view: non-collapsible strides), 'nchw' (contiguous NCHW: inputs only, copied by the op)."""
    vals = torch.randn(N, C, H, W, device="cuda", dtype=torch.float64) * scale + shift
    if layout == "nchw":
        t = torch.empty(N, C, H, W, device="cuda", dtype=dtype)
    elif layout == "cl":
        t = torch.empty(N, C, H, W, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    elif layout == "slice":
        _, t = _buffer(N, C, H, W, dtype, 3, 2)
    elif layout == "slice8":  # aligned slice: the 16-byte vector path with a channel offset
        _, t = _buffer(N, C, H, W, dtype, 8, 8)
    else:
        big = torch.empty(N, C + 4, 2 * H, W + 1, device="cuda", dtype=dtype).to(
            memory_format=torch.channels_last
        )
        t = big[:, 2 : 2 + C, ::2, 1:]
    t.copy_(vals)
    return t


def assert_close(got, ref, dtype, what=""):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        got.double().cpu(), ref.double().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


def assert_outside_nan(buf, off, C):
    assert buf[:, :off].isnan().all() and buf[:, off + C :].isnan().all(), "write outside the output slice"


SHAPES = [(2, 13, 9, 7), (2, 16, 5, 6), (3, 5, 1, 1)]
LAYOUTS = ["cl", "slice", "slice8", "spatial", "nchw"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bn_stats(dtype, shape, layout):
    need_gpu_ext()
    x = make_input(*shape, dtype, layout, scale=2.0, shift=0.5)
    mean, var = cuops().bn_stats(x)
    rm, rv = bn_stats_oracle(x)
    torch.testing.assert_close(mean.double().cpu(), rm.cpu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double().cpu(), rv.cpu(), rtol=1e-4, atol=1e-6)
    m2, v2 = cuops().bn_stats(x)
    assert torch.equal(mean, m2) and torch.equal(var, v2), "bn_stats is not deterministic"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 7, 17, 17), (64, 24, 35, 35)], ids=str)
def test_bn_stats_large_mean_small_std(shape):
    """mean 1e3, std 1e-2: E[x²] − E[x]² would lose every digit; Welford/Chan keeps ~1e-3 relative."""
    need_gpu_ext()
    x = make_input(*shape, torch.float32, "slice", scale=1e-2, shift=1e3)
    mean, var = cuops().bn_stats(x)
    rm, rv = bn_stats_oracle(x)
    torch.testing.assert_close(mean.double().cpu(), rm.cpu(), rtol=0, atol=1e-4)
    torch.testing.assert_close(var.double().cpu(), rv.cpu(), rtol=2e-3, atol=0)


def _params(C, affine):
    if not affine:
        return None, None
    return torch.randn(C, device="cuda") * 0.5 + 1, torch.randn(C, device="cuda") * 0.3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_bn_act_fwd(dtype, shape, layout, relu, affine):
    need_gpu_ext()
    N, C, H, W = shape
    x = make_input(*shape, dtype, layout)
    mean = torch.randn(C, device="cuda") * 0.1
    invstd = torch.rand(C, device="cuda") + 0.5
    w, b = _params(C, affine)
    off = 8 if layout == "slice8" else 3
    buf, out = _buffer(N, C, H, W, dtype, off, 5)
    assert cuops().bn_act_fwd(x, mean, invstd, w, b, relu, out) is None
    assert_close(out, bn_act_fwd_oracle(x, mean, invstd, w, b, relu), dtype, "bn_act_fwd")
    assert_outside_nan(buf, off, C)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_bn_act_bwd(dtype, shape, layout, relu, affine):
    need_gpu_ext()
    N, C, H, W = shape
    x = make_input(*shape, dtype, layout, scale=1.5, shift=0.2)
    mean, var = (t.float() for t in bn_stats_oracle(x))
    invstd = (var + 1e-5).rsqrt()
    w, b = _params(C, affine)
    g = make_input(*shape, dtype, "slice" if layout != "slice" else "spatial")  # grad_out: strided slice
    gx, gw, gb = cuops().bn_act_bwd(g, x, mean, invstd, w, b, relu)
    rgx, rgw, rgb = bn_act_bwd_oracle(g, x, mean, invstd, w, b, relu)
    assert gx.dtype == dtype and gx.is_contiguous(memory_format=torch.channels_last)
    assert gw.dtype == gb.dtype == torch.float32
    M = N * H * W
    torch.testing.assert_close(gb.double().cpu(), rgb.cpu(), rtol=1e-4, atol=1e-5 * M)
    torch.testing.assert_close(gw.double().cpu(), rgw.cpu(), rtol=1e-4, atol=1e-5 * M)
    if H * W * N > 1:  # M == 1: grad_x is 0 up to rounding of g - g
        assert_close(gx, rgx, dtype, "bn_act_bwd grad_x")
    gx2, gw2, gb2 = cuops().bn_act_bwd(g, x, mean, invstd, w, b, relu)
    assert torch.equal(gx, gx2) and torch.equal(gw, gw2) and torch.equal(gb, gb2), "not deterministic"


POOLS = [
    # kernel, stride, padding, ceil_mode
    ((3, 3), (2, 2), (0, 0), False),
    ((3, 3), (2, 2), (0, 0), True),
    ((3, 3), (1, 1), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), True),
    ((2, 3), (2, 1), (1, 0), True),
]
POOL_SHAPES = [(2, 13, 9, 9), (2, 16, 10, 7), (3, 5, 1, 1)]


def _pool_ok(shape, k, s, p):
    return shape[2] + 2 * p[0] >= k[0] and shape[3] + 2 * p[1] >= k[1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geom", POOLS, ids=str)
def test_max_pool(dtype, shape, layout, geom):
    need_gpu_ext()
    k, s, p, ceil = geom
    if not _pool_ok(shape, k, s, p):
        pytest.skip("window larger than the padded input (PyTorch rejects it too)")
    x = make_input(*shape, dtype, layout)
    N, C, H, W = shape
    P, Q = _pool_geom(x, k, s, p, ceil)
    off = 8 if layout == "slice8" else 1
    buf, out = _buffer(N, C, P, Q, dtype, off, 3)
    idx = cuops().pool2d_fwd(x, _cuda.POOL_MAX, list(k), list(s), list(p), ceil, True, out)
    rval, ridx = maxpool_oracle(x, k, s, p, ceil)
    assert idx.dtype == torch.int8 and idx.shape == (N, C, P, Q)
    assert idx.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, rval, dtype, "max_pool fwd")
    assert torch.equal(idx.cpu().long(), ridx), "argmax indices differ"
    assert_outside_nan(buf, off, C)
    g = make_input(N, C, P, Q, dtype, "slice")
    gx = cuops().pool2d_bwd(g, idx, _cuda.POOL_MAX, list(k), list(s), list(p), ceil, True, [N, C, H, W])
    assert gx.dtype == dtype and gx.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx, maxpool_bwd_oracle(g, ridx, k, s, p, H, W), dtype, "max_pool bwd")


@pytest.mark.gpu
def test_max_pool_nan_and_inf():
    need_gpu_ext()
    x = torch.full((1, 8, 3, 3), -math.inf, device="cuda")
    x[:, 1:] = torch.arange(9.0, device="cuda").view(1, 1, 3, 3)
    x[0, 2, 1, 0] = x[0, 2, 2, 2] = math.nan
    x[0, 3, 0, 0] = math.nan
    x = x.to(memory_format=torch.channels_last)
    for k, s, p in [((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (0, 0))]:
        P, Q = _pool_geom(x, k, s, p, False)
        out = torch.empty(1, 8, P, Q, device="cuda").to(memory_format=torch.channels_last)
        idx = cuops().pool2d_fwd(x, _cuda.POOL_MAX, list(k), list(s), list(p), False, True, out)
        rval, ridx = maxpool_oracle(x, k, s, p, False)
        torch.testing.assert_close(out.double().cpu(), rval, equal_nan=True)
        assert torch.equal(idx.cpu().long(), ridx)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geom", POOLS, ids=str)
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool(dtype, shape, layout, geom, cip):
    need_gpu_ext()
    k, s, p, ceil = geom
    if not _pool_ok(shape, k, s, p):
        pytest.skip("window larger than the padded input (PyTorch rejects it too)")
    x = make_input(*shape, dtype, layout)
    N, C, H, W = shape
    P, Q = _pool_geom(x, k, s, p, ceil)
    off = 8 if layout == "slice8" else 2
    buf, out = _buffer(N, C, P, Q, dtype, off, 1)
    none = cuops().pool2d_fwd(x, _cuda.POOL_AVG, list(k), list(s), list(p), ceil, cip, out)
    assert none.numel() == 0
    assert_close(out, avgpool_oracle(x, k, s, p, ceil, cip), dtype, "avg_pool fwd")
    assert_outside_nan(buf, off, C)
    g = make_input(N, C, P, Q, dtype, "spatial")
    gx = cuops().pool2d_bwd(g, torch.empty(0, dtype=torch.int8, device="cuda"), _cuda.POOL_AVG, list(k), list(s),
                            list(p), ceil, cip, [H, W])  # fmt: skip
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx, avgpool_bwd_oracle(g, k, s, p, ceil, cip, H, W), dtype, "avg_pool bwd")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("relu", [True, False])
def test_scaled_residual(dtype, shape, layout, relu):
    need_gpu_ext()
    N, C, H, W = shape
    x = make_input(*shape, dtype, layout)
    y = make_input(*shape, dtype, "slice" if layout != "slice" else "cl")
    off = 8 if layout == "slice8" else 4
    buf, out = _buffer(N, C, H, W, dtype, off, 2)
    assert cuops().scaled_residual_fwd(x, y, 0.17, relu, out) is None
    ref = x.double() + 0.17 * y.double()
    ref = ref.clamp_min(0) if relu else ref
    assert_close(out, ref, dtype, "scaled_residual fwd")
    assert_outside_nan(buf, off, C)
    g = make_input(*shape, dtype, "spatial")
    gx, gy = cuops().scaled_residual_bwd(g, out, 0.17, relu)
    mask = (out.double() > 0) if relu else torch.ones_like(out, dtype=torch.float64)
    for t in (gx, gy):
        assert t.dtype == dtype and t.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx, g.double() * mask, dtype, "grad_x")
    assert_close(gy, 0.17 * g.double() * mask, dtype, "grad_y")


@pytest.mark.gpu
def test_bad_inputs_raise_clear_errors():
    need_gpu_ext()
    ops = cuops()
    x = torch.randn(
        2, 4, 5, 5, device="cuda"
    )  # NCHW: read-only inputs are accepted (copied), outputs are not
    torch.testing.assert_close(ops.bn_stats(x)[0].double(), bn_stats_oracle(x)[0])
    c = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError, match="out must have channels innermost"):
        ops.bn_act_fwd(x, c, c, None, None, True, torch.empty_like(x))
    x = x.to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        ops.bn_stats(x.double())
    c = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError, match="invstd must have shape"):
        ops.bn_act_fwd(x, c, torch.ones(3, device="cuda"), None, None, True, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="out must have the shape"):
        ops.bn_act_fwd(
            x,
            c,
            c,
            None,
            None,
            True,
            torch.empty(2, 4, 5, 4, device="cuda").to(memory_format=torch.channels_last),
        )
    with pytest.raises(RuntimeError, match="padding should be"):
        ops.pool2d_fwd(x, 0, [3, 3], [1, 1], [2, 2], False, True, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="out must have shape"):
        ops.pool2d_fwd(x, 0, [3, 3], [2, 2], [0, 0], False, True, torch.empty_like(x))


@pytest.mark.gpu
def test_opcheck_schemas_and_fakes():
    """torch.library.opcheck: mutation annotations match what the kernels write; fakes match the real outputs."""
    need_gpu_ext()
    ns = getattr(torch.ops, _cuda.NAMESPACE)
    N, C, H, W = 2, 13, 9, 7
    x = make_input(N, C, H, W, torch.float32, "slice")
    mean, invstd = torch.randn(C, device="cuda"), torch.rand(C, device="cuda") + 0.5
    w, b = _params(C, True)
    out = torch.empty(N, C, H, W, device="cuda").to(memory_format=torch.channels_last)
    P, Q = _pool_geom(x, (3, 3), (2, 2), (0, 0), True)
    pout = torch.empty(N, C, P, Q, device="cuda").to(memory_format=torch.channels_last)
    idx = ns.pool2d_fwd(x, 0, [3, 3], [2, 2], [0, 0], True, True, pout)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for op, args in [
        (ns.bn_stats.default, (x,)),
        (ns.bn_act_fwd.default, (x, mean, invstd, w, b, True, out)),
        (ns.bn_act_bwd.default, (x, x, mean, invstd, w, b, True)),
        (ns.pool2d_fwd.default, (x, 0, [3, 3], [2, 2], [0, 0], True, True, pout)),
        (ns.pool2d_fwd.default, (x, 1, [3, 3], [2, 2], [0, 0], True, False, pout)),
        (ns.pool2d_bwd.default, (pout, idx, 0, [3, 3], [2, 2], [0, 0], True, True, [N, C, H, W])),
        (ns.scaled_residual_fwd.default, (x, x, 0.2, True, out)),
        (ns.scaled_residual_bwd.default, (x, out, 0.2, True)),
    ]:
        torch.library.opcheck(op, args, test_utils=utils)
