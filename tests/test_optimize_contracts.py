"""``optimize()`` keeps the contracts of the model it is given.

* Models it was not written for: conv → BN → ReLU modules whose conv is dilated, grouped, reflect-padded, larger
  than 7×7, strided by 3, or whose tensors live on an unsupported device / dtype are left as they are and reported
  with the reason; a hand-built model mixing them with fusable layers and known blocks computes exactly the
  original function (outputs, input and parameter gradients, running statistics; train and eval).
* FX: ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor`` and timm's FX feature extraction of
  optimized torchvision / timm models trace (our layers record their plain PyTorch reference ops) and the graphs
  compute the original function, forward and backward, train and eval.
* ``torch.jit.script`` of an optimized model raises one clear error saying why and what to do.
* timm's model API (``forward_features``, ``forward_head``, ``reset_classifier``, ``pretrained_cfg``,
  ``features_only``) works on optimized timm models.

Whole networks run on the reference backend (the Triton interpreter would take minutes) at their smallest inputs.
"""

import copy

import pytest
import torch
import torch.nn as nn
from helpers import randomize_bn, rel_err

import inception_kernels
from inception_kernels.convert import DropInConvBNAct, DropInInceptionBlock, SequentialConvBNAct

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

NUM_CLASSES = 10


def _weights(n, dtype=torch.float32):
    return torch.linspace(-1, 1, n, dtype=dtype)


def _same_tensors(a, b, tol=None):
    """Equal within ``tol`` relative (norm) error. By default 1e-10 in float64 (rounding of a reordered sum is
    ~1e-16) and 1e-5 in float32 (~1e-7): outputs only, a gradient through a ReLU or a max-pool in float32 is not
    continuous in the rounding (see ``_fwd_bwd``)."""
    if tol is None:
        tol = 1e-10 if a.dtype == torch.float64 else 1e-5
    assert a.shape == b.shape and a.dtype == b.dtype
    err = rel_err(a, b)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


