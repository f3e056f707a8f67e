"""CUDA graphs: static-shape inference (``inception_kernels.graphs``, ``optimize(model, cuda_graph=True)``) and the
trainer's ``--cuda-graph`` (``inception_kernels.train.graphed``).

On a CPU: the wrapper keeps the model's contract (class, state_dict, copies, pickles, FX) and every call it cannot
replay runs the ordinary forward with the same result; the trainer refuses ``--cuda-graph`` where it cannot work,
saying why. On a GPU (``gpu`` marker): capture, replay, re-capture after a weight changes in place, one graph per
input shape, the calls that must not replay (training, grad), and graphed training steps equal to ordinary ones.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_bn, rel_err

import inception_kernels
from inception_kernels.graphs import GraphedForward, graph_eval, graphs_of, ungraph
from inception_kernels.models import create_model
from inception_kernels.train.graphed import GraphedStep

torchvision = pytest.importorskip("torchvision")


def _googlenet():
    return randomize_bn(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True,
                                                     num_classes=10)).eval()  # fmt: skip


def test_optimize_cuda_graph_keeps_the_contract(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    model = _googlenet()
    fast = inception_kernels.optimize(model, cuda_graph=True)
    assert type(fast) is type(model) and isinstance(graphs_of(fast), GraphedForward)
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # a CPU input: the ordinary forward, no graph
        y, want = fast(x), model(x)
    assert rel_err(y, want) < 1e-5 and graphs_of(fast).captures == 0 and graphs_of(fast).replays == 0
    # copies and pickles get a wrapper of their own, bound to the copy, without graphs
    for other in (copy.deepcopy(fast), _pickled(fast)):
        g = graphs_of(other)
        assert isinstance(g, GraphedForward) and g.module is other and not g.graphs
        with torch.no_grad():
            assert rel_err(other(x), want) < 1e-5
    # FX traces the class's forward, not the wrapper
    gm = torch.fx.symbolic_trace(fast)
    with torch.no_grad():
        assert rel_err(gm(x), want) < 1e-5
    assert ungraph(fast) is fast and graphs_of(fast) is None and "forward" not in vars(fast)
    with torch.no_grad():
        assert rel_err(fast(x), want) < 1e-5


def _pickled(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_graph_eval_arguments():
    model = _googlenet()
    with pytest.raises(TypeError, match="cuda_graph"):
        inception_kernels.optimize(model, cuda_graph="yes")
    with pytest.raises(TypeError, match="nn.Module"):
        graph_eval(lambda x: x)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_graphs"):
            graph_eval(model, max_graphs=bad)
        with pytest.raises(ValueError, match="warmup"):
            graph_eval(model, warmup=bad)
    model.forward = lambda x: x  # someone else's instance-level forward: refused, not silently replaced
    with pytest.raises(ValueError, match="instance-level forward"):
        graph_eval(model)
    del model.forward
    assert graph_eval(graph_eval(model, max_graphs=2)) is model and graphs_of(model).max_graphs == 4



def test_graph_key_follows_every_parameter_change():
    """The graph key (computed on any device, no GPU needed) changes with an in-place write, a replaced or
    rebound parameter, a new buffer or submodule; the parameter list is collected once and reused otherwise."""
    model = _googlenet()
    g = GraphedForward(model)
    x = torch.randn(1, 3, 64, 64)
    k0 = g.key(x)
    assert g.tensors() is g.tensors() and g.key(x) == k0  # nothing changed: the same list, the same key
    assert len(g.tensors()) == len(list(model.parameters())) + len(list(model.buffers()))
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    k1 = g.key(x)
    assert k1 != k0
    model.fc.weight = torch.nn.Parameter(model.fc.weight.detach().clone())  # same values, another tensor
    k2 = g.key(x)
    assert k2 != k1 and any(t is model.fc.weight for t in g.tensors())
    model.fc.weight.data = model.fc.weight.data.clone()  # rebound storage
    k3 = g.key(x)
    assert k3 != k2
    model.fc.register_buffer("extra", torch.zeros(3))
    assert any(t is model.fc.extra for t in g.tensors()) and g.key(x) != k3
    model.fc.add_module("more", torch.nn.Linear(2, 2))
    assert any(t is model.fc.more.weight for t in g.tensors())
    assert g.key(torch.randn(2, 3, 64, 64)) != g.key(x)  # and the input's shape

# ----------------------------------------------------------------------------------------------------------
# On a GPU
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_graph_replays_our_network(dtype):
    torch.manual_seed(0)
    model = randomize_bn(create_model("inception_v3", num_classes=10, aux_logits=False)).cuda().to(dtype).eval()
    model = model.to(memory_format=torch.channels_last)
    eager = copy.deepcopy(model)
    graph_eval(model)
    g = graphs_of(model)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    with torch.inference_mode():
        for i in range(3):
            x = torch.randn(4, 3, 75, 75, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
            y = model(x)
            assert rel_err(y.float(), eager(x).float()) < tol, i
        assert g.captures == 1 and g.replays == 3
        y0 = y.clone()
        model(torch.randn_like(x))
        assert torch.equal(y, y0)  # outputs are copies: the next replay does not overwrite them
        # another shape: a second graph; the first is still there
        x2 = torch.randn(2, 3, 99, 99, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        assert rel_err(model(x2).float(), eager(x2).float()) < tol
        assert g.captures == 2 and len(g.graphs) == 2
        model(x)
        assert g.captures == 2
    # a weight changed in place: re-captured, and the result follows the new weight
    with torch.no_grad():
        model.fc.weight.mul_(2)
        eager.fc.weight.mul_(2)
        model.Conv2d_1a_3x3.conv.weight.mul_(0.5)
        eager.Conv2d_1a_3x3.conv.weight.mul_(0.5)
        assert rel_err(model(x).float(), eager(x).float()) < tol
    assert g.captures == 3 and len(g.graphs) == 1  # the stale graphs were dropped


@pytest.mark.gpu
def test_gpu_graph_is_not_used_where_it_cannot_serve():
    torch.manual_seed(0)
    model = randomize_bn(create_model("googlenet", num_classes=10, aux_logits=False)).cuda().eval()
    graph_eval(model, max_graphs=1)
    g = graphs_of(model)
    x = torch.randn(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    y = model(x)  # gradients enabled: the ordinary forward, with autograd
    assert y.requires_grad and g.captures == 0
    y.sum().backward()
    model.train()
    with torch.no_grad():
        model(x)  # training mode: batch statistics, never a graph
    assert g.captures == 0
    model.eval()
    with torch.no_grad():
        model(x)
        model(torch.randn(1, 3, 64, 64, device="cuda"))  # max_graphs=1: the first graph is dropped
    assert g.captures == 2 and len(g.graphs) == 1


# ----------------------------------------------------------------------------------------------------------
# The trainer's --cuda-graph
# ----------------------------------------------------------------------------------------------------------
def test_trainer_refuses_cuda_graph_where_it_cannot_work(tmp_path):
    import argparse

    from inception_kernels.train.cli import add_train_arguments, config_from_args
    from inception_kernels.train.errors import ConfigError
    from inception_kernels.train.loop import TrainConfig, train

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--cuda-graph", "--device", "cpu"])
    assert config_from_args(args).cuda_graph is True
    base = dict(width_mult=0.125, limit_train=16, limit_val=8, batch_size=8, epochs=1, quiet=True, plots=False,
                backend="reference", output=str(tmp_path / "run"), cuda_graph=True)  # fmt: skip
    with pytest.raises(ConfigError, match="--cuda-graph needs a CUDA device"):
        train(TrainConfig(**base, device="cpu"))
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--accum-steps"):
            train(TrainConfig(**base, device="cuda", accum_steps=2))
        with pytest.raises(ConfigError, match="--compile"):
            train(TrainConfig(**base, device="cuda", compile=True))
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep([], warmup=0)


@pytest.mark.gpu
def test_gpu_graphed_step_equals_ordinary_steps():
    """Warm-up, capture, replays, a batch of another shape in between (ordinary, from zeroed gradients), weights
    changed in place between steps: every step's loss and gradients equal an ordinary twin's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).cuda()
    twin = copy.deepcopy(model)
    graphed = GraphedStep(list(model.parameters()), warmup=1)

    def step_of(m):
        def step(x, y):
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss.detach()

        return step

    for i, n in enumerate([4, 4, 4, 3, 4, 4]):
        x, y = torch.randn(n, 6, device="cuda"), torch.randint(0, 3, (n,), device="cuda")
        loss, want = graphed(x, y, step_of(model)), step_of(twin)(x, y)
        assert rel_err(loss, want) < 1e-6, i
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert rel_err(p.grad, q.grad) < 1e-6, i
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                p.sub_(0.1 * p.grad)
                q.sub_(0.1 * q.grad)
        for p in model.parameters():
            if graphed.set_to_none:
                p.grad = None
            else:
                p.grad.zero_()
        twin.zero_grad(set_to_none=True)
    assert graphed.captured and graphed.replays == 4 and graphed.failed is None


