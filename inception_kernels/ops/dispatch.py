"""The one dispatch layer: which implementation runs each op, decided in one place.

Op families (:data:`FAMILIES`) and their implementations:

=================  ==============================================================================================
family             implementations (``reasons`` says why one cannot serve an input)
=================  ==============================================================================================
``conv_fwd``       ``triton`` (our implicit GEMM with the fused epilogue), ``cudnn`` (PyTorch's convolution -- cuDNN
                   on a GPU -- then our epilogue kernel: scale, bias, residual, ReLU, split destinations, the slice
                   write; BN statistics by our statistics kernel), ``triton_v2`` (forward v2, ops/conv_v2.py:
                   only forced or tuned until a GPU measures it), ``reference``
``conv_dgrad``     ``triton`` (stride-phase implicit GEMM), ``cudnn`` (``aten.convolution_backward``), ``reference``
``conv_wgrad``     ``triton`` (deterministic split-K), ``cudnn`` (``aten.convolution_backward``), ``reference``
``bn_stats``,      ``triton``, ``cuda`` (csrc/), ``reference``
``bn_act``,
``pool2d``,
``scaled_residual``
=================  ==============================================================================================

The backward of a conv always starts with our epilogue-gradient kernel (ReLU mask from the saved output, residual
gradient, bias-gradient partials), whichever GEMMs follow; dgrad and wgrad are chosen separately.

How one implementation is chosen for (family, problem) -- :func:`choose`, memoized per problem:

1. an explicit backend: :func:`use_backend` scope (innermost wins; also what ``create_model(..., backend=)`` and
   ``optimize(..., backend=)`` set around their forward), else ``INCEPTION_KERNELS_BACKEND``. ``triton`` and
   ``cudnn`` name the conv GEMM; the memory-bound ops run our Triton kernels under both (the ``cudnn`` route is
   "cuDNN's GEMM, our kernels around it"). ``cuda`` runs the csrc/ kernels for the memory-bound ops, Triton convs.
   A forced implementation that cannot serve an input raises with its reasons -- never a silent fallback;
2. ``auto``: a tuning table measured on this GPU (``inception-kernels tune``, :mod:`inception_kernels.tune`;
   ``INCEPTION_KERNELS_AUTOTUNE=1`` measures a shape on first sight), keyed by the GPU's name;
3. shipped defaults (``shipped_defaults.json``), each entry naming the committed results file that measured it;
4. the rule (:func:`rule`): reference on CPU; on a GPU ``cudnn`` for dgrad and wgrad, and for the forward unless
   the epilogue carries a residual or the conv is memory-bound (< :data:`MEMORY_BOUND_FLOP_PER_BYTE`), where
   ``triton`` wins (Round 1, H100: residual 1x1 1.85x cuDNN + eager epilogue; every other dgrad/wgrad slower).

A cache entry or default naming an implementation that cannot serve the input is ignored (the next step decides):
a stale table can cost speed, never correctness. :func:`explain` says what runs and why.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import _backend
from . import _args

FAMILIES = (
    "conv_fwd", "conv_dgrad", "conv_wgrad", "bn_stats", "bn_act", "pool2d", "scaled_residual",
)  # fmt: skip
CONV_FAMILIES = ("conv_fwd", "conv_dgrad", "conv_wgrad")
BACKENDS = ("auto", "triton", "cudnn", "cuda", "reference", "triton_v2")
# Below this arithmetic intensity (FLOPs per byte of x, w, out and residual moved once) a conv is memory-bound on
# the H100/H200 class (bf16 dense peak / HBM bandwidth is ~240 FLOP/B); ``triton`` then wins by fusing the epilogue.
# 100 separates Round 1's shapes the way the measurement did: 35x35 1x1 128->320 + residual (53 FLOP/B, 1.85x)
# goes to triton, 17x17 1x1 768->192 (151 FLOP/B, 0.88x) to cudnn.
MEMORY_BOUND_FLOP_PER_BYTE = 100.0
TUNE_FORMAT = "inception-kernels-tune"
TUNE_VERSION = 1
_DTYPE_TAG = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------------------------------------
# Problems: what an implementation is asked to compute (hashable, cheap to build)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvProblem:
    """One conv GEMM: (N, C, H, W) input, (K, C, R, S) weight, stride, (top, bottom, left, right) padding, dtype,
    device tag, and the forward epilogue's flags (``residual``, ``relu``, ``scale``, ``bias``, ``stats`` = BN
    partial statistics of the output, ``out2`` = a split destination). Backward problems carry no epilogue flags."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dtype: torch.dtype
    device: str
    residual: bool = False
    relu: bool = False
    scale: bool = False
    bias: bool = False
    stats: bool = False
    out2: bool = False

    @property
    def out_hw(self) -> tuple[int, int]:
        return _args.conv_out_hw(self.H, self.W, self.R, self.S, self.stride, self.padding)

    def flops(self) -> int:
        P, Q = self.out_hw
        return 2 * self.N * P * Q * self.K * self.C * self.R * self.S

    def min_bytes(self) -> int:
        P, Q = self.out_hw
        e = self.dtype.itemsize
        out = self.N * P * Q * self.K
        return e * (
            self.N * self.C * self.H * self.W + self.K * self.C * self.R * self.S + out * (1 + self.residual)
        )

    def key(self, family: str) -> str:
        """The tuning-table key: every field that changes which implementation is fastest (or able to run)."""
        t, b, lft, r = self.padding
        flags = "+".join(
            name for name, on in (("res", self.residual), ("relu", self.relu), ("scale", self.scale),
                                  ("bias", self.bias), ("stats", self.stats), ("out2", self.out2)) if on
        )  # fmt: skip
        return (
            f"{family}:N{self.N},C{self.C},H{self.H},W{self.W},K{self.K},R{self.R},S{self.S},"
            f"s{self.stride[0]}x{self.stride[1]},p{t}-{b}-{lft}-{r},{_DTYPE_TAG.get(self.dtype, str(self.dtype))}"
            + (f",{flags}" if flags else "")
        )