# ----------------------------------------------------------------------------------------------------------
# Models optimize() was not written for
# ----------------------------------------------------------------------------------------------------------
class _TwoBranch(nn.Module):
    """A block optimize() does not know: its own forward (a concat of two branches) over fusable members."""

    def __init__(self, c):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, 10, 1, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class _Mixed(nn.Module):
    """Fusable layers, known blocks and conv-BN(-ReLU) modules our fused layer cannot compute, in one network."""

    def __init__(self):
        from timm.layers import ConvNormAct
        from torchvision.models.googlenet import Inception
        from torchvision.models.inception import BasicConv2d

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dilated = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.grouped = BasicConv2d(8, 8, kernel_size=3, padding=1, groups=4)
        self.reflect = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8))
        self.big = ConvNormAct(8, 8, 9, padding=4)
        self.strided = nn.Sequential(nn.Conv2d(8, 8, 3, stride=3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.block = Inception(8, 4, 4, 6, 2, 4, 4)  # known: 18 channels out
        self.block_dilated = Inception(18, 4, 4, 6, 2, 4, 4)
        self.block_dilated.branch2[1].conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False)
        self.custom = _TwoBranch(18)
        self.tail = nn.Sequential(nn.Conv2d(18, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6, NUM_CLASSES)

    def forward(self, x):
        x = self.strided(self.big(self.reflect(self.grouped(self.dilated(self.stem(x))))))
        x = self.tail(self.custom(self.block_dilated(self.block(x))))
        return self.head(x.mean((2, 3)))


def test_unsupported_convs_are_kept_with_their_reasons():
    model = _Mixed()
    fast = inception_kernels.optimize(model)
    report = inception_kernels.optimize_report(fast)
    replaced = [name for name, *_ in report.replaced]
    assert replaced[:2] == ["stem", "block"] and replaced[-3:] == ["custom.a", "custom.b", "tail"]
    assert all(n.startswith("block_dilated.") for n in replaced[2:-3])  # the kept block's fusable members
    assert type(fast.custom) is _TwoBranch and fast.custom is not model.custom  # a new tree, theirs untouched
    assert type(model.custom.a) is nn.Sequential
    kept = {name: reason for name, _, reason in report.kept}
    assert "dilation=(2, 2)" in kept["dilated"]
    assert "groups=4" in kept["grouped"]
    assert "padding_mode='reflect'" in kept["reflect"]
    assert "kernel_size=(9, 9)" in kept["big"]
    assert "stride=(3, 3)" in kept["strided"]
    assert "dilation" in kept["block_dilated"] and "block_dilated.branch2.1" not in replaced
    for name in ("dilated", "grouped", "reflect", "big", "strided"):
        assert getattr(fast, name) is getattr(model, name), name  # the very same module, untouched
    assert isinstance(fast.stem, SequentialConvBNAct) and isinstance(fast.block, DropInInceptionBlock)
    assert type(fast.block_dilated).__name__ == "Inception"
    assert isinstance(fast.block_dilated.branch1, DropInConvBNAct)
    # the report printed by verbose=True says the same
    text = str(report)
    assert "dilated" in text and "padding_mode='reflect'" in text and "kernel_size=(9, 9)" in text


def test_unsupported_device_and_dtype_are_kept_with_their_reasons(monkeypatch):
    """Tensors on several devices, or of a dtype our layers do not take, leave the module as it is."""
    split = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, device="meta"), nn.ReLU())
    odd = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False, dtype=torch.complex64), nn.BatchNorm2d(4), nn.ReLU())
    on_meta = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()).to("meta")
    model = nn.ModuleDict(dict(split=split, odd=odd, on_meta=on_meta))
    fast = inception_kernels.optimize(model)
    kept = {name: reason for name, _, reason in inception_kernels.optimize_report(fast).kept}
    assert "several devices (cpu, meta)" in kept["split"] and fast["split"] is split
    assert "dtype torch.complex64" in kept["odd"] and fast["odd"] is odd
    # meta (deferred initialization) is a place our layers accept: shapes only
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "auto")  # auto: the reference ops off CUDA
    assert isinstance(fast["on_meta"], SequentialConvBNAct)
    assert fast["on_meta"](torch.empty(2, 3, 4, 4, device="meta")).shape == (2, 4, 4, 4)


@pytest.mark.parametrize("backend", ["reference", "ours"])
def test_mixed_model_computes_the_original_function(backend, device, monkeypatch):
    """Eval, train (and on the reference backend eval again, after the running statistics moved): outputs, input and parameter gradients and
    running statistics of the optimized model equal the original's (in float64, where the fused layers' folded BN
    is the only reordering: 1e-10), and on our kernels (fp32; on CPU the Triton interpreter) within fp32 rounding
    of the float64 original."""
    on_ref = backend == "reference"
    if on_ref:
        monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        device = torch.device("cpu")
    # fp32 on our kernels: a ~20k-activation model, where a ReLU / max-pool flip is rare; measured over 40 seeds
    # (100-139): the largest output / input-gradient error was 0.099 of the tolerance
    dtype, tol = (torch.float64, 1e-10) if on_ref else (torch.float32, 1e-4)
    model = randomize_bn(_Mixed()).to(device, dtype)
    ref = copy.deepcopy(model).cpu().double()
    fast = inception_kernels.optimize(model)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for mode in ("eval", "train", "eval") if on_ref else ("eval", "train"):
        fast.train(mode == "train"), ref.train(mode == "train")
        for p in list(fast.parameters()) + list(ref.parameters()):
            p.grad = None
        x_f, x_r = x.to(device, dtype).clone().requires_grad_(), x.clone().requires_grad_()
        y_f = fast(x_f)
        with monkeypatch.context() as mp:
            mp.setenv("INCEPTION_KERNELS_BACKEND", "reference")
            y_r = ref(x_r)
        w = _weights(NUM_CLASSES, torch.float64)
        (y_f * w.to(device, dtype)).sum().backward()
        (y_r * w).sum().backward()
        _same_tensors(y_f.cpu().double(), y_r, tol)
        _same_tensors(x_f.grad.cpu().double(), x_r.grad, tol)
        ref_params = dict(ref.named_parameters())
        for k, p in fast.named_parameters():
            g, g_ref = p.grad.cpu().double(), ref_params[k].grad
            # a conv bias before a train-mode BN has a zero gradient: compare it absolutely
            assert (g - g_ref).norm() <= tol * g_ref.norm() + tol / 10, (mode, k)
        ref_buffers = dict(ref.named_buffers())
        for k, b in fast.named_buffers():
            if b.is_floating_point():
                _same_tensors(b.cpu().double(), ref_buffers[k], tol)
            else:
                assert torch.equal(b.cpu(), ref_buffers[k]), k


