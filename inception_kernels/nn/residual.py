"""``ScaledResidual``: ``act(x + s · f(x))`` with the sum, the scale and the ReLU in a convolution's epilogue.

The Inception-ResNet merge as a layer for people building their own networks. When ``fn`` is an ``nn.Conv2d``, or
an ``nn.Sequential`` whose last member is one, that convolution runs as our fused op with ``residual=x``,
``residual_scale=s`` and the ReLU in its epilogue: one kernel reads the branch output, adds the scaled result to
``x`` and applies the activation (no separate ``x + s·y`` and ReLU passes over memory). Any other ``fn`` runs as
given and the sum is plain PyTorch.

State-dict keys are those of ``fn`` under the prefix ``fn.`` (``fn.weight``, ``fn.0.conv.weight``, ...).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import amp, dispatch

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def exporting() -> bool:
    """True while torch.export, ONNX export or ``torch.jit.trace`` traces the model: layers then run their
    reference PyTorch ops, so that the exported graph needs nothing from this package (see ``optimize``)."""
    if torch.compiler.is_exporting():
        return True
    if torch.compiler.is_compiling():
        return False
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def fusable_conv_reason(conv: nn.Module, *, needs_bias_free: bool = False) -> str | None:
    """Why ``conv`` cannot run as our fused conv op (None when it can)."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if conv.groups != 1:
        return f"groups={conv.groups} (the fused op has no grouped convolution)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation={tuple(conv.dilation)}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (only explicit padding)"
    if any(not 1 <= k <= 7 for k in conv.kernel_size):
        return f"kernel_size={tuple(conv.kernel_size)} (1..7)"
    if any(s not in (1, 2) for s in conv.stride):
        return f"stride={tuple(conv.stride)} (1 or 2)"
    if needs_bias_free and conv.bias is not None:
        return "the conv has a bias"
    if _has_hooks(conv):
        return "the conv has hooks"
    return None


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


class ScaledResidual(nn.Module):
    """``act(x + scale · fn(x))``; ``act`` is ReLU (``act=True``) or identity.

    Args:
        fn: the residual branch, mapping (N, C, H, W) to (N, C, H, W). When it is an ``nn.Conv2d`` (with or
            without bias) or an ``nn.Sequential`` ending in one, that last conv runs fused with the residual sum,
            the scale and the ReLU; the conv must keep the spatial size (stride 1, "same" padding). Any other
            branch runs as is, followed by the fused ``ops.scaled_residual`` kernel (sum, scale, ReLU in one pass).
        scale: the residual scale ``s`` (Inception-ResNet uses 0.1–0.3).
        act: apply ReLU after the sum.

    Input and output: (N, C, H, W) in any memory format; the fused path returns channels_last.
    """

    def __init__(self, fn: nn.Module, scale: float = 1.0, act: bool = True):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float, got {type(scale).__name__}")
        self.fn = fn
        self.scale = float(scale)
        self.act = bool(act)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, act={'relu' if self.act else None}"

    def _split(self):
        """(body, conv): ``fn`` = body then conv, the conv fusable; or (None, None)."""
        fn = self.fn
        if isinstance(fn, nn.Conv2d):
            body, conv = None, fn
        elif type(fn) is nn.Sequential and len(fn) > 0 and isinstance(fn[-1], nn.Conv2d):
            body, conv = fn[:-1], fn[-1]
        else:
            return None, None
        if fusable_conv_reason(conv) is not None or _has_hooks(fn):
            return None, None
        return body, conv

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.scale * self.fn(x)
        return F.relu(y) if self.act else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body, conv = self._split()
        # (under autocast an input not in its dtype: eager's type promotion decides the sum's dtype)
        if x.dtype not in _KERNEL_DTYPES or exporting() or dispatch.is_reference(x) or amp.dtype_for(x) not in (
            None, x.dtype
        ):  # fmt: skip
            return self.forward_reference(x)
        if conv is None:
            # any other branch: fn in PyTorch, then the sum, scale and ReLU as one fused kernel (under
            # torch.compile the registered ``inception_kernels::scaled_residual`` op)
            from ..ops.residual import scaled_residual

            cl = torch.channels_last
            y = self.fn(x)
            if y.shape != x.shape or y.dtype != x.dtype:
                return self.forward_reference(x)
            return scaled_residual(x.contiguous(memory_format=cl), y.contiguous(memory_format=cl), self.scale,
                                   self.act)  # fmt: skip
        from ..ops.conv import conv2d

        h = body(x) if body is not None and len(body) else x
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return conv2d(h, conv.weight, stride=tuple(conv.stride), padding=tuple(conv.padding),
                      bias=conv.bias, residual=x, residual_scale=self.scale,
                      activation="relu" if self.act else None)  # fmt: skip
