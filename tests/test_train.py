"""The trainer (issue 5): optimizer, schedule, loss, EMA, data, multi-crop geometry, checkpoints, resume, DDP and a
short end-to-end run on the built-in digits. Everything runs on the reference backend with tiny Inception-v3s."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inception_kernels.models import create_model
from inception_kernels.models.googlenet import GoogLeNetOutputs
from inception_kernels.models.inception_v3 import InceptionOutputs, scale_width
from inception_kernels.train import ModelEMA, RMSpropTF, StaircaseLR, inception_loss, smoothed_cross_entropy
from inception_kernels.train.checkpoint import atomic_save, check_compatible
from inception_kernels.train.data import SafeImageFolder, build_data, collate_skip
from inception_kernels.train.errors import ConfigError
from inception_kernels.train.evaluate import crop_specs, multi_crop
from inception_kernels.train.loop import NonFiniteLoss, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    """Training on the CPU uses the plain-PyTorch path (what ``auto`` picks there), with the trainer's thread
    policy (fewer threads on a loaded machine: oversubscribed OpenMP threads make these tests 20x slower)."""
    from inception_kernels.train.loop import auto_threads

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(auto_threads(threads))
    yield
    torch.set_num_threads(threads)


def tiny(out: Path, **kw) -> TrainConfig:
    """A run that takes seconds: Inception-v3 at width 1/8 and 75², 64 digits, batch 16 (4 steps per epoch).

    One CPU thread, as in test_train_faults.py: without ``threads`` the trainer picks its thread count from the
    machine's load at the start of each run, and 1 and 2 threads give different weights after one epoch (another
    reduction order), so the bit-identical resume test and the DDP test failed whenever the load changed between
    the runs they compare."""
    base = dict(width_mult=0.125, limit_train=64, limit_val=32, batch_size=16, epochs=2, quiet=True, plots=False,
                backend="reference", log_every=1, threads=1, output=str(out))  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------
# Optimizer, schedule, loss, EMA
# ----------------------------------------------------------------------------------------------------------
def test_rmsprop_tf_matches_hand_computed_steps():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    g1, g2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    lr1, lr2, rho, mu, eps, wd = 0.045, 0.03, 0.9, 0.9, 1.0, 4e-5
    opt = RMSpropTF([p], lr=lr1, weight_decay=wd)
    p0 = [float(v) for v in p.detach()]
    p.grad = g1.clone()
    opt.step()
    opt.param_groups[0]["lr"] = lr2  # a schedule changes lr between steps: it scales the next increment only
    p1_ours = [float(v) for v in p.detach()]
    p.grad = g2.clone()
    opt.step()
    for i in range(5):  # scalar arithmetic, straight from the TF formulas
        ms, mom, x = 1.0, 0.0, p0[i]
        for g, lr in ((float(g1[i]), lr1), (float(g2[i]), lr2)):
            g = g + wd * x
            ms = rho * ms + (1 - rho) * g * g
            mom = mu * mom + lr * g / math.sqrt(ms + eps)
            x = x - mom
            if lr == lr1:
                assert p1_ours[i] == pytest.approx(x, rel=1e-12, abs=1e-15)
        assert float(p.detach()[i]) == pytest.approx(x, rel=1e-12, abs=1e-15)
    assert torch.equal(opt.state[p]["ms"], opt.state[p]["ms"])  # state exists and has the parameter's shape
    assert opt.state[p]["ms"].shape == p.shape


def test_rmsprop_tf_first_step_differs_from_torch_rmsprop():
    """Guards against accidentally becoming PyTorch's RMSprop (ms from 0, eps outside the root)."""
    p1, p2 = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    for p in (p1, p2):
        p.grad = torch.full((3,), 0.5)
    RMSpropTF([p1], lr=0.1).step()
    torch.optim.RMSprop([p2], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9).step()
    # TF: ms = 0.9 + 0.1*0.25 = 0.925; step = 0.1*0.5/sqrt(1.925)
    assert torch.allclose(p1, torch.full((3,), 1 - 0.05 / math.sqrt(1.925)))
    assert not torch.allclose(p1, p2)