# ----------------------------------------------------------------------------------------------------------
# FX tracing
# ----------------------------------------------------------------------------------------------------------
def _block35():
    from timm.models.inception_resnet_v2 import Block35

    return Block35(scale=0.17)


def _block8_no_relu():
    from timm.models.inception_resnet_v2 import Block8

    return Block8(scale=0.2, no_relu=True)


# name: (factory, (input channels, input size)); Inception-ResNet-v2 by its residual blocks (the whole network
# takes minutes on a CPU; its stem and reductions are InceptionV4's tables)
FX_CASES = {
    "tv_googlenet": (
        lambda: torchvision.models.googlenet(
            weights=None, aux_logits=False, init_weights=True, num_classes=10
        ),
        (3, 32),
    ),
    "tv_inception3": (
        lambda: torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=True, num_classes=10
        ),
        (3, 75),
    ),
    "timm_inception_v4": (lambda: timm.create_model("inception_v4", num_classes=NUM_CLASSES), (3, 75)),
    "timm_block35": (_block35, (320, 3)),
    "timm_block8_no_relu": (_block8_no_relu, (2080, 3)),
}


def _fwd_bwd(fn, x, params):
    """Outputs (a tensor or a dict of tensors), the input gradient and the gradients of ``params``.

    Whole networks are compared in float64: a reordered float32 sum (BN folded into the conv) moves a
    pre-activation by ~1e-7, and among ~10^6 activations one of them then falls on the other side of a ReLU or
    of a max-pool tie often enough (one CI run in about ten) to move part of the gradient (a relative error of
    7e-3 was seen). In float64 that needs a tie within ~1e-16: never."""
    assert x.dtype == torch.float64, "compare whole networks in float64 (see the docstring)"
    x = x.clone().requires_grad_()
    out = fn(x)
    outs = list(out.values()) if isinstance(out, dict) else [out]
    loss = sum((o.flatten(1) * _weights(o[0].numel(), o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return outs, grads


def _check_same(got, want):
    (outs_g, grads_g), (outs_w, grads_w) = got, want
    assert len(outs_g) == len(outs_w)
    for a, b in zip(outs_g, outs_w):
        _same_tensors(a, b)
    for a, b in zip(grads_g, grads_w, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            _same_tensors(a, b)


# every framework and both modes, not every pair (whole networks cost a CPU minutes): InceptionV4 traces in train
# mode here and in eval in the timm feature-extraction test; Inception3 in train in the torchvision one
FX_RUNS = [(c, "eval") for c in ("tv_googlenet", "tv_inception3", "timm_block35", "timm_block8_no_relu")] + [
    (c, "train") for c in ("tv_googlenet", "timm_inception_v4", "timm_block35")
]


@pytest.mark.parametrize("case, mode", FX_RUNS)
def test_fx_symbolic_trace(case, mode, monkeypatch):
    """``torch.fx.symbolic_trace(optimize(model))`` traces; the graph holds plain PyTorch ops only and equals the
    original model: outputs, input and parameter gradients, and (train) the running statistics it updates."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    factory, (cin, hw) = FX_CASES[case]
    model = randomize_bn(factory()).double().train(mode == "train")
    ref = copy.deepcopy(model)
    fast = inception_kernels.optimize(model)
    gm = torch.fx.symbolic_trace(fast)
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert not any("inception_kernels" in t for t in targets) and any("cat" in t for t in targets)
    assert not any(isinstance(m, (DropInConvBNAct, DropInInceptionBlock)) for m in gm.modules())
    assert set(gm.state_dict()) <= set(model.state_dict())
    x = torch.randn(2 if mode == "train" else 1, cin, hw, hw, dtype=torch.float64)  # train BN: 2 values a channel
    params = list(model.parameters())
    torch.manual_seed(0)  # the same dropout masks
    got = _fwd_bwd(gm, x, params)
    torch.manual_seed(0)
    want = _fwd_bwd(ref, x, list(ref.parameters()))
    _check_same(got, want)
    ref_buffers = dict(ref.named_buffers())
    for k, b in model.named_buffers():  # the graph updated the model's own running statistics, as ref did
        _same_tensors(b, ref_buffers[k])


def test_torchvision_create_feature_extractor(monkeypatch):
    """torchvision's create_feature_extractor (it traces in train and in eval mode) on an optimized Inception3:
    the same node names at module boundaries, the same features, forward and backward, in both modes."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    factory, (_, hw) = FX_CASES["tv_inception3"]
    model = randomize_bn(factory()).double()
    original = copy.deepcopy(model)  # its own running statistics (train mode moves them)
    fast = inception_kernels.optimize(model)
    nodes = {"Mixed_5b": "a", "Mixed_6a": "b", "Mixed_7c": "c", "fc": "logits"}
    ours, theirs = create_feature_extractor(fast, nodes), create_feature_extractor(original, nodes)
    # the same modules at the top of the node names (inside a block the fused table may order its ops otherwise)
    for mode in (0, 1):
        tops = [
            list(dict.fromkeys(n.split(".")[0] for n in get_graph_node_names(m)[mode])) for m in (fast, model)
        ]
        assert tops[0] == tops[1]
    x = torch.randn(2, 3, hw, hw, dtype=torch.float64)
    for mode in ("eval", "train"):
        ours.train(mode == "train"), theirs.train(mode == "train")
        torch.manual_seed(0)  # the same dropout mask
        got = _fwd_bwd(ours, x, list(model.parameters()))
        torch.manual_seed(0)
        _check_same(got, _fwd_bwd(theirs, x, list(original.parameters())))
        assert [o.shape[1] for o in got[0]] == [288 - 32, 768, 2048, NUM_CLASSES]
    for k, b in original.state_dict().items():  # the same running statistics after the train step
        _same_tensors(model.state_dict()[k].double(), b.double())  # (num_batches_tracked: an integer)


def test_timm_fx_feature_extraction(monkeypatch):
    """timm's FX feature extraction (``create_feature_extractor``, ``FeatureGraphNet`` by out_indices and
    feature_info) of an optimized InceptionV4 equals the same on the original."""
    from timm.models import FeatureGraphNet, create_feature_extractor

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(timm.create_model("inception_v4", num_classes=NUM_CLASSES)).double().eval()
    fast = inception_kernels.optimize(model)
    x = torch.randn(1, 3, 75, 75, dtype=torch.float64)
    nodes = {"features.5": "stem", "features.9": "a", "features.21": "c"}
    ours, theirs = create_feature_extractor(fast, nodes), create_feature_extractor(model, nodes)
    _check_same(_fwd_bwd(ours, x, list(model.parameters())), _fwd_bwd(theirs, x, list(model.parameters())))
    ours, theirs = FeatureGraphNet(fast, out_indices=(1, 3, 4)), FeatureGraphNet(model, out_indices=(1, 3, 4))
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert [t.shape[1] for t in got] == [model.feature_info[i]["num_chs"] for i in (1, 3, 4)]
    for a, b in zip(got, want, strict=True):
        _same_tensors(a, b)


# ----------------------------------------------------------------------------------------------------------
# TorchScript
# ----------------------------------------------------------------------------------------------------------
def test_jit_script_raises_one_clear_error():
    model = FX_CASES["tv_googlenet"][0]().eval()
    fast = inception_kernels.optimize(model)
    with pytest.raises(RuntimeError) as err:
        torch.jit.script(fast)
    msg = str(err.value)
    assert msg.startswith("torch.jit.script cannot compile DropInConvBNAct, a layer installed by inception_")
    assert "Script the model before optimize()" in msg and "torch.compile" in msg and "torch.export" in msg
    block = inception_kernels.optimize(model.inception3a)
    with pytest.raises(RuntimeError, match="cannot compile DropInInceptionBlock"):
        torch.jit.script(block)
    # the advice holds: the original (left unchanged by optimize) still scripts
    assert type(model.inception3a).__name__ == "Inception"
    torch.jit.script(model.inception3a)


# ----------------------------------------------------------------------------------------------------------
# timm's model API
# ----------------------------------------------------------------------------------------------------------
# InceptionV4 (head `last_linear`) is covered by the features_only and FX tests
@pytest.mark.parametrize("name", ["inception_v3", "inception_resnet_v2"])
def test_timm_model_api(name, monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(timm.create_model(name, num_classes=NUM_CLASSES)).eval()
    fast = inception_kernels.optimize(model)
    assert fast.pretrained_cfg == model.pretrained_cfg and fast.default_cfg == model.default_cfg
    assert fast.num_classes == NUM_CLASSES and fast.feature_info == model.feature_info
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        feat, feat_ref = fast.forward_features(x), model.forward_features(x)
        _same_tensors(feat, feat_ref)
        _same_tensors(fast.forward_head(feat), model.forward_head(feat_ref))
        pre = fast.forward_head(feat, pre_logits=True)
        assert pre.shape == (1, fast.num_features)
        _same_tensors(pre, model.forward_head(feat_ref, pre_logits=True))
    assert fast.get_classifier() is model.get_classifier()  # shared, not copied
    fast.reset_classifier(3)
    assert fast.num_classes == 3 and fast(x).shape == (1, 3)
    assert model.num_classes == NUM_CLASSES and model(x).shape == (
        1,
        NUM_CLASSES,
    )  # the original is untouched
    fast.reset_classifier(0)
    assert fast(x).shape == (1, fast.num_features)


def test_timm_features_only(monkeypatch):
    """``optimize`` of a ``features_only=True`` timm model (a FeatureListNet): blocks replaced, the same feature
    maps, forward and backward, feature_info kept."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = (
        randomize_bn(timm.create_model("inception_v4", features_only=True, out_indices=(1, 2, 3, 4)))
        .double()
        .eval()
    )  # float64: a gradient through ReLUs and max-pools (see _fwd_bwd)
    ref = copy.deepcopy(model)
    fast = inception_kernels.optimize(model)
    assert any(isinstance(m, DropInInceptionBlock) for m in fast.modules())
    assert fast.feature_info.channels() == model.feature_info.channels()
    x = torch.randn(1, 3, 75, 75, dtype=torch.float64)

    def run(m, x):
        x = x.clone().requires_grad_()
        outs = m(x)
        sum((o * o).sum() for o in outs).backward()
        return outs, x.grad

    outs, g = run(fast, x)
    outs_ref, g_ref = run(ref, x)
    assert [o.shape for o in outs] == [o.shape for o in outs_ref] and len(outs) == 4
    for a, b in zip(outs, outs_ref):
        _same_tensors(a, b)
    _same_tensors(g, g_ref)
