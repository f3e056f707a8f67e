"""Autocast (``ops.amp``): our ops follow ``torch.autocast`` as ``F.conv2d`` and ``nn.BatchNorm2d`` do.

Under autocast the conv family casts x, the weight and the residual to the autocast dtype and keeps the
per-channel epilogue in float32; so a call under autocast must be *the same computation* as the call on inputs cast
by hand outside autocast: the tests check that bit for bit (the same kernels on the same inputs), gradients included,
and then the result against fp64 and against eager PyTorch under autocast.

The autocast dtype is bfloat16 on a GPU and float16 without one (the Triton interpreter has no bfloat16
arithmetic; CPU autocast takes float16 too).
"""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import HAS_CUDA
from helpers import GraphRecorder, randomize_bn, rel_err

import inception_kernels
from inception_kernels import ops
from inception_kernels.nn.layers import ConvBNAct
from inception_kernels.ops import amp, reference
from inception_kernels.utils import count_launches

AC = torch.bfloat16 if HAS_CUDA else torch.float16
# The comparisons with eager autocast (which rounds the conv output before BN, we after it): at most 8.8e-4 against
# 2e-2, measured on CPU (fp16), test seeds 1-29 (INCEPTION_KERNELS_TEST_SEED); the compiled step equals the eager
# one (0). fp64 comparisons of one op on inputs rounded to AC (unit roundoff: fp16 2^-11, bf16 2^-8), float32
# accumulation: an op's output error, elementwise, in units of UNIT_ROUNDOFF x the magnitude of the terms the
# output sums (|residual| + rs·(|conv·scale| + |bias|)), is at most 1 where our kernels round once (the output),
# and 2 where the cudnn route rounds ATen's GEMM output to AC before our epilogue. Measured on CPU (fp16), seeds
# 1-40, 16 cases each: largest 0.995 (triton) and 1.45 (cudnn); the bounds below are twice the analysis'.
UNIT_ROUNDOFF = 2.0**-8 if AC == torch.bfloat16 else 2.0**-11
ROUNDINGS_OP = {"triton": 2, "cudnn": 4}


def autocast(device):
    return torch.autocast(device.type, dtype=AC)


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# (N, C, H, W, K, R, S, stride, padding): C=3, odd channels with a 1x7, stride 2 on odd sizes, H=W=1
CASES = {
    "C3_3x3": (2, 3, 9, 9, 8, 3, 3, 1, 1),
    "C13_1x7": (1, 13, 7, 5, 19, 1, 7, 1, (0, 3)),
    "s2_odd": (2, 16, 9, 11, 12, 3, 3, 2, 0),
    "HW1": (1, 5, 1, 1, 6, 1, 1, 1, 0),
}


def _conv_inputs(case, device, full):
    N, C, H, W, K, R, S, stride, padding = case
    buf = _cl(torch.randn(N, C + 3, H, W, device=device))
    x = buf[:, 2 : 2 + C]  # a slice at a nonzero channel offset
    w = torch.randn(K, C, R, S, device=device) / (C * R * S) ** 0.5
    P = (H + 2 * (padding if isinstance(padding, int) else padding[0]) - R) // stride + 1
    Q = (W + 2 * (padding if isinstance(padding, int) else padding[1]) - S) // stride + 1
    tensors = {"x": x, "weight": w}
    if full:
        tensors.update(scale=torch.rand(K, device=device) + 0.5, bias=torch.randn(K, device=device),
                       residual=_cl(torch.randn(N, K, P, Q, device=device)))  # fmt: skip
    return tensors, dict(stride=stride, padding=padding), (N, K, P, Q)


