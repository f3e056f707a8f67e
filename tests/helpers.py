"""Helpers shared by the model tests."""

import copy

import torch

from inception_kernels.nn.layers import ConvBNAct


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


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


def relu_margin(block, x):
    """Smallest |input| of any ReLU of ``block`` (train mode, reference backend) on ``x``; running statistics are
    left untouched (the probe runs on a copy)."""
    block = copy.deepcopy(block)
    pre, hooks = [], []
    for m in block.modules():
        if isinstance(m, ConvBNAct) and m.act:
            hooks.append(m.bn.register_forward_hook(lambda mod, i, o: pre.append(o.abs().min().item())))
    if block.spec.merge == "residual" and block.spec.act:
        proj = block.get_submodule(block.spec.proj.name)
        hooks.append(proj.register_forward_hook(
            lambda mod, i, o: pre.append((x + block.spec.scale * o).abs().min().item())))  # fmt: skip
    with torch.no_grad():
        block(x)
    for h in hooks:
        h.remove()
    return min(pre, default=float("inf"))


def draw_input_off_relu_kinks(ref, shape, monkeypatch, margin=1e-5):
    """A random input on which no ReLU input of the fp64 reference lies within ``margin`` of 0.

    A pre-activation within fp32 rounding of the kink takes the other side of the ReLU in fp32 than in fp64; that
    one flipped mask entry moves a whole BN channel's gradient (batch statistics couple its values), and the
    fp32-vs-fp64 gradients differ by ~1e-2 (plain PyTorch fp32 does the same: about one draw in 200 for a
    reduction block at these sizes). Such inputs test rounding luck, not the kernels, so they are redrawn
    (1 to 4 draws here)."""
    best, best_margin = None, -1.0
    with monkeypatch.context() as m:
        m.setenv("INCEPTION_KERNELS_BACKEND", "reference")
        for _ in range(100):
            x = torch.randn(shape)
            got = relu_margin(ref, x.double())
            if got > margin:
                return x
            if got > best_margin:
                best, best_margin = x, got
    # Large blocks with some weight draws have a ReLU input within 1e-5 of 0 on ~99% of inputs (seen in CI for
    # Inception-v3's E block): settle for the best of the draws if it is still 10x above fp32 rounding.
    if best_margin > margin / 10:
        return best
    raise AssertionError(f"no input without a near-kink ReLU input in 100 draws (best margin {best_margin:.1e})")


def check_train_block(block, size, device, monkeypatch, batch=2):
    """Train mode on our kernels vs the same block on the reference backend in fp64: output, input gradient,
    every parameter gradient and the updated running statistics (batch-statistics BN, leaves in slices)."""
    ours = randomize_bn(block).train()
    ref = copy.deepcopy(ours).double()
    ours = ours.to(device)
    cin = block.in_channels
    x = draw_input_off_relu_kinks(ref, (batch, cin, size, size), monkeypatch)
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
