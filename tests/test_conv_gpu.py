"""GPU-only checks of ops.conv2d: compiled kernels on Inception's real shapes, bf16/fp16 under the
flash-attention rule, TF32, 64-bit indexing, determinism and CUDA-graph capture. Skipped without a CUDA GPU."""

import math

import pytest
import torch

from inception_kernels.ops import _args, conv2d, reference
from inception_kernels.utils import rel_err

pytestmark = pytest.mark.gpu

# (N, C, H, W, K, (R, S), stride, padding): Inception-v3 / v4 / GoogLeNet layers
SHAPES = {
    "v3_stem_3x3_s2": (4, 3, 299, 299, 32, (3, 3), 2, 0),
    "googlenet_stem_7x7_s2": (4, 3, 224, 224, 64, (7, 7), 2, 3),
    "v3_5b_5x5": (8, 48, 35, 35, 64, (5, 5), 1, 2),
    "v3_5b_3x3": (8, 64, 35, 35, 96, (3, 3), 1, 1),
    "v3_6a_3x3_s2": (8, 288, 35, 35, 384, (3, 3), 2, 0),
    "v3_6b_1x7": (8, 128, 17, 17, 128, (1, 7), 1, (0, 3)),
    "v3_6b_7x1": (8, 128, 17, 17, 192, (7, 1), 1, (3, 0)),
    "v3_6e_1x1": (8, 768, 17, 17, 192, (1, 1), 1, 0),
    "v3_7b_1x3": (8, 384, 8, 8, 384, (1, 3), 1, (0, 1)),
    "v3_7b_3x3_448": (8, 448, 8, 8, 384, (3, 3), 1, 1),
    "odd_channels": (3, 37, 13, 11, 53, (3, 3), 2, 1),
}