@pytest.mark.parametrize("route", ["triton", "cudnn"])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "epilogue"])
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_under_autocast_is_conv2d_of_the_cast_inputs(name, full, route, device, poison, monkeypatch):
    """``ops.conv2d`` under autocast == ``ops.conv2d`` of the inputs cast to the autocast dtype by hand (output and
    every gradient, bit for bit); the output in the autocast dtype, the gradients in the leaves' float32; the result
    against fp64 of the rounded inputs. ``epilogue``: float32 scale / bias, a float32 residual, ReLU, ``out`` a
    channel slice of an autocast-dtype buffer."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", route)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # (cuDNN's wgrad may otherwise use atomics)
    tensors, geo, shape = _conv_inputs(CASES[name], device, full)
    kw = dict(geo, activation="relu" if full else None, residual_scale=0.3 if full else 1.0)
    g = torch.randn(shape, device=device).to(AC)
    grad = route == "triton" or HAS_CUDA  # (ATen's CPU convolution backward has no float16 kernel)

    def run(cast_by_hand, out):
        leaves = {k: t.detach().clone().requires_grad_(grad) for k, t in tensors.items()}
        args = dict(leaves)
        if cast_by_hand:
            args.update({k: args[k].to(AC) for k in ("x", "weight", "residual") if k in args})
        x, w = args.pop("x"), args.pop("weight")
        y = ops.conv2d(x, w, **args, **kw, out=out)
        grads = torch.autograd.grad(y, list(leaves.values()), g) if grad else [torch.zeros(())] * len(leaves)
        return y, dict(zip(leaves, grads, strict=True))

    outs = [_cl(torch.full((shape[0], shape[1] + 5, *shape[2:]), float("nan"), device=device, dtype=AC))
            [:, 4 : 4 + shape[1]] if full else None for _ in range(2)]  # fmt: skip
    with autocast(device):
        y, grads = run(False, outs[0])
    y_hand, grads_hand = run(True, outs[1])
    assert y.dtype == AC and torch.equal(y, y_hand)
    for k, t in tensors.items():
        assert grads[k].dtype == t.dtype == torch.float32, k
        assert torch.equal(grads[k], grads_hand[k]), k
        assert not grad or grads[k].shape == t.shape, k
    r = {k: (t.to(AC) if k in ("x", "weight", "residual") else t).double() for k, t in tensors.items()}
    pad = geo["padding"] if isinstance(geo["padding"], tuple) else (geo["padding"],) * 2
    ref_kw = dict(kw, stride=(geo["stride"],) * 2, padding=(pad[0], pad[0], pad[1], pad[1]))
    x64, w64 = r.pop("x"), r.pop("weight")
    expected = reference.conv2d(x64, w64, **r, **ref_kw)
    # Elementwise, against the terms the output sums: our kernels round once (the output), the cudnn route twice
    # (ATen's GEMM output in AC, then ours), and the epilogue's terms may cancel (HW1: 6 outputs, ReLU keeps 2), so
    # a norm relative to the output is no bound (seed 11 gave 1.09e-3 > 1e-3 on the cudnn route that way).
    mag = reference.conv2d(x64, w64, stride=ref_kw["stride"], padding=ref_kw["padding"]).abs()
    if full:
        mag = r["residual"].abs() + 0.3 * (mag * r["scale"].view(1, -1, 1, 1).abs() + r["bias"].view(1, -1, 1, 1).abs())
    err = (y.double().cpu() - expected.cpu()).abs()
    assert (err <= ROUNDINGS_OP[route] * UNIT_ROUNDOFF * mag.cpu() + 1e-6).all(), (err / (UNIT_ROUNDOFF * mag.cpu())).max()


@pytest.mark.parametrize("route", ["triton", "cudnn"])
def test_conv_bn_act_under_autocast_is_the_step_on_cast_inputs(route, device, poison, monkeypatch):
    """The fused training step under autocast == the step on x and the weight cast by hand: output, running
    statistics (float32) and every gradient, bit for bit (the cudnn route on a CPU: forward only, as ATen's CPU
    convolution backward has no float16 kernel)."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", route)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    grad = route == "triton" or HAS_CUDA
    x = _cl(torch.randn(3, 13, 9, 7, device=device))
    w = torch.randn(10, 13, 3, 3, device=device) / 6
    gamma, beta = torch.rand(10, device=device) + 0.5, torch.randn(10, device=device)
    g = torch.randn(3, 10, 5, 4, device=device).to(AC)

    def run(cast_by_hand):
        leaves = [t.clone().requires_grad_(grad) for t in (x, w, gamma, beta)]
        xx, ww, ga, be = leaves
        if cast_by_hand:
            xx, ww = xx.to(AC), ww.to(AC)
        rm, rv = torch.zeros(10, device=device), torch.ones(10, device=device)
        y = ops.conv_bn_act(xx, ww, ga, be, rm, rv, momentum=0.1, eps=1e-3, stride=2, padding=1)
        return y, rm, rv, torch.autograd.grad(y, leaves, g) if grad else [torch.zeros(())] * 4

    with autocast(device):
        y, rm, rv, grads = run(False)
    y_hand, rm_hand, rv_hand, grads_hand = run(True)
    assert y.dtype == AC and torch.equal(y, y_hand)
    assert rm.dtype == torch.float32 and torch.equal(rm, rm_hand) and torch.equal(rv, rv_hand)
    for a, b in zip(grads, grads_hand, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_conv_bn_act_module_plans_follow_autocast(mode, device, poison):
    """``ConvBNAct`` (its planned calls): under autocast the same as its functional op on the cast weight, bit for
    bit; a plan made under autocast is not reused outside it (float32 again, equal to a fresh module's call) nor
    the other way round; against the eager composition (``nn.Conv2d`` → ``nn.BatchNorm2d`` → ReLU) under
    autocast."""
    m = randomize_bn(ConvBNAct(7, 9, (3, 1), stride=2, padding=(1, 0))).to(device).train(mode == "train")
    fresh = copy.deepcopy(m)
    eager = copy.deepcopy(m)
    x = _cl(torch.randn(2, 7, 11, 6, device=device))
    with torch.no_grad():
        y32 = fresh(x)  # a float32 plan first: the autocast call must not reuse it
    for _ in range(2):  # the first call makes the plan, the second runs it
        m_copy = copy.deepcopy(m)  # (train mode moves the running statistics: the functional call starts equal)
        with torch.no_grad(), autocast(device):
            y = m(x)
            y_eager = eager.forward_reference(x)
        with torch.no_grad():
            if mode == "eval":
                scale, bias = m_copy.folded()
                y_op = ops.conv2d(x.to(AC), m_copy.conv.weight.to(AC), stride=2, padding=(1, 0), scale=scale,
                                  bias=bias, activation="relu")  # fmt: skip
            else:
                bn = m_copy.bn
                y_op = ops.conv_bn_act(x.to(AC), m_copy.conv.weight.to(AC), bn.weight, bn.bias, bn.running_mean,
                                       bn.running_var, momentum=0.1, eps=bn.eps, stride=2, padding=(1, 0))  # fmt: skip
                assert torch.equal(m.bn.running_mean, bn.running_mean)
                assert torch.equal(m.bn.running_var, bn.running_var)
        assert y.dtype == y_eager.dtype == AC and torch.equal(y, y_op)
        assert rel_err(y, y_eager) < 2e-2
    with torch.no_grad():
        back = m(x)
        with autocast(device):
            m(x.to(AC))  # an input in the autocast dtype already: the same plan as before
        with pytest.raises(TypeError, match="dtype"):  # outside autocast a float32 weight and an AC input clash
            m(x.to(AC))
    assert back.dtype == torch.float32
    if mode == "eval":
        assert torch.equal(back, y32)


@pytest.mark.parametrize("route", ["triton", "cudnn"])
def test_conv_bn_act_module_train_step_under_autocast(route, device, poison, monkeypatch):
    """A planned training step of ``ConvBNAct`` under autocast takes the fp32 master weight (``plan_conv_bn_act(
    master=True)``): the same output and BN gradients as the step with the weight cast by hand, bit for bit, and a
    float32 weight gradient that is the hand-cast step's before its rounding to the autocast dtype (it rounds to
    exactly that); on the triton route no cast of the weight or of its gradient runs (ATen ``_to_copy``: only the
    input's)."""
    from inception_kernels.bench.counting import OpCounter

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", route)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    if route == "cudnn" and not HAS_CUDA:
        pytest.skip("ATen's CPU convolution backward has no float16 kernel")
    m = randomize_bn(ConvBNAct(6, 8, 3, padding=1)).to(device).train()
    hand = copy.deepcopy(m)
    x = _cl(torch.randn(2, 6, 5, 5, device=device))
    g = torch.randn(2, 8, 5, 5, device=device).to(AC)
    with autocast(device):
        m(x)  # the plan is made on the first call
    m.zero_grad(set_to_none=True)
    with OpCounter() as ops_seen:
        with autocast(device):
            y = m(x)
        (y * g).sum().backward()
    if route == "triton":  # (the cudnn route casts the weight for its ATen GEMMs)
        assert ops_seen.ops["_to_copy"] == 1  # x
    bn = hand.bn
    y_hand = ops.conv_bn_act(x.to(AC), hand.conv.weight.to(AC), bn.weight, bn.bias, bn.running_mean,
                             bn.running_var, momentum=0.1, eps=bn.eps, padding=1)  # fmt: skip
    (y_hand * g).sum().backward()
    assert torch.equal(y, y_hand)
    for k in ("bn.weight", "bn.bias"):
        p, q = m.get_parameter(k), hand.get_parameter(k)
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, q.grad), k
    dw, dw_hand = m.conv.weight.grad, hand.conv.weight.grad
    assert dw.dtype == dw_hand.dtype == torch.float32
    assert torch.equal(dw.to(AC).float(), dw_hand)


