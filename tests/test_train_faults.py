"""Training that survives faults (issue 16, item 3): SIGTERM/SIGINT stop after a step with a resumable mid-epoch
checkpoint and exit code 75, ``--resume auto`` continues bit-identically, truncated/corrupt checkpoints are refused
for the previous good one, a full disk keeps the last good checkpoint, and a torchrun job whose processes are
signalled or killed restarts (``--max-restarts``) and finishes with the weights of an uninterrupted run.

Every run is the tiny digits run of test_train.py (Inception-v3 at width 1/8, 75², 64 images, batch 16: 4 steps per
epoch, 3 epochs) on one CPU thread (bit-identity needs the same thread count in the runs compared), with dropout
and random shifts on, so that a resume that misses any RNG state or position differs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from inception_kernels import cli
from inception_kernels.train.checkpoint import CorruptCheckpoint, read_checkpoint, save_checkpoint
from inception_kernels.train.cli import EXIT_CHECKPOINT_WRITE, EXIT_PREEMPTED
from inception_kernels.train.errors import ConfigError
from inception_kernels.train.loop import Preempted, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--width-mult", "0.125", "--limit-train", "64", "--limit-val", "32", "--batch-size", "16", "--epochs", "3",
         "-q", "--no-plots", "--backend", "reference", "--log-every", "1", "--threads", "1",
         "--digits-shift", "3"]  # fmt: skip
HOOK = "INCEPTION_KERNELS_TEST_SIGNAL_AT"


def tiny(out: Path, **kw) -> TrainConfig:
    """The run FLAGS describe, as a config."""
    base = dict(width_mult=0.125, limit_train=64, limit_val=32, batch_size=16, epochs=3, quiet=True, plots=False,
                backend="reference", log_every=1, threads=1, digits_shift=3, output=str(out))  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    monkeypatch.delenv(HOOK, raising=False)
    monkeypatch.delenv("INCEPTION_KERNELS_TEST_KILL_AT", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_run(a: dict, b: dict) -> None:
    """The resume rule of test_train.py: the same step count, weights, EMA, optimizer state and loss history."""
    assert a["step"] == b["step"]
    for key in ("model",):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    ea, eb = a["ema"]["module"], b["ema"]["module"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert [r["top1"] for r in a["history"]] == [r["top1"] for r in b["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's final checkpoint."""
    out = tmp_path_factory.mktemp("reference")
    old = os.environ.get("INCEPTION_KERNELS_BACKEND")
    try:
        train(tiny(out))
    finally:
        if old is not None:
            os.environ["INCEPTION_KERNELS_BACKEND"] = old
    return load(out / "last.pt")


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> Path:
    """A run stopped by SIGTERM at step 6 (epoch 2, batch 2 of 4), through the CLI: (run dir, exit code, stderr)."""
    out = tmp_path_factory.mktemp("preempted")
    saved = {k: os.environ.get(k) for k in (HOOK, "INCEPTION_KERNELS_BACKEND")}
    os.environ[HOOK] = "6"
    try:
        rc = cli.main(["train", *FLAGS, "-o", str(out), "--resume", "auto"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == EXIT_PREEMPTED
    return out


def logged_steps(run: Path) -> list[int]:
    return [int(line.split(",")[1]) for line in (run / "steps.csv").read_text().splitlines()[1:]]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------------------
def test_sigterm_mid_epoch_checkpoint_and_resume_auto_is_bit_identical(tmp_path, preempted, reference):
    ck = load(preempted / "last.pt")
    # epoch index 1 in progress, 2 of its 4 batches done
    assert (ck["step"], ck["epoch"], ck["batch"]) == (6, 1, 2)
    assert ck["running"]["loss_n"] == 2 and len(ck["history"]) == 1
    assert load(preempted / "last.prev.pt")["step"] == 4  # the rotated epoch-end checkpoint
    assert len((preempted / "steps.csv").read_text().splitlines()) == 1 + 6
    assert sorted(p.name for p in preempted.glob(".*")) == []  # no temporary file left
    run = copy_run(preempted, tmp_path / "run")
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train", *FLAGS, "-o", str(run), "--resume", "auto"]) == 0
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer's handler is gone again
    assert_same_run(load(run / "last.pt"), reference)
    assert logged_steps(run) == list(range(1, 13))


def test_sigint_at_an_epochs_last_batch_resumes_before_validation(tmp_path, reference, monkeypatch):
    """A stop at the epoch's last step does not wait for the validation: the checkpoint says batch 4 of 4 and the
    resumed run validates epoch 2 first. Library use: train() raises Preempted, no SystemExit."""
    monkeypatch.setenv(HOOK, "8:SIGINT")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted, match=r"stopped by SIGINT after step 8 \(epoch 2, batch 4/4\)") as e:
        train(tiny(tmp_path / "run", resume="auto"))
    assert e.value.signum == signal.SIGINT and e.value.step == 8
    assert signal.getsignal(signal.SIGINT) is before
    ck = load(e.value.checkpoint)
    assert (ck["step"], ck["epoch"], ck["batch"], len(ck["history"])) == (8, 1, 4, 1)
    monkeypatch.delenv(HOOK)
    res = train(tiny(tmp_path / "run", resume="auto"))
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    assert_same_run(load(tmp_path / "run" / "last.pt"), reference)


def test_external_sigterm_to_the_cli_process(tmp_path, reference):
    """A genuine signal from outside: the trainer runs in a subprocess, gets SIGTERM once it has logged a step, exits
    75 with a checkpoint of the step it finished; --resume auto then ends with the uninterrupted run's weights."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(HOOK, None)
    p = subprocess.Popen([sys.executable, "-m", "inception_kernels.train", *FLAGS, "-o", str(run), "--resume",
                          "auto"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ((run / "steps.csv").exists() and len((run / "steps.csv").read_text().splitlines()) >= 2):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == EXIT_PREEMPTED, out + err
    ck = load(run / "last.pt")
    assert 1 <= ck["step"] < 12 and ck["batch"] > 0
    assert f"stopped by SIGTERM after step {ck['step']}" in err and f"--resume auto -o {run}" in err
    assert cli.main(["train", *FLAGS, "-o", str(run), "--resume", "auto"]) == 0
    assert_same_run(load(run / "last.pt"), reference)


# ----------------------------------------------------------------------------------------------------------
# Bad checkpoints, full disk
# ----------------------------------------------------------------------------------------------------------
def _flip_a_weight_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's stored bytes: torch.load still succeeds, only the digest sees it."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))


def test_corrupt_checkpoints_are_refused(tmp_path, preempted):
    run = copy_run(preempted, tmp_path / "run")
    last = run / "last.pt"
    good = read_checkpoint(last)
    _flip_a_weight_byte(last)
    torch.load(last, weights_only=False)  # still loads: only the digest catches this
    with pytest.raises(CorruptCheckpoint, match="differ from its digest"):
        read_checkpoint(last)
    # an explicit --resume of a bad file is refused (no silent substitution), pointing at the previous one
    with pytest.raises(ConfigError, match=r"corrupt.*the previous one is .*last\.prev\.pt.*--resume auto"):
        train(TrainConfig(resume=str(last)))
    last.write_bytes(b"")
    with pytest.raises(CorruptCheckpoint, match=r"cannot read .*\(0 bytes; truncated or corrupt\?\)"):
        read_checkpoint(last)
    incomplete = {k: v for k, v in good.items() if k not in ("optimizer", "integrity")}
    save_checkpoint(incomplete, last)
    with pytest.raises(CorruptCheckpoint, match="is incomplete: no optimizer"):
        read_checkpoint(last)
    # both bad: no fresh start over them (--resume DIR = --resume auto -o DIR)
    (run / "last.prev.pt").write_bytes((run / "last.prev.pt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"no usable checkpoint in .*last\.pt' is incomplete: no optimizer; cannot "
                                         r"read .*last\.prev\.pt' \(1000 bytes.*Move the files away"):  # fmt: skip
        train(TrainConfig(resume=str(run)))


def test_truncated_last_falls_back_to_the_previous_checkpoint(tmp_path, preempted, reference, capsys):
    run = copy_run(preempted, tmp_path / "run")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])  # as a crash of a non-atomic writer would leave it
    assert cli.main(["train", *FLAGS, "-o", str(run), "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"warning: refusing checkpoint: cannot read '{run / 'last.pt'}'" in err
    # resumed from last.prev.pt (step 4, an epoch end): steps 5..12 were redone, steps.csv logged them once
    assert logged_steps(run) == list(range(1, 13))
    assert_same_run(load(run / "last.pt"), reference)


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, preempted, reference, monkeypatch, capsys):
    run = copy_run(preempted, tmp_path / "run")
    before = {n: (run / n).read_bytes() for n in ("last.pt", "last.prev.pt")}
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **kw):
        calls.append(obj["step"])
        if obj["step"] == 8:  # the epoch-2 checkpoint: half written, then the disk is full
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli.main(["train", *FLAGS, "-o", str(run), "--resume", "auto"]) == EXIT_CHECKPOINT_WRITE
    err = capsys.readouterr().err
    assert f"cannot write checkpoint '{run / 'last.pt'}' (the disk is full); stopping: the last good checkpoint " \
           f"'{run / 'last.pt'}' is kept; free space, then continue with --resume auto -o {run}" in err  # fmt: skip
    assert calls == [8]
    assert {n: (run / n).read_bytes() for n in before} == before  # both generations intact
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # the temporary file is gone
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main(["train", *FLAGS, "-o", str(run), "--resume", "auto"]) == 0  # space freed: it continues
    assert_same_run(load(run / "last.pt"), reference)


def test_resume_auto_needs_a_run_directory_and_starts_fresh_in_an_empty_one(tmp_path):
    with pytest.raises(ConfigError, match="--resume auto needs --output DIR"):
        train(TrainConfig(resume="auto"))
    res = train(tiny(tmp_path / "fresh", resume="auto", epochs=1, limit_train=32))
    assert load(res.out_dir / "last.pt")["step"] == 2 and not (res.out_dir / "last.prev.pt").exists()


def test_seeded_image_folder_augmentation_is_per_sample(tmp_path):
    """ImageFolder crops depend on (seed, epoch, index) only, not on the order samples are loaded in (what a
    mid-epoch resume that skips batches needs), and leave the global RNG alone."""
    from torchvision.io import write_png

    from inception_kernels.train.data import SafeImageFolder, inception_train_transform

    g = torch.Generator().manual_seed(0)
    (tmp_path / "a").mkdir()
    for i in range(3):
        img = (torch.rand(3, 60 + 9 * i, 80, generator=g) * 255).to(torch.uint8)
        write_png(img, str(tmp_path / "a" / f"{i}.png"))
    ds = SafeImageFolder(tmp_path, inception_train_transform(32, color_jitter=0.4), seed=5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    forward = [ds[i][0] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), state)
    backward = [ds[i][0] for i in reversed(range(3))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], forward[0])


def test_image_folder_with_workers_resumes_mid_epoch_bit_identically(tmp_path, monkeypatch):
    """ImageFolder data (random-resized crops, flips, colour jitter) loaded by 2 worker processes: the resumed
    epoch skips its first batches in the sampler and the crops still match, as they come from (seed, epoch, index)
    and not from the workers' seeds (which the resumed loader draws anew)."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 2)):
        for k, name in enumerate(("cat", "dog")):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                img = (torch.rand(3, 80 + 5 * i, 90, generator=g) * 80 + 100 * k).to(torch.uint8)
                write_png(img, str(tmp_path / "data" / split / name / f"{i}.png"))
    cfg = dict(data=str(tmp_path / "data"), image_size=75, batch_size=4, epochs=1, limit_train=0, limit_val=0,
               workers=2, color_jitter=0.4, digits_shift=0)  # fmt: skip
    train(tiny(tmp_path / "plain", **cfg))
    monkeypatch.setenv(HOOK, "2")
    with pytest.raises(Preempted, match=r"after step 2 \(epoch 1, batch 2/4\)"):
        train(tiny(tmp_path / "run", resume="auto", **cfg))
    monkeypatch.delenv(HOOK)
    train(tiny(tmp_path / "run", resume="auto", **cfg))
    assert_same_run(load(tmp_path / "run" / "last.pt"), load(tmp_path / "plain" / "last.pt"))


# ----------------------------------------------------------------------------------------------------------
# torchrun: a signalled process and a killed process, restarts, the same weights
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_restarts_after_a_signal_and_a_kill_and_matches_an_uninterrupted_job(tmp_path):
    """2 gloo processes, batch 8 each, one epoch of 6 steps, --checkpoint-every 2, --max-restarts 2. Attempt 0:
    process 1 alone gets SIGTERM as step 2 begins -> both stop after step 2 (they agree through the loss
    all-reduce), process 0 writes the step-2 checkpoint, both exit 75, torchrun restarts. Attempt 1 resumes at
    step 2; process 1 is SIGKILLed after step 5 (no warning: the newest checkpoint is the periodic one of step 4).
    Attempt 2 resumes at step 4 and finishes. The result equals an uninterrupted 2-process job exactly."""
    flags = list(FLAGS)
    for flag, value in (("--batch-size", "8"), ("--epochs", "1"), ("--limit-train", "96")):
        flags[flags.index(flag) + 1] = value
    # with torch's rendezvous store shared with the workers (its default), restarts here sometimes failed to connect
    # gloo ("Connection refused" to the previous attempt's addresses; pytorch/pytorch#135712): a store per attempt
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")

    def torchrun(out: Path, **hooks):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "--max-restarts=2", "--monitor-interval=0.1", "-m", "inception_kernels.train", *flags,
                            "--checkpoint-every", "2", "-o", str(out), "--resume", "auto"], cwd=REPO,
                           env=dict(env, **hooks), capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    faulty = torchrun(tmp_path / "faulty", **{HOOK: "2:SIGTERM:1", "INCEPTION_KERNELS_TEST_KILL_AT": "1:5:1"})
    assert faulty.stdout.count("output:") == 3, faulty.stdout  # three attempts
    assert "stopped by SIGTERM after step 2 (epoch 1, batch 2/6)" in faulty.stderr  # process 1's own message
    assert "stopped by a signal to another process after step 2" in faulty.stderr  # process 0 followed
    assert "exitcode: -9" in faulty.stderr  # the kill (process 0 of that attempt fails with a gloo error)
    assert logged_steps(tmp_path / "faulty") == list(range(1, 7))  # step 5's row of attempt 1 logged once
    plain = torchrun(tmp_path / "plain")
    assert plain.stdout.count("output:") == 1
    a, b = load(tmp_path / "faulty" / "last.pt"), load(tmp_path / "plain" / "last.pt")
    assert (a["step"], a["epoch"], a["batch"], len(a["history"])) == (6, 1, 0, 1)
    last = tmp_path / "faulty" / "last.pt"
    assert f"resuming from {last} (step 2, epoch 1, batch 2/6)" in faulty.stdout  # attempt 1
    assert f"resuming from {last} (step 4, epoch 1, batch 4/6)" in faulty.stdout  # attempt 2: periodic one
    assert_same_run(a, b)
