"""``inception_kernels.optimize`` on torchvision and timm models, and the generic layers it is made of.

* Every supported class (torchvision GoogLeNet / Inception3, timm InceptionV3 / InceptionV4 / InceptionResnetV2),
  random weights and BN statistics, 10 classes, train and eval: the optimized model equals a deep copy of the
  original (outputs, input and parameter gradients, running statistics), holds the very same Parameter and buffer
  objects (same state_dict keys, order and tensors), and one step of an optimizer built *before* ``optimize``
  moves it exactly as the same step moves the copy. Whole networks run on the reference backend (the interpreter
  would take minutes); GoogLeNet runs end to end on our kernels, and torchvision / timm blocks train on them.
* ``nn.Sequential(Conv2d, BatchNorm2d[, ReLU])``, BasicConv2d / ConvNormAct anywhere; unknown and unsupported
  modules come through unchanged and are reported; frozen BN, float64, ``inplace``.
* ``torch.compile(fullgraph=True)`` of optimized blocks; ``torch.export`` records the reference ops (with a
  warning); ONNX when onnxscript is installed.
* ``ConvBNAct`` loads BasicConv2d / ConvNormAct state dicts; ``ScaledResidual``.
"""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from helpers import check_train_block, draw_input_off_kinks, randomize_bn, rel_err

import inception_kernels
from inception_kernels.convert import DropInConvBNAct, DropInInceptionBlock, SequentialConvBNAct
from inception_kernels.nn import ConvBNAct, InceptionBlock, ScaledResidual
from inception_kernels.utils import count_launches

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

NUM_CLASSES = 10


def _tv_googlenet(aux=True):
    return torchvision.models.googlenet(
        weights=None, aux_logits=aux, init_weights=True, num_classes=NUM_CLASSES
    )


def _tv_inception3(aux=False):
    return torchvision.models.inception_v3(
        weights=None, aux_logits=aux, init_weights=True, num_classes=NUM_CLASSES
    )


# name: (factory, input size, number of modules optimize replaces)
CASES = {
    "tv_googlenet": (_tv_googlenet, 32, 3 + 9 + 2),  # stem convs, 9 modules, the aux heads' 1x1 convs
    "tv_inception3": (_tv_inception3, 75, 5 + 11),
    "timm_inception_v3": (lambda: timm.create_model("inception_v3", num_classes=NUM_CLASSES), 75, 5 + 11),
    "timm_inception_v4": (lambda: timm.create_model("inception_v4", num_classes=NUM_CLASSES), 75, 3 + 19),
    "timm_inception_resnet_v2": (
        lambda: timm.create_model("inception_resnet_v2", num_classes=NUM_CLASSES),
        75,
        6 + 1 + 10 + 1 + 20 + 1 + 10,  # stem convs + conv2d_7b, mixed_5b, repeat, mixed_6a, repeat_1, ...
    ),
}


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _run(model, x):
    out = _outputs(model(x))
    w = torch.linspace(-1, 1, NUM_CLASSES, dtype=x.dtype)
    sum((o * w).sum() for o in out).backward()
    return out


