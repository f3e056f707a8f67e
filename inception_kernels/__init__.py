"""inception-kernels: fused Triton kernels and autograd ops for the Inception family of networks.

Submodules load lazily so that a process can still choose ``TRITON_INTERPRET=1`` (the CPU interpreter) after
``import inception_kernels`` and before the first kernel is defined.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["conv2d", "ops", "optimize", "__version__"]


def __getattr__(name):
    if name == "ops":
        return importlib.import_module(".ops", __name__)
    if name == "optimize":  # the submodule, callable as optimize(model, *, inplace=False, verbose=False)
        return importlib.import_module(".optimize", __name__)
    if name == "conv2d":
        return importlib.import_module(".ops", __name__).conv2d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