def test_cudnn_route_casts_a_master_weight_once_per_version(device):
    """The cudnn route's forward and backward GEMMs cast an fp32 master weight through the cached channels_last
    operand (``_weights.weight_operand``): one cast per weight version, shared by both calls and by the triton route,
    with the values of ``weight.to(dtype)``; a new version casts again; a weight in x's dtype is not copied."""
    from inception_kernels.ops import _weights, conv_cudnn

    w = torch.randn(8, 6, 3, 3, device=device)
    x = _cl(torch.randn(1, 6, 4, 4, device=device)).to(AC)
    with count_launches() as n:
        first = conv_cudnn._in_dtype_of(w, x)  # the forward's
        again = conv_cudnn._in_dtype_of(w, x)  # the backward's
    assert n.count == 1 and again is first and first is _weights.weight_operand(w, dtype=AC)
    assert first.dtype == AC and first.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(first, w.to(AC))
    with torch.no_grad():
        w.mul_(2.0)  # an optimizer step
    with count_launches() as n:
        after = conv_cudnn._in_dtype_of(w, x)
    assert n.count == 1 and torch.equal(after, w.to(AC))
    w16 = w.to(AC)
    assert conv_cudnn._in_dtype_of(w16, x) is w16


def _tv_googlenet_block():
    from torchvision.models.googlenet import Inception

    return randomize_bn(Inception(12, 8, 6, 8, 4, 6, 4))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_optimized_block_under_autocast_matches_eager_autocast(mode, device, poison):
    """An optimized torchvision Inception block under autocast against the torchvision block under autocast
    (same weights): output dtype and values; our kernels run (launches counted). (Gradients: the next test. Against
    eager they differ by luck at this size: a BN channel here normalizes 98 values, and one ReLU mask entry that
    fp16 rounding puts on the other side of the kink moves that channel's gradient by several per cent, in eager
    fp16 as much as in ours; measured against fp64 over seeds 0-7.)"""
    ref = _tv_googlenet_block().to(device).train(mode == "train")
    fast = inception_kernels.optimize(copy.deepcopy(ref))
    x = _cl(torch.randn(2, 12, 7, 7, device=device))
    with torch.no_grad(), autocast(device):
        with count_launches() as launches:
            y = fast(x)
        y_ref = ref(x)
    assert launches.count > 0
    assert y.dtype == y_ref.dtype == AC
    # fp16/bf16 rounding of every intermediate in both (eager rounds the conv output before BN, we after it)
    assert rel_err(y, y_ref) < 2e-2


