"""The four benchmarked networks, ours and the reference implementation (torchvision / timm) side by side."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

# name -> (library, factory name, native input size)
NETWORKS: dict[str, tuple[str, str, int]] = {
    "googlenet": ("torchvision", "googlenet", 224),
    "inception_v3": ("torchvision", "inception_v3", 299),
    "inception_v4": ("timm", "inception_v4", 299),
    "inception_resnet_v2": ("timm", "inception_resnet_v2", 299),
}

# Block benchmarks: (label, network, dotted submodule path (same in ours and the reference), input channels,
# native grid). The paths follow torchvision / timm naming, which our models keep.
BLOCKS: dict[str, tuple[str, str, int, int]] = {
    "v3_Mixed_6b": ("inception_v3", "Mixed_6b", 768, 17),
    "v4_Inception_B": ("inception_v4", "features.11", 1024, 17),
    "irv2_Block17": ("inception_resnet_v2", "repeat_1.0", 1088, 17),
}


def native_size(name: str) -> int:
    return NETWORKS[name][2]


def _device_ctx(device):
    return torch.device(device) if device is not None else contextlib.nullcontext()


def reference_model(name: str, device=None) -> nn.Module:
    """The torchvision / timm model without aux heads and without pretrained weights, built on ``device``
    (``"meta"`` builds instantly, for shape-only analysis)."""
    lib, fn, _ = NETWORKS[name]
    with _device_ctx(device):
        if lib == "torchvision":
            import torchvision

            kwargs = {"aux_logits": False, "init_weights": device != "meta"}
            return getattr(torchvision.models, fn)(weights=None, **kwargs)
        import timm

        return timm.create_model(fn, pretrained=False)


def our_model(name: str, device=None, ref: nn.Module | None = None) -> nn.Module:
    """Our model of the same architecture; with ``ref`` its weights and buffers are loaded (strict)."""
    from ..models import create_model

    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    with _device_ctx(device):
        ours = create_model(name, **kwargs)
    if ref is not None:
        ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