def device_tag(device: torch.device) -> str:
    """``cuda:<GPU name>`` (tuning tables are per GPU model), ``cpu`` or ``cpu-interpreter`` (TRITON_INTERPRET)."""
    if device.type == "cuda":
        return "cuda:" + _gpu_name(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        return "cpu-interpreter" if _backend.interpreter_active() else "cpu"
    return device.type


_GPU_NAMES: dict[int, str] = {}


def _gpu_name(index: int) -> str:
    name = _GPU_NAMES.get(index)
    if name is None:
        name = _GPU_NAMES[index] = torch.cuda.get_device_name(index)
    return name


def conv_problem(x, weight, stride, padding, *, residual=None, relu=False, scale=None, bias=None,
                 stats=False, out2=False) -> ConvProblem:  # fmt: skip
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    return ConvProblem(
        N, C, H, W, K, R, S, tuple(stride), tuple(padding), x.dtype, device_tag(x.device),
        residual is not None, bool(relu), scale is not None, bias is not None, bool(stats), bool(out2),
    )  # fmt: skip


def backward_problem(p: ConvProblem) -> ConvProblem:
    """The dgrad/wgrad problem of a forward problem (the epilogue is not part of those GEMMs)."""
    return ConvProblem(p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.stride, p.padding, p.dtype, p.device)


# ----------------------------------------------------------------------------------------------------------
# Implementations
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Impl:
    """One implementation of one family. ``reasons(problem)`` lists why it cannot serve ``problem`` (empty: it
    can); ``fn`` is what runs (its signature is the family's; see ops.conv / ops.conv_cudnn). ``plan``, where an
    implementation has one, does the per-signature work of ``fn`` once and returns what runs a call (the conv
    forward's: ``plan(x, weight, scale, bias, stride, padding, residual_scale, relu, out)`` -> ``run(x, out)``,
    see ``ops.conv.plan_forward``). ``runner``, likewise, decides a call signature's launch once without binding
    its tensors (the conv forward's: ``runner(x, weight, scale, bias, residual, stride, padding, residual_scale,
    relu)`` -> ``run(x, weight, scale, bias, residual)`` returning a new output; ``ops.conv.conv2d``'s memo)."""

    family: str
    name: str
    reasons: Callable[[object], list[str]]
    fn: Callable | None = None
    plan: Callable | None = None
    runner: Callable | None = None


_IMPLS: dict[str, dict[str, Impl]] = {f: {} for f in FAMILIES}


def register(impl: Impl) -> Impl:
    if impl.family not in _IMPLS:
        raise ValueError(f"unknown op family {impl.family!r}; families: {FAMILIES}")
    _IMPLS[impl.family][impl.name] = impl
    _forget()
    return impl


def implementations(family: str) -> dict[str, Impl]:
    if not _LOADED:
        _load_impls()
    return _IMPLS[family]


_LOADED = False


def _memory_bound_reasons(name: str, family: str):
    def why(t: torch.Tensor) -> list[str]:
        if name == "triton":
            if not _backend.triton_available():
                return ["triton is not installed"]
            if not _backend.triton_can_run(t):
                return [f"Triton cannot run on {t.device.type} tensors here (a CPU needs TRITON_INTERPRET=1)"]
            return []
        if t.device.type != "cuda":
            return [f"the CUDA C++ kernels need CUDA tensors; {family} got a {t.device.type} one"]
        ok, msg = _backend.cuda_extension_ready()
        return [] if ok else [f"the CUDA C++ extension is unavailable: {msg}"]

    return why


def register_memory_bound(family: str, cuda: bool = True) -> None:
    """Register the triton / cuda (csrc/) / reference implementations of a memory-bound op family; the problem
    they are asked about is the op's main input tensor."""
    for name in ("triton", "cuda") if cuda else ("triton",):
        register(Impl(family, name, _memory_bound_reasons(name, family)))
    register(Impl(family, "reference", lambda t: []))


def _load_impls() -> None:
    # the implementations register themselves when their modules are imported
    global _LOADED
    from . import batchnorm, conv, conv_cudnn, conv_v2, pool, residual  # noqa: F401

    _LOADED = True


def reasons(family: str, name: str, problem) -> list[str]:
    """Why implementation ``name`` of ``family`` cannot serve ``problem`` (empty list: it can)."""
    impl = implementations(family).get(name)
    if impl is None:
        return [f"{family} has no implementation {name!r} (it has: {', '.join(_IMPLS[family])})"]
    return impl.reasons(problem)


# ----------------------------------------------------------------------------------------------------------
# The explicit choice: scope or environment
# ----------------------------------------------------------------------------------------------------------
_SCOPE: list[str] = []


def _check_backend(name: str, what: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name.strip().lower()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the ops inside this block on backend ``name`` (one of :data:`BACKENDS`; None: no change). Scopes nest
    (innermost wins) and override ``INCEPTION_KERNELS_BACKEND``. Process-wide, like ``torch.backends`` flags."""
    if name is None:
        yield
        return
    _SCOPE.append(_check_backend(name, "backend"))
    try:
        yield
    finally:
        _SCOPE.pop()


def bind_backend(model: torch.nn.Module, name: str | None) -> torch.nn.Module:
    """Make ``model``'s forward run inside ``use_backend(name)`` (its backward follows: each op records the
    backend its forward ran on). Eager only: under torch.compile use a scope around the compiled call or the
    environment variable. Returns ``model``; None removes a binding."""
    old = getattr(model, "_ik_backend_hooks", None)
    if old is not None:
        for h in old:
            h.remove()
        model._ik_backend_hooks = None
    if name is None:
        return model
    name = _check_backend(name, "backend")
    model._ik_backend_hooks = (
        model.register_forward_pre_hook(_EnterScope(name)),
        model.register_forward_hook(_leave_scope, always_call=True),
    )
    model._ik_backend = name
    return model


def on_forward_backend(backward: Callable) -> Callable:
    """Decorator for an autograd Function's ``backward``: run it on the backend in force when its forward ran
    (saved by :func:`remember_backend`), so a model's or a scope's choice also holds for its gradients."""

    @functools.wraps(backward)
    def run(ctx, *grads):
        name = getattr(ctx, "backend", None)
        if name is None:
            return backward(ctx, *grads)
        # use_backend's scope without its context-manager frame (once per backward node); the name was
        # checked when remember_backend read it
        _SCOPE.append(name)
        try:
            return backward(ctx, *grads)
        finally:
            _SCOPE.pop()

    return run


def remember_backend(ctx) -> None:
    ctx.backend = requested()


class _EnterScope:
    """Forward pre-hook of :func:`bind_backend` (a class, so that the model still pickles)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, mod, args):
        _SCOPE.append(self.name)


