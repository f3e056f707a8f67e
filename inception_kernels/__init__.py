"""inception-kernels: fused Triton kernels and autograd ops for the Inception family of networks.

Top level:

* :func:`optimize` (``inception_kernels.optimize(model)``) runs a torchvision / timm Inception model's blocks and
  conv-BN-ReLU layers on our fused modules; :func:`optimize_report` says what it replaced and what it kept;
* :func:`create_model` / :func:`list_models`: our own networks (as in timm);
* :func:`conv2d`: the fused convolution op;
* subpackages :mod:`~inception_kernels.ops`, :mod:`~inception_kernels.nn`, :mod:`~inception_kernels.models`,
  :mod:`~inception_kernels.train`, :mod:`~inception_kernels.bench`, :mod:`~inception_kernels.graphs` (CUDA graphs)
  as attributes.

Everything loads lazily, on first attribute access, so that a process can still choose ``TRITON_INTERPRET=1``
(the CPU interpreter) after ``import inception_kernels`` and before the first kernel is defined.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (submodule, attribute in it; None: the submodule itself)
_LAZY = {
    "optimize": ("convert", "optimize"),
    "optimize_report": ("convert", "report"),
    "OptimizeReport": ("convert", "OptimizeReport"),
    "create_model": ("models", "create_model"),
    "list_models": ("models", "list_models"),
    "conv2d": ("ops", "conv2d"),
    "convert": ("convert", None),
    "ops": ("ops", None),
    "nn": ("nn", None),
    "models": ("models", None),
    "train": ("train", None),
    "bench": ("bench", None),
    "graphs": ("graphs", None),
}

__all__ = [
    "OptimizeReport",
    "__version__",
    "bench",
    "conv2d",
    "convert",
    "create_model",
    "graphs",
    "list_models",
    "models",
    "nn",
    "ops",
    "optimize",
    "optimize_report",
    "train",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these on first use
    from . import bench, convert, graphs, models, nn, ops, train
    from .convert import OptimizeReport, optimize
    from .convert import report as optimize_report
    from .models import create_model, list_models
    from .ops import conv2d


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