def _check_equivalent(model, hw, monkeypatch, train, expected_replaced=None):
    """optimize(model) against a deep copy of the original: shared tensors, outputs, input and parameter
    gradients, running statistics, and one step of an optimizer built before optimize.

    The comparison runs in float64, where the optimized layers run their reference ops: it checks the structure
    (every table, pool, residual scale and activation, the parameter binding, BN semantics, heads and aux heads)
    free of fp32 rounding luck — in train mode, BN over the few values of a small input's last grid and ReLU
    masks flipping within rounding of 0 make fp32 gradients of the original itself differ from fp64 by up to
    O(1). The fused fp32 paths are checked on our kernels below (a whole GoogLeNet in eval, blocks in train,
    conv-BN-ReLU in every mode) and, in eval, here: the fp32 optimized network (folded BN) is as close to fp64 as
    the fp32 original (4x its error, 1e-5 at least)."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(model).train(train)
    ref = copy.deepcopy(model).double()
    batch = 2 if train else 1  # train-mode BN needs two values per channel
    x = torch.randn(batch, 3, hw, hw)
    if not train:
        fast32 = inception_kernels.optimize(model)
        with torch.no_grad():
            want = ref(x.double())
            err, err_ref = rel_err(fast32(x), want), rel_err(model(x), want)
        assert err <= max(4 * err_ref, 1e-5), f"fp32 eval: {err:.2e} vs the original's {err_ref:.2e}"
    model.double()
    params = list(model.parameters())
    buffers = list(model.buffers())
    sd = model.state_dict(keep_vars=True)
    opt_model = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    fast = inception_kernels.optimize(model)
    report = inception_kernels.optimize_report(fast)
    if expected_replaced is not None:
        assert len(report.replaced) == expected_replaced, report
    assert type(fast) is type(model)
    assert any(isinstance(m, DropInInceptionBlock) for m in fast.modules())
    # the same Parameter and buffer objects, in the same order; state_dict keys, order and tensors unchanged
    assert all(a is b for a, b in zip(fast.parameters(), params, strict=True))
    assert all(a is b for a, b in zip(fast.buffers(), buffers, strict=True))
    sd_fast = fast.state_dict(keep_vars=True)
    assert list(sd_fast) == list(sd) and all(sd_fast[k] is sd[k] for k in sd)
    flags = {n: m.training for n, m in model.named_modules()}
    assert all(m.training == flags.get(n, train) for n, m in fast.named_modules())  # train/eval flags kept

    x_f, x_r = x.double().requires_grad_(), x.double().requires_grad_()
    torch.manual_seed(0)  # the same dropout masks
    out_f = _run(fast, x_f)
    torch.manual_seed(0)
    out_r = _run(ref, x_r)
    assert len(out_f) == len(out_r)
    for a, b in zip(out_f, out_r):
        assert a.shape == b.shape and a.shape[-1] == NUM_CLASSES
        assert rel_err(a, b) < 1e-9
    assert rel_err(x_f.grad, x_r.grad) < 1e-9
    ref_params = dict(ref.named_parameters())
    for k, p in fast.named_parameters():
        if ref_params[k].grad is None:  # the aux heads do not run in eval
            assert p.grad is None and not train, k
        else:
            assert rel_err(p.grad, ref_params[k].grad) < 1e-9, k
    ref_buffers = dict(ref.named_buffers())
    for k, b in fast.named_buffers():
        torch.testing.assert_close(b, ref_buffers[k], rtol=1e-9, atol=1e-12, msg=k)

    opt_model.step()  # built before optimize, over the model's Parameters
    opt_ref.step()
    for k, p in fast.named_parameters():
        torch.testing.assert_close(p, ref_params[k], rtol=1e-9, atol=1e-12, msg=k)
    return fast, ref, report


@pytest.mark.parametrize("case_mode", [f"{c}-{m}" for c in CASES for m in ("eval", "train")])
def test_same_function_tensors_and_optimizer_step(case_mode, monkeypatch):
    case, mode = case_mode.rsplit("-", 1)
    factory, hw, n_replaced = CASES[case]
    _check_equivalent(factory(), hw, monkeypatch, mode == "train", expected_replaced=n_replaced)


def test_inception3_with_aux_head_train(monkeypatch):
    """torchvision Inception3 with its aux head (a 17x17 Mixed_6e grid: 299x299 input) in train mode."""
    fast, _, report = _check_equivalent(_tv_inception3(aux=True), 299, monkeypatch, True)
    assert ("AuxLogits.conv0", "BasicConv2d", "DropInConvBNAct") in report.replaced
    assert ("AuxLogits.fc", "Linear", "no fused replacement") in report.kept


def test_report_and_verbose(monkeypatch, capsys):
    model = timm.create_model("inception_v4", num_classes=NUM_CLASSES)
    fast = inception_kernels.optimize(model, verbose=True)
    printed = capsys.readouterr().out
    assert "22 modules replaced, 1 kept" in printed
    assert "features.6" in printed and "InceptionA -> DropInInceptionBlock (4 branches, concat)" in printed
    assert "last_linear  Linear: no fused replacement" in printed
    assert str(inception_kernels.optimize_report(fast)) == printed.rstrip("\n")
    with pytest.raises(ValueError, match="not returned by"):
        inception_kernels.optimize_report(model)


def test_inplace_false_leaves_the_original_tree_and_shares_tensors(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = randomize_bn(timm.create_model("inception_resnet_v2", num_classes=NUM_CLASSES)).eval()
    types_before = [(n, type(m)) for n, m in model.named_modules()]
    fast = inception_kernels.optimize(model)
    assert fast is not model and [(n, type(m)) for n, m in model.named_modules()] == types_before
    assert fast.classif is model.classif  # untouched modules are shared, not copied
    assert type(fast.repeat) is nn.Sequential and fast.repeat is not model.repeat
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5
        model.classif.bias.add_(1.0)  # one tensor, two models
        assert rel_err(fast(x), model(x)) < 1e-5
    assert inception_kernels.optimize(model, inplace=True) is model
    assert isinstance(model.repeat[0], DropInInceptionBlock) and isinstance(model.conv2d_1a, DropInConvBNAct)
    # optimizing twice changes nothing
    again = inception_kernels.optimize(model)
    assert again is model and len(inception_kernels.optimize_report(again).replaced) == 0


# ----------------------------------------------------------------------------------------------------------
# On our kernels (the Triton interpreter without a GPU)
# ----------------------------------------------------------------------------------------------------------
def test_googlenet_eval_on_our_kernels(device):
    """The optimized torchvision GoogLeNet end to end on our kernels at the smallest legal input, vs the original
    in fp64."""
    model = randomize_bn(_tv_googlenet(aux=True)).eval()
    ref = copy.deepcopy(model).double()
    fast = inception_kernels.optimize(model).to(device)
    x = torch.randn(1, 3, 15, 15)
    with torch.no_grad(), count_launches() as launches:
        got = fast(x.to(device))
    assert launches.count > 0 and not got.isnan().any()
    with torch.no_grad():
        assert rel_err(got.cpu(), ref(x.double())) < 1e-4


@pytest.mark.parametrize("block", ["googlenet", "block35", "block8_no_relu"])
def test_blocks_train_on_our_kernels(block, device, monkeypatch):
    """A torchvision / timm block, optimized, in train mode on our kernels vs the fp64 reference: output, input and
    parameter gradients, running statistics."""
    from timm.models.inception_resnet_v2 import Block8, Block35
    from torchvision.models.googlenet import Inception

    if block == "googlenet":
        m, size = Inception(12, 8, 6, 8, 4, 6, 4), 5
    elif block == "block35":
        m, size = Block35(scale=0.17), 3
    else:
        m, size = Block8(scale=0.2, no_relu=True), 3  # the last block: no ReLU after the sum
    fast = inception_kernels.optimize(m)
    assert isinstance(fast, DropInInceptionBlock)
    check_train_block(fast, size, device, monkeypatch)


def test_sequential_conv_bn_relu_anywhere(device, monkeypatch):
    """nn.Sequential(Conv2d, BN, ReLU), Sequential(Conv2d with bias, BN) and unknown modules in a custom network:
    the triples become fused layers with the Sequential's names; the rest is kept and reported; eval on our
    kernels, train with frozen and with live BN, against the original."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.mid = nn.Sequential(
                nn.Conv2d(8, 8, (1, 3), padding=(0, 1)), nn.BatchNorm2d(8)
            )  # bias, no act
            self.grouped = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU()
            )
            self.silu = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.SiLU())
            self.hooked = nn.Sequential(nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
            self.hooked[2].register_forward_hook(lambda *a: None)
            self.head = nn.Linear(6, 4)

        def forward(self, x):
            x = self.hooked(self.silu(self.grouped(self.mid(self.stem(x)))))
            return self.head(x.mean((2, 3)))

    model = randomize_bn(Net())
    ref = copy.deepcopy(model).double()
    fast = inception_kernels.optimize(model).to(device)
    report = inception_kernels.optimize_report(fast)
    assert [r[0] for r in report.replaced] == ["stem", "mid"]
    assert (
        isinstance(fast.stem, SequentialConvBNAct) and fast.stem[0] is model.stem[0] and len(fast.stem) == 3
    )
    assert fast.mid.act is False and fast.grouped is model.grouped and fast.silu is model.silu
    kept = {name: reason for name, _, reason in report.kept}
    assert "groups=2" in kept["grouped"] and kept["head"] == "no fused replacement"
    assert "hooks" in kept["hooked"] and fast.hooked is model.hooked
    assert list(fast.state_dict()) == list(ref.state_dict())

    for mode in ("eval", "frozen_bn", "train"):
        fast.train(mode != "eval"), ref.train(mode != "eval")
        if mode == "frozen_bn":
            for m in list(fast.modules()) + list(ref.modules()):
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        # off the ReLU kinks of this mode (helpers.draw_input_off_kinks): a ReLU input within fp32 rounding of 0
        # flips a mask entry in fp32 and not in fp64 and moves gradient by luck, not by a kernel error
        x = draw_input_off_kinks(ref, (2, 3, 5, 5), monkeypatch)
        for p in list(fast.parameters()) + list(ref.parameters()):
            p.grad = None
        x_f, x_r = x.clone().to(device).requires_grad_(), x.double().requires_grad_()
        with count_launches() as launches:
            y = fast(x_f)
            y.sum().backward()
        with monkeypatch.context() as mp:
            mp.setenv("INCEPTION_KERNELS_BACKEND", "reference")
            y_r = ref(x_r)
            y_r.sum().backward()
        assert launches.count > 0, mode
        assert rel_err(y.cpu(), y_r) < 1e-4, mode
        assert rel_err(x_f.grad.cpu(), x_r.grad) < 1e-4, mode
        ref_params = dict(ref.named_parameters())
        for k, p in fast.named_parameters():
            g, g_ref = p.grad.cpu().double(), ref_params[k].grad
            # a conv bias before a train-mode BN has a zero gradient: compare it absolutely
            assert (g - g_ref).norm() <= 1e-4 * g_ref.norm() + 1e-5, (mode, k)
        ref_buffers = dict(ref.named_buffers())
        for k, b in fast.named_buffers():
            assert torch.allclose(b.cpu().double(), ref_buffers[k].double(), rtol=1e-4, atol=1e-6), (mode, k)


def test_unknown_modules_come_through_unchanged(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 6, 6)
    expected = model(x)
    assert inception_kernels.optimize(model) is model  # nothing to replace: the very same object
    report = inception_kernels.optimize_report(model)
    assert report.replaced == [] and [r[0] for r in report.kept] == ["0", "3"]
    assert torch.equal(model(x), expected)


def test_unsupported_variants_are_kept_with_a_reason(monkeypatch):
    """A timm InceptionV3 with SiLU (the fused layers have ReLU only), a block with a forward hook and a block
    whose conv was swapped for a dilated one are left as they are; the function is unchanged."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    silu = randomize_bn(timm.create_model("inception_v3", num_classes=NUM_CLASSES, act_layer="silu")).eval()
    fast = inception_kernels.optimize(silu)
    report = inception_kernels.optimize_report(fast)
    assert report.replaced == [] and fast is silu
    assert any("SiLU" in reason for _, _, reason in report.kept)

    model = randomize_bn(timm.create_model("inception_v4", num_classes=NUM_CLASSES)).eval()
    calls = []
    model.features[6].register_forward_hook(lambda *a: calls.append(1))
    model.features[7].branch1[1].conv = nn.Conv2d(64, 96, 3, padding=2, dilation=2, bias=False)
    fast = inception_kernels.optimize(model)
    kept = {name: reason for name, _, reason in inception_kernels.optimize_report(fast).kept}
    assert "hooks" in kept["features.6"] and "dilation" in kept["features.7"]
    assert type(fast.features[6]).__name__ == "InceptionA" and isinstance(
        fast.features[8], DropInInceptionBlock
    )
    # the kept blocks' own conv-BN-ReLU members are still fused where they can be
    assert isinstance(fast.features[7].branch0, DropInConvBNAct)
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5
    assert len(calls) == 2


def test_float64_runs_the_reference_ops():
    """The triton backend is requested (conftest) but float64 has no kernel: the optimized layers fall back."""
    model = randomize_bn(_tv_googlenet(aux=False)).double().eval()
    fast = inception_kernels.optimize(model)
    x = torch.randn(1, 3, 15, 15, dtype=torch.float64)
    with torch.no_grad(), count_launches() as launches:
        got = fast(x)
    assert launches.count == 0
    with torch.no_grad():
        assert rel_err(got, model(x)) < 1e-12


# ----------------------------------------------------------------------------------------------------------
# torch.compile, torch.export, ONNX
# ----------------------------------------------------------------------------------------------------------
def _googlenet_block():
    from torchvision.models.googlenet import Inception

    return randomize_bn(Inception(12, 8, 6, 8, 4, 6, 4))


def _block35():
    from timm.models.inception_resnet_v2 import Block35

    return randomize_bn(Block35(scale=0.17))


@pytest.mark.parametrize("make, cin, size", [(_googlenet_block, 12, 5), (_block35, 320, 3)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_compile_fullgraph(make, cin, size, mode, device):
    """No graph break anywhere in an optimized block (fullgraph=True), eval and train, same result as eager; the
    graphs run our ops: in eval every conv as ``conv2d_fwd`` (BN folded into its epilogue), in train every conv +
    BN as ``conv2d_stats`` → ``bn_finalize`` → ``bn_act_train``, never ATen's convolution or batch norm."""
    from helpers import GraphRecorder

    torch._dynamo.reset()
    fast = inception_kernels.optimize(make()).to(device).train(mode == "train")
    eager_model = copy.deepcopy(fast)
    x = torch.randn(2, cin, size, size, device=device)
    rec = GraphRecorder()
    compiled = torch.compile(fast, fullgraph=True, backend=rec.backend)
    x_c, x_e = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_c, y_e = compiled(x_c), eager_model(x_e)
    assert rel_err(y_c.cpu(), y_e.cpu()) < 1e-5
    y_c.sum().backward()
    y_e.sum().backward()
    assert rel_err(x_c.grad.cpu(), x_e.grad.cpu()) < 1e-4
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    n_bn_ops = n_bn if mode == "train" else 0
    # train: every conv + BN as the conv with the statistics epilogue, the finalize and BN-apply (eval: BN folded
    # into the conv epilogue of conv2d_fwd)
    assert rec.count("conv2d_stats") == rec.count("bn_finalize") == n_bn_ops
    assert rec.count("bn_act_train") == rec.count("bn_act_bwd", "bw") == n_bn_ops
    assert rec.count("bn_batch_stats") == 0 and not rec.aten_batch_norm()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in fast.modules())
    if mode == "train":  # the convs without a BN after them (Block35's residual projection) stay conv2d_fwd
        assert rec.count("conv2d_fwd") == n_conv - n_bn
    else:
        assert rec.count("conv2d_fwd") >= 1
    assert not [t for ts in rec.targets.values() for t in ts if "convolution" in t]


