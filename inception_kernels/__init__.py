"""inception-kernels: fused Triton kernels and autograd ops for the Inception family of networks."""

from . import ops
from .ops import conv2d

__version__ = "0.1.0"
__all__ = ["conv2d", "ops", "__version__"]
