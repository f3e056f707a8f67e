"""Fused ops. One file per op family; ``reference`` holds the plain-PyTorch oracle of each.

* :func:`conv2d` (``conv``): implicit-GEMM convolution with the fused epilogue and slice writes;
* ``batchnorm``: training-mode BN statistics, BN-apply + ReLU into slices, the fused conv→BN→ReLU step;
* ``conv_v2``: the Hopper-grade forward kernel (``conv_fwd_v2_into``, same contract as v1's launcher);
* :func:`pool2d` (``pool``): max / average pooling into slices;
* :func:`scaled_residual` (``residual``): ``act(x + s·y)``.
"""

from . import batchnorm, conv_v2, reference
from .batchnorm import batch_norm_act, bn_act, bn_stats, conv_bn_act
from .conv import conv2d
from .pool import pool2d
from .residual import scaled_residual

__all__ = [
    "batch_norm_act",
    "batchnorm",
    "bn_act",
    "bn_stats",
    "conv2d",
    "conv_bn_act",
    "conv_v2",
    "pool2d",
    "reference",
    "scaled_residual",
]