@pytest.mark.slow  # a whole network through Inductor: 28-50 s on 2 cores (test-slow; CI runs it)
def test_torch_compile_whole_optimized_network(device):
    """torch.compile(optimize(model), fullgraph=True): a whole torchvision GoogLeNet, no graph break."""
    torch._dynamo.reset()
    model = randomize_bn(_tv_googlenet(aux=False)).eval()
    fast = inception_kernels.optimize(model).to(device)
    x = torch.randn(1, 3, 15, 15, device=device)
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")(x)
        assert rel_err(compiled.cpu(), model(x.cpu())) < 1e-4


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_records_reference_ops(strict, monkeypatch):
    """Decision: an exported optimized model holds the reference ATen ops (portable, no dependency on this
    package), with a one-time warning (non-strict export; Dynamo's strict tracing cannot warn); the exported
    program computes the same function."""
    import inception_kernels.convert as opt_module

    monkeypatch.setattr(opt_module, "_export_warned", False)
    model = randomize_bn(_tv_googlenet(aux=False)).eval()
    fast = inception_kernels.optimize(model)
    x = torch.randn(1, 3, 15, 15)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ep = torch.export.export(fast, (x,), strict=strict)
    ours = [w for w in caught if "records the reference PyTorch ops" in str(w.message)]
    assert len(ours) == (0 if strict else 1)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("inception_kernels" in t for t in targets)
    assert any("conv2d" in t or "convolution" in t for t in targets)
    with torch.no_grad():
        assert rel_err(ep.module()(x), model(x)) < 1e-5
    if not strict:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.export.export(fast, (x,))
        assert not any("records the reference" in str(w.message) for w in caught)  # once per process


