"""Inception-v4 and the Inception-ResNets.

* ``inception_v4`` and ``inception_resnet_v2`` against timm: same parameters (state_dict strict, same key order),
  same function in eval and train mode (forward, backward, running statistics) on the reference backend at full
  size (and an odd size in eval), on our kernels at the smallest legal input; same multiply-adds.
* ``inception_resnet_v1`` and ``inception_resnet_v2_paper`` (no reference implementation): output and
  intermediate shapes, and parameter / multiply-add counts against a derivation written here from the paper's
  figures, independently of the model code. The derivation is checked on the two timm networks first.
* Every block type (stem Mixed_3a/4a/5a, v4 A/B/C and the reductions, Block35/17/8 — with and without the final
  ReLU — and the v1 blocks) on our kernels in eval and train mode against the same block on the reference backend
  in fp64.
"""

import copy

import pytest
import torch
from helpers import (
    assert_same_grads_and_buffers,
    check_eval_on_our_kernels,
    check_train_block,
    n_params,
    randomize_bn,
    rel_err,
)

from inception_kernels.models import create_model, list_models
from inception_kernels.models import inception_resnet as ir
from inception_kernels.models import inception_v4 as v4
from inception_kernels.nn.engine import InceptionBlock
from inception_kernels.utils import count_launches, count_macs

timm = pytest.importorskip("timm")


# name: (full-size input, smallest legal input, parameters, multiply-adds at 299²)
REFERENCES = {
    "inception_v4": ((299, 299), (75, 75), 42_679_816, 12_253_974_624),
    "inception_resnet_v2": ((299, 299), (75, 75), 55_843_464, 13_155_794_016),
}


def _pair(name):
    ref = randomize_bn(timm.create_model(name, pretrained=False))
    ours = create_model(name)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.mark.parametrize("name", list(REFERENCES))
def test_parameter_count_state_dict_and_macs(name):
    ours, ref = _pair(name)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert n_params(ours) == n_params(ref) == REFERENCES[name][2]
    assert count_macs(ours, (299, 299)) == count_macs(ref, (299, 299)) == REFERENCES[name][3]


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("size", ["full", "odd"])
def test_eval_equals_timm_reference_backend(name, size, monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = _pair(name)
    ours.eval(), ref.eval()
    h, w = REFERENCES[name][0] if size == "full" else (331, 299)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) < 1e-5


