"""The network base (``nn.network.InceptionNetwork``) that every model of ``models/`` shares.

* Input sizes are computed from the tables: ``min_size`` is the true minimum of every model and configuration
  (the model runs there; one pixel less, its stages fail inside PyTorch and the model raises a clear
  ``ValueError`` first), ``aux_min_size`` is the smallest input on which the aux heads run, and both are known to
  the class without building a model (the trainer asks the class).
* timm's head API: ``forward_features`` / ``forward_head`` / ``get_classifier`` / ``reset_classifier`` /
  ``num_features`` give what timm's models give, on the same weights.
* State dicts are those of the code before the base existed: keys, shapes and order (fingerprints below, taken
  from the previous layout; the torchvision / timm key tests cover the models that have a reference).

Everything runs on the reference backend (plain PyTorch) at the smallest inputs, narrow where the model allows.
"""

import hashlib

import pytest
import torch
from helpers import randomize_bn, rel_err

from inception_kernels.models import _MODELS, _resolve, create_model
from inception_kernels.nn.engine import _min_in_size
from inception_kernels.nn.network import run_stages
from inception_kernels.ops._args import window_out_size as _out_size


@pytest.fixture(autouse=True)
def _reference(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")


def test_min_in_size_inverts_out_size():
    """``_min_in_size`` is the smallest input length whose output is at least ``out``, for every window
    (floor and ceil mode, PyTorch's padding rule p <= k // 2)."""
    for k in range(1, 8):
        for s in (1, 2, 3):
            for p in range(k // 2 + 1):
                for ceil in (False, True):
                    for out in range(1, 12):
                        n = _min_in_size(out, k, s, p, ceil)
                        assert _out_size(n, k, s, p, ceil) >= out, (k, s, p, ceil, out)
                        assert n == 1 or _out_size(n - 1, k, s, p, ceil) < out, (k, s, p, ceil, out)


# (model, constructor arguments, the computed minimum)
CONFIGS = [
    ("googlenet", {}, 15),
    ("googlenet", {"paper_5x5": True}, 15),
    ("inception_v2", {}, 75),
    ("inception_v2", {"stem": "7x7_32"}, 73),
    ("inception_v3", {"width_mult": 0.125}, 75),
    ("inception_v3", {"width_mult": 0.125, "stem": "151"}, 39),
    ("inception_v3", {"width_mult": 0.125, "stem": "79"}, 21),  # was 20: at 20, Mixed_7a gets a 2×2 grid
    ("inception_v3", {"width_mult": 0.125, "first_conv": "7x7"}, 73),  # was 75: 73 and 74 run
    ("inception_v4", {}, 75),
    ("inception_resnet_v1", {}, 75),
    ("inception_resnet_v2", {}, 75),
    ("inception_resnet_v2_paper", {}, 75),
]


@pytest.mark.parametrize("name, kwargs, size", CONFIGS, ids=[f"{n}-{kw}" for n, kw, _ in CONFIGS])
def test_min_size_is_the_true_minimum(name, kwargs, size):
    cls = _resolve(name)
    assert cls.min_size_for(**kwargs) == size  # from the class, no model built
    model = create_model(name, num_classes=3, **kwargs).eval()
    assert model.min_size == size
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
        for hw in ((size - 1, size - 1), (size, size - 1), (size - 1, size + 7)):
            with pytest.raises(ValueError, match=rf"{name} needs an input of at least {size}x{size} pixels, got "
                                                 rf"{hw[0]}x{hw[1]}"):  # fmt: skip
                model(torch.randn(1, 3, *hw))
        # the true minimum: one pixel less and PyTorch's own ops fail somewhere in the stages (our check bypassed)
        with pytest.raises(RuntimeError):
            run_stages(model, model.stages, torch.randn(1, 3, size - 1, size - 1))


@pytest.mark.parametrize("stem, size", [("299", 299), ("151", 151), ("79", 77)])
def test_aux_min_size_is_the_true_minimum(stem, size):
    """Inception-v3's aux head (avg-pool 5×5/3 → 1×1 → 5×5 valid) needs a 17×17 Mixed_6e grid: computed per stem
    from the tables; one pixel less, the head itself fails in PyTorch and the model raises a clear error first."""
    from inception_kernels.models.inception_v3 import InceptionV3

    kw = dict(width_mult=0.125, stem=stem)
    assert InceptionV3.aux_min_size_for(**kw) == size
    model = create_model("inception_v3", num_classes=3, **kw).train()
    assert model.aux_min_size == size
    names = [n for n, _ in model.stages]
    to_tap = model.stages[: names.index("Mixed_6e") + 1]
    with torch.no_grad():
        assert run_stages(model, to_tap, torch.randn(2, 3, size, size)).shape[-2:] == (17, 17)
        with pytest.raises(RuntimeError):
            model.AuxLogits(run_stages(model, to_tap, torch.randn(2, 3, size - 1, size - 1)), reference=True)
        with pytest.raises(ValueError, match=rf"needs a 17x17 Mixed_6e grid: an input of at least {size}x{size}"):
            model(torch.randn(2, 3, size - 1, size - 1))
        if stem == "79":  # the cheapest: the whole train-mode forward runs at the minimum (77: 35 → 17 at Mixed_6a)
            out = model(torch.randn(2, 3, size, size))
            assert out.logits.shape == out.aux_logits.shape == (2, 3)


def test_googlenet_aux_heads_run_at_the_minimum():
    """GoogLeNet's aux heads pool adaptively: they run wherever the network runs."""
    from inception_kernels.models.googlenet import GoogLeNet

    assert GoogLeNet.aux_min_size_for() == GoogLeNet.min_size_for() == 15
    out = create_model("googlenet", num_classes=3).train()(torch.randn(2, 3, 15, 15))
    assert out._fields == ("logits", "aux_logits2", "aux_logits1") and all(t.shape == (2, 3) for t in out)


def test_class_facts_check_their_arguments():
    from inception_kernels.models.inception_v2 import InceptionV2
    from inception_kernels.models.inception_v3 import InceptionV3
    from inception_kernels.models.inception_v4 import InceptionV4

    with pytest.raises(ValueError, match="stem must be"):
        InceptionV3.min_size_for(stem="42")
    with pytest.raises(ValueError, match="avgpool_mode must be"):
        InceptionV2.aux_min_size_for(avgpool_mode="max")
    with pytest.raises(TypeError, match="'width_mult'"):
        InceptionV4.min_size_for(width_mult=0.5)  # as InceptionV4(width_mult=0.5) would
    assert InceptionV4.aux_min_size_for(num_classes=10) is None  # arguments without a say on sizes are accepted


def test_trainer_asks_the_class(monkeypatch):
    """``resolve`` and ``model_kwargs`` build no model: the digits default size and ``aux_logits=auto`` come from
    ``min_size_for`` / ``aux_min_size_for``."""
    from inception_kernels.nn.network import InceptionNetwork
    from inception_kernels.train.loop import TrainConfig, model_kwargs, resolve

    def no_build(*a, **k):
        raise AssertionError("the trainer built a model to learn a fact")

    monkeypatch.setattr(InceptionNetwork, "__init__", no_build)
    cfg = resolve(TrainConfig())
    assert cfg.image_size == 75 and model_kwargs(cfg, 10) == {"width_mult": 0.25, "aux_logits": False}
    for size, aux in ((298, False), (299, True)):
        cfg = resolve(TrainConfig(data="synthetic", image_size=size))
        assert model_kwargs(cfg, 10) == {"aux_logits": aux}
    g = resolve(TrainConfig(model="googlenet"))  # digits: the model's minimum, where its aux heads run
    assert g.image_size == 15 and model_kwargs(g, 10) == {"aux_logits": True}


# ----------------------------------------------------------------------------------------------------------
# timm's head API, on timm's weights
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", [("inception_v3", {"aux_logits": False}), ("inception_v4", {}),
                                          ("inception_resnet_v2", {})])  # fmt: skip
