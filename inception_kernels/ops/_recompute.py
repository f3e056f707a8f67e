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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.weak import WeakTensorKeyDictionary

# tensor -> Recipe, held weakly (not a tensor attribute: those would be pickled by torch.save)
_RECIPES = WeakTensorKeyDictionary()


class Recipe:
    """``build(*tensors, out=None)`` returns the activation (written into ``out`` when given)."""

    __slots__ = ("build", "tensors", "shape", "versions")

    def __init__(
        self, build: Callable, tensors: Sequence[torch.Tensor | None], like: torch.Tensor, track: bool = True
    ):
        self.build = build
        self.tensors = tuple(tensors)
        self.shape = tuple(like.shape)
        # an in-place change of the activation, or of any tensor it is rebuilt from, invalidates the recipe
        self.versions = _versions(like, self.tensors) if track else None

    def valid_for(self, t: torch.Tensor) -> bool:
        return self.shape == tuple(t.shape) and self.versions == _versions(t, self.tensors)


def _versions(t: torch.Tensor, tensors) -> tuple:
    return (t._version,) + tuple(-1 if s is None else s._version for s in tensors)


def attach(
    t: torch.Tensor, build: Callable, tensors: Sequence[torch.Tensor | None], recording: bool | None = None
) -> torch.Tensor:
    """Give ``t`` a recipe -- only when autograd records a graph (``recording``; default: grad mode is on, which
    inside an ``autograd.Function.forward`` it never is: pass ``any(ctx.needs_input_grad)`` there)."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or t.is_inference():
        return t  # traced graphs save what they save; inference tensors have no version counter
    if torch.is_grad_enabled() if recording is None else recording:
        _RECIPES[t] = Recipe(build, tensors, t)
    return t


def has_recipe(t: torch.Tensor) -> bool:
    return recipe_of(t).build is not _identity


def recipe_of(t: torch.Tensor) -> Recipe:
    """``t``'s recipe, or the identity recipe that saves ``t`` itself."""
    traced = torch.compiler.is_compiling()  # (Dynamo cannot trace is_inference; traced code has no recipes)
    r = None if traced or t.is_inference() else _RECIPES.get(t)
    if r is not None and r.valid_for(t):
        return r
    return Recipe(_identity, (t,), t, track=False)


def _identity(t, out=None):
    return t if out is None else out.copy_(t)


def save_with_input(ctx, x: torch.Tensor, *others) -> None:
    """``ctx.save_for_backward(x, *others)``, with ``x`` replaced by its recipe's tensors when it has one."""
    r = recipe_of(x)
    ctx._recipe = (r.build, len(r.tensors))
    ctx.save_for_backward(*r.tensors, *others)


def load_with_input(ctx) -> tuple[torch.Tensor, tuple]:
    """The saved ``(x, others)`` of :func:`save_with_input`, rebuilding ``x`` from its recipe."""
    build, n = ctx._recipe
    saved = ctx.saved_tensors
    with torch.no_grad():
        x = build(*saved[:n])
    return x, saved[n:]


def concat(parts: Sequence[tuple[int, int, torch.Tensor]], like: torch.Tensor) -> tuple[Callable, tuple]:
    """Recipe of a channel concatenation: ``parts`` = (lo, hi, tensor) in the output's channel order."""
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


def then(inner: Recipe, outer: Callable) -> tuple[Callable, tuple]:
    """Recipe of ``outer(x, out=...)`` applied to a tensor rebuilt by ``inner``."""
    inner_build = inner.build

    def build(*ts, out=None):
        return outer(inner_build(*ts), out=out)

    return build, inner.tensors
