"""GoogLeNet against torchvision (state_dict strict, eval and train on the reference backend, eval on our kernels),
Inception-v2 (no reference model: shapes, parameters and multiply-adds derived by hand), and the low-resolution
Inception-v3 variants of Rethinking §9."""

import copy
import functools

import pytest
import torch
from helpers import (
    assert_same_grads_and_buffers,
    check_eval_on_our_kernels,
    draw_input_off_kinks,
    n_params,
    randomize_bn,
    rel_err,
)

from inception_kernels.models import create_model
from inception_kernels.utils import count_launches, count_macs

torchvision = pytest.importorskip("torchvision")


@functools.cache
def macs(name: str, size: int, **kwargs) -> int:
    """count_macs of ``create_model(name, aux_logits=False, **kwargs)`` at size², computed once per session."""
    return count_macs(create_model(name, aux_logits=False, **kwargs), (size, size))


# ----------------------------------------------------------------------------------------------------------
# GoogLeNet vs torchvision
# ----------------------------------------------------------------------------------------------------------
# Table 1 of "Going Deeper with Convolutions" (also in ARCHITECTURES.md), written out again here so that the
# multiply-add and parameter derivations below do not read the model's own tables:
# name: (input channels, grid at 224², #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
GOOGLENET_TABLE = {
    "3a": (192, 28, 64, 96, 128, 16, 32, 32),
    "3b": (256, 28, 128, 128, 192, 32, 96, 64),
    "4a": (480, 14, 192, 96, 208, 16, 48, 64),
    "4b": (512, 14, 160, 112, 224, 24, 64, 64),
    "4c": (512, 14, 128, 128, 256, 24, 64, 64),
    "4d": (512, 14, 112, 144, 288, 32, 64, 64),
    "4e": (528, 14, 256, 160, 320, 32, 128, 128),
    "5a": (832, 7, 256, 160, 320, 32, 128, 128),
    "5b": (832, 7, 384, 192, 384, 48, 128, 128),
}


def googlenet_macs_224(k5: int = 3) -> int:
    """Multiply-adds at 224² derived from the table: stem conv1 7×7/2 (→112²), conv2 1×1 and conv3 3×3 (at 56²),
    then every module: hw²·(cin·(#1×1 + #3×3r + #5×5r + pool proj) + 9·#3×3r·#3×3 + k5²·#5×5r·#5×5), and the
    1024 → 1000 classifier. (Pools and BN are not multiply-adds; aux heads do not run in eval.)"""
    macs = 112**2 * 3 * 49 * 64 + 56**2 * 64 * 64 + 56**2 * 64 * 9 * 192
    for cin, hw, c1, c3r, c3, c5r, c5, pp in GOOGLENET_TABLE.values():
        macs += hw**2 * (cin * (c1 + c3r + c5r + pp) + 9 * c3r * c3 + k5 * k5 * c5r * c5)
    return macs + 1024 * 1000


def _googlenet_pair(aux_logits=True, transform_input=False):
    ref = torchvision.models.googlenet(
        weights=None, aux_logits=aux_logits, transform_input=transform_input, init_weights=True
    )
    randomize_bn(ref)
    ours = create_model("googlenet", aux_logits=aux_logits, transform_input=transform_input)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.mark.parametrize("aux_logits, expected", [(False, 6_624_904), (True, 13_004_888)])
def test_googlenet_strict_state_dict_and_param_count(aux_logits, expected):
    ours, ref = _googlenet_pair(aux_logits)
    assert n_params(ours) == n_params(ref) == expected
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys in the same order
    assert ours.aux_logits is aux_logits
    # the pool branch's projection is index 1 of torchvision's Sequential (index 0 is the max-pool)
    assert "inception3a.branch4.1.conv.weight" in ours.state_dict()
    # horizontal fusion: branch1 (the leaf) and the 1x1 reduces of branch2 and branch3 share one GEMM
    assert ours.inception3a.plan.hfuse == [0, 1, 2]
    if aux_logits:  # torchvision's factory drops loaded heads with `model.aux_logits = False`
        ours.aux_logits = False
        assert ours.aux1 is None and ours.aux2 is None and n_params(ours) == 6_624_904


def test_googlenet_param_count_derived():
    """6,624,904 from the table: conv weights, two BN vectors per conv, the classifier."""

    def conv(cin, cout, k):
        return cin * cout * k * k + 2 * cout

    n = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3) + 1024 * 1000 + 1000
    for cin, _, c1, c3r, c3, c5r, c5, pp in GOOGLENET_TABLE.values():
        n += conv(cin, c1, 1) + conv(cin, c3r, 1) + conv(c3r, c3, 3) + conv(cin, c5r, 1) + conv(c5r, c5, 3)
        n += conv(cin, pp, 1)
    assert n == 6_624_904 == n_params(create_model("googlenet", aux_logits=False))
    # each aux head: 1×1 128 conv + BN, FC 2048 → 1024, FC 1024 → 1000 (on 4a: 512, on 4d: 528 channels)
    aux = sum(conv(c, 128, 1) + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))
    assert n + aux == 13_004_888