def test_head_api_matches_timm(name, kwargs):
    timm = pytest.importorskip("timm")
    ref = randomize_bn(timm.create_model(name, num_classes=5, **kwargs)).eval()
    ours = create_model(name, num_classes=5, **kwargs).eval()
    ours.load_state_dict(ref.state_dict())
    assert ours.num_features == ref.num_features and ours.num_classes == ref.num_classes == 5
    assert type(ours.get_classifier()) is type(ref.get_classifier())
    assert ours.get_classifier() is getattr(ours, {"inception_v3": "fc", "inception_v4": "last_linear"}.get(name, "classif"))
    x = torch.randn(1, 3, 75, 75)

    def same(a, b):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5

    with torch.no_grad():
        feat, feat_ref = ours.forward_features(x), ref.forward_features(x)
        same(feat, feat_ref)
        same(ours.forward_head(feat), ref.forward_head(feat_ref))
        same(ours.forward_head(feat, pre_logits=True), ref.forward_head(feat_ref, pre_logits=True))
        same(ours(x), ref(x))
        for n, pool in ((3, None), (0, None), (4, "max"), (0, "")):
            ours.reset_classifier(n, **({} if pool is None else {"global_pool": pool}))
            ref.reset_classifier(n, **({} if pool is None else {"global_pool": pool}))
            assert ours.num_classes == n and type(ours.get_classifier()) is type(ref.get_classifier())
            if n:
                ours.get_classifier().load_state_dict(ref.get_classifier().state_dict())
            # (1, n), or the pooled features (n = 0), or the feature map (pool "")
            same(ours.forward_head(feat), ref.forward_head(feat_ref))
        assert ours.forward_head(feat).shape == feat.shape