def test_onnx_export(tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript")
    fast = inception_kernels.optimize(_googlenet_block().eval())
    path = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, (torch.randn(1, 12, 5, 5),), str(path), dynamo=True)
    assert path.stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------
# Generic layers
# ----------------------------------------------------------------------------------------------------------
def test_conv_bn_act_loads_basicconv2d_and_convnormact_state_dicts(monkeypatch):
    from timm.layers import ConvNormAct
    from torchvision.models.inception import BasicConv2d

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    x = torch.randn(2, 5, 6, 6)
    for theirs in (
        BasicConv2d(5, 7, kernel_size=(1, 3), padding=(0, 1)),
        ConvNormAct(5, 7, 3, stride=2, padding=1, norm_kwargs=dict(eps=1e-3)),
    ):
        theirs = randomize_bn(theirs).eval()
        conv = theirs.conv
        ours = ConvBNAct(5, 7, conv.kernel_size, conv.stride, conv.padding, eps=theirs.bn.eps).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        with torch.no_grad():
            assert rel_err(ours(x), theirs(x)) < 1e-5


def test_inception_block_from_a_branch_table(monkeypatch):
    from inception_kernels.nn import Block, Conv, Pool, branch

    spec = Block((
        branch(Conv("a", 4)),
        branch(Conv("b.0", 3), Conv("b.1", 5, (1, 3), padding=(0, 1))),
        branch(Pool("max", 3, 1, 1), Conv("c.1", 2)),
    ))  # fmt: skip
    blk = randomize_bn(InceptionBlock(6, spec)).eval()
    assert blk.out_channels == 11 and "b.1.conv.weight" in blk.state_dict()
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        got = blk(x)
        monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        assert rel_err(got, blk(x)) < 1e-5


