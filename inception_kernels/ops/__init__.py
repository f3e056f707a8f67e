"""Fused ops. One file per op family; ``reference`` holds the plain-PyTorch oracle of each."""

from . import reference
from .conv import conv2d

__all__ = ["conv2d", "reference"]