def _inputs(shape, dtype, residual=True):
    N, C, H, W, K, (R, S), stride, padding = shape
    dev = "cuda"
    x = torch.randn(N, C, H, W, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    w = (torch.randn(K, C, R, S, device=dev) / math.sqrt(C * R * S)).to(dtype)
    sc = torch.rand(K, device=dev) + 0.5
    b = torch.randn(K, device=dev) * 0.1
    st, pad = _args.pair(stride, "s"), _args.conv_padding(padding)
    shp = _args.conv_out_shape(x.shape, w.shape, st, pad)
    res = (
        torch.randn(shp, device=dev, dtype=dtype).to(memory_format=torch.channels_last) if residual else None
    )
    return dict(x=x, weight=w, scale=sc, bias=b, residual=res, stride=st, padding=pad)


def _run(inp, fn, g, upcast=None):
    d = {
        k: (v.detach().to(upcast or v.dtype).requires_grad_() if isinstance(v, torch.Tensor) else v)
        for k, v in inp.items()
    }
    y = fn(**d, activation="relu", residual_scale=0.2)
    names = [k for k, v in d.items() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad(y, [d[k] for k in names], g.to(y.dtype))
    return y, dict(zip(names, grads))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_vs_fp64_flash_rule(name, dtype):
    """ours(dtype) vs fp64 reference: error <= 2x the error of PyTorch's own dtype op (cuDNN) + small atol."""
    inp = _inputs(SHAPES[name], dtype)
    y0 = reference.conv2d(**{k: v for k, v in inp.items()}, activation="relu", residual_scale=0.2)
    g = torch.randn(y0.shape, device="cuda", dtype=torch.float32).to(memory_format=torch.channels_last)
    y_ref, g_ref = _run(inp, reference.conv2d, g, upcast=torch.float64)
    y_ours, g_ours = _run(inp, conv2d, g)
    y_torch, g_torch = _run(inp, reference.conv2d, g)
    atol = 1e-5 if dtype == torch.float32 else 2e-3
    assert not y_ours.isnan().any()
    assert rel_err(y_ours, y_ref) <= 2 * rel_err(y_torch, y_ref) + atol, (
        rel_err(y_ours, y_ref),
        rel_err(y_torch, y_ref),
    )
    for k in g_ref:
        e_ours, e_torch = rel_err(g_ours[k], g_ref[k]), rel_err(g_torch[k], g_ref[k])
        assert e_ours <= 2 * e_torch + atol, f"grad {k}: ours {e_ours:.2e} torch {e_torch:.2e}"


def test_gpu_tf32_when_allowed(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    inp = _inputs(SHAPES["v3_5b_3x3"], torch.float32)
    y = conv2d(**inp, activation="relu", residual_scale=0.2)
    y_ref = reference.conv2d(
        **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()},
        activation="relu",
        residual_scale=0.2,
    )
    assert 1e-6 < rel_err(y, y_ref) < 3e-3  # TF32 really used, and within TF32 accuracy


def test_gpu_tf32_switch_is_followed_by_repeated_calls(monkeypatch):
    """The functional call's memo (``ops.conv.conv2d``: one decision per signature) keys on TF32: the same call
    signature switches between IEEE and TF32 accuracy with ``torch.backends.cudnn.allow_tf32``, each way twice."""
    inp = _inputs(SHAPES["v3_5b_3x3"], torch.float32, residual=False)
    y_ref = reference.conv2d(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()},
                             activation="relu")  # fmt: skip
    with torch.no_grad():
        for allow in (False, True, False, True):
            monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
            for _ in range(2):
                err = rel_err(conv2d(**inp, activation="relu"), y_ref)
                assert (1e-6 < err < 3e-3) if allow else (err < 1e-5), (allow, err)


def test_gpu_out_slice_poisoned():
    inp = _inputs(SHAPES["v3_6b_7x1"], torch.bfloat16, residual=False)
    N, K = inp["x"].shape[0], inp["weight"].shape[0]
    buf = torch.full((N, 768, 17, 17), float("nan"), device="cuda", dtype=torch.bfloat16)
    buf = buf.to(memory_format=torch.channels_last)
    conv2d(**inp, activation="relu", out=buf[:, 384 : 384 + K])
    assert buf[:, :384].isnan().all() and buf[:, 384 + K :].isnan().all()
    ref = reference.conv2d(**inp, activation="relu")
    assert rel_err(buf[:, 384 : 384 + K], ref) < 1e-2


def test_gpu_int64_indexing():
    """Input and output past 2**31 elements: offsets must be computed in 64 bits."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GB of free GPU memory")
    N, C, H, W, K = 33, 64, 1024, 1024, 16  # x: 2.2e9 elements (bf16, 4.4 GB)
    x = torch.empty(N, C, H, W, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    x.normal_()
    w = torch.randn(K, C, 3, 3, device="cuda", dtype=torch.bfloat16) / 24
    y = conv2d(x, w, padding=1, activation="relu")
    assert y.shape == (N, K, H, W)
    # check the last image (offsets beyond 2**31) and the first against cuDNN on those images alone
    for n in (0, N - 1):
        ref = torch.relu(torch.nn.functional.conv2d(x[n : n + 1].float(), w.float(), padding=1))
        assert rel_err(y[n : n + 1], ref) < 1e-2, n


def test_gpu_wgrad_bitwise_deterministic():
    inp = _inputs(SHAPES["v3_6e_1x1"], torch.bfloat16)
    g = torch.randn(8, 192, 17, 17, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    _, g1 = _run(inp, conv2d, g)
    _, g2 = _run(inp, conv2d, g)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k


def test_gpu_cuda_graph_capture():
    inp = _inputs(SHAPES["v3_5b_5x5"], torch.bfloat16, residual=False)
    f = lambda: conv2d(**inp, activation="relu")
    y_eager = f()  # warm-up: autotuning and compilation happen outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = f()
    inp["x"].normal_()
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(y_static, y_eager)
    assert torch.equal(y_static, f())


def test_gpu_autotune_path(monkeypatch):
    """INCEPTION_KERNELS_AUTOTUNE=1 times the configs and runs the winner: same function."""
    monkeypatch.setenv("INCEPTION_KERNELS_AUTOTUNE", "1")
    inp = _inputs(SHAPES["v3_7b_1x3"], torch.bfloat16)
    g = torch.randn(8, 384, 8, 8, device="cuda").to(memory_format=torch.channels_last)
    y_ref, g_ref = _run(inp, reference.conv2d, g, upcast=torch.float64)
    y, gr = _run(inp, conv2d, g)
    assert rel_err(y, y_ref) < 1e-2
    for k in g_ref:
        assert rel_err(gr[k], g_ref[k]) < 2e-2, k
