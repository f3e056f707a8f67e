"""Plain-PyTorch definitions of every op: the oracle of the tests and the CPU path.

Each function here is the *specification* of the fused op of the same name in this package. They use only
differentiable PyTorch ops, so autograd of the reference is PyTorch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    residual_scale: float = 1.0,
) -> torch.Tensor:
    """``act(residual + residual_scale * (conv(x, weight) * scale[k] + bias[k]))``.

    x: (N, C, H, W); weight: (K, C, R, S); padding: (top, bottom, left, right) zeros; scale, bias: (K,);
    residual: (N, K, P, Q) or None (then it counts as 0); activation: None or "relu".
    Returns (N, K, P, Q) in x's dtype and memory format (a 16-bit x: the epilogue in float32 on the conv's
    output, rounded once at the end, as our kernels do).
    """
    top, bottom, left, right = padding
    if top == bottom and left == right:
        y = F.conv2d(x, weight, stride=stride, padding=(top, left))
    else:
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, stride=stride)
    if y.dtype in (torch.float16, torch.bfloat16):
        y = y.float()
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual_scale != 1.0:
        y = y * residual_scale
    if residual is not None:
        y = residual + y
    if activation == "relu":
        y = torch.relu(y)
    return y.to(x.dtype)


def concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The reference merge of an Inception block: concatenation over channels (the fused path writes slices)."""
    return torch.cat(tensors, 1)


def bn_act(
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """``act((x − mean[c]) · invstd[c] · weight[c] + bias[c])``; per-channel tensors are (C,)."""
    C = x.shape[1]
    z = (x - mean.view(1, C, 1, 1)) * invstd.view(1, C, 1, 1)
    if weight is not None:
        z = z * weight.view(1, C, 1, 1)
    if bias is not None:
        z = z + bias.view(1, C, 1, 1)
    return torch.relu(z) if relu else z


def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    relu: bool = True,
) -> torch.Tensor:
    """Training-mode batch norm (batch statistics; running stats updated in place) followed by ReLU."""
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    return torch.relu(y) if relu else y


def pool2d(
    x: torch.Tensor,
    kind: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] = (0, 0),
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """``max_pool2d`` (kind "max") or ``avg_pool2d`` (kind "avg") with PyTorch's output-size and divisor rules."""
    if kind == "max":
        return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    return F.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def scaled_residual(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0, relu: bool = True) -> torch.Tensor:
    """``act(x + scale · y)``: the merge of an Inception-ResNet block when it runs outside the conv epilogue."""
    z = x + scale * y
    return torch.relu(z) if relu else z
