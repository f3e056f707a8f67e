"""Plans decided once (issue 12 item 3): an eval ``ConvBNAct`` validates, dispatches, folds BN and packs its
weight on the first call per input signature, and later calls only launch -- until something that changes the
result changes (a parameter or running statistic written or replaced, the backend, the input signature)."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import draw_input_off_kinks, randomize_bn, rel_err

from inception_kernels.nn.layers import ConvBNAct, plans_of
from inception_kernels.ops import conv as conv_ops
from inception_kernels.ops import dispatch
from inception_kernels.utils import count_launches


def _module(cin, cout, k, stride=1, padding=0, device="cpu"):
    m = ConvBNAct(cin, cout, k, stride=stride, padding=padding).to(device)
    return randomize_bn(m).eval()


def _expected(m, x):
    """fp64 reference of relu(bn(conv(x))) with running statistics."""
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        return F.relu(m64.bn(m64.conv(x.double())))


def _cl(*shape, device="cpu"):
    return torch.randn(*shape, device=device).contiguous(memory_format=torch.channels_last)


class _Calls:
    """Counts calls of a module-level function while the context is open."""

    def __init__(self, monkeypatch, owner, name):
        self.n = 0
        fn = getattr(owner, name)

        def counted(*a, **k):
            self.n += 1
            return fn(*a, **k)

        monkeypatch.setattr(owner, name, counted)


# the awkward shapes: C=3, odd channel counts, H=W=1, stride 2 on odd sizes, 1xn / nx1, padding
SHAPES = [
    (3, 5, (3, 3), 1, 1, (7, 9)),
    (17, 33, (1, 7), 1, (0, 3), (9, 11)),
    (8, 12, (7, 1), 1, (3, 0), (5, 6)),
    (5, 7, (3, 3), 2, 0, (9, 7)),
    (4, 6, (1, 1), 1, 0, (1, 1)),
]


@pytest.mark.parametrize("cin,cout,k,stride,padding,hw", SHAPES)
def test_planned_eval_matches_fp64_and_is_planned_once(cin, cout, k, stride, padding, hw, device, poison,
                                                       monkeypatch):  # fmt: skip
    m = _module(cin, cout, k, stride, padding, device)
    x = _cl(2, cin, *hw, device=device)
    validations = _Calls(monkeypatch, conv_ops, "_validate")
    choices = _Calls(monkeypatch, dispatch, "choose_conv")
    with torch.no_grad():
        first = m(x)
        assert validations.n == 1 and choices.n == 1
        x2 = _cl(2, cin, *hw, device=device)  # fresh values, same signature
        with count_launches() as n:
            second = m(x2)
    assert validations.n == 1 and choices.n == 1, "the second call re-validated or re-dispatched"
    assert n.count == 1  # one kernel, no repack or fold
    assert torch.isfinite(second).all()
    assert rel_err(first, _expected(m, x)) < 1e-5
    assert rel_err(second, _expected(m, x2)) < 1e-5


def test_plan_writes_a_channel_slice_at_an_offset(device, poison):
    m = _module(6, 10, (3, 3), 1, 1, device)
    x = _cl(2, 6, 5, 5, device=device)
    buf = torch.full((2, 24, 5, 5), 7.0, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):  # the first call plans, the second runs the plan
            y = m(x, out=buf[:, 9:19])
    assert y.data_ptr() == buf[:, 9:19].data_ptr()
    assert rel_err(buf[:, 9:19], _expected(m, x)) < 1e-5
    assert (buf[:, :9] == 7).all() and (buf[:, 19:] == 7).all()


def test_plan_rejects_an_out_that_overlaps_x(device):
    m = _module(4, 4, (1, 1), 1, 0, device)
    a, b = _cl(1, 8, 3, 3, device=device), _cl(1, 8, 3, 3, device=device)
    with torch.no_grad():
        m(a[:, :4], out=b[:, 4:])  # plans this signature (separate buffers)
        m(a[:, :4], out=b[:, 4:])
        with pytest.raises(ValueError, match="out must not share memory with x"):
            m(a[:, :4], out=a[:, 4:])  # same signature, but the destination interleaves with x


@pytest.mark.parametrize("change", ["running_mean", "running_var", "bn_weight", "conv_weight", "weight_data",
                                    "load_state_dict", "new_parameter"])  # fmt: skip
def test_plan_follows_every_change_of_the_result(change, device):
    m = _module(5, 7, (3, 3), 1, 1, device)
    x = _cl(2, 5, 6, 6, device=device)
    with torch.no_grad():
        m(x)
        m(x)  # planned
        if change == "running_mean":
            m.bn.running_mean.add_(0.5)
        elif change == "running_var":
            m.bn.running_var.mul_(3.0)
        elif change == "bn_weight":
            m.bn.weight.mul_(-1.0)
        elif change == "conv_weight":
            m.conv.weight.mul_(2.0)
        elif change == "weight_data":
            m.conv.weight.data = torch.randn_like(m.conv.weight)
        elif change == "load_state_dict":
            other = _module(5, 7, (3, 3), 1, 1, device)
            m.load_state_dict(other.state_dict())
        else:
            m.conv.weight = torch.nn.Parameter(torch.randn_like(m.conv.weight))
        y = m(x)
    assert rel_err(y, _expected(m, x)) < 1e-5


def test_plan_follows_the_backend_and_the_signature(device, monkeypatch):
    m = _module(3, 4, (3, 3), 2, 1, device)
    x = _cl(1, 3, 7, 7, device=device)
    with torch.no_grad():
        m(x)
        with dispatch.use_backend("reference"), count_launches() as n:
            y_ref = m(x)
        assert n.count == 0  # the reference route runs no kernel of ours
        assert rel_err(y_ref, _expected(m, x)) < 1e-5
        x_big = _cl(3, 3, 9, 8, device=device)
        y_big = m(x_big)  # a new signature plans anew
        assert y_big.shape == (3, 4, 5, 4)
        assert rel_err(y_big, _expected(m, x_big)) < 1e-5
        x_nchw = torch.randn(1, 3, 7, 7, device=device)  # contiguous NCHW: the unplanned route converts it
        assert rel_err(m(x_nchw), _expected(m, x_nchw)) < 1e-5


def test_planned_module_copies_and_pickles_without_its_plans(device):
    m = _module(4, 6, (3, 3), 1, 1, device)
    x = _cl(2, 4, 5, 5, device=device)
    with torch.no_grad():
        y = m(x)
        assert len(plans_of(m)) == 1
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            assert len(plans_of(other)) == 0
            with torch.no_grad():
                other.conv.weight.mul_(0.5)  # the copy has its own parameters; the original's plan is untouched
            assert rel_err(other(x), _expected(other, x)) < 1e-5
        assert torch.equal(m(x), y)


def test_eval_with_autograd_is_not_planned(device):
    m = _module(4, 6, (3, 3), 1, 1, device)
    x = _cl(2, 4, 5, 5, device=device).requires_grad_()
    y = m(x)
    y.sum().backward()
    assert len(plans_of(m)) == 0
    assert x.grad is not None and m.conv.weight.grad is not None


def _block(device):
    """Inception-v3's A block, narrow: three branches start with a 1x1 conv on the block input (one of them a
    leaf), so eval runs them as one horizontally fused GEMM."""
    from inception_kernels.models import inception_v3 as v3
    from inception_kernels.nn.engine import InceptionBlock

    block = InceptionBlock(12, v3.block_a(8)).to(device)
    assert len(block.plan.hfuse) >= 2
    return randomize_bn(block).eval()


def test_block_fused_1x1_gemm_is_planned_once(device, poison, monkeypatch):
    block = _block(device)
    x = _cl(2, 12, 7, 9, device=device)
    with torch.no_grad():
        expected = block.forward_reference(x)
        first = block(x)
        choices = _Calls(monkeypatch, dispatch, "choose_conv")
        validations = _Calls(monkeypatch, conv_ops, "_validate")
        x2 = _cl(2, 12, 7, 9, device=device)
        second = block(x2)
        assert choices.n == 0 and validations.n == 0, "a planned block re-dispatched or re-validated"
        assert rel_err(first, expected) < 1e-5
        assert rel_err(second, block.forward_reference(x2)) < 1e-5
        # a running statistic of one fused conv changes: the fused GEMM is planned anew with it
        first_conv = block._layer(block.spec.branches[block.plan.hfuse[-1]].layers[0])
        first_conv.bn.running_mean.add_(1.0)
        assert rel_err(block(x2), block.forward_reference(x2)) < 1e-5


def test_block_plans_survive_pickling_as_empty(device):
    block = _block(device)
    x = _cl(1, 12, 5, 5, device=device)
    with torch.no_grad():
        y = block(x)
        copied = pickle.loads(pickle.dumps(block))
        assert len(plans_of(copied)) == 0
        assert torch.equal(copied(x), y)


def test_plan_is_made_again_after_the_dispatch_tables_change(device, monkeypatch):
    """``dispatch.reload()`` (or a tuning table written) forgets every memoized choice: plans holding one too."""
    m = _module(3, 4, (3, 3), 1, 1, device)
    x = _cl(1, 3, 5, 5, device=device)
    with torch.no_grad():
        m(x)
        choices = _Calls(monkeypatch, dispatch, "choose_conv")
        m(x)
        assert choices.n == 0
        dispatch.reload()
        y = m(x)
    assert choices.n == 1
    assert rel_err(y, _expected(m, x)) < 1e-5


# ----------------------------------------------------------------------------------------------------------
# Training mode: the fused step (conv + BN statistics → finalize → BN-apply + act) planned per signature
# ----------------------------------------------------------------------------------------------------------
def _train_step_ref(m64, x, g):
    """fp64 reference of one training step: output, input / parameter gradients, updated running statistics."""
    x = x.double().requires_grad_()
    y = F.relu(m64.bn(m64.conv(x)))
    (y * g).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("cin,cout,k,stride,padding,hw", SHAPES[:4])
def test_planned_training_step_matches_fp64_and_is_planned_once(cin, cout, k, stride, padding, hw, device,
                                                                poison, monkeypatch):  # fmt: skip
    """Two training steps (the parameters and running statistics move in between): the second runs from the
    plan the first made (no argument checks, no dispatch), and both equal the fp64 reference in output, input
    and parameter gradients and running statistics."""
    from inception_kernels.ops import batchnorm

    m = randomize_bn(ConvBNAct(cin, cout, k, stride=stride, padding=padding)).to(device).train()
    m64 = copy.deepcopy(m).cpu().double()
    validations = _Calls(monkeypatch, conv_ops, "_validate")
    fwd_choices = []
    choose = dispatch.choose_conv
    monkeypatch.setattr(dispatch, "choose_conv", lambda family, *a: fwd_choices.append(family) or choose(family, *a))
    plans = _Calls(monkeypatch, batchnorm, "plan_conv_bn_act")
    for step in range(2):
        # off the ReLU kink (helpers.draw_input_off_kinks: a mask entry flipped by rounding moves a channel's gradient)
        x = draw_input_off_kinks(m64, (2, cin, *hw), monkeypatch).to(device)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        y = m(x)
        g = torch.randn(y.shape, dtype=torch.float64)
        (y * g.to(device, y.dtype)).sum().backward()
        y_ref, dx_ref = _train_step_ref(m64, x.detach().cpu(), g)
        assert rel_err(y.detach().cpu(), y_ref) < 1e-5 and rel_err(x.grad.cpu(), dx_ref) < 1e-5, step
        for (name, p), p64 in zip(m.named_parameters(), m64.parameters(), strict=True):
            assert rel_err(p.grad.cpu(), p64.grad) < 1e-5, (step, name)
        for (name, b), b64 in zip(m.named_buffers(), m64.buffers(), strict=True):
            assert torch.allclose(b.cpu().double(), b64.double(), rtol=1e-5, atol=1e-7), (step, name)
        with torch.no_grad():  # an optimizer step: the plan reads the new values, it folds nothing
            for p, p64 in zip(m.parameters(), m64.parameters(), strict=True):
                p.sub_(0.1 * p.grad)
                p64.sub_(0.1 * p64.grad)
                p.grad = p64.grad = None
        if step == 0:
            first = (validations.n, *map(fwd_choices.count, ("conv_fwd", "conv_dgrad", "conv_wgrad")))
    # the backward's dgrad / wgrad implementations are chosen once too (by the plan, on its first backward)
    now = (validations.n, *map(fwd_choices.count, ("conv_fwd", "conv_dgrad", "conv_wgrad")))
    assert plans.n == 1 and now == first == (1, 1, 1, 1), "re-planned"


def test_planned_backward_keeps_its_launches_per_gradient_geometry(device, poison, monkeypatch):
    """A plan keeps its backward's launch decisions (BN reduction, dgrad, wgrad) per gradient geometry: steps whose
    incoming gradient alternates between channels_last and NCHW strides each get the launches made for their
    strides (two kept, not one), and every step's input and parameter gradients equal the fp64 reference. The
    second layer reads the first's output, so its wgrad rebuilds that input on load (the fold route). Inputs are
    drawn off the ReLU kinks (``helpers.draw_input_off_kinks``: a mask entry flipped by rounding moves a whole
    channel's gradient)."""
    a = randomize_bn(ConvBNAct(3, 6, (3, 3), padding=1)).to(device).train()
    b = randomize_bn(ConvBNAct(6, 5, (1, 3), padding=(0, 1))).to(device).train()
    a64, b64 = (copy.deepcopy(m).cpu().double() for m in (a, b))
    for step, fmt in enumerate((torch.channels_last, torch.contiguous_format, torch.channels_last)):
        x = draw_input_off_kinks(torch.nn.Sequential(a64, b64), (2, 3, 5, 7), monkeypatch)
        x = x.to(device).contiguous(memory_format=torch.channels_last).requires_grad_()
        z = b(a(x))
        g = torch.randn(z.shape, dtype=torch.float64)
        z.backward(g.to(device, z.dtype).contiguous(memory_format=fmt))
        xd = x.detach().cpu().double().requires_grad_()
        F.relu(b64.bn(b64.conv(F.relu(a64.bn(a64.conv(xd)))))).backward(g)
        assert rel_err(x.grad.cpu(), xd.grad) < 1e-5, step
        for (name, p), p64 in zip([*a.named_parameters(), *b.named_parameters()], [*a64.parameters(),
                                  *b64.parameters()], strict=True):  # fmt: skip
            assert rel_err(p.grad.cpu(), p64.grad) < 1e-5, (step, name)
            p.grad = p64.grad = None
    (plan, _), = plans_of(b).values()
    assert len(plan._slots) == 2


def test_training_backward_chooses_again_after_the_dispatch_tables_change(device, monkeypatch):
    """The plan keeps its backward's dgrad / wgrad choice per dispatch-table generation: a ``dispatch.reload()``
    between a forward and its backward makes the backward choose again (and the gradient stays right)."""
    m = randomize_bn(ConvBNAct(4, 6, (3, 3), padding=1)).to(device).train()
    m64 = copy.deepcopy(m).cpu().double()
    x = draw_input_off_kinks(m64, (2, 4, 5, 5), monkeypatch)  # (a ReLU mask entry flipped by rounding: see above)
    x = x.to(device).contiguous(memory_format=torch.channels_last).requires_grad_()
    m(x).sum().backward()  # planned, and its backward chose
    x.grad = None
    families = []
    choose = dispatch.choose_conv
    monkeypatch.setattr(dispatch, "choose_conv", lambda family, *a: families.append(family) or choose(family, *a))
    y = m(x)
    dispatch.reload()
    y.sum().backward()
    assert families.count("conv_dgrad") == 1 and families.count("conv_wgrad") == 1, families
    xd = x.detach().cpu().double().requires_grad_()
    F.relu(m64.bn(m64.conv(xd))).sum().backward()
    assert rel_err(x.grad.cpu(), xd.grad) < 1e-5


def test_training_plan_follows_the_signature_the_backend_and_the_parameters(device, monkeypatch):
    from inception_kernels.ops import batchnorm

    m = randomize_bn(ConvBNAct(6, 8, (3, 3), padding=1)).to(device).train()
    plans = _Calls(monkeypatch, batchnorm, "plan_conv_bn_act")
    x = _cl(2, 6, 5, 5, device=device)
    m(x)
    m(_cl(2, 6, 5, 5, device=device))
    assert plans.n == 1
    m(_cl(3, 6, 5, 5, device=device))  # another batch size
    assert plans.n == 2
    m(x.contiguous())  # NCHW: no plan (converted per call, as conv_bn_act does), and that answer is kept
    m(x.contiguous())
    assert plans.n == 3
    m.conv.weight = torch.nn.Parameter(m.conv.weight.detach().clone())  # a new parameter object
    y = m(x)
    assert plans.n == 4
    with dispatch.use_backend("reference"):
        y_ref = m(x)
    assert plans.n == 4  # the reference route never plans
    assert rel_err(y, y_ref) < 1e-5
    # eval mode uses the eval plans: the training plans are not consulted
    m.eval()
    with torch.no_grad():
        m(x)
    assert plans.n == 4



@pytest.mark.parametrize("momentum", [0.1, None])
def test_planned_training_step_counts_batches_in_its_finalize(momentum, device):
    """num_batches_tracked moves as nn.BatchNorm2d moves it: with a fixed momentum the finalize launch adds the
    batch (no separate ``add_`` op), with momentum=None (the cumulative average needs the count on the host) the
    module adds it first; the running statistics follow the fp64 reference either way (8 seeds x 3 steps x both
    momenta: largest error 1.8e-7, tolerance 1e-5)."""
    from inception_kernels.bench.counting import OpCounter

    m = randomize_bn(ConvBNAct(4, 6, 3, padding=1)).train()
    m.bn.momentum = momentum
    m.bn.num_batches_tracked.fill_(5)
    m64 = copy.deepcopy(m).double()
    m = m.to(device)
    for step in range(3):
        x = _cl(2, 4, 5, 5, device=device)
        with OpCounter() as ops:
            m(x)
        assert ("add_" in ops.ops) == (momentum is None), (step, ops.ops)
        with torch.no_grad():
            m64.bn(m64.conv(x.cpu().double()))
        assert int(m.bn.num_batches_tracked) == 6 + step == int(m64.bn.num_batches_tracked)
        assert rel_err(m.bn.running_mean.cpu(), m64.bn.running_mean) < 1e-5
        assert rel_err(m.bn.running_var.cpu(), m64.bn.running_var) < 1e-5

def test_planned_training_step_follows_a_momentum_switched_between_steps(device):
    """The plan's entry fixes whether its finalize counts the batch (a fixed momentum) or the module adds it
    (momentum=None): switching the momentum between steps (0.1 -> None -> 0.05 -> None) picks the matching entry
    every step, and num_batches_tracked and the running statistics follow the fp64 reference (nn.BatchNorm2d's
    own arithmetic) throughout."""
    m = randomize_bn(ConvBNAct(4, 6, 3, padding=1)).train()
    m64 = copy.deepcopy(m).double()
    m = m.to(device)
    for step, momentum in enumerate((0.1, None, 0.05, None)):
        m.bn.momentum = m64.bn.momentum = momentum
        x = _cl(2, 4, 5, 5, device=device)
        m(x)
        with torch.no_grad():
            m64.bn(m64.conv(x.cpu().double()))
        assert int(m.bn.num_batches_tracked) == step + 1 == int(m64.bn.num_batches_tracked), step
        assert rel_err(m.bn.running_mean.cpu(), m64.bn.running_mean) < 1e-5, step
        assert rel_err(m.bn.running_var.cpu(), m64.bn.running_var) < 1e-5, step


def test_training_step_reads_a_parametrized_weight(device):
    """A conv weight behind a parametrization (``torch.nn.utils.parametrize``: a class property, not an entry of
    the conv's parameter table) is read through the property on every call: the training step equals the fp64
    reference of the same parametrized module, also after the underlying parameter moves."""
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    m = randomize_bn(ConvBNAct(5, 7, 3, padding=1)).train()
    parametrize.register_parametrization(m.conv, "weight", Doubled())
    m64 = copy.deepcopy(m).double()
    m = m.to(device)
    for step in range(2):
        x = _cl(2, 5, 6, 6, device=device)
        y = m(x)
        with torch.no_grad():
            y_ref = F.relu(m64.bn(m64.conv(x.cpu().double())))
        assert rel_err(y.detach().cpu(), y_ref) < 1e-5, step
        with torch.no_grad():
            m.conv.parametrizations.weight.original.mul_(0.5)
            m64.conv.parametrizations.weight.original.mul_(0.5)


# ----------------------------------------------------------------------------------------------------------
# Pooling layers of the block engine and of the network stems
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pool_layers_are_planned_once_per_signature(mode, device, poison, monkeypatch):
    """A block whose max-pool leaf writes its slice of the block output (Inception-v3's grid reduction, odd sizes,
    stride 2; the network stems' pools take the same path with the network as owner): the second call pools from
    the plan the first made (no argument checks, no dispatch), in eval a single launch; output (and in train the
    input gradient) equal the fp64 reference; a new input size plans again."""
    from inception_kernels.models import inception_v3 as v3
    from inception_kernels.nn.engine import InceptionBlock
    from inception_kernels.ops import pool as pool_ops

    block = randomize_bn(InceptionBlock(6, v3._scaled(v3.block_d(), 0.0625))).to(device).train(mode == "train")
    ref = copy.deepcopy(block).cpu().double()
    made = _Calls(monkeypatch, pool_ops, "plan_pool2d")
    checks = _Calls(monkeypatch, pool_ops, "_pool_args")
    for i, hw in enumerate([(9, 7), (9, 7), (11, 11)]):
        x = _cl(2, 6, *hw, device=device).requires_grad_(mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            y = block(x)
        with dispatch.use_backend("reference"), torch.set_grad_enabled(mode == "train"):
            xr = x.detach().cpu().double().requires_grad_(mode == "train")
            y_ref = ref(xr)
        assert torch.isfinite(y).all() and rel_err(y.detach().cpu(), y_ref.detach()) < 1e-5, i
        if mode == "train":
            g = torch.randn(y_ref.shape, dtype=torch.float64)
            (y * g.to(device, y.dtype)).sum().backward()
            (y_ref * g).sum().backward()
            assert rel_err(x.grad.cpu(), xr.grad) < 1e-5, i
        assert made.n == checks.n == (1 if i < 2 else 2), i  # the second call of a size made no plan
    # the plan of the first size: it writes a slice of the block output (the launch's strides are fixed)
    plan = next(p for p in plans_of(block).values() if isinstance(p, pool_ops.PoolPlan))
    (x_shape, x_stride), (out_shape, out_stride) = plan.geometry
    x = torch.randn(x_shape, device=device).as_strided(x_shape, x_stride)
    out = torch.empty_strided(out_shape, out_stride, device=device)
    with torch.no_grad(), count_launches() as n:
        plan(x, out)
    assert n.count == 1 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="made for tensors of shapes and strides"):
        plan(x)  # a dense new output would not be written where the fixed strides point


def test_plans_refuse_tensors_of_another_geometry(device):
    """A plan's launch has its sizes and strides fixed: a call with tensors of another shape or strides (a dense
    output where the plan writes a slice, another batch) is refused instead of writing out of bounds."""
    from inception_kernels.ops import batchnorm

    x = _cl(2, 6, 5, 5, device=device)
    w = torch.randn(8, 6, 3, 3, device=device)
    buf = torch.empty(2, 20, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
    run = conv_ops.plan_forward(x, w, padding=1, out=buf[:, 4:12])
    run(x, buf[:, 4:12])
    for bad in ((x, None), (_cl(3, 6, 5, 5, device=device), buf[:, 4:12]), (x.contiguous(), buf[:, 4:12])):
        with pytest.raises(ValueError, match="made for tensors of shapes and strides"):
            run(*bad)
    m = randomize_bn(ConvBNAct(6, 8, (3, 3), padding=1)).to(device).train()
    plan = batchnorm.plan_conv_bn_act(x, m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean,
                                      m.bn.running_var, momentum=0.1, eps=1e-3, stride=1, padding=1)  # fmt: skip
    args = (m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var, 0.1)
    assert plan(x, *args).shape == (2, 8, 5, 5)
    with pytest.raises(ValueError, match="made for tensors of shapes and strides"):
        plan(x, *args, buf[:, 4:12])


def test_conv_bn_act_takes_float64_on_the_reference_backend():
    """A ConvBNAct called as a plain module (by an nn.Sequential, say) computes float64 on the reference backend,
    as nn.Conv2d + nn.BatchNorm2d do (our kernels take float32 / bfloat16 / float16 only)."""
    m = randomize_bn(ConvBNAct(3, 5, (3, 3), padding=1)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for mode in ("eval", "train"):
        m.train(mode == "train")
        ref = copy.deepcopy(m)
        with dispatch.use_backend("reference"):
            y = m(x)
        assert y.dtype == torch.float64 and rel_err(y, F.relu(ref.bn(ref.conv(x)))) < 1e-12, mode
    with pytest.raises(TypeError, match="float32"):
        m(x)  # on our kernels: the dtype is refused, naming it


def test_channels_last_weights_train_without_weight_copies(device, poison, monkeypatch):
    """An optimized torchvision Inception block whose weights are channels_last (``model.to(memory_format=
    torch.channels_last)``, as the trainer does on CUDA) trains without a single weight copy across two steps with
    an optimizer-like weight change between them -- the kernels read its 1×1, 3×3 and 5×5 weights as they are --
    and computes bit for bit what the same block with (K, C, R, S)-contiguous weights computes (which copies its
    R×S weights): output, every gradient, running statistics. Each weight gradient comes back in its weight's
    layout."""
    from torchvision.models.googlenet import Inception

    import inception_kernels
    from inception_kernels.ops import _weights

    copies = []
    real = _weights._cached_copy
    monkeypatch.setattr(_weights, "_cached_copy", lambda w, *a: copies.append(tuple(w.shape)) or real(w, *a))
    torch.manual_seed(0)
    ref = randomize_bn(Inception(12, 8, 6, 8, 4, 6, 4)).to(device).train()
    cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and p.shape[2] > 1 and not p.is_contiguous() for p in cl.parameters())
    x = _cl(2, 12, 7, 7, device=device)
    g = torch.randn(2, 26, 7, 7, device=device)
    results = {}
    for name, model in (("contiguous", ref), ("channels_last", cl)):
        fast = inception_kernels.optimize(model)
        copies.clear()
        for _ in range(2):
            with torch.no_grad():
                for p in fast.parameters():
                    p.mul_(1.0)  # what an optimizer step does to the versions
            fast.zero_grad(set_to_none=True)
            y = fast(x)
            (y * g).sum().backward()
        results[name] = (y, {k: p.grad for k, p in fast.named_parameters()}, {k: b.clone() for k, b in fast.named_buffers()},
                         list(copies))  # fmt: skip
        for p in fast.parameters():  # the layout autograd keeps without a copy (strides of size-1 dims are free)
            assert all(a == b for n, a, b in zip(p.shape, p.grad.stride(), p.stride()) if n > 1)
    y0, g0, b0, c0 = results["contiguous"]
    y1, g1, b1, c1 = results["channels_last"]
    assert c1 == [] and c0 and all(s[2] * s[3] > 1 for s in c0)  # contiguous: only R×S weights are copied
    assert not y1.isnan().any() and torch.equal(y0, y1)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
