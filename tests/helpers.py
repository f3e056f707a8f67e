"""Helpers shared by the model tests."""

import copy
import functools

import torch

from inception_kernels.nn.layers import ConvBNAct
from inception_kernels.utils import rel_err  # noqa: F401 - the one relative error; tests import it from here too


def marked_slow(values, slow):
    """``values`` as pytest params, those in ``slow`` marked ``slow``: the cases that take a minute or more in the
    Triton interpreter on 2 cores run in ``make test-slow`` (CI runs both), not in ``make test``."""
    import pytest

    return [pytest.param(v, marks=pytest.mark.slow) if v in slow else v for v in values]


def randomize_bn(model):
    """Random BN affine parameters and running statistics (fresh networks have trivial ones)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def _max_pool_gap(max_pool2d, x, kernel, stride, padding, ceil_mode):
    """Smallest gap between the largest value of a max-pool window of ``x`` and the largest value below it. Exact
    ties do not count: they are copies of one value (ReLU zeros, or the same element picked by two overlapping
    windows of an earlier pool) and tie in every precision."""
    import torch.nn.functional as F

    k, s, p = (v if isinstance(v, int) else v[0] for v in (kernel, stride or kernel, padding))
    ho, wo = max_pool2d(x, k, s, p, ceil_mode=ceil_mode).shape[2:]
    xp = F.pad(x, (p, p + k + s, p, p + k + s), value=float("-inf"))  # the extra right/bottom pad covers ceil_mode
    hl, wl = (xp.shape[2] - k) // s + 1, (xp.shape[3] - k) // s + 1
    win = F.unfold(xp, k, stride=s).view(*x.shape[:2], k * k, hl, wl)[..., :ho, :wo]
    top = win.max(dim=2, keepdim=True).values
    gap = (top - win.masked_fill(win >= top, float("-inf")).max(dim=2, keepdim=True).values).flatten()
    return gap.min().item()


def _kink_sites(model, x):
    """The tensors at every kink of ``model`` (in its own train/eval modes, reference backend, run on a copy so
    running statistics are left untouched) on input ``x``: the input of every ReLU (ConvBNAct, the residual merge of
    InceptionBlocks and of ScaledResidual, plain ``nn.ReLU`` modules; ``model`` itself included) as
    ``(tensor, None)`` and the input of every max pool as ``(tensor, pool args)``."""
    from unittest import mock

    import torch.nn.functional as F

    from inception_kernels.nn import ScaledResidual
    from inception_kernels.nn.engine import InceptionBlock

    model = copy.deepcopy(model)
    sites, hooks = [], []
    for m in model.modules():
        if isinstance(m, ConvBNAct) and m.act:
            # its reference ops (conv → BN module → ReLU) in both precisions: the fp32 path of a frozen BN folds
            # the BN into the conv and never calls the BN module
            hooks.append(m.register_forward_pre_hook(lambda mod, a, kw: (a, {**kw, "reference": True}),
                                                     with_kwargs=True))  # fmt: skip
            hooks.append(m.bn.register_forward_hook(lambda mod, i, o: sites.append((o, None))))
        if isinstance(m, torch.nn.ReLU):
            hooks.append(m.register_forward_pre_hook(lambda mod, i: sites.append((i[0], None))))
        if isinstance(m, ScaledResidual) and m.act:
            inp = {}
            hooks.append(m.register_forward_pre_hook(lambda mod, i, inp=inp: inp.update(x=i[0])))
            hooks.append(m.fn.register_forward_hook(
                lambda mod, i, o, inp=inp, s=m.scale: sites.append((inp["x"] + s * o, None))))  # fmt: skip
        if isinstance(m, InceptionBlock) and m.spec.merge == "residual" and m.spec.act:
            inp = {}
            hooks.append(m.register_forward_pre_hook(lambda mod, i, inp=inp: inp.update(x=i[0])))
            hooks.append(m.get_submodule(m.spec.proj.name).register_forward_hook(
                lambda mod, i, o, inp=inp, s=m.spec.scale: sites.append((inp["x"] + s * o, None))))  # fmt: skip
    max_pool2d = F.max_pool2d

    def probed_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **kw):
        sites.append((x, (kernel_size, stride, padding, ceil_mode)))
        return max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, **kw)

    with torch.no_grad(), mock.patch.object(F, "max_pool2d", probed_max_pool2d):
        model(x)
    for h in hooks:
        h.remove()
    return [(t, None if pool is None else functools.partial(_max_pool_gap, max_pool2d, t, *pool)) for t, pool in sites]


def _rounding(t64, t32):
    """How far fp32 rounding reaches at a kink site: the largest |fp32 - fp64| there (floored at 1e-9)."""
    return max((t32.double() - t64).abs().max().item(), 1e-9)


def relu_safety(pre64, pre32):
    """How many times farther the ReLU input ``pre64`` (computed in fp64) is from 0 than fp32 rounding reaches
    there: min |pre64| / max |pre32 - pre64|, ``pre32`` the same ReLU input computed in plain PyTorch fp32."""
    return pre64.abs().min().item() / _rounding(pre64, pre32)


def kink_safety(ref, x):
    """How many times farther ``x`` is from the nearest kink of the fp64 model ``ref`` than fp32 rounding reaches
    there: min over kink sites of (distance to the kink in fp64) / (largest |fp32 - fp64| at that site, plain
    PyTorch fp32 on the reference backend as the measure of fp32 rounding). Distance: the smallest |ReLU input|, or
    for a max pool the smallest gap between a window's maximum and the largest value below it."""
    s64 = _kink_sites(ref, x.double())
    s32 = _kink_sites(copy.deepcopy(ref).float(), x.float())
    worst = float("inf")
    for (t64, gap), (t32, _) in zip(s64, s32, strict=True):
        worst = min(worst, relu_safety(t64, t32) if gap is None else gap() / _rounding(t64, t32))
    return worst


