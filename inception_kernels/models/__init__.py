"""The model zoo: networks as tables executed by the block engine.

``create_model(name, **kwargs)`` builds a network; ``list_models()`` names the ones available.
"""

from __future__ import annotations

import importlib

import torch.nn as nn

# name -> (module, class name). Modules load on first use.
_MODELS = {
    "googlenet": ("googlenet", "GoogLeNet"),
    "inception_v2": ("inception_v2", "InceptionV2"),
    "inception_v3": ("inception_v3", "InceptionV3"),
    "inception_v4": ("inception_v4", "InceptionV4"),
    "inception_resnet_v1": ("inception_resnet", "InceptionResNetV1"),
    "inception_resnet_v2": ("inception_resnet", "InceptionResNetV2"),
    "inception_resnet_v2_paper": ("inception_resnet", "InceptionResNetV2Paper"),
}


def _resolve(name: str):
    module, cls = _MODELS[name]
    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(f"models.{module}"):
            return None
        raise
    return getattr(mod, cls, None)


def list_models() -> list[str]:
    return sorted(name for name in _MODELS if _resolve(name) is not None)


def create_model(name: str, pretrained=None, backend: str | None = None, **kwargs) -> nn.Module:
    """``pretrained``: None/False (random init), ``"torchvision"``, ``"timm"``, ``"timm:<name.tag>"``, True (the
    network's default source) or a local checkpoint path; see :mod:`inception_kernels.models.pretrained`.
    ``backend``: run this model on one backend (``triton``, ``cudnn``, ``cuda``, ``reference``, ``auto``) whatever
    ``INCEPTION_KERNELS_BACKEND`` says (see ``inception_kernels.ops.dispatch``); None: the environment decides."""
    factory = _resolve(name) if name in _MODELS else None
    if factory is None:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if pretrained is not None and pretrained is not False:
        from .pretrained import create_pretrained

        model = create_pretrained(name, factory, pretrained, **kwargs)
    else:
        model = factory(**kwargs)
    if backend is not None:
        from ..ops import dispatch

        dispatch.bind_backend(model, backend)
    return model