def test_optimized_block_train_under_autocast_is_the_block_cast_by_hand(device, poison):
    """A training step of an optimized block under autocast is, bit for bit, the step of the same block with its
    conv weights and its input cast to the autocast dtype by hand (BN parameters float32, as autocast leaves them):
    output, input gradient, every parameter gradient (float32 under autocast; a conv weight's rounds to the
    hand-cast one) and the running statistics."""
    fast = inception_kernels.optimize(_tv_googlenet_block()).to(device).train()
    hand = copy.deepcopy(fast)
    with torch.no_grad():
        for m in hand.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.to(AC)
    x = _cl(torch.randn(2, 12, 7, 7, device=device))
    x_ac, x_hand = x.clone().requires_grad_(), x.to(AC).requires_grad_()
    g = torch.randn(2, 26, 7, 7, device=device).to(AC)
    with autocast(device), count_launches() as launches:
        y = fast(x_ac)
    y_hand = hand(x_hand)
    assert launches.count > 0 and y.dtype == y_hand.dtype == AC and torch.equal(y, y_hand)
    (y * g).sum().backward()
    (y_hand * g).sum().backward()
    assert x_ac.grad.dtype == torch.float32 and torch.equal(x_ac.grad, x_hand.grad.float())
    hand_params = dict(hand.named_parameters())
    for k, p in fast.named_parameters():
        assert p.grad.dtype == torch.float32, k
        # a conv weight's gradient is returned as the wgrad accumulated it (fp32 master weight): it rounds to the
        # hand-cast block's 16-bit one
        assert torch.equal(p.grad.to(hand_params[k].dtype), hand_params[k].grad), k
    hand_buffers = dict(hand.named_buffers())
    for k, b in fast.named_buffers():
        assert torch.equal(b, hand_buffers[k]), k