@pytest.mark.parametrize("fn_kind", ["sequential", "conv", "other"])
@pytest.mark.parametrize("act", [True, False])
def test_scaled_residual(fn_kind, act, device, monkeypatch):
    """relu(x + s·f(x)) on our kernels (the last conv carries sum, scale and ReLU) vs fp64 reference, with grads."""
    c = 6
    if fn_kind == "sequential":
        fn = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, (3, 1), padding=(1, 0)))
    elif fn_kind == "conv":
        fn = nn.Conv2d(c, c, 3, padding=1)
    else:
        fn = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.Tanh()
        )  # not ending in a conv: fn in PyTorch + ops.scaled_residual
    layer = ScaledResidual(fn, scale=0.17, act=act)
    assert list(layer.state_dict())[0] == ("fn.weight" if fn_kind == "conv" else "fn.0.weight")
    ref = copy.deepcopy(layer).double()
    layer = layer.to(device)
    # off the ReLU kinks (the branch's and the one after the sum): see helpers.draw_input_off_kinks
    x = draw_input_off_kinks(ref, (2, c, 5, 5), monkeypatch)
    x_o, x_r = x.clone().to(device).requires_grad_(), x.double().requires_grad_()
    with count_launches() as launches:
        y = layer(x_o)
    with monkeypatch.context() as mp:
        mp.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        y_r = ref(x_r)
    # the fused conv (with the sum in its epilogue), or exactly one scaled_residual kernel after a PyTorch branch
    assert launches.count > 0 if fn_kind != "other" else launches.count == 1
    assert rel_err(y.cpu(), y_r) < 1e-5
    g = torch.randn(y_r.shape, dtype=torch.float64)
    (y * g.to(device, torch.float32)).sum().backward()
    (y_r * g).sum().backward()
    assert rel_err(x_o.grad.cpu(), x_r.grad) < 1e-4
    ref_params = dict(ref.named_parameters())
    for k, p in layer.named_parameters():
        assert rel_err(p.grad.cpu(), ref_params[k].grad) < 1e-4, k
    with pytest.raises(TypeError, match="scale must be a float"):
        ScaledResidual(fn, scale=torch.tensor(0.1))
