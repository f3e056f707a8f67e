"""Modules built from the fused ops, for people building their own networks.

* :class:`ConvBNAct` — conv → BatchNorm → ReLU as one fused op in eval (BN folded into the epilogue); its
  state-dict keys (``conv.weight``, ``bn.*``) are torchvision ``BasicConv2d``'s and timm ``ConvNormAct``'s, so their
  state dicts load unchanged.
* :class:`InceptionBlock` — any Inception block from a branch table (:class:`Block`, :class:`Branch` via
  :func:`branch`, :class:`Conv`, :class:`Pool`), executed concat-free by the block engine.
* :class:`ScaledResidual` — ``relu(x + s · f(x))`` with the sum, scale and ReLU in the last conv's epilogue.

Names load on first use, so ``import inception_kernels.nn`` defines no Triton kernel (a process may still set
``TRITON_INTERPRET=1`` afterwards).
"""

import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "ConvBNAct": "layers",
    "InceptionBlock": "engine",
    "Block": "engine",
    "Branch": "engine",
    "Conv": "engine",
    "Pool": "engine",
    "branch": "engine",
    "ScaledResidual": "residual",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