def _leave_scope(mod, args, out):
    _SCOPE.pop()


def requested() -> str:
    """The explicit backend in force: the innermost :func:`use_backend` scope, else the environment."""
    if _SCOPE:
        return _SCOPE[-1]
    raw = _backend.getenv("INCEPTION_KERNELS_BACKEND", "auto")
    name = _ENV_PARSED.get(raw)
    if name is None:
        name = _check_backend(raw.strip().lower() or "auto", "INCEPTION_KERNELS_BACKEND")
        if not torch.compiler.is_compiling():  # a dict filled while Dynamo traces fails the frame's own guard
            _ENV_PARSED[raw] = name
    return name


_ENV_PARSED: dict[str, str] = {}


# What an explicit backend means for each family (None: the family's own implementation of that name).
_FORCED = {
    "triton": {"conv_fwd": "triton", "conv_dgrad": "triton", "conv_wgrad": "triton"},
    "cudnn": {"conv_fwd": "cudnn", "conv_dgrad": "cudnn", "conv_wgrad": "cudnn"},
    "cuda": {"conv_fwd": "triton", "conv_dgrad": "triton", "conv_wgrad": "triton"},
    # conv forward v2 (ops/conv_v2.py; unmeasured on a GPU, so only forced or tuned), v1's backward
    "triton_v2": {"conv_fwd": "triton_v2", "conv_dgrad": "triton", "conv_wgrad": "triton"},
}


