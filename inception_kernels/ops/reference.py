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
    Returns (N, K, P, Q) in x's dtype and memory format.
    """
    top, bottom, left, right = padding
    if top == bottom and left == right:
        y = F.conv2d(x, weight, stride=stride, padding=(top, left))
    else:
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, stride=stride)
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
    return y


def concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The reference merge of an Inception block: concatenation over channels (the fused path writes slices)."""
    return torch.cat(tensors, 1)