@pytest.mark.gpu
def test_gpu_trainer_cuda_graph_run_equals_the_ordinary_run(tmp_path):
    """A short run of our Inception-v3 (no dropout, fp32; 7 steps: 3 ordinary warm-up steps, then the captured one
    and 3 more replays) with --cuda-graph logs the same loss and ends with the same weights as without."""
    from inception_kernels.train.loop import TrainConfig, train

    def run(name, graph):
        cfg = TrainConfig(width_mult=0.125, limit_train=112, limit_val=16, batch_size=16, epochs=1, quiet=True,
                          plots=False, log_every=1, output=str(tmp_path / name), device="cuda", amp="none",
                          cuda_graph=graph, model_kwargs={"dropout": 0.0}, backend="triton")  # fmt: skip
        res = train(cfg)
        return res, torch.load(res.out_dir / "last.pt", weights_only=False)["model"]

    (res_g, w_g), (res_e, w_e) = run("graph", True), run("eager", False)
    assert res_g.cuda_graph_replays == 4 and res_e.cuda_graph_replays == 0
    assert res_g.history[0]["train_loss"] == pytest.approx(res_e.history[0]["train_loss"], rel=1e-4)
    for k in w_e:
        if w_e[k].is_floating_point():
            assert rel_err(w_g[k].float(), w_e[k].float()) < 1e-3, k
        else:
            assert torch.equal(w_g[k], w_e[k]), k
