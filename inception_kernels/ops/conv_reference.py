"""The ``reference`` route of the conv families (plain PyTorch), and the reference math the registered ops fall back
to when our kernels cannot run where the tensors live (e.g. a CPU tensor without the interpreter), so that
``torch.ops.inception_kernels.*`` work everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch, reference


def dgrad_reference(gp, x, weight, scale, stride, padding):
    top, bottom, left, right = padding
    g = gp if scale is None else gp * scale.to(gp.dtype).view(1, -1, 1, 1)
    shape = (x.shape[0], x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right)
    # (an fp32 master weight of a 16-bit x: ops.amp, plan_conv_bn_act(master=True))
    dxp = torch.nn.grad.conv2d_input(shape, weight.to(g.dtype), g, stride=tuple(stride))
    dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    return dx.contiguous(memory_format=torch.channels_last)


def wgrad_reference(gp, x, weight, stride, padding):
    top, bottom, left, right = padding
    xp = F.pad(x, (left, right, top, bottom))
    return torch.nn.grad.conv2d_weight(xp, weight.shape, gp, stride=tuple(stride)).float()


def _fwd_reference(x, weight, scale, bias, residual, stride, padding, residual_scale, relu, out, out2, stats):
    y = _reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu)
    if out is None:
        return y.contiguous(memory_format=torch.channels_last)
    if out2 is None:
        return out.copy_(y)
    k1 = out.shape[1]
    out.copy_(y[:, :k1])
    out2.copy_(y[:, k1:])
    return out


def _reference_reasons(problem) -> list[str]:
    return ["BN partial statistics are our kernels' format"] if problem.stats else []


# ----------------------------------------------------------------------------------------------------------
# Reference math for the custom ops when Triton cannot run on the tensors' device (e.g. a CPU tensor without
# the interpreter): keeps torch.ops.inception_kernels.* usable everywhere.
# ----------------------------------------------------------------------------------------------------------
def _reference_fwd(x, weight, scale, bias, residual, stride, padding, residual_scale, relu):
    return reference.conv2d(
        x, weight, stride=tuple(stride), padding=tuple(padding), scale=scale, bias=bias,
        activation="relu" if relu else None, residual=residual, residual_scale=residual_scale,
    )  # fmt: skip


def _reference_bwd(grad_out, x, weight, scale, y, residual_scale, relu, stride, padding, need):
    """Explicit PyTorch gradients (no autograd: custom-op implementations run below the autograd key)."""
    top, bottom, left, right = padding
    mask = y > 0 if relu else None
    gz = grad_out if mask is None else torch.where(mask, grad_out, torch.zeros((), dtype=grad_out.dtype))
    gp = gz * residual_scale
    xp = F.pad(x, (left, right, top, bottom))
    dx = dw = dscale = None
    if need[0]:
        g_conv = gp if scale is None else gp * scale.to(gp.dtype).view(1, -1, 1, 1)
        dxp = torch.nn.grad.conv2d_input(xp.shape, weight, g_conv, stride=tuple(stride))
        dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
    if need[1] or need[2]:
        g_unscaled = torch.nn.grad.conv2d_weight(xp, weight.shape, gp, stride=tuple(stride)).float()
        if need[1]:
            dw = g_unscaled if scale is None else g_unscaled * scale.float().view(-1, 1, 1, 1)
        if need[2]:
            dscale = (g_unscaled * weight.float()).sum((1, 2, 3))
    dbias = gp.float().sum((0, 2, 3)) if need[3] else None
    return dx, dw, dscale, dbias, gz


dispatch.register(dispatch.Impl("conv_fwd", "reference", _reference_reasons, _fwd_reference))
dispatch.register(dispatch.Impl("conv_dgrad", "reference", lambda problem: [], dgrad_reference))
dispatch.register(dispatch.Impl("conv_wgrad", "reference", lambda problem: [], wgrad_reference))