def _redraw(draw, safety_of, safety, draws):
    """``draw()`` until ``safety_of`` its result exceeds ``safety``; the safest of ``draws`` draws otherwise."""
    best, best_safety = None, -1.0
    for _ in range(draws):
        drawn = draw()
        got = safety_of(drawn)
        if got > safety:
            return drawn
        if got > best_safety:
            best, best_safety = drawn, got
    return best


def draw_input_off_kinks(ref, shape, monkeypatch, safety=10.0, draws=100):
    """A random input on which the fp64 reference ``ref`` is at least ``safety`` times farther from every kink than
    fp32 rounding reaches (:func:`kink_safety`), or the safest of ``draws`` draws.

    A ReLU input within fp32 rounding of 0 takes the other side of the kink in fp32 than in fp64; a max-pool window
    whose two largest values are that close picks the other argmax. Either moves gradient (a flipped ReLU mask entry
    moves a whole BN channel's gradient, since batch statistics couple its values), and the fp32-vs-fp64 gradients
    then differ by up to ~1e-2 (plain PyTorch fp32 does the same: about one draw in 200 for a reduction block at
    these sizes; a whole Inception-v3 at 75x75 once did in CI). Such inputs test rounding luck, not the kernels, so
    they are redrawn. Whole networks have a kink within a few times fp32 rounding on nearly every input (their
    deepest BN layers normalize 2 values per channel): there the safest draw is taken."""
    with monkeypatch.context() as m:
        m.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        return _redraw(lambda: torch.randn(shape), lambda x: kink_safety(ref, x), safety, draws)


def draw_off_relu_kink(draw, pre_act, safety=10.0, draws=100):
    """The op-level :func:`draw_input_off_kinks`: ``draw()`` (a tuple of tensors, from the test's seeded generator)
    until the ReLU input ``pre_act(*drawn)`` computed in fp64 is at least ``safety`` times farther from 0 than fp32
    rounding reaches (:func:`relu_safety`; ``pre_act`` run in plain PyTorch on the drawn tensors cast to fp64 and
    to fp32, ``None`` passed through), or the safest of ``draws`` draws. On the op tests' inputs a redraw is rare
    (2 of 180 first draws over 12 seeds)."""

    def safety_of(drawn):
        def cast(dtype):
            return [None if t is None else t.to(dtype) for t in drawn]

        return relu_safety(pre_act(*cast(torch.float64)), pre_act(*cast(torch.float32)))

    return _redraw(draw, safety_of, safety, draws)