def test_reset_classifier_resets_the_aux_heads_and_keeps_mode_device_dtype():
    for name in ("googlenet", "inception_v3"):
        kw = {"width_mult": 0.125, "stem": "79"} if name == "inception_v3" else {}  # aux heads at 77² / 15²
        model = create_model(name, num_classes=5, **kw).double().train()
        model.reset_classifier(3)
        assert model.get_classifier().weight.dtype == torch.float64 and model.get_classifier().training
        out = model(torch.randn(2, 3, model.aux_min_size, model.aux_min_size, dtype=torch.float64))
        assert all(t.shape == (2, 3) for t in out), name
        model.reset_classifier(0)
        assert model.eval()(torch.randn(1, 3, 75, 75, dtype=torch.float64)).shape == (1, model.num_features)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="avgmax")


# ----------------------------------------------------------------------------------------------------------
# State dicts unchanged
# ----------------------------------------------------------------------------------------------------------
# (number of entries, sha256 of "key:shape" lines in order)[:16], taken from the layout before the network base
STATE_DICTS = {
    ("googlenet", ()): (364, "563d3cdadc5f3358"),
    ("googlenet", (("aux_logits", False),)): (344, "2fe40eb262730098"),
    ("googlenet", (("paper_5x5", True),)): (364, "f7b5e6594b1963fa"),
    ("inception_v2", ()): (568, "5cae1ede5526eabf"),
    ("inception_v2", (("aux_logits", False),)): (554, "d367a2ea2dc8a750"),
    ("inception_v2", (("stem", "7x7_32"),)): (580, "d51e3e9c59ed4430"),
    ("inception_v3", ()): (580, "f17cfe285ae35639"),
    ("inception_v3", (("aux_logits", False),)): (566, "2f93d3543f6a51c8"),
    ("inception_v3", (("bn_aux", True),)): (585, "092a41d9e0c68c28"),
    ("inception_v3", (("stem", "79"),)): (580, "f17cfe285ae35639"),
    ("inception_v3", (("first_conv", "7x7"),)): (580, "d51e3e9c59ed4430"),
    ("inception_v3", (("width_mult", 0.25),)): (580, "841a3028f9f95ee1"),
    ("inception_v4", ()): (896, "845c2e75c6844ee7"),
    ("inception_resnet_v1", ()): (684, "b4586723e36e4620"),
    ("inception_resnet_v2", ()): (1306, "304b75a3b3653282"),
    ("inception_resnet_v2_paper", ()): (714, "8bfd62e956090691"),
}


def test_state_dicts_unchanged():
    assert {name for name, _ in STATE_DICTS} == set(_MODELS)
    for (name, kw), (count, digest) in STATE_DICTS.items():
        with torch.device("meta"):
            sd = create_model(name, **dict(kw)).state_dict()
        lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
        assert (len(sd), hashlib.sha256(lines.encode()).hexdigest()[:16]) == (count, digest), (name, kw)