def test_blocks_whose_dtype_eager_promotes_run_the_reference_under_autocast(device, monkeypatch):
    """A block whose output dtype eager type promotion takes from the input (a max-pool leaf of x concatenated:
    torchvision's InceptionB; a residual sum: timm's Block35), given a float32 input under autocast, returns
    eager's dtype (float32); given an autocast-dtype input (the case inside a network), our kernels run."""
    from timm.models.inception_resnet_v2 import Block35
    from torchvision.models.inception import InceptionB

    for ref, c in ((randomize_bn(InceptionB(8)), 8), (randomize_bn(Block35(scale=0.17)), 320)):
        ref = ref.to(device).eval()
        fast = inception_kernels.optimize(copy.deepcopy(ref))
        x = _cl(torch.randn(1, c, 5, 5, device=device))
        with torch.no_grad(), autocast(device):
            y, y_ref = fast(x), ref(x)
            assert y.dtype == y_ref.dtype == torch.float32
            assert rel_err(y, y_ref) < 2e-2
            with count_launches() as launches:
                y16 = fast(x.to(AC))
            assert y16.dtype == ref(x.to(AC)).dtype == AC and launches.count > 0
            assert rel_err(y16, ref(x.to(AC))) < 2e-2


def test_compiled_train_step_under_autocast_runs_our_ops(device):
    """torch.compile(fullgraph=True) of a training ConvBNAct under autocast: our conv2d_stats → bn_finalize →
    bn_act_train on autocast-dtype tensors, no ATen convolution or batch norm, the eager call's result."""
    torch._dynamo.reset()
    m = randomize_bn(ConvBNAct(5, 6, 3, padding=1)).to(device).train()
    eager = copy.deepcopy(m)
    x = _cl(torch.randn(2, 5, 4, 4, device=device))
    rec = GraphRecorder()
    compiled = torch.compile(m, fullgraph=True, backend=rec.backend)
    with autocast(device):
        y = compiled(x)
        y_e = eager(x)
    assert y.dtype == AC
    assert rel_err(y, y_e) < 1e-3
    assert rec.count("conv2d_stats") == rec.count("bn_finalize") == rec.count("bn_act_train") == 1
    assert not rec.aten_batch_norm() and not [t for t in rec.targets["fw"] if "convolution" in t]
    assert torch.allclose(m.bn.running_mean, eager.bn.running_mean, rtol=1e-3, atol=1e-5)


