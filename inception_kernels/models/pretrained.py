"""Published and local weights for the zoo: ``create_model(name, pretrained="torchvision" | "timm" | PATH)``.

Our networks' state-dict keys are torchvision's (``googlenet``, ``inception_v3``) and timm's (``inception_v3``,
``inception_v4``, ``inception_resnet_v2``), so weights load unchanged:

* ``"torchvision"`` — fetched through torchvision's own API (``get_model_weights(name).DEFAULT.get_state_dict``,
  cached under ``$TORCH_HOME/hub/checkpoints``), with torchvision's defaults for these weights:
  ``transform_input=True``; GoogLeNet drops its aux heads unless ``aux_logits=True`` is passed (they are "not
  pretrained", as torchvision warns), Inception-v3 keeps them unless ``aux_logits=False``;
* ``"timm"`` or ``"timm:<name.tag>"`` (e.g. ``"timm:inception_v3.tf_in1k"``) — fetched through
  ``timm.create_model(..., pretrained=True)`` (Hugging Face Hub cache), with timm's defaults (Inception-v3 without
  aux head);
* ``True`` — the default source of the network (torchvision for GoogLeNet and Inception-v3, timm otherwise);
* a path — a local checkpoint in either format: a state dict saved with ``torch.save`` (``.pth``, ``.pt``,
  ``.bin``) or ``safetensors`` (``.safetensors``, timm's Hub format), or a training checkpoint holding one under
  ``"state_dict"`` / ``"model"`` (timm's train script, DDP ``module.`` and ``torch.compile`` ``_orig_mod.``
  prefixes removed). A checkpoint without aux-head weights builds the model without aux heads unless
  ``aux_logits=True`` is passed. For torchvision's ImageNet weights pass ``transform_input=True`` yourself, as
  torchvision's factory does.

``num_classes`` other than the checkpoint's: every weight loads except the classifier (``fc``, ``last_linear``,
``classif``, the aux heads' last layers), which keeps its fresh initialisation (a warning names it) — the
fine-tuning start. Any other difference (missing, unexpected or mis-shaped keys) is an error that lists them.

Offline, fetching fails with a ``RuntimeError`` that says how to pass a local file instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

# network -> {source: the name that source publishes it under}
PUBLISHED = {
    "googlenet": {"torchvision": "googlenet"},
    "inception_v3": {"torchvision": "inception_v3", "timm": "inception_v3"},
    "inception_v4": {"timm": "inception_v4"},
    "inception_resnet_v2": {"timm": "inception_resnet_v2"},
}
DEFAULT_SOURCE = {"googlenet": "torchvision", "inception_v3": "torchvision"}

_HEADS = ("fc.", "last_linear.", "classif.", "AuxLogits.fc.", "aux1.fc2.", "aux2.fc2.")
_AUX = ("aux1.", "aux2.", "AuxLogits.")


def create_pretrained(name: str, factory: Callable[..., nn.Module], pretrained, **kwargs) -> nn.Module:
    """Build ``factory(**kwargs)`` (the zoo network ``name``) and load the weights ``pretrained`` names."""
    if pretrained is True:
        pretrained = DEFAULT_SOURCE.get(name, "timm")
    if isinstance(pretrained, (str, os.PathLike)) and _is_source(pretrained):
        source, _, tag = str(pretrained).partition(":")
        published = PUBLISHED.get(name, {})
        if source not in published:
            have = ", ".join(f"{n} ({'/'.join(s)})" for n, s in PUBLISHED.items())
            raise ValueError(
                f"no published {source} weights for {name!r}; published weights exist for: {have}. "
                "Pass a local checkpoint path as pretrained= for any other network"
            )
        if source == "torchvision":
            return _from_torchvision(name, factory, published[source], kwargs)
        return _from_timm(name, factory, tag or published[source], kwargs)
    if isinstance(pretrained, (str, os.PathLike)):
        return _from_file(name, factory, os.fspath(pretrained), kwargs)
    raise TypeError(
        f"pretrained must be 'torchvision', 'timm', 'timm:<name.tag>', True or a file path, got {pretrained!r}"
    )


def _is_source(p) -> bool:
    s = str(p)
    return s in ("torchvision", "timm") or s.startswith("timm:")


def _offline_error(name: str, source: str, err: Exception, how: str) -> RuntimeError:
    return RuntimeError(
        f"could not fetch the published {source} weights for {name!r} ({type(err).__name__}: {err}). "
        f"Without network access, get them on a machine that has it — {how} — copy the file here and pass its "
        f"path: create_model({name!r}, pretrained='/path/to/{name}.pth')"
    )


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------
def _fetch_torchvision(tv_name: str) -> Mapping[str, torch.Tensor]:
    """torchvision's published ImageNet weights of ``tv_name`` (downloaded once into the torch hub cache)."""
    from torchvision.models import get_model_weights

    return get_model_weights(tv_name).DEFAULT.get_state_dict(progress=True, check_hash=True)


