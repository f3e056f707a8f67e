"""``create_model(name, pretrained=...)``: local checkpoints in torchvision and timm formats (made here from randomly
initialised reference models), the published-weights path with the download replaced by a local state dict, and
the offline error."""

import urllib.error

import pytest
import torch
from helpers import randomize_bn, rel_err

from inception_kernels.models import create_model
from inception_kernels.models import pretrained as pt

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    monkeypatch.setenv(
        "INCEPTION_KERNELS_BACKEND", "reference"
    )  # whole networks: plain PyTorch is fast enough


def _same_function(ours, ref, hw, batch=1):
    ours.eval(), ref.eval()
    x = torch.randn(batch, 3, hw, hw)
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) < 1e-5


def _tv_googlenet(**kw):
    return randomize_bn(torchvision.models.googlenet(weights=None, init_weights=True, **kw))


def test_torchvision_googlenet_file(tmp_path):
    ref = _tv_googlenet(aux_logits=True)
    path = tmp_path / "googlenet.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model("googlenet", pretrained=str(path))
    assert ours.aux_logits and list(ours.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    _same_function(ours, ref, 15)
    # what torchvision's factory saves for its pretrained GoogLeNet: no aux heads -> built without them
    ref.aux_logits, ref.aux1, ref.aux2 = False, None, None
    torch.save(ref.state_dict(), path)
    ours = create_model("googlenet", pretrained=path, transform_input=True)
    assert not ours.aux_logits and ours.transform_input
    ref.transform_input = True
    _same_function(ours, ref, 15)
    with pytest.warns(UserWarning, match="no aux-head weights"):
        assert create_model("googlenet", pretrained=path, aux_logits=True).aux_logits


def test_timm_train_checkpoint_and_safetensors(tmp_path):
    """timm's formats: a train-script checkpoint (``state_dict`` of a DDP-wrapped model) and Hub safetensors."""
    from safetensors.torch import save_file

    ref = randomize_bn(timm.create_model("inception_v4"))
    ckpt = tmp_path / "checkpoint-3.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    _same_function(create_model("inception_v4", pretrained=ckpt), ref, 75)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    _same_function(create_model("inception_v4", pretrained=str(st)), ref, 75)


def test_new_num_classes_keeps_everything_but_the_classifier(tmp_path):
    ref = randomize_bn(timm.create_model("inception_resnet_v2"))
    path = tmp_path / "irv2.pth"
    torch.save(ref.state_dict(), path)
    with pytest.warns(UserWarning, match=r"classif\.weight: \(1000, 1536\) in the checkpoint, \(37, 1536\)"):
        ours = create_model("inception_resnet_v2", pretrained=path, num_classes=37)
    assert ours.classif.out_features == 37
    sd = ours.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items() if not k.startswith("classif."))
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert rel_err(ours.forward_features(x), ref.forward_features(x)) < 1e-5


def test_torchvision_inception_v3_file_loads_into_timm_layout_and_back(tmp_path):
    """Inception-v3: torchvision's and timm's state dicts are the same format; both load, aux head included."""
    tv = randomize_bn(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True))
    path = tmp_path / "v3.pth"
    torch.save(tv.state_dict(), path)
    ours = create_model("inception_v3", pretrained=path)
    assert ours.aux_logits
    _same_function(ours, tv, 75)
    tm = timm.create_model("inception_v3", aux_logits=True)
    tm.load_state_dict(ours.state_dict(), strict=True)


def test_wrong_checkpoints_fail_clearly(tmp_path):
    path = tmp_path / "v4.pth"
    torch.save(timm.create_model("inception_v4").state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit inception_resnet_v2: missing \(\d+\): conv2d_1a"):
        create_model("inception_resnet_v2", pretrained=path)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(ValueError, match=r"model.state_dict\(\)"):
        create_model("inception_v4", pretrained=tmp_path / "module.pth")
    with pytest.raises(FileNotFoundError, match="neither 'torchvision', 'timm' nor an existing file"):
        create_model("inception_v4", pretrained=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="no published torchvision weights for 'inception_v4'"):
        create_model("inception_v4", pretrained="torchvision")
    with pytest.raises(ValueError, match="no published timm weights for 'inception_resnet_v1'"):
        create_model("inception_resnet_v1", pretrained=True)


def test_published_torchvision_weights_with_torchvisions_defaults(monkeypatch):
    """The torchvision path with the download replaced: torchvision's own defaults for its weights
    (transform_input=True; GoogLeNet drops its aux heads, Inception-v3 keeps its aux head)."""
    ref = _tv_googlenet(aux_logits=True)
    requested = []
    monkeypatch.setattr(pt, "_fetch_torchvision", lambda n: requested.append(n) or ref.state_dict())
    ours = create_model("googlenet", pretrained="torchvision")
    assert requested == ["googlenet"] and ours.transform_input and not ours.aux_logits
    ref.transform_input, ref.aux_logits, ref.aux1, ref.aux2 = True, False, None, None
    _same_function(ours, ref, 15)
    full = _tv_googlenet(aux_logits=True).state_dict()
    monkeypatch.setattr(pt, "_fetch_torchvision", lambda n: full)
    with pytest.warns(UserWarning, match="not pretrained"):
        assert create_model("googlenet", pretrained=True, aux_logits=True).aux_logits
    v3 = randomize_bn(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True))
    monkeypatch.setattr(pt, "_fetch_torchvision", lambda n: v3.state_dict())
    assert create_model("inception_v3", pretrained="torchvision").aux_logits
    assert not create_model("inception_v3", pretrained="torchvision", aux_logits=False).aux_logits


def test_published_timm_weights(monkeypatch):
    calls = []

    def fetch(name, **kw):
        calls.append((name, kw))
        return randomize_bn(timm.create_model(name.split(".")[0], **kw)).state_dict()

    monkeypatch.setattr(pt, "_fetch_timm", fetch)
    model = create_model("inception_v3", pretrained="timm:inception_v3.tf_in1k", num_classes=5)
    assert calls == [("inception_v3.tf_in1k", {"aux_logits": False, "num_classes": 5})]
    assert not model.aux_logits and model.fc.out_features == 5
    create_model("inception_v4", pretrained=True)
    assert calls[-1] == ("inception_v4", {})


def test_offline_error_says_how_to_pass_a_file(monkeypatch):
    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    from torchvision.models import _api

    monkeypatch.setattr(_api, "load_state_dict_from_url", no_network)  # what torchvision calls to download
    with pytest.raises(RuntimeError, match=r"pretrained='/path/to/googlenet.pth'") as info:
        create_model("googlenet", pretrained="torchvision")
    assert "URLError" in str(info.value) and "weights='DEFAULT'" in str(info.value)
    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(RuntimeError, match=r"timm.create_model\('inception_v4', pretrained=True\)"):
        create_model("inception_v4", pretrained="timm")
