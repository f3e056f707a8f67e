"""CUDA graphs for static-shape inference: ``optimize(model, cuda_graph=True)`` / :func:`graph_eval`.

A network of ours makes ~90 kernel launches per eval forward; at small batches the host's launch work, not the
GPU, sets the time. A CUDA graph records the launches of one forward once and replays them with one call.

:func:`graph_eval` gives ``model`` an instance-level ``forward`` (the way ``torch.cuda.make_graphed_callables``
does), so the model keeps its class, ``state_dict``, methods and hooks. A call is replayed from a graph only when
all of these hold; otherwise it runs the ordinary forward, with the same result as without graphs:

* the model is in eval mode and gradients are off (``torch.no_grad()`` / ``torch.inference_mode()``): a graph
  holds no autograd record;
* one positional tensor argument on a CUDA device, no keyword arguments;
* not under torch.compile, FX tracing, export, or another graph capture.

Graphs are keyed on the input's shape, strides, dtype and device, the backend in force, the dispatch tables, the
TF32 switch, and the identity, version and storage of every parameter and buffer: a weight changed in place, a
new ``state_dict`` loaded or ``.to()`` re-captures (the graph reads our folded BN and packed weights, which were
made from the values at capture time). At most ``max_graphs`` signatures are kept (the oldest is dropped). The
list of parameters and buffers is collected once and again only after a parameter, buffer or submodule is
registered anywhere (PyTorch's global registration hooks bump a counter): walking the module tree took ~1.8 ms of
the key's ~2.1 ms per call for an Inception-v3 on a 2-core CPU; reading the ~580 tensors' versions takes ~0.35 ms.

The first call of a signature warms up (``warmup`` ordinary forwards on a side stream: Triton compiles and
autotunes, plans are made) and captures; later calls copy the input into the graph's static input, replay, and
return a copy of the graph's outputs (a plain tensor per output: it is not overwritten by the next call).
"""

from __future__ import annotations

import collections

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_map

from .nn.layers import versions
from .ops import dispatch
from .ops._library import traced

__all__ = ["graph_eval", "ungraph", "graphs_of"]


# Bumped whenever any module registers a parameter, buffer or submodule (assignment, load_state_dict(assign=True),
# weight_norm, ...): a cached parameter list is rebuilt then. Hooks installed on the first graph_eval.
_structure = [0]
_hooks: list = []


def _bump(*_args):
    _structure[0] += 1


def _watch_structure() -> bool:
    """Install the global registration hooks once; False where this PyTorch has none (then no caching)."""
    if not _hooks:
        mod = torch.nn.modules.module
        names = ("register_module_parameter_registration_hook", "register_module_buffer_registration_hook",
                 "register_module_module_registration_hook")  # fmt: skip
        if not all(hasattr(mod, n) for n in names):
            return False
        _hooks.extend(getattr(mod, n)(_bump) for n in names)
    return True


class _Graph:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph, static_in, static_out):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


class GraphedForward:
    """The instance-level ``forward`` :func:`graph_eval` installs (see the module docstring)."""

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 2):
        if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive integer, got {max_graphs!r}")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer (Triton compiles before capture), got {warmup!r}")
        self.module, self.max_graphs, self.warmup = module, max_graphs, warmup
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.pool = None
        self.captures = 0  # how many graphs were recorded (a test and a user can see re-captures)
        self.replays = 0
        self._tensors: tuple | None = None  # parameters and buffers, as of structure generation _seen
        self._seen = -1
        self._cache = _watch_structure()

    # the graphs are device state: a copy or a pickle of the model starts without them
    def __reduce__(self):
        return (_rebind, (self.module, self.max_graphs, self.warmup))

    def __deepcopy__(self, memo):
        return GraphedForward(memo.get(id(self.module), self.module), self.max_graphs, self.warmup)

    def eager(self, *args, **kwargs):
        return type(self.module).forward(self.module, *args, **kwargs)

    def replayable(self, args, kwargs) -> bool:
        m = self.module
        if kwargs or len(args) != 1 or m.training or torch.is_grad_enabled():
            return False
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.device.type != "cuda" or traced(x):
            return False
        return not torch.cuda.is_current_stream_capturing() and not dispatch.recording_active()

    def tensors(self) -> tuple:
        """The module's parameters and buffers (collected again after any registration, see the module doc)."""
        if not self._cache or self._seen != _structure[0] or self._tensors is None:
            m = self.module
            self._seen = _structure[0]
            self._tensors = (*m.parameters(), *m.buffers())
        return self._tensors

    def key(self, x: torch.Tensor) -> tuple:
        return (x.shape, x.stride(), x.dtype, x.device, dispatch.requested(), dispatch.generation(),
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                versions(*self.tensors()))  # fmt: skip

    def __call__(self, *args, **kwargs):
        if not self.replayable(args, kwargs):
            return self.eager(*args, **kwargs)
        x = args[0]
        key = self.key(x)
        g = self.graphs.get(key)
        if g is None:
            g = self.capture(x, key)
        else:
            self.graphs.move_to_end(key)
        g.static_in.copy_(x)
        g.graph.replay()
        self.replays += 1
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, g.static_out)

    def capture(self, x: torch.Tensor, key: tuple) -> _Graph:
        # a parameter changed since a graph was captured: the old graphs read stale folded/packed weights
        stale = [k for k in self.graphs if k[-1] != key[-1]]
        for k in stale:
            del self.graphs[k]
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # compiles, autotunes and plans before capture
                self.eager(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.eager(static_in)
        leaves, _ = tree_flatten(static_out)
        if not any(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError(f"graph_eval: {type(self.module).__name__}.forward returned no tensor")
        g = self.graphs[key] = _Graph(graph, static_in, static_out)
        self.captures += 1
        return g


def _rebind(module: nn.Module, max_graphs: int, warmup: int) -> GraphedForward:
    return GraphedForward(module, max_graphs, warmup)


def graph_eval(model: nn.Module, max_graphs: int = 4, warmup: int = 2) -> nn.Module:
    """Replay ``model``'s eval forward from CUDA graphs (see the module docstring); returns ``model``.

    Calling it again replaces the graphs (and their settings); :func:`ungraph` removes them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"graph_eval expects an nn.Module, got {type(model).__name__}")
    if "forward" in vars(model) and not isinstance(vars(model)["forward"], GraphedForward):
        raise ValueError(
            f"graph_eval: this {type(model).__name__} already has an instance-level forward (another wrapper, e.g. "
            "torch.cuda.make_graphed_callables); graph the model before wrapping it"
        )
    model.forward = GraphedForward(model, max_graphs, warmup)
    return model


def graphs_of(model: nn.Module) -> GraphedForward | None:
    """The :class:`GraphedForward` of a model given to :func:`graph_eval`, or None."""
    f = vars(model).get("forward")
    return f if isinstance(f, GraphedForward) else None


def ungraph(model: nn.Module) -> nn.Module:
    """Remove :func:`graph_eval`'s forward (and free its graphs); returns ``model``."""
    if graphs_of(model) is not None:
        del model.forward
    return model