@pytest.mark.parametrize("name", list(REFERENCES))
def test_train_forward_backward_and_running_stats(name, monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = _pair(name)
    ours.train(), ref.train()
    x = torch.randn(2, 3, *REFERENCES[name][0])
    out_o, out_r = ours(x), ref(x)
    assert rel_err(out_o, out_r) < 1e-4
    weight = torch.linspace(-1, 1, out_r.shape[1])
    (out_o * weight).sum().backward()
    (out_r * weight).sum().backward()
    assert_same_grads_and_buffers(ours, ref)


@pytest.mark.slow  # whole network in the interpreter: 88 s on 2 cores (test-slow; CI runs it)
def test_eval_our_kernels_smallest_input(device):
    """Inception-v4 on our kernels (interpreter without a GPU: ~30 s) at 75×75, vs timm in fp64."""
    ours, ref = _pair("inception_v4")
    check_eval_on_our_kernels(ours, ref, torch.randn(1, 3, *REFERENCES["inception_v4"][1]), device)


# ----------------------------------------------------------------------------------------------------------
# Parameter and multiply-add counts derived from the paper's figures, independently of the model code
# ----------------------------------------------------------------------------------------------------------
class Tally:
    """Parameters and multiply-adds, layer by layer: a k_h×k_w conv from c_in to c_out on a g×g output grid has
    k_h·k_w·c_in·c_out weights (+ 2·c_out BN γ, β; or + c_out bias for the linear up-projections) and
    k_h·k_w·c_in·c_out·g² multiply-adds. Grid sizes are the 299² ones printed in the paper's figures."""

    def __init__(self):
        self.params = 0
        self.macs = 0

    def conv(self, cin, cout, k, grid, bn=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        self.params += kh * kw * cin * cout + (2 * cout if bn else cout)
        self.macs += kh * kw * cin * cout * grid * grid
        return cout

    def fc(self, cin, classes=1000):
        self.params += cin * classes + classes
        self.macs += cin * classes


def _stem_fig3(t):
    """Fig. 3: 299 → 149 → 147 → 147 → [maxpool | 3×3/2 96 V] 73 → two branches to 71 → [3×3/2 192 V | maxpool]."""
    t.conv(3, 32, 3, 149), t.conv(32, 32, 3, 147), t.conv(32, 64, 3, 147)
    t.conv(64, 96, 3, 73)  # concat with the max-pooled 64 → 160
    t.conv(160, 64, 1, 73), t.conv(64, 96, 3, 71)
    t.conv(160, 64, 1, 73), t.conv(64, 64, (1, 7), 73), t.conv(64, 64, (7, 1), 73), t.conv(64, 96, 3, 71)
    t.conv(192, 192, 3, 35)  # concat with the max-pooled 192
    return 384


def _reduction_a_fig7(t, cin, k, l, m, n):  # noqa: E741
    t.conv(cin, n, 3, 17)
    t.conv(cin, k, 1, 35), t.conv(k, l, 3, 35), t.conv(l, m, 3, 17)
    return cin + n + m


def _reduction_b_fig18(t, cin):
    t.conv(cin, 256, 1, 17), t.conv(256, 384, 3, 8)
    t.conv(cin, 256, 1, 17), t.conv(256, 288, 3, 8)
    t.conv(cin, 256, 1, 17), t.conv(256, 288, 3, 17), t.conv(288, 320, 3, 8)
    return cin + 384 + 288 + 320


def _v2_blocks(t, c35, n_a, n_b, n_c):
    """Figs. 16, 7 (256, 256, 384, 384), 17, 18, 19; every up-projection as wide as its block input."""
    for _ in range(n_a):
        t.conv(c35, 32, 1, 35)
        t.conv(c35, 32, 1, 35), t.conv(32, 32, 3, 35)
        t.conv(c35, 32, 1, 35), t.conv(32, 48, 3, 35), t.conv(48, 64, 3, 35)
        t.conv(32 + 32 + 64, c35, 1, 35, bn=False)
    c17 = _reduction_a_fig7(t, c35, 256, 256, 384, 384)
    for _ in range(n_b):
        t.conv(c17, 192, 1, 17)
        t.conv(c17, 128, 1, 17), t.conv(128, 160, (1, 7), 17), t.conv(160, 192, (7, 1), 17)
        t.conv(192 + 192, c17, 1, 17, bn=False)
    c8 = _reduction_b_fig18(t, c17)
    for _ in range(n_c):
        t.conv(c8, 192, 1, 8)
        t.conv(c8, 192, 1, 8), t.conv(192, 224, (1, 3), 8), t.conv(224, 256, (3, 1), 8)
        t.conv(192 + 256, c8, 1, 8, bn=False)
    return c8


def derive_inception_v4():
    t = Tally()
    c = _stem_fig3(t)
    for _ in range(4):  # Fig. 4
        t.conv(c, 96, 1, 35)
        t.conv(c, 64, 1, 35), t.conv(64, 96, 3, 35)
        t.conv(c, 64, 1, 35), t.conv(64, 96, 3, 35), t.conv(96, 96, 3, 35)
        t.conv(c, 96, 1, 35)
    c = _reduction_a_fig7(t, c, 192, 224, 256, 384)
    assert c == 1024
    for _ in range(7):  # Fig. 5
        t.conv(c, 384, 1, 17)
        t.conv(c, 192, 1, 17), t.conv(192, 224, (1, 7), 17), t.conv(224, 256, (7, 1), 17)
        t.conv(c, 192, 1, 17), t.conv(192, 192, (7, 1), 17), t.conv(192, 224, (1, 7), 17)
        t.conv(224, 224, (7, 1), 17), t.conv(224, 256, (1, 7), 17)
        t.conv(c, 128, 1, 17)
    # Fig. 8
    t.conv(c, 192, 1, 17), t.conv(192, 192, 3, 8)
    t.conv(c, 256, 1, 17), t.conv(256, 256, (1, 7), 17), t.conv(256, 320, (7, 1), 17), t.conv(320, 320, 3, 8)
    c = c + 192 + 320
    for _ in range(3):  # Fig. 6
        t.conv(c, 256, 1, 8)
        t.conv(c, 384, 1, 8), t.conv(384, 256, (1, 3), 8), t.conv(384, 256, (3, 1), 8)
        t.conv(c, 384, 1, 8), t.conv(384, 448, (3, 1), 8), t.conv(448, 512, (1, 3), 8)
        t.conv(512, 256, (1, 3), 8), t.conv(512, 256, (3, 1), 8)
        t.conv(c, 256, 1, 8)
    t.fc(c)
    return t


def derive_inception_resnet_v2_tfslim():
    """TF-slim layout: v3-like stem + Mixed_5b, then the v2 blocks ×10 / ×20 / ×10, conv2d_7b."""
    t = Tally()
    t.conv(3, 32, 3, 149), t.conv(32, 32, 3, 147), t.conv(32, 64, 3, 147)
    t.conv(64, 80, 1, 73), t.conv(80, 192, 3, 71)
    t.conv(192, 96, 1, 35)
    t.conv(192, 48, 1, 35), t.conv(48, 64, 5, 35)
    t.conv(192, 64, 1, 35), t.conv(64, 96, 3, 35), t.conv(96, 96, 3, 35)
    t.conv(192, 64, 1, 35)
    c = _v2_blocks(t, 320, 10, 20, 10)
    t.conv(c, 1536, 1, 8)
    t.fc(1536)
    return t


def derive_inception_resnet_v1():
    """Figs. 14, 10 (×5), 7 (192, 192, 256, 384), 11 (×10), 12, 13 (×5)."""
    t = Tally()
    t.conv(3, 32, 3, 149), t.conv(32, 32, 3, 147), t.conv(32, 64, 3, 147)
    t.conv(64, 80, 1, 73), t.conv(80, 192, 3, 71), t.conv(192, 256, 3, 35)
    for _ in range(5):
        t.conv(256, 32, 1, 35)
        t.conv(256, 32, 1, 35), t.conv(32, 32, 3, 35)
        t.conv(256, 32, 1, 35), t.conv(32, 32, 3, 35), t.conv(32, 32, 3, 35)
        t.conv(96, 256, 1, 35, bn=False)
    c = _reduction_a_fig7(t, 256, 192, 192, 256, 384)
    assert c == 896
    for _ in range(10):
        t.conv(896, 128, 1, 17)
        t.conv(896, 128, 1, 17), t.conv(128, 128, (1, 7), 17), t.conv(128, 128, (7, 1), 17)
        t.conv(256, 896, 1, 17, bn=False)
    t.conv(896, 256, 1, 17), t.conv(256, 384, 3, 8)
    t.conv(896, 256, 1, 17), t.conv(256, 256, 3, 8)
    t.conv(896, 256, 1, 17), t.conv(256, 256, 3, 17), t.conv(256, 256, 3, 8)
    c = 896 + 384 + 256 + 256
    assert c == 1792
    for _ in range(5):
        t.conv(1792, 192, 1, 8)
        t.conv(1792, 192, 1, 8), t.conv(192, 192, (1, 3), 8), t.conv(192, 192, (3, 1), 8)
        t.conv(384, 1792, 1, 8, bn=False)
    t.fc(1792)
    return t


def derive_inception_resnet_v2_paper():
    """Figs. 3, 16 (×5), 7 (256, 256, 384, 384), 17 (×10), 18, 19 (×5)."""
    t = Tally()
    c = _v2_blocks(t, _stem_fig3(t), 5, 10, 5)
    assert c == 2144
    t.fc(c)
    return t


def test_derivation_reproduces_timm():
    """The derivation method, applied to the two networks timm holds, gives their exact counts."""
    for name, derive in [("inception_v4", derive_inception_v4), ("inception_resnet_v2", derive_inception_resnet_v2_tfslim)]:  # fmt: skip
        t = derive()
        assert (t.params, t.macs) == REFERENCES[name][2:], name


@pytest.mark.parametrize(
    "name, derive, params, macs",
    [
        ("inception_resnet_v1", derive_inception_resnet_v1, 22_756_328, 6_206_361_696),
        ("inception_resnet_v2_paper", derive_inception_resnet_v2_paper, 32_433_928, 9_257_953_632),
    ],
)
def test_paper_networks_parameters_and_macs(name, derive, params, macs):
    t = derive()
    model = create_model(name)
    assert n_params(model) == t.params == params
    assert count_macs(model, (299, 299)) == t.macs == macs
    # the paper: Inception-ResNet-v1 costs "roughly" Inception-v3 (5.7 G); the paper's v2 layout (5/10/5 blocks)
    # is cheaper than Inception-v4 (12.25 G) — TF-slim's release doubles the block counts (13.16 G)
    assert 5.5e9 < macs < 6.5e9 if name == "inception_resnet_v1" else 9e9 < macs < 9.5e9


@pytest.mark.parametrize(
    "name, taps",
    [
        ("inception_resnet_v1", {"conv2d_4b": (256, 35), "repeat_1.4": (256, 35), "mixed_6a": (896, 17),
                                 "repeat_2.9": (896, 17), "mixed_7a": (1792, 8), "repeat_3.4": (1792, 8)}),
        ("inception_resnet_v2_paper", {"mixed_5a": (384, 35), "repeat.4": (384, 35), "mixed_6a": (1152, 17),
                                       "repeat_1.9": (1152, 17), "mixed_7a": (2144, 8), "repeat_2.4": (2144, 8)}),
    ],
)  # fmt: skip
def test_paper_networks_shapes(name, taps, monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(create_model(name, num_classes=10)).eval()
    seen = {}
    hooks = [model.get_submodule(k).register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o.shape))
             for k in taps]  # fmt: skip
    with torch.no_grad():
        y = model(torch.randn(2, 3, 299, 299))
    for h in hooks:
        h.remove()
    assert y.shape == (2, 10) and not y.isnan().any()
    assert seen == {k: (2, c, g, g) for k, (c, g) in taps.items()}
    assert model.out_hw((299, 299)) == (8, 8) and model.out_hw((75, 75)) == (1, 1)


def test_paper_networks_train_step_reference_backend(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    for name in ("inception_resnet_v1", "inception_resnet_v2_paper"):
        model = create_model(name, num_classes=10).train()
        y = model(torch.randn(2, 3, 75, 75))
        y.square().sum().backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters()), name
        assert model.get_submodule("mixed_6a.branch0").bn.num_batches_tracked.item() == 1


def test_residual_scales_and_last_relu_options():
    m = create_model("inception_resnet_v2", scale_a=0.3, scale_b=0.2, scale_c=0.1, scale_last=0.5)
    assert m.repeat["0"].spec.scale == 0.3 and m.repeat_1["19"].spec.scale == 0.2
    assert m.repeat_2["8"].spec.scale == 0.1 and m.block8.spec.scale == 0.5
    assert m.repeat_2["8"].spec.act and not m.block8.spec.act
    m = create_model("inception_resnet_v1", last_relu=False)
    assert m.repeat_3["3"].spec.act and not m.repeat_3["4"].spec.act
    m = create_model("inception_resnet_v2_paper")
    assert all(b.spec.act for b in m.repeat_2.values())
    assert [b.spec.proj.out for b in (m.repeat["0"], m.repeat_1["0"], m.repeat_2["0"])] == [384, 1152, 2144]


def test_registry_and_min_size_errors():
    names = ["inception_v4", "inception_resnet_v1", "inception_resnet_v2", "inception_resnet_v2_paper"]
    assert set(names) <= set(list_models())
    for name in names:
        model = create_model(name).eval()
        with pytest.raises(ValueError, match=f"{name} needs an input of at least 75x75"):
            model(torch.randn(1, 3, 74, 90))


def test_residual_blocks_fuse_sibling_1x1():
    blk = InceptionBlock(320, ir.block35())
    assert blk.plan.hfuse == [0, 1, 2] and blk.out_channels == 320
    assert InceptionBlock(1536, v4.inception_c()).plan.hfuse == [0, 1, 2]


# ----------------------------------------------------------------------------------------------------------
# Single blocks on our kernels (eval and train) against the reference backend in fp64
# ----------------------------------------------------------------------------------------------------------
# name: (spec, input channels, spatial size). Input channels are kept small (the branch widths are the real
# ones); residual blocks are as wide as their input. Every conv's N·P·Q is at least 18 (batch 2).
BLOCKS = {
    "mixed_3a": (v4.mixed_3a(), 16, 7),
    "mixed_4a": (v4.mixed_4a(), 16, 5),
    "mixed_5a": (v4.mixed_5a(), 16, 7),
    "v4_A": (v4.inception_a(), 16, 5),
    "v4_reduction_A": (v4.reduction_a(192, 224, 256, 384), 16, 7),
    "v4_B": (v4.inception_b(), 16, 5),
    "v4_reduction_B": (v4.reduction_b(), 16, 7),
    "v4_C": (v4.inception_c(), 16, 3),
    "mixed_5b": (ir.mixed_5b(), 16, 5),
    "block35": (ir.block35(24), 24, 5),
    "block17": (ir.block17(24), 24, 5),
    "reduction_B_v2": (ir.reduction_b_v2(), 16, 7),
    "block8": (ir.block8(24), 24, 3),
    "block8_no_relu": (ir.block8(24, 1.0, act=False), 24, 3),
    "v1_A": (ir.block_a_v1(24), 24, 5),
    "v1_B": (ir.block_b_v1(24), 24, 5),
    "v1_reduction_B": (ir.reduction_b_v1(), 16, 7),
    "v1_C": (ir.block_c_v1(24), 24, 3),
}
# train mode on our kernels is the slow part in the interpreter; the v1 blocks differ from the v2 ones only in
# widths (same residual path), so they are checked in eval only
TRAIN_BLOCKS = [k for k in BLOCKS if not k.startswith("v1_")]


@pytest.mark.parametrize("block", list(BLOCKS))
def test_eval_block_on_our_kernels(block, device, monkeypatch):
    spec, cin, size = BLOCKS[block]
    ours = randomize_bn(InceptionBlock(cin, spec)).eval()
    ref = copy.deepcopy(ours).double()
    x = torch.randn(2, cin, size, size)
    with torch.no_grad(), count_launches() as launches:
        y = ours.to(device)(x.to(device).to(memory_format=torch.channels_last))
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    with torch.no_grad():
        y_ref = ref(x.double())
    assert launches.count > 0
    assert y.shape == y_ref.shape
    assert rel_err(y.cpu(), y_ref) < 1e-5
    if spec.merge == "residual" and not spec.act:
        assert (y_ref < 0).any()  # no ReLU after the sum


@pytest.mark.parametrize("block", TRAIN_BLOCKS)
def test_train_block_on_our_kernels(block, device, monkeypatch):
    """Batch-statistics BN, leaves written into slices, the residual epilogue's backward: output, every gradient
    (input included) and the updated running statistics against the reference backend in fp64."""
    spec, cin, size = BLOCKS[block]
    check_train_block(InceptionBlock(cin, spec), size, device, monkeypatch)


def test_inception_v3_equals_timm(monkeypatch):
    """timm's inception_v3 (same names as torchvision's): strict load, eval and train outputs equal."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ref = randomize_bn(timm.create_model("inception_v3", pretrained=False, aux_logits=True, num_classes=37))
    ours = create_model("inception_v3", num_classes=37, dropout=ref.head_drop.p)  # timm default: 0
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert n_params(ours) == n_params(ref)
    x = torch.randn(2, 3, 299, 299)
    ours.eval(), ref.eval()
    with torch.no_grad():
        want = ref(x)
        want = want[0] if isinstance(want, tuple) else want  # timm returns (logits, aux) whenever aux_logits
        assert rel_err(ours(x), want) < 1e-5
    ours.train(), ref.train()
    torch.manual_seed(3)
    out_o = ours(x)
    torch.manual_seed(3)
    out_r = ref(x)
    assert rel_err(out_o[0], out_r[0]) < 1e-4 and rel_err(out_o[1], out_r[1]) < 1e-4


@pytest.mark.slow
def test_inception_resnet_v2_our_kernels_smallest_input(device):
    """The whole timm-equal Inception-ResNet-v2 on our kernels (interpreter without a GPU) at 75x75, eval."""
    ref = randomize_bn(timm.create_model("inception_resnet_v2", pretrained=False)).eval()
    ours = create_model("inception_resnet_v2")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours = ours.eval().to(device)
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        expected = ref.double()(x.double())
        got = ours(x.to(device))
    assert rel_err(got.cpu(), expected) < 1e-4