@pytest.mark.parametrize(
    "hw, transform_input", [((224, 224), False), ((227, 251), False), ((224, 224), True)]
)
def test_googlenet_eval_equals_reference_backend(hw, transform_input, monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = _googlenet_pair(aux_logits=True, transform_input=transform_input)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert got.shape == want.shape == (2, 1000)
    assert rel_err(got, want) < 1e-5


def test_googlenet_train_forward_backward_and_running_stats(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = _googlenet_pair(aux_logits=True)
    ours.train(), ref.train()
    x = torch.randn(2, 3, 224, 224)
    torch.manual_seed(1)  # the same dropout masks (aux1, aux2, main: consumed in the same order)
    out_o = ours(x)
    torch.manual_seed(1)
    out_r = ref(x)
    assert type(out_o).__name__ == "GoogLeNetOutputs" and out_o._fields == (
        "logits",
        "aux_logits2",
        "aux_logits1",
    )
    for a, b in zip(out_o, out_r):
        assert a.shape == b.shape == (2, 1000)
        assert rel_err(a, b) < 1e-4
    w = torch.linspace(-1, 1, 1000)
    sum((o * w).sum() for o in out_o).backward()
    sum((o * w).sum() for o in out_r).backward()
    ref_params = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        assert rel_err(p.grad, ref_params[k].grad) < 1e-4, k
    ref_buffers = dict(ref.named_buffers())
    assert list(dict(ours.named_buffers())) == list(ref_buffers)
    for k, b in ours.named_buffers():
        assert torch.allclose(b.double(), ref_buffers[k].double(), rtol=1e-4, atol=1e-6), k


def test_googlenet_train_without_aux_returns_logits(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = _googlenet_pair(aux_logits=False)
    ours.train(), ref.train()
    x = torch.randn(2, 3, 15, 15)  # the smallest legal input also trains (BN sees 2 values per channel)
    torch.manual_seed(3)
    out_o = ours(x)
    torch.manual_seed(3)
    out_r = ref(x)
    assert isinstance(out_o, torch.Tensor) and out_o.shape == (2, 1000)
    assert rel_err(out_o, out_r) < 1e-4


def test_googlenet_eval_our_kernels_smallest_input(device):
    """Our kernels (the interpreter without a GPU): folded BN, slices, horizontal fusion, ceil-mode max-pools,
    the transform_input scale/shift, against torchvision in fp64 at the smallest legal input (15×15)."""
    ours, ref = _googlenet_pair(aux_logits=True, transform_input=True)
    check_eval_on_our_kernels(ours, ref, torch.randn(1, 3, 15, 15), device)


@pytest.mark.parametrize("paper_5x5", [False, True])
def test_googlenet_train_block_on_our_kernels(paper_5x5, device, monkeypatch):
    """One Inception module in train mode on our kernels (batch-statistics BN, leaves written into their slices,
    the ceil-mode 3×3/1 max-pool branch): output, gradients and running statistics against fp64 reference. The
    input is drawn off the ReLU kinks and max-pool near-ties (helpers.draw_input_off_kinks): a ReLU input or a
    pool window's top-two gap within fp32 rounding flips a mask entry in fp32 and not in fp64, which moves a whole
    BN channel's gradient (~1e-2, far above the 1e-4 here) by luck, not by a kernel error."""
    from inception_kernels.models.googlenet import inception_block
    from inception_kernels.nn.engine import InceptionBlock

    ours = randomize_bn(InceptionBlock(12, inception_block(8, 6, 8, 4, 6, 4, paper_5x5=paper_5x5))).train()
    ref = copy.deepcopy(ours).double()
    ours = ours.to(device)
    x = draw_input_off_kinks(ref, (3, 12, 7, 7), monkeypatch)
    y = ours(x.to(device).to(memory_format=torch.channels_last))
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    y_ref = ref(x.double())
    assert y_ref.shape == (3, 8 + 8 + 6 + 4, 7, 7)
    g = torch.randn(y_ref.shape, dtype=torch.float64)
    (y * g.to(device, torch.float32)).sum().backward()
    (y_ref * g).sum().backward()
    assert rel_err(y.cpu(), y_ref) < 1e-4
    assert_same_grads_and_buffers(ours, ref)


def test_googlenet_min_size(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = create_model("googlenet", aux_logits=False).eval()
    for hw in ((14, 14), (14, 40), (40, 14)):
        with pytest.raises(ValueError, match="at least 15x15"):
            model(torch.randn(1, 3, *hw))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 15, 16)).shape == (1, 1000)
    assert model.out_hw((224, 224)) == (7, 7) and model.out_hw((15, 15)) == (1, 1)


def test_googlenet_macs():
    """1.50 G multiply-adds at 224² (the paper: "1.5 billion multiply-adds"), exactly the table's count."""
    macs = count_macs(create_model("googlenet", aux_logits=True), (224, 224))
    assert macs == googlenet_macs_224() == 1_498_376_192


def test_googlenet_paper_5x5(monkeypatch):
    """The paper's true 5×5 in the "5×5" branch: 16·Σ #5×5r·#5×5 more parameters, same output shapes, not
    loadable from torchvision's weights."""
    extra = 16 * sum(c5r * c5 for *_, c5r, c5, _ in GOOGLENET_TABLE.values())
    assert extra == 380_928
    model = create_model("googlenet", aux_logits=False, paper_5x5=True)
    assert n_params(model) == 6_624_904 + extra
    assert model.inception4e.branch3["1"].conv.weight.shape == (128, 32, 5, 5)
    assert count_macs(model, (224, 224)) == googlenet_macs_224(k5=5)
    ref = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(ref.state_dict(), strict=True)
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert model(torch.randn(1, 3, 15, 15)).shape == (1, 1000)
    model.train()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


# ----------------------------------------------------------------------------------------------------------
# Inception-v2 (Rethinking, Table 3 baseline): no reference model
# ----------------------------------------------------------------------------------------------------------
V3_PARAMS, V3_PARAMS_AUX = 23_834_568, 27_161_264  # torchvision inception_v3 (test_models.py checks them)
# Inception-v3's factorized stem, Table 1 rows 1-3, at 299²: (cin, cout, k, output grid)
V3_FACTORIZED = ((3, 32, 3, 149), (32, 32, 3, 147), (32, 64, 3, 147))
V2_7X7 = (3, 64, 7, 147)  # the unfactorized layer: 7×7/2 valid, ⌊(299 − 7)/2⌋ + 1 = 147


def _conv_params(cin, cout, k, _=None):
    return cin * cout * k * k + 2 * cout  # weight (no bias) + BN γ, β


def _conv_macs(cin, cout, k, hw):
    return hw * hw * cin * cout * k * k


def test_inception_v2_param_count():
    """Inception-v3's count − the three 3×3 stem convs (+ their BN) + the 7×7/2 64 conv (+ BN):
    23,834,568 − (864+64 + 9,216+64 + 18,432+128) + (9,408+128) = 23,815,336; the aux head (3,326,696 params,
    the same as Inception-v3's) comes on top."""
    delta = _conv_params(*V2_7X7) - sum(_conv_params(*c) for c in V3_FACTORIZED)
    assert delta == 9_536 - 28_768
    assert n_params(create_model("inception_v2", aux_logits=False)) == V3_PARAMS + delta == 23_815_336
    assert n_params(create_model("inception_v2")) == V3_PARAMS_AUX + delta == 27_142_032
    # the alternative reading: only Conv2d_1a becomes a 7×7 (32 filters), 27·32 → 147·32 weights
    alt = create_model("inception_v2", aux_logits=False, stem="7x7_32")
    assert n_params(alt) == V3_PARAMS - 3 * 9 * 32 + 3 * 49 * 32 == 23_838_408


def test_inception_v2_macs():
    """5.30 G: Inception-v3's 5.71 G − the three 3×3 stem convs (616.6 M) + the 7×7/2 (203.3 M); every later grid
    is the same (147×147×64 after the stem's first part in both)."""
    v3_macs = macs("inception_v3", 299)
    factorized = sum(_conv_macs(*c) for c in V3_FACTORIZED)
    assert factorized == 616_627_296 and _conv_macs(*V2_7X7) == 203_297_472
    v2 = macs("inception_v2", 299)
    assert v2 == v3_macs - factorized + _conv_macs(*V2_7X7) == 5_299_886_272
    # 7x7_32: the 7×7/2 32 padded layer gives 150², and the two 3×3 after it run on 148² instead of 147²
    alt = macs("inception_v2", 299, stem="7x7_32")
    alt_stem = _conv_macs(3, 32, 7, 150) + _conv_macs(32, 32, 3, 148) + _conv_macs(32, 64, 3, 148)
    assert alt == v3_macs - factorized + alt_stem == 5_808_030_592


def test_inception_v2_stem_grid_equals_v3(monkeypatch):
    """The 7×7/2 valid conv is a drop-in for the factorized three: same 147×147×64 output, and the same grids
    everywhere after (35, 17, 8), for every input size (hence the same minimum input, 75×75)."""
    from inception_kernels.nn.network import run_stages, stages_hw

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    v2 = create_model("inception_v2", aux_logits=False).eval()
    v3 = create_model("inception_v3", aux_logits=False).eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        assert run_stages(v2, v2.stages[:1], x).shape == run_stages(v3, v3.stages[:3], x).shape
        assert run_stages(v2, v2.stages[:1], x).shape == (1, 64, 147, 147)
    for n in range(60, 340, 7):
        assert stages_hw(v2.stages[:1], (n, n + 1)) == stages_hw(v3.stages[:3], (n, n + 1))
    assert v2.min_size == v3.min_size == 75
    assert create_model("inception_v2", stem="7x7_32").min_size == 73
    with pytest.raises(ValueError, match="at least 75x75"):
        v2(torch.randn(1, 3, 74, 90))
    with pytest.raises(ValueError, match="stem must be one of"):
        create_model("inception_v2", stem="3x3")


def test_inception_v2_output_shapes(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(create_model("inception_v2", num_classes=10))
    # Table 3's "before BN-auxiliary": the side head's FC is a plain linear layer, only its convs carry BN
    assert model.AuxLogits.fc_bn is None and isinstance(model.AuxLogits.fc, torch.nn.Linear)
    assert (
        "Conv2d_1a_7x7.conv.weight" in model.state_dict()
        and "Conv2d_2a_3x3.conv.weight" not in model.state_dict()
    )
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 80)).shape == (1, 10)
    model.train()  # the aux head runs in training mode, on the 17×17 grid of a 299² input
    with torch.no_grad():
        out = model(torch.randn(2, 3, 299, 299))
    assert out._fields == ("logits", "aux_logits") and out.logits.shape == out.aux_logits.shape == (2, 10)
    with pytest.raises(ValueError, match="17x17 Mixed_6e grid"):
        model(torch.randn(2, 3, 160, 160))


def test_inception_v2_stem_on_our_kernels(device, monkeypatch):
    """The one layer Inception-v2 adds to Inception-v3's (already tested) tables — the 7×7/2 valid conv on 3
    channels — and the rest of its stem, on our kernels at the smallest input, against the fp64 reference."""
    from inception_kernels.nn.network import run_stages

    model = randomize_bn(create_model("inception_v2", aux_logits=False)).eval()
    stem = model.stages[:5]
    x = torch.randn(2, 3, 75, 75)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        with count_launches() as launches:
            got = run_stages(model.to(device), stem, x.to(device))
        monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        want = run_stages(ref, stem, x.double())
    assert launches.count > 0
    assert got.shape == want.shape == (2, 192, 7, 7)
    assert rel_err(got.cpu(), want) < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Inception-v3 low-resolution variants (Rethinking §9, Table 2)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem, size, grid", [("151", 151, 35), ("79", 79, 36)])
def test_inception_v3_low_res_shapes(stem, size, grid, monkeypatch):
    """151²: the first conv has stride 1, so 151 → 149 matches 299/2 → 149 and every later grid is the 299² one.
    79²: stride 1 and no first max-pool: 79 → 77 → 75 → 75 → 75 → 73 → max-pool 36 (the 35-level modules run on
    36×36), then 17 and 8 as at 299²."""
    from inception_kernels.nn.network import stages_hw

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = create_model("inception_v3", stem=stem, num_classes=10).eval()
    names = [name for name, _ in model.stages]
    assert stages_hw(model.stages[: names.index("Mixed_5b")], (size, size)) == (grid, grid)
    assert stages_hw(model.stages[: names.index("Mixed_7a")], (size, size)) == (17, 17)  # Mixed_6e: the aux head
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
        model.train()  # so the aux head works at these inputs
        out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == out.aux_logits.shape == (2, 10)


def test_inception_v3_low_res_cost():
    """ "At almost identical cost" (§9): 151² costs exactly the 299² model (same grids from the second layer on;
    the first conv has 149² outputs in both), 79² is 6.2 % cheaper (its stem runs on 77/75/73² instead of
    149/147/73/71²)."""
    full, c151, c79 = (
        macs("inception_v3", 299),
        macs("inception_v3", 151, stem="151"),
        macs("inception_v3", 79, stem="79"),
    )
    assert full == c151 == 5_713_216_096
    assert c79 == 5_361_703_520
    assert abs(c79 - full) / full < 0.10
