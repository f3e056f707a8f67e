"""The model zoo: networks as tables executed by the block engine.

``create_model(name, **kwargs)`` builds a network; ``list_models()`` names them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _load_all() -> None:
    from . import inception_v3  # noqa: F401


@register_model("inception_v3")
def _inception_v3(**kwargs) -> nn.Module:
    from .inception_v3 import InceptionV3

    return InceptionV3(**kwargs)