def test_float64_and_autocast_off_are_not_cast(device, monkeypatch):
    """Autocast leaves float64 alone (the reference route runs it in float64) and nothing is cast with autocast
    off; ``amp.dtype_for`` says so for every kind of input."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    x64 = torch.randn(1, 3, 5, 5, device=device, dtype=torch.float64)
    m64 = randomize_bn(ConvBNAct(3, 4, 3, padding=1)).to(device, torch.float64).eval()
    with torch.no_grad(), autocast(device):
        assert m64(x64).dtype == torch.float64
        assert rel_err(m64(x64), m64.forward_reference(x64)) == 0
        assert amp.dtype_for(x64) is None
        assert amp.dtype_for(torch.ones(2, device=device, dtype=torch.int64)) is None
        assert amp.dtype_for(torch.ones(2, device="meta")) is None
        assert amp.dtype_for(torch.ones(2, device=device)) == AC
        assert amp.dtype_for(None) is None
    assert amp.dtype_for(torch.ones(2, device=device)) is None


def test_out_of_another_dtype_under_autocast_is_a_type_error(device):
    x = _cl(torch.randn(1, 4, 3, 3, device=device))
    w = torch.randn(5, 4, 1, 1, device=device)
    out = _cl(torch.empty(1, 5, 3, 3, device=device))
    with autocast(device), pytest.raises(TypeError, match="out"):
        ops.conv2d(x, w, out=out)


def test_nn_module_contract_kept(device):
    """An optimized model under autocast returns what the torchvision model returns under autocast: the classifier
    (``nn.Linear``) in the autocast dtype."""
    model = nn.Sequential(_tv_googlenet_block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(26, 3)).eval()
    fast = inception_kernels.optimize(copy.deepcopy(model)).to(device)
    model = model.to(device)
    x = _cl(torch.randn(2, 12, 5, 5, device=device))
    with torch.no_grad(), autocast(device):
        y, y_ref = fast(x), model(x)
    assert y.dtype == y_ref.dtype == AC
    assert rel_err(y, y_ref) < 2e-2


def test_googlenet_eval_under_autocast_matches_torchvision_under_autocast(device):
    """A whole network of ours (``create_model("googlenet")``, torchvision's weights) under autocast against
    torchvision's under autocast at the smallest legal input: the logits' dtype, their values, and our kernels
    doing the work (the stem conv casts the float32 image; every later layer gets autocast-dtype tensors)."""
    import torchvision

    from inception_kernels import create_model

    ref = randomize_bn(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)).eval()
    ours = create_model("googlenet", aux_logits=False)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours, ref = ours.to(device).eval(), ref.to(device)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 15, 15, device=device)
    with torch.no_grad(), autocast(device):
        with count_launches() as launches:
            y = ours(x)
        y_ref = ref(x)
    with torch.no_grad():
        y64 = ref.double()(x.double())
    assert y.dtype == y_ref.dtype == AC and launches.count > 20
    # against fp64: within twice eager autocast's own error (and a floor for its luck)
    assert rel_err(y, y64) < max(2 * rel_err(y_ref, y64), 1e-2)


@pytest.mark.parametrize("how", ["autocast", "bf16 model"])
def test_reference_route_returns_the_16_bit_dtype(how, monkeypatch):
    """The reference route keeps a 16-bit dtype through a float32 epilogue (it once returned float32 for a bf16
    input with a float32 folded BN, and the next layer raised): an optimized block in bf16, and under autocast,
    returns the 16-bit dtype, close to eager's."""
    from torchvision.models.googlenet import BasicConv2d

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ref = randomize_bn(nn.Sequential(BasicConv2d(5, 12, kernel_size=3, padding=1), _tv_googlenet_block())).eval()
    fast = inception_kernels.optimize(copy.deepcopy(ref))
    x = _cl(torch.randn(1, 5, 5, 5))
    with torch.no_grad():
        if how == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, y_ref = fast(x), ref(x)
        else:
            y, y_ref = fast.to(torch.bfloat16)(x.bfloat16()), ref.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 5e-2


@pytest.mark.parametrize("impl", ["triton", "cudnn", "reference"])
@pytest.mark.parametrize("family", ["conv_dgrad", "conv_wgrad"])
def test_backward_gemms_take_an_fp32_master_weight(family, impl, device, poison):
    """Every dgrad / wgrad implementation the dispatch layer may pick for a planned autocast training step
    (``plan_conv_bn_act(master=True)``) takes the fp32 master weight of a 16-bit x: the same result, bit for bit,
    as with the weight cast by hand."""
    from inception_kernels.ops import dispatch

    chosen = dispatch.implementations(family)[impl]
    x = _cl(torch.randn(2, 5, 7, 6, device=device)).to(AC)
    w = torch.randn(4, 5, 3, 3, device=device)
    gp = _cl(torch.randn(2, 4, 4, 3, device=device)).to(AC)
    why = chosen.reasons(dispatch.backward_problem(dispatch.conv_problem(x, w, (2, 2), (1, 1, 1, 1))))
    if why:
        pytest.skip("; ".join(why))
    if family == "conv_dgrad":
        got, want = (chosen.fn(gp, x, ww, None, (2, 2), (1, 1, 1, 1)) for ww in (w, w.to(AC)))
    else:
        got, want = (chosen.fn(gp, x, ww, (2, 2), (1, 1, 1, 1)) for ww in (w, w.to(AC)))
    assert got.dtype == want.dtype and torch.equal(got, want)