def check_train_block(block, size, device, monkeypatch, batch=2):
    """Train mode on our kernels vs the same block on the reference backend in fp64: output, input gradient,
    every parameter gradient and the updated running statistics (batch-statistics BN, leaves in slices)."""
    ours = randomize_bn(block).train()
    ref = copy.deepcopy(ours).double()
    ours = ours.to(device)
    cin = block.in_channels
    x = draw_input_off_kinks(ref, (batch, cin, size, size), monkeypatch)
    x_o = x.to(device).to(memory_format=torch.channels_last).requires_grad_(True)
    x_r = x.double().requires_grad_(True)
    y = ours(x_o)
    with monkeypatch.context() as m:
        m.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        y_ref = ref(x_r)
    g = torch.randn(y_ref.shape, dtype=torch.float64)
    (y * g.to(device, torch.float32)).sum().backward()
    (y_ref * g).sum().backward()
    assert rel_err(y.cpu(), y_ref) < 1e-4
    assert rel_err(x_o.grad.cpu(), x_r.grad) < 1e-4
    assert_same_grads_and_buffers(ours, ref)


def check_eval_on_our_kernels(ours, ref, x, device):
    """Eval forward on our kernels (the interpreter without a GPU) against the reference model in fp64."""
    from inception_kernels.utils import count_launches

    ours.eval(), ref.eval()
    with torch.no_grad():
        expected = ref.double()(x.double())
        ours = ours.to(device)
        with count_launches() as launches:
            got = ours(x.to(device))
    assert not got.isnan().any()
    assert rel_err(got.cpu(), expected) < 1e-4
    assert launches.count > 0


def assert_same_grads_and_buffers(ours, ref, tol=1e-4):
    """Every parameter gradient and every buffer (running statistics, batch counters) of ``ours`` matches ``ref``."""
    ref_params = dict(ref.named_parameters())
    for k, p in ours.named_parameters():
        assert rel_err(p.grad.cpu(), ref_params[k].grad) < tol, k
    ref_buffers = dict(ref.named_buffers())
    for k, b in ours.named_buffers():
        assert torch.allclose(b.cpu().double(), ref_buffers[k].double(), rtol=tol, atol=1e-6), k


class GraphRecorder:
    """A ``torch.compile`` backend (AOT autograd, run eagerly) that records the ``call_function`` targets of the
    forward and backward graphs it is handed: ``recorder.targets["fw"]`` / ``["bw"]``, as strings such as
    ``"inception_kernels.bn_act_train.default"``."""

    def __init__(self):
        from torch._dynamo.backends.common import aot_autograd

        self.targets = {"fw": [], "bw": []}
        self.backend = aot_autograd(fw_compiler=self._record("fw"), bw_compiler=self._record("bw"))

    def _record(self, kind):
        from torch._functorch.aot_autograd import make_boxed_func

        def compiler(gm, example_inputs):
            for n in gm.graph.nodes:
                if n.op == "call_function":
                    # an op that mutates its arguments is wrapped: auto_functionalized(op, ...)
                    functionalized = str(n.target).startswith("auto_functionalized")
                    self.targets[kind].append(str(n.args[0] if functionalized else n.target))
            return make_boxed_func(gm.forward)

        return compiler

    def count(self, op: str, kind: str = "fw") -> int:
        """How many calls of ``inception_kernels::op`` (any overload) the ``kind`` graphs hold."""
        return sum(t.startswith(f"inception_kernels.{op}.") for t in self.targets[kind])

    def aten_batch_norm(self) -> list[str]:
        """ATen batch-norm calls in any graph (the nn.BatchNorm2d fallback)."""
        return [t for ts in self.targets.values() for t in ts if "batch_norm" in t]