def test_staircase_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = RMSpropTF([p], lr=1.0)
    s = StaircaseLR(opt, 0.045, steps_per_epoch=10, decay=0.94, decay_epochs=2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(60):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == lrs[19] == 0.045
    assert lrs[20] == pytest.approx(0.045 * 0.94) and lrs[39] == pytest.approx(0.045 * 0.94)
    assert lrs[40] == pytest.approx(0.045 * 0.94**2) and lrs[60] == pytest.approx(0.045 * 0.94**3)
    w = StaircaseLR(opt, 0.1, steps_per_epoch=4, warmup_epochs=1)  # linear warmup over 4 steps
    assert [w.lr_at(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    state = s.state_dict()
    s2 = StaircaseLR(opt, 0.045, steps_per_epoch=10)
    s2.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.045 * 0.94**3)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch(eps):
    torch.manual_seed(1)
    logits, target = torch.randn(16, 7) * 3, torch.randint(0, 7, (16,))
    ours = smoothed_cross_entropy(logits, target, eps)
    assert torch.allclose(ours, F.cross_entropy(logits, target, label_smoothing=eps), atol=1e-6)
    # and the definition q' = (1 - eps) delta + eps / K written out
    q = torch.full((16, 7), eps / 7).scatter_add_(1, target.view(-1, 1), torch.full((16, 1), 1 - eps))
    assert torch.allclose(ours, -(q * F.log_softmax(logits, -1)).sum(1).mean(), atol=1e-6)


def test_aux_loss_wiring():
    torch.manual_seed(2)
    y = torch.randint(0, 5, (4,))
    main, a1, a2 = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    L = lambda z: smoothed_cross_entropy(z, y, 0.1)  # noqa: E731
    assert torch.allclose(inception_loss(InceptionOutputs(main, a1), y, 0.1, 0.4), L(main) + 0.4 * L(a1))
    assert torch.allclose(inception_loss(InceptionOutputs(main, None), y, 0.1, 0.4), L(main))
    assert torch.allclose(
        inception_loss(GoogLeNetOutputs(main, a2, a1), y, 0.1, 0.3), L(main) + 0.3 * (L(a1) + L(a2))
    )
    assert torch.allclose(inception_loss(main, y, 0.1, 0.4), L(main))
    # a real (narrow) Inception-v3 at 299² in train mode: the loss reaches the aux head's classifier
    torch.manual_seed(0)
    m = create_model("inception_v3", num_classes=5, width_mult=0.125, aux_logits=True).train()
    out = m(torch.randn(2, 3, 299, 299))
    assert isinstance(out, InceptionOutputs) and out.aux_logits.shape == (2, 5)
    inception_loss(out, y[:2], 0.1, 0.4).backward()
    assert m.AuxLogits.fc.weight.grad.abs().sum() > 0 and m.fc.weight.grad.abs().sum() > 0


def test_ema_follows_tf_rule_and_averages_buffers():
    lin = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(lin, decay=0.9999)
    w0, rm0 = lin[0].weight.detach().clone(), lin[1].running_mean.clone()
    with torch.no_grad():
        lin[0].weight.add_(1.0)
        lin[1].running_mean.add_(2.0)
        lin[1].num_batches_tracked += 5
    ema.update(lin)  # n = 1: d = min(0.9999, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, d * w0 + (1 - d) * (w0 + 1))
    assert torch.allclose(ema.module[1].running_mean, d * rm0 + (1 - d) * (rm0 + 2))
    assert int(ema.module[1].num_batches_tracked) == 5
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.9999
    assert not any(p.requires_grad for p in ema.module.parameters())


# ----------------------------------------------------------------------------------------------------------
# Models: the narrow Inception-v3
# ----------------------------------------------------------------------------------------------------------
def test_width_mult_scales_filters():
    assert [scale_width(c, 0.25) for c in (32, 64, 80, 192, 320, 2048)] == [8, 16, 24, 48, 80, 512]
    assert scale_width(48, 1.0) == 48 and scale_width(4, 0.1) == 8
    m = create_model("inception_v3", width_mult=0.25, num_classes=10, aux_logits=False)
    assert m.Conv2d_1a_3x3.conv.out_channels == 8 and m.Mixed_5b.branch1x1.conv.out_channels == 16
    assert m.fc.in_features == 80 + 2 * 96 + 2 * 96 + 48  # Mixed_7c: 320 + 2·384 + 2·384 + 192 = 2048, at 1/4
    m.eval()
    assert m(torch.randn(2, 3, 75, 75)).shape == (2, 10)
    with pytest.raises(ValueError, match="width_mult"):
        create_model("inception_v3", width_mult=0)


# ----------------------------------------------------------------------------------------------------------
# Multi-crop geometry
# ----------------------------------------------------------------------------------------------------------
def test_crop_counts():
    for h, w in ((256, 320), (400, 300), (300, 300)):
        for protocol, n in (("1", 1), ("10", 10), ("12", 12), ("144", 144)):
            specs = crop_specs(h, w, 224, protocol)
            assert len(specs) == n
            assert sum(s.flip for s in specs) == (0 if n == 1 else n // 2)


def test_144_crop_geometry_landscape():
    specs = crop_specs(256, 320, 224, "144")
    assert sorted({s.short for s in specs}) == [256, 288, 320, 352]  # GoogLeNet's 4 scales at crop 224
    s256 = [s for s in specs if s.short == 256 and not s.flip]
    assert len(s256) == 18  # 3 squares x (4 corners + center + whole square)
    # the resized image is 256x320: squares of side 256 at left 0, 32 (center) and 64 (right)
    assert sorted({(s.sq_top, s.sq_left, s.sq_side) for s in s256}) == [
        (0, 0, 256),
        (0, 32, 256),
        (0, 64, 256),
    ]
    left = [(s.top, s.left, s.full) for s in s256 if s.sq_left == 0]
    assert left == [
        (0, 0, False),
        (0, 32, False),
        (32, 0, False),
        (32, 32, False),
        (16, 16, False),
        (0, 0, True),
    ]
    # portrait: squares stacked vertically (top, center, bottom)
    p = crop_specs(320, 256, 224, "144")
    assert sorted({(s.sq_top, s.sq_left) for s in p if s.short == 256}) == [(0, 0), (32, 0), (64, 0)]
    # crop 299 scales the GoogLeNet scales proportionally
    assert sorted({s.short for s in crop_specs(400, 400, 299, "144")}) == [342, 384, 427, 470]


def test_multi_crop_pixels():
    """Crop contents, checked on an image whose pixels encode their coordinates (no resize: short side = 256)."""
    h, w, c = 256, 320, 224
    img = (torch.arange(h).view(h, 1) * 1000 + torch.arange(w).view(1, w)).double().expand(1, h, w).clone()
    views = multi_crop(img, c, "10", crop_pct=c / 256)  # shorter side stays 256: pixel values are coordinates
    assert views.shape == (10, 1, c, c)
    corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), (16, 48)]
    for v, (t, l) in zip(views[:5], corners):  # noqa: E741
        assert v[0, 0, 0] == t * 1000 + l and v[0, -1, -1] == (t + c - 1) * 1000 + (l + c - 1)
    for v, f in zip(views[:5], views[5:]):
        assert torch.equal(f, v.flip(-1))
    v12 = multi_crop(img, c, "12", crop_pct=c / 256)
    assert v12.shape == (12, 1, c, c)
    # 12-crop: the central square (left 32) -> its top-left corner crop starts at column 32; view 5 = whole square
    assert v12[0, 0, 0, 0] == 32 and v12[4, 0, 0, 0] == 16 * 1000 + 48
    square = img[..., :, 32:288]
    assert torch.allclose(v12[5], F.interpolate(square[None], size=(c, c), mode="bilinear", antialias=True)[0],
                          atol=1e-6)  # fmt: skip
    assert torch.equal(v12[11], v12[5].flip(-1))
    assert multi_crop(img, c, "144").shape == (144, 1, c, c)


# ----------------------------------------------------------------------------------------------------------
# Data: corrupt images, bad trees
# ----------------------------------------------------------------------------------------------------------
def _image_tree(root: Path, per_class: int = 6, bad: int = 1) -> Path:
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for k, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                img = (torch.rand(3, 90 + 7 * i, 100, generator=g) * 60 + 120 * k).to(torch.uint8)
                write_png(img, str(d / f"{i}.png"))
            for i in range(bad):
                (d / f"corrupt{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = _image_tree(tmp_path / "data")
    ds = SafeImageFolder(root / "val")
    assert len(ds) == 14
    with pytest.warns(UserWarning, match="corrupt0.png"):
        items = [ds[i] for i in range(len(ds))]
    assert sum(x is None for x in items) == 2
    x, y, skipped = collate_skip([items[0], None, items[1]][:1] + [None])
    assert skipped == 1 and x.shape[0] == 1
    assert collate_skip([None, None]) == (None, None, 2)
    # a whole (short) run on the tree: no crash, the skipped images are counted in the log
    res = train(tiny(tmp_path / "run", data=str(root), image_size=75, batch_size=4, epochs=1, limit_train=0,
                     limit_val=0, workers=0))  # fmt: skip
    row = res.history[-1]
    assert row["skipped_train"] == 2 and row["skipped_val"] == 2
    assert (tmp_path / "run" / "last.pt").exists()
    # evaluation with multi-crop protocols on images of several sizes skips them too
    from inception_kernels.train.cli import evaluate_checkpoints

    rows = evaluate_checkpoints(
        [str(tmp_path / "run" / "last.pt")], crops=["10", "144"], weights="ema", limit_val=8
    )
    assert [(r["protocol"], r["views"], r["n"], r["skipped"]) for r in rows] == [
        ("10", 10, 7, 1),
        ("144", 144, 7, 1),
    ]


def test_synthetic_data_run(tmp_path):
    """Synthetic data, and the autocast path (bf16 autocast runs on the CPU too)."""
    res = train(tiny(tmp_path / "syn", data="synthetic", num_classes=3, synthetic_length=32, epochs=1,
                     limit_train=0, limit_val=0, width_mult=0.125, image_size=75, amp="bf16"))  # fmt: skip
    ck = torch.load(res.out_dir / "last.pt", weights_only=False)
    assert ck["num_classes"] == 3 and ck["data_kind"] == "synthetic" and ck["step"] == 2
    assert math.isfinite(res.history[0]["train_loss"])


def test_bad_data_stops_with_a_clear_message(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        build_data(str(tmp_path / "missing"), 75)
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    (tmp_path / "d" / "val").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        build_data(str(tmp_path / "d"), 75)
    root = _image_tree(tmp_path / "ok", per_class=1, bad=0)
    with pytest.raises(ConfigError, match="--num-classes 5 but the data has 2"):
        build_data(str(root), 75, num_classes=5)
    shutil.rmtree(root / "val" / "dog")
    with pytest.raises(ConfigError, match="train/ has 2 classes and val/ has 1"):
        build_data(str(root), 75)


def test_digits_split_is_fixed_and_sized():
    b = build_data(None, 75)
    assert (len(b.train), len(b.val), b.num_classes) == (1437, 360, 10)
    x, y = b.val[0]
    assert x.shape == (3, 75, 75) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    b2 = build_data("digits", 75)
    assert torch.equal(b.val.x, b2.val.x) and torch.equal(b.train.y, b2.train.y)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------
def test_atomic_save_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"v": torch.arange(3)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        f.write(b"partial garbage")
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.arange(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path)["v"], torch.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_atomic_save_survives_sigkill(tmp_path):
    """A process killed (SIGKILL) in the middle of writing leaves the previous checkpoint loadable."""
    path = tmp_path / "last.pt"
    atomic_save({"v": torch.arange(3)}, path)
    code = textwrap.dedent(f"""
        import os, signal, torch
        from inception_kernels.train.checkpoint import atomic_save
        class KillWhilePickled:
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)
        atomic_save({{"big": torch.zeros(1 << 20), "then": KillWhilePickled()}}, {str(path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)
    assert r.returncode == -9
    assert torch.equal(torch.load(path)["v"], torch.arange(3))


def test_checkpoint_from_another_model_is_refused():
    ck = dict(model_name="googlenet", num_classes=10, model_kwargs={})
    with pytest.raises(ConfigError, match="is a 'googlenet' model"):
        check_compatible(ck, "inception_v3", {}, 10)
    with pytest.raises(ConfigError, match="has 10 classes, the data has 5"):
        check_compatible(ck, "googlenet", {}, 5)
    with pytest.raises(ConfigError, match="model options"):
        check_compatible(ck, "googlenet", {"width_mult": 0.5}, 10)


# ----------------------------------------------------------------------------------------------------------
# Runs: resume, NaN, end-to-end, DDP
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A 2-epoch tiny run stopped after epoch 1 (dropout on, random shifts on: RNG state matters)."""
    out = tmp_path_factory.mktemp("interrupted")
    old = os.environ.get("INCEPTION_KERNELS_BACKEND")
    try:
        train(tiny(out, stop_after=1, digits_shift=3))
    finally:
        if old is not None:
            os.environ["INCEPTION_KERNELS_BACKEND"] = old
    return out


def test_resume_is_bit_identical(tmp_path, interrupted_run):
    full = train(tiny(tmp_path / "full", digits_shift=3))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(interrupted_run, resumed_dir)
    resumed = train(TrainConfig(resume=str(resumed_dir / "last.pt")))
    assert resumed.out_dir == resumed_dir and len(resumed.history) == 2
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(resumed_dir / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    assert state_equal(a["model"], b["model"])
    assert state_equal(a["ema"]["module"], b["ema"]["module"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert state_equal(sa, sb)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


def test_resume_refuses_another_model(interrupted_run):
    with pytest.raises(
        ConfigError, match="trained with model='inception_v3', this run asks for model='googlenet'"
    ):
        train(TrainConfig(resume=str(interrupted_run / "last.pt"), model="googlenet"))
    with pytest.raises(ConfigError, match="trained with width_mult=0.125"):
        train(TrainConfig(resume=str(interrupted_run / "last.pt"), width_mult=0.5))
    with pytest.raises(ConfigError, match="does not exist"):
        train(TrainConfig(resume=str(interrupted_run / "nope.pt")))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, interrupted_run, monkeypatch):
    run = tmp_path / "nan"
    shutil.copytree(interrupted_run, run)
    before = (run / "last.pt").read_bytes()
    from inception_kernels.train import data

    real = data.digits_split

    def poisoned(size):
        xt, yt, xv, yv = real(size)
        return torch.full_like(xt, float("nan")), yt, xv, yv

    monkeypatch.setattr(data, "digits_split", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at epoch 2, step 5.*last good checkpoint"):
        train(TrainConfig(resume=str(run / "last.pt")))
    assert (run / "last.pt").read_bytes() == before


def test_end_to_end_digits_cli(tmp_path, capsys):
    """The CLI on the built-in data: loss falls, artifacts are written, the path is printed; eval works on them.

    The run is deterministic: seed 0 and ``--threads 1`` (the trainer otherwise picks its thread count from the
    machine's load, and a different reduction order changes every loss after step 1). 24 steps of AdamW at lr 3e-3,
    128 images, batch 16; the drop (mean of the first 4 step losses minus that of the last 4) is 0.32 at seed 0.
    It is not a margin that holds for every seed: measured with ``--threads 1`` over seeds 0-19 the drop ranges
    from -0.10 (seed 18) to 0.84 (seed 11), median 0.36. (The previous setting, the papers' RMSProp recipe on 256
    images at batch 32 with the load-chosen thread count, fell by 0.01 at seed 0 with 1 thread.)
    So the seed is fixed, and the assertion checks this fixed run.
    """
    from inception_kernels import cli

    out = tmp_path / "e2e"
    rc = cli.main(["train", "--width-mult", "0.125", "--limit-train", "128", "--limit-val", "32", "--epochs", "3",
                   "--batch-size", "16", "--opt", "adamw", "--lr", "3e-3", "--seed", "0", "--threads", "1",
                   "--backend", "reference", "-q", "-o", str(out), "--log-every", "1"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"output: {out}" in printed and f"outputs in {out}" in printed
    for f in ("config.yaml", "config.json", "steps.csv", "epochs.csv", "last.pt", "best.pt", "loss.png",
              "accuracy.png", "lr.png"):  # fmt: skip
        assert (out / f).exists(), f
    import csv

    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "steps.csv"))]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["model_kwargs"] == {"width_mult": 0.125, "aux_logits": False}
    # eval: single crop at crop_pct 1.0 on digits = the validation the trainer did; 12 crops; ensemble
    rc = cli.main(["eval", str(out / "last.pt"), str(out / "best.pt"), "--crops", "1", "12", "--limit-val", "32",
                   "--weights", "raw"])  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    assert "ensemble of 2" in table and table.count("    12 ") >= 1
    from inception_kernels.train.cli import evaluate_checkpoints

    rows = evaluate_checkpoints([str(out / "last.pt")], crops=["1"], weights="raw", limit_val=32)
    assert rows[0]["top1"] == pytest.approx(ck["history"][-1]["top1"])


def test_ddp_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 8 each, vs 1 process with batch 16 split into 2 strided
    micro-batches (BN statistics per 8 images in both): the same loss curve and weights within fp32 tolerance."""
    common = ["--width-mult", "0.125", "--limit-train", "64", "--limit-val", "32", "--epochs", "2",
              "--backend", "reference", "--threads", "1", "-q", "--no-plots", "--log-every", "1",
              "--model-kw", "dropout=0", "--digits-shift", "2"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env["OMP_NUM_THREADS"] = "1"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "inception_kernels.train", *common, "--batch-size", "8", "-o", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    assert "2 process(es), global batch 16" in two.stdout
    one = train(
        tiny(tmp_path / "one", batch_size=16, accum_steps=2, model_kwargs={"dropout": 0}, digits_shift=2)
    )
    import csv

    l2 = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "two" / "steps.csv"))]
    l1 = [float(r["loss"]) for r in csv.DictReader(open(one.out_dir / "steps.csv"))]
    assert len(l1) == len(l2) == 8
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=False)["model"]
    b = torch.load(one.out_dir / "last.pt", weights_only=False)["model"]
    for k in a:
        if a[k].dtype.is_floating_point and "running" not in k:
            assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k


def test_recipe_defaults():
    from inception_kernels.train.loop import resolve

    d = resolve(TrainConfig())  # the built-in default
    assert (d.width_mult, d.epochs, d.batch_size, d.image_size) == (0.25, 20, 32, 75)
    assert (d.optimizer, d.lr, d.lr_decay, d.lr_decay_epochs) == ("rmsprop-tf", 0.045, 0.94, 2.0)
    assert (d.clip_grad, d.weight_decay, d.label_smoothing, d.ema_decay, d.aux_weight) == (
        2.0,
        4e-5,
        0.1,
        0.9999,
        0.4,
    )
    f = resolve(TrainConfig(data="/some/imagenet"))  # the papers' recipe, full width
    assert (f.width_mult, f.epochs, f.batch_size, f.image_size) == (None, 100, 32, 299)
    g = resolve(TrainConfig(model="googlenet", data="synthetic"))
    assert (g.image_size, g.aux_weight, g.epochs) == (224, 0.3, 1)
    with pytest.raises(ConfigError, match="no width_mult option"):
        resolve(TrainConfig(model="googlenet", width_mult=0.5))
    with pytest.raises(ConfigError, match="not divisible"):
        resolve(TrainConfig(batch_size=10, accum_steps=3))


def test_library_raises_and_only_the_cli_exits(tmp_path, capsys):
    """The training library raises ConfigError (a ValueError, never SystemExit); the CLI prints it and returns 2."""
    from inception_kernels import cli

    assert issubclass(ConfigError, ValueError) and not issubclass(ConfigError, SystemExit)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        train(TrainConfig(model="nope", output=str(tmp_path / "x")))
    assert cli.main(["train", "--model", "nope", "-o", str(tmp_path / "y")]) == 2
    assert "error: unknown model 'nope'" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "error: checkpoint" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_auto_threads(monkeypatch):
    from inception_kernels.train.loop import auto_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert auto_threads(2) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (5.5, 5.0, 4.0))
    assert auto_threads(2) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    assert auto_threads(16) == 10 and auto_threads(4) == 4


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, capsys):
    """Installed without the [train] extra, `inception-kernels train` says what to install (exit 1) instead of
    a raw ModuleNotFoundError; a missing module that is not an optional dependency still raises."""
    from inception_kernels import cli
    from inception_kernels.train import cli as train_cli

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    rc = cli.main(["train", "--limit-train", "16", "--epochs", "1", "-q", "-o", str(tmp_path / "r")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "needs tqdm" in err and 'pip install "inception-kernels[train]"' in err, err
    assert (
        train_cli.train_main(["--limit-train", "16", "--epochs", "1", "-q", "-o", str(tmp_path / "r")]) == 1
    )
    assert 'pip install "inception-kernels[train]"' in capsys.readouterr().err

    def needs_bogus(_args):
        import inception_kernels_no_such_module  # noqa: F401

    monkeypatch.setattr(train_cli, "run_eval", needs_bogus)
    with pytest.raises(ModuleNotFoundError, match="inception_kernels_no_such_module"):
        cli.main(["eval", str(tmp_path / "x.pt")])
    plots = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert 'pip install "inception-kernels[bench]"' in train_cli.missing_extra_message(plots, "bench")


def test_predict_gathers_rows_without_concatenating():
    """``predict`` writes each batch's probabilities into one buffer: the same rows as the model run on the whole
    set, whether the loader states its length (preallocated) or not (a plain list of batches: grown by doubling),
    and empty results keep their shapes."""
    from inception_kernels.train.evaluate import predict

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    xs, ys = torch.randn(11, 3, 2, 2), torch.arange(11) % 5
    batches = [(xs[i : i + 3], ys[i : i + 3].tolist(), 0) for i in range(0, 11, 3)]
    want = torch.softmax(model(xs), dim=1)
    for loader in (batches, torch.utils.data.DataLoader(list(zip(xs, ys)), batch_size=3,
                                                         collate_fn=lambda b: (torch.stack([x for x, _ in b]),
                                                                               [int(y) for _, y in b], 0))):  # fmt: skip
        (probs,), labels, skipped = predict([model], loader, torch.device("cpu"))
        assert skipped == 0 and torch.equal(labels, ys)
        torch.testing.assert_close(probs, want, rtol=1e-6, atol=1e-7)
    (probs,), labels, skipped = predict([model], [(None, None, 4)], torch.device("cpu"))
    assert probs.shape == (0, 0) and labels.shape == (0,) and labels.dtype == torch.int64 and skipped == 4
