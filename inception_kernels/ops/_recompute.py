"""Recomputable activations: save the small recipe of a layer input instead of the input itself.

In training, every convolution must keep its input for the weight gradient. In an Inception network almost every
such input is a post-activation tensor ``r = act(bn(y))`` (or a concatenation of them, or a pooling of those) whose
pre-BN ``y`` is already saved by the layer that produced it. Keeping ``r`` as well doubles the activation memory.

So the fused ops attach a :class:`Recipe` to the tensors they produce under autograd: the tensors it depends on
(already saved elsewhere: the pre-BN output, per-channel statistics, parameters) and a function rebuilding it
(one elementwise pass). A consumer saves the recipe's tensors through ``save_for_backward`` (version-checked like
any saved tensor) and rebuilds its input at the start of its backward. Tensors without a recipe are saved as usual.

Recipes compose: a block output (``_SliceMerge``) is the concatenation of its leaves' recipes, a pooled tensor the
pooling of its input's recipe.

One rebuild serves every consumer: a block output feeds the next block's branches (three convs and a pooling
branch in Inception-v3), and each saves the same recipe. Each recipe counts the consumers that saved it
(:class:`_Rebuilt`); the first consumer's backward rebuilds the activation, the rebuilt tensor is kept until the
last one has taken it, then dropped (a recipe on top of another -- a pooling of a block output -- shares the
inner rebuild). Only consumers whose backward never runs (no gradient flows through them) leave it held, until
the graph itself is freed.

A recipe may also carry a ``fold`` tag: a description of the rebuild that a consumer can apply itself while it
loads its input (a conv's weight gradient rebuilding ``act(bn(y))`` on its x load). A consumer that folds takes
its share of the rebuild without making it (:func:`load_with_input_folded`); the rebuild is made only if a
consumer that cannot fold needs it, and one already made is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.weak import WeakTensorKeyDictionary

# tensor -> Recipe, held weakly (not a tensor attribute: those would be pickled by torch.save)
_RECIPES = WeakTensorKeyDictionary()


class _Rebuilt:
    """The activation rebuilt by the first backward that needs it, kept for the ``pending`` consumers that saved
    the same recipe and have not run yet. Holds no input tensor (the backward nodes' contexts keep it)."""

    __slots__ = ("value", "pending")

    def __init__(self):
        self.value: torch.Tensor | None = None
        self.pending = 0

    def pass_over(self) -> None:
        """One consumer's share taken without the activation (it rebuilds it on its own loads)."""
        self.pending -= 1
        if self.pending <= 0:
            self.value = None

    def take(self, build: Callable, tensors: Sequence) -> torch.Tensor:
        """The activation for one consumer: rebuilt by the first, handed on to the rest, dropped after the last
        (a consumer running its backward twice -- ``retain_graph`` -- just rebuilds)."""
        self.pending -= 1
        x = self.value
        if x is None:
            x = build(*tensors)
        self.value = x if self.pending > 0 else None
        return x


class Recipe:
    """``build(*tensors, out=None)`` returns the activation (written into ``out`` when given).

    ``shared``: the rebuild its consumers share (:class:`_Rebuilt`; a fresh one by default, ``None`` for a recipe
    that is not shared itself -- the identity, or a recipe over another one's rebuild); ``counts``: the rebuilds a
    consumer saving this recipe will take (its own, or the inner recipe's); ``fold``: a tag a consumer may apply
    on load instead of the rebuild (see the module docstring), or None."""

    __slots__ = ("build", "tensors", "shape", "versions", "shared", "counts", "fold")

    def __init__(
        self, build: Callable, tensors: Sequence[torch.Tensor | None], like: torch.Tensor, track: bool = True,
        counts: tuple | None = None, fold=None,
    ):  # fmt: skip
        self.fold = fold
        self.build = build
        self.tensors = tuple(tensors)
        self.shape = tuple(like.shape)
        # an in-place change of the activation, or of any tensor it is rebuilt from, invalidates the recipe
        self.versions = _versions(like, self.tensors) if track else None
        self.shared = _Rebuilt() if counts is None else None
        self.counts = (self.shared,) if counts is None else counts

    def valid_for(self, t: torch.Tensor) -> bool:
        return self.shape == tuple(t.shape) and self.versions == _versions(t, self.tensors)


def _versions(t: torch.Tensor, tensors) -> tuple:
    return (t._version,) + tuple(-1 if s is None else s._version for s in tensors)


def attach(
    t: torch.Tensor, build: Callable, tensors: Sequence[torch.Tensor | None], counts: tuple | None = None,
    recording: bool | None = None, fold=None,
) -> torch.Tensor:
    """Give ``t`` a recipe -- only when autograd records a graph (``recording``; default: grad mode is on, which
    inside an ``autograd.Function.forward`` it never is: pass ``any(ctx.needs_input_grad)`` there). ``counts``:
    see :class:`Recipe` (from :func:`then`; default: the recipe's own shared rebuild); ``fold``: its fold tag."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or t.is_inference():
        return t  # traced graphs save what they save; inference tensors have no version counter
    if torch.is_grad_enabled() if recording is None else recording:
        _RECIPES[t] = Recipe(build, tensors, t, counts=counts, fold=fold)
    return t


def has_recipe(t: torch.Tensor) -> bool:
    return recipe_of(t).build is not _identity


def recipe_of(t: torch.Tensor) -> Recipe:
    """``t``'s recipe, or the identity recipe that saves ``t`` itself."""
    traced = torch.compiler.is_compiling()  # (Dynamo cannot trace is_inference; traced code has no recipes)
    r = None if traced or t.is_inference() else _RECIPES.get(t)
    if r is not None and r.valid_for(t):
        return r
    return Recipe(_identity, (t,), t, track=False, counts=())


def _identity(t, out=None):
    return t if out is None else out.copy_(t)


def save_with_input(ctx, x: torch.Tensor, *others) -> None:
    """``ctx.save_for_backward(x, *others)``, with ``x`` replaced by its recipe's tensors when it has one."""
    r = recipe_of(x)
    for rebuilt in r.counts:
        rebuilt.pending += 1
    ctx._recipe = (r.build, len(r.tensors), r.shared, r.fold)
    ctx.save_for_backward(*r.tensors, *others)


def load_with_input(ctx) -> tuple[torch.Tensor, tuple]:
    """The saved ``(x, others)`` of :func:`save_with_input`, rebuilding ``x`` from its recipe (or taking the
    rebuild another consumer of the same recipe made)."""
    x, _, others = load_with_input_folded(ctx, None)
    return x, others


def load_with_input_folded(ctx, fold: Callable | None) -> tuple[torch.Tensor | None, tuple | None, tuple]:
    """:func:`load_with_input` for a consumer that can apply some recipes on load: ``fold(tag, tensors, others)``
    is asked when x's recipe has a fold tag and no other consumer has rebuilt x yet; if it says yes, returns
    ``(None, (tag, tensors), others)`` and nothing is rebuilt (this consumer's share of the rebuild is taken),
    otherwise ``(x, None, others)``."""
    build, n, shared, tag = ctx._recipe
    saved = ctx.saved_tensors
    tensors, others = saved[:n], saved[n:]
    if fold is not None and tag is not None and (shared is None or shared.value is None) and fold(tag, tensors, others):
        if shared is not None:
            shared.pass_over()
        return None, (tag, tensors), others
    with torch.no_grad():
        x = build(*tensors) if shared is None else shared.take(build, tensors)
    return x, None, others


def concat(parts: Sequence[tuple[int, int, torch.Tensor]], like: torch.Tensor) -> tuple[Callable, tuple]:
    """Recipe of a channel concatenation: ``parts`` = (lo, hi, tensor) in the output's channel order; the
    arguments of :func:`attach` after ``t``."""
    recipes = [recipe_of(t) for _, _, t in parts]
    layout = [(lo, hi, r.build, len(r.tensors)) for (lo, hi, _), r in zip(parts, recipes)]
    shape, dtype, device = tuple(like.shape), like.dtype, like.device

    def build(*ts, out=None):
        if out is None:
            out = torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)
        i = 0
        for lo, hi, part_build, n in layout:
            part_build(*ts[i : i + n], out=out[:, lo:hi])
            i += n
        return out

    return build, tuple(t for r in recipes for t in r.tensors)


def then(inner: Recipe, outer: Callable) -> tuple[Callable, tuple, tuple]:
    """Recipe of ``outer(x, out=...)`` applied to a tensor rebuilt by ``inner`` (the arguments of :func:`attach`
    after ``t``): its consumers take ``inner``'s shared rebuild, then apply ``outer`` themselves."""
    inner_build, shared = inner.build, inner.shared  # (not ``inner``: it holds the tensors)

    def build(*ts, out=None):
        x = inner_build(*ts) if shared is None else shared.take(inner_build, ts)
        return outer(x, out=out)

    return build, inner.tensors, inner.counts