def _fetch_timm(timm_name: str, **timm_kwargs) -> Mapping[str, torch.Tensor]:
    """timm's published weights of ``timm_name`` (``name`` or ``name.tag``), via ``timm.create_model``."""
    import timm

    return timm.create_model(timm_name, pretrained=True, **timm_kwargs).state_dict()


def _from_torchvision(name, factory, tv_name, kwargs):
    want_aux = kwargs.pop("aux_logits", name == "inception_v3")
    kwargs.setdefault("transform_input", True)  # torchvision's default for its ImageNet weights
    model = factory(aux_logits=True, **kwargs)
    try:
        sd = _fetch_torchvision(tv_name)
    except Exception as e:
        how = (f"torch.save(torchvision.models.{tv_name}(weights='DEFAULT', aux_logits=True).state_dict(), "
               f"'{name}.pth')")  # fmt: skip
        raise _offline_error(name, "torchvision", e, how) from e
    _load(model, sd, name, "torchvision")
    if not want_aux:
        _drop_aux(model)
    elif name == "googlenet":
        warnings.warn("the auxiliary heads of torchvision's pretrained GoogLeNet are not pretrained (as torchvision "
                      "warns): train them", stacklevel=3)  # fmt: skip
    return model


def _from_timm(name, factory, timm_name, kwargs):
    timm_kwargs = {}
    if name == "inception_v3":
        kwargs.setdefault("aux_logits", False)  # timm's default
        timm_kwargs["aux_logits"] = kwargs["aux_logits"]
    if "num_classes" in kwargs:
        timm_kwargs["num_classes"] = kwargs["num_classes"]  # timm re-initialises its classifier itself
    model = factory(**kwargs)
    try:
        sd = _fetch_timm(timm_name, **timm_kwargs)
    except Exception as e:
        how = f"torch.save(timm.create_model({timm_name!r}, pretrained=True).state_dict(), '{name}.pth')"
        raise _offline_error(name, "timm", e, how) from e
    _load(model, sd, name, f"timm ({timm_name})")
    return model


def _from_file(name, factory, path, kwargs):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained={path!r} is neither 'torchvision', 'timm' nor an existing file")
    sd = load_checkpoint(path)
    if "aux_logits" not in kwargs and name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = any(k.startswith(_AUX) for k in sd)  # build what the checkpoint holds
    model = factory(**kwargs)
    _load(model, sd, name, path)
    return model


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files and loading
# ----------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state dict in a local checkpoint (see the module docstring for the formats), on the CPU."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"could not read {path!r} as a state dict ({type(e).__name__}: {e}); save weights with "
                "torch.save(model.state_dict(), path) or as .safetensors"
            ) from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path!r} holds no state dict (a mapping from names to tensors)")
    sd = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        sd[k] = v
    return sd


def _load(model: nn.Module, sd: Mapping[str, torch.Tensor], name: str, origin: str) -> None:
    """Load ``sd`` into ``model``: strict, except the classifier when ``num_classes`` differs, aux-head weights
    the model has no heads for (dropped) and aux heads the checkpoint has no weights for (kept, warned)."""
    own = model.state_dict()
    has_aux = any(k.startswith(_AUX) for k in own)
    load, unexpected, mismatched, new_head = {}, [], [], []
    for k, v in sd.items():
        if k not in own:
            if not (k.startswith(_AUX) and not has_aux):
                unexpected.append(k)
        elif own[k].shape != v.shape:
            (new_head if k.startswith(_HEADS) else mismatched).append(
                f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            )
        else:
            load[k] = v
    skipped = {s.split(":")[0] for s in new_head}
    missing = [k for k in own if k not in load and k not in skipped]
    aux_missing = [k for k in missing if k.startswith(_AUX)]
    missing = [k for k in missing if not k.startswith(_AUX)]
    if unexpected or mismatched or missing:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
                 if keys]  # fmt: skip
        raise ValueError(f"the weights from {origin} do not fit {name}: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict(load, strict=False)
    if new_head:
        warnings.warn(f"{name}: classifier weights not loaded (another num_classes), left at their "
                      f"initialisation: {'; '.join(new_head)}", stacklevel=4)  # fmt: skip
    if aux_missing:
        warnings.warn(f"{name}: the checkpoint has no aux-head weights; the aux heads keep their initialisation",
                      stacklevel=4)  # fmt: skip


def _drop_aux(model: nn.Module) -> None:
    if hasattr(model, "aux1"):
        model.aux_logits = False  # GoogLeNet: drops aux1 and aux2
    elif getattr(model, "AuxLogits", None) is not None:
        model.AuxLogits = None
