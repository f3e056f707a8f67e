"""CUDA graphs for static-shape inference (``inception_kernels.graphs``, ``optimize(model, cuda_graph=True)``).

On a CPU: the wrapper keeps the model's contract (class, state_dict, copies, pickles, FX) and every call it cannot
replay runs the ordinary forward with the same result. On a GPU (``gpu`` marker): capture, replay, re-capture
after a weight changes in place, one graph per input shape, and the calls that must not replay (training, grad).
"""

import copy
import io

import pytest
import torch
from helpers import randomize_bn, rel_err

import inception_kernels
from inception_kernels.graphs import GraphedForward, graph_eval, graphs_of, ungraph
from inception_kernels.models import create_model

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