def _forced_impl(backend: str, family: str) -> str:
    if backend == "reference":
        return "reference"
    if family in CONV_FAMILIES:
        return _FORCED[backend][family]
    return "cuda" if backend == "cuda" else "triton"


# ----------------------------------------------------------------------------------------------------------
# Tuning tables (per GPU model) and shipped defaults
# ----------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$INCEPTION_KERNELS_CACHE_DIR``, else ``$XDG_CACHE_HOME/inception_kernels``, else ``~/.cache/...``."""
    env = os.environ.get("INCEPTION_KERNELS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inception_kernels"


def cache_path(tag: str) -> Path:
    """The tuning table of device tag ``tag`` (see :func:`device_tag`)."""
    return cache_dir() / f"tune-{re.sub(r'[^A-Za-z0-9._-]+', '_', tag)}.json"


_TABLES: dict[str, dict[str, dict]] = {}  # device tag -> {key: entry}
_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def read_table(path: Path, tag: str | None) -> dict[str, dict]:
    """Entries of a tuning table file; a missing file is empty; a corrupt, foreign or stale one is ignored with
    one warning (never an exception: a bad cache must not stop a model)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        _warn_once(f"inception-kernels: cannot read tuning table {path} ({e}); ignoring it")
        return {}
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != TUNE_FORMAT:
            raise ValueError("not an inception-kernels tuning table")
        if data.get("version") != TUNE_VERSION:
            raise ValueError(f"format version {data.get('version')!r}, this package reads {TUNE_VERSION}")
        if tag is not None and data.get("device") != tag:
            raise ValueError(f"it was measured on {data.get('device')!r}, this device is {tag!r}")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("impl"), str) for v in entries.values()
        ):
            raise ValueError("malformed entries")
        return entries
    except (ValueError, KeyError, TypeError) as e:
        _warn_once(f"inception-kernels: ignoring tuning table {path}: {e}")
        return {}


def table(tag: str) -> dict[str, dict]:
    """The tuning table of a device tag, read once per process (:func:`reload` re-reads)."""
    t = _TABLES.get(tag)
    if t is None:
        t = _TABLES[tag] = read_table(cache_path(tag), tag)
    return t


def write_table(tag: str, entries: dict[str, dict], meta: dict | None = None) -> Path:
    """Merge ``entries`` into the tuning table of ``tag`` and write it atomically; returns its path."""
    path = cache_path(tag)
    merged = dict(read_table(path, tag))
    merged.update(entries)
    data = {"format": TUNE_FORMAT, "version": TUNE_VERSION, "device": tag, **(meta or {}), "entries": merged}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
    _TABLES[tag] = merged
    _forget()
    return path


_SHIPPED_FILE = Path(__file__).with_name("shipped_defaults.json")
_SHIPPED: list[dict] | None = None


def shipped_defaults() -> list[dict]:
    """The entries of ``shipped_defaults.json``: ``{"gpu": name substring, "key": ..., "impl": ..., "source":
    results file, ...}``, built from committed GPU results."""
    global _SHIPPED
    if _SHIPPED is None:
        try:
            _SHIPPED = json.loads(_SHIPPED_FILE.read_text())["entries"]
        except (OSError, ValueError, KeyError) as e:  # pragma: no cover - the file ships with the package
            _warn_once(f"inception-kernels: shipped defaults unreadable ({e}); using the rule")
            _SHIPPED = []
    return _SHIPPED


def _shipped(tag: str, key: str) -> dict | None:
    if not tag.startswith("cuda:"):
        return None
    for e in shipped_defaults():
        if e["key"] == key and e["gpu"] in tag:
            return e
    return None


def reload() -> None:
    """Forget the tables read and every memoized choice (after editing a table or changing the environment)."""
    _TABLES.clear()
    _forget()


_GENERATION = [0]


def _forget() -> None:
    _MEMO.clear()
    _FAST.clear()
    _GENERATION[0] += 1


def generation() -> int:
    """Bumped whenever memoized choices are forgotten (:func:`reload`, a table written, a new implementation): plans that hold a
    choice key on it (``nn.layers.ConvBNAct``), so they are made again."""
    if not _LOADED:  # loading registers the implementations (each registration bumps the count)
        _load_impls()
    return _GENERATION[0]


# ----------------------------------------------------------------------------------------------------------
# The rule and the chooser
# ----------------------------------------------------------------------------------------------------------
def rule(family: str, problem) -> tuple[str, str]:
    """The documented rule for a problem without a measurement: (implementation, why)."""
    tag = problem.device if isinstance(problem, ConvProblem) else device_tag(problem.device)
    if not tag.startswith("cuda"):
        return (
            "reference",
            "rule: plain PyTorch on a CPU (set a backend to run our kernels in the interpreter)",
        )
    if family not in CONV_FAMILIES:
        return "triton", "rule: our Triton kernel for a memory-bound op"
    if family != "conv_fwd":
        return "cudnn", "rule: cuDNN for dgrad/wgrad (Round 1, H100: our backward 0.40-0.93x of it)"
    if problem.residual:
        return "triton", "rule: the residual rides in our GEMM's epilogue (Round 1, H100: 1.85x)"
    intensity = problem.flops() / max(problem.min_bytes(), 1)
    if intensity < MEMORY_BOUND_FLOP_PER_BYTE:
        return "triton", f"rule: memory-bound ({intensity:.0f} FLOP/B < {MEMORY_BOUND_FLOP_PER_BYTE:.0f})"
    return "cudnn", f"rule: compute-bound ({intensity:.0f} FLOP/B): cuDNN's GEMM, our epilogue"


@dataclass(frozen=True)
class Choice:
    impl: str
    why: str


_MEMO: dict = {}
_RECORDERS: list[list] = []
# The module currently running its forward, as pushed by whoever records (tune.record_model's hooks).
LAYER_STACK: list[str] = []


def choose_conv(family: str, x, weight, stride, padding, residual=None, relu=False, scale=None, bias=None,
                stats=False, out2=False, backend: str | None = None) -> Impl:
    """:func:`choose` for a conv call, memoized on a plain tuple of the call's signature (the
    :class:`ConvProblem` is built the first time only): the per-call cost of the dispatch layer is one lookup.
    ``backend``: :func:`requested`, when the caller has read it already."""
    key = (family, x.shape, weight.shape, tuple(stride), tuple(padding), x.dtype, x.device, residual is not None,
           bool(relu), scale is not None, bias is not None, bool(stats), bool(out2),
           backend if backend is not None else requested())  # fmt: skip
    impl = _FAST.get(key)
    if impl is None or _RECORDERS:
        problem = conv_problem(x, weight, stride, padding, residual=residual, relu=relu, scale=scale, bias=bias,
                               stats=stats, out2=out2)  # fmt: skip
        if family != "conv_fwd":
            problem = backward_problem(problem)
        impl = _FAST[key] = implementations(family)[choose(family, problem).impl]
    return impl


_FAST: dict = {}


def choose(family: str, problem) -> Choice:
    """The implementation of ``family`` that serves ``problem`` (a :class:`ConvProblem` for the conv families, a
    tensor for the others), and why. Memoized per (family, problem, explicit backend)."""
    forced = requested()
    memo_key = (family, problem if isinstance(problem, ConvProblem) else _tensor_key(problem), forced)
    choice = _MEMO.get(memo_key)
    if choice is None:
        choice = _MEMO[memo_key] = _decide(family, problem, forced)
    if _RECORDERS:
        _RECORDERS[-1].append((family, problem, choice, LAYER_STACK[-1] if LAYER_STACK else ""))
    return choice


def _tensor_key(t: torch.Tensor):
    return (t.device, t.dtype)


def _decide(family: str, problem, forced: str) -> Choice:
    impls = implementations(family)
    if forced != "auto":
        name = _forced_impl(forced, family)
        why = reasons(family, name, problem)
        if why:
            raise NotImplementedError(f"backend {forced!r} cannot run {family} here: " + "; ".join(why))
        return Choice(name, f"forced: backend {forced!r}")
    if isinstance(problem, ConvProblem):
        key = problem.key(family)
        entry = table(problem.device).get(key)
        if entry is None and problem.device.startswith("cuda") and _backend.autotune_enabled():
            from .. import tune

            tune.measure_and_store(family, problem)
            entry = table(problem.device).get(key)
        if entry is not None and entry["impl"] in impls and not impls[entry["impl"]].reasons(problem):
            return Choice(entry["impl"], f"tuned: {cache_path(problem.device)}")
        shipped = _shipped(problem.device, key)
        if shipped is not None and shipped["impl"] in impls and not impls[shipped["impl"]].reasons(problem):
            return Choice(shipped["impl"], f"shipped default: {shipped['source']}")
    elif family in _backend.AUTO_CUDA and problem.device.type == "cuda":
        if not impls["cuda"].reasons(problem):
            return Choice("cuda", f"shipped default: {_backend.AUTO_CUDA[family]}")
    name, why = rule(family, problem)
    if name in impls and not impls[name].reasons(problem):
        return Choice(name, why)
    # the rule's pick cannot serve it: the first one that can, with the rule's reason for the record
    for other, impl in impls.items():
        if not impl.reasons(problem):
            return Choice(other, f"{why}; {name} cannot: {'; '.join(reasons(family, name, problem))}")
    raise RuntimeError(f"no implementation of {family} can serve this input")  # pragma: no cover


def is_reference(t: torch.Tensor, forced: str | None = None) -> bool:
    """Whether ops on tensors like ``t`` run the plain-PyTorch reference (decided by the conv forward's choice
    of a typical problem: the models take their reference path when it does). ``forced``: :func:`requested`, when
    the caller has read it already."""
    forced = forced if forced is not None else requested()
    if forced == "reference":
        return True
    if forced != "auto":
        return False
    return rule("conv_fwd", ConvProblem(1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), t.dtype,
                                        device_tag(t.device)))[0] == "reference"  # fmt: skip


def recording_active() -> bool:
    """Whether a :func:`recording` block is open (plans made once must not bypass it)."""
    return bool(_RECORDERS)


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect ``(family, problem, choice, layer)`` for every choice made inside the block (``layer``: the top of
    :data:`LAYER_STACK`; see ``tune.record_model``)."""
    log: list = []
    _RECORDERS.append(log)
    try:
        yield log
    finally:
        _RECORDERS.remove(log)


def describe(family: str, problem: ConvProblem) -> str:
    P, Q = problem.out_hw
    return (
        f"{family:10s} {problem.N}x{problem.C}x{problem.H}x{problem.W} -> {problem.K}x{P}x{Q} "
        f"{problem.R}x{problem.S}/s{problem.stride[0]}"
    )


def intensity(problem: ConvProblem) -> float:
    return problem.flops() / max(problem.min_bytes(), 1)
