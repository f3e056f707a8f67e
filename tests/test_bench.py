"""The benchmark suite: the static report end to end (multiply-adds against the published counts, launch counts
against the interpreter's, saved-activation bytes), and the GPU suite's structure driven by a fake timer on the
CPU (json keys, ratios = baseline time ÷ our time, a failed correctness check excluded and flagged, plots)."""

import json
import os

import pytest
import torch
import torch.nn as nn

from inception_kernels.bench import counting, memory, static, zoo
from inception_kernels.bench.timing import FakeTimer

pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("matplotlib")

# Published multiply-adds at the native input size: GoogLeNet (Szegedy et al. 2014, ~1.5 G), Inception-v3
# (Rethinking, 5.7 G), Inception-v4 (~12.3 G), Inception-ResNet-v2 (~13.2 G), as quoted by the model cards.
PUBLISHED_GMACS = {"googlenet": 1.5, "inception_v3": 5.7, "inception_v4": 12.3, "inception_resnet_v2": 13.2}


@pytest.mark.parametrize("name", list(PUBLISHED_GMACS))
def test_macs_match_published_counts(name):
    layers = counting.layer_profile(zoo.our_model(name, "meta"), zoo.native_size(name))
    macs = sum(layer.macs for layer in layers)
    assert macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], rel=0.02)
    # the reference model, profiled the same way, executes the same multiply-adds
    ref_layers = counting.layer_profile(zoo.reference_model(name, "meta"), zoo.native_size(name))
    assert sum(layer.macs for layer in ref_layers) == macs


def test_layer_profile_agrees_with_count_macs():
    from inception_kernels.utils import count_macs

    model = zoo.our_model("googlenet")
    layers = counting.layer_profile(model, 112, device="cpu")
    assert sum(layer.macs for layer in layers) == count_macs(model, (112, 112))
    ops = {layer.op for layer in layers}
    assert {"conv", "linear", "maxpool", "globalpool"} <= ops
    conv1 = layers[0]  # 7x7/2, 3 -> 64, 56x56 out
    assert conv1.op == "conv" and conv1.macs == 56 * 56 * 64 * 3 * 49
    assert conv1.act_elems == 3 * 112 * 112 + 64 * 56 * 56 and conv1.weight_elems == 64 * 3 * 49


def test_rel_err_is_relative_and_never_broadcasts():
    from inception_kernels.utils import rel_err

    b = torch.tensor([3.0, 4.0])
    assert rel_err(b + torch.tensor([0.3, 0.4]), b) == pytest.approx(0.1)
    assert rel_err(torch.zeros(2), torch.zeros(2)) == 0.0  # ||b|| = 0: the absolute error
    assert rel_err(torch.ones(2, 1), torch.ones(2)) == float("inf")  # would broadcast to 2x2
    assert rel_err(torch.ones(1), torch.ones(3)) == float("inf")
    assert rel_err(torch.tensor([float("nan")]), torch.ones(1)) != rel_err(torch.ones(1), torch.ones(1))


def test_saved_activation_bytes_toy():
    x = torch.randn(2, 3, 8, 8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    # conv saves its input (2*3*8*8 fp32) and its weight (a parameter: excluded); relu saves its output
    assert memory.saved_activation_bytes(model, x) == (2 * 3 * 64 + 2 * 4 * 64) * 4
    per_image = memory.saved_activation_bytes_per_image(model, lambda n: torch.randn(n, 3, 8, 8))
    assert per_image == (3 * 64 + 4 * 64) * 4

    class Keep(torch.autograd.Function):  # keeps a tensor as a ctx attribute (not save_for_backward)
        @staticmethod
        def forward(ctx, a):
            out = a * 2
            ctx.kept = out.detach()
            return out

        @staticmethod
        def backward(ctx, g):
            return g * 2

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(16))

        def forward(self, a):
            y = Keep.apply(a * self.w)
            return y[:8] * y[8:]  # two views of one storage, saved by mul: counted once

    m = M()
    a = torch.randn(16)
    # a*w saves a (input, 64 B); Keep's ctx.kept (64 B) is a detached alias of y, whose storage mul saves too
    assert memory.saved_activation_bytes(m, a) == 64 + 64


def test_stubbed_launch_count_and_saved_bytes_equal_the_interpreter(monkeypatch):
    """The static report walks our fused path with the kernels stubbed out: the launches it counts and the bytes
    the training graph saves are the interpreter's (which runs every kernel)."""
    from inception_kernels.models.inception_v3 import block_a
    from inception_kernels.nn.engine import InceptionBlock
    from inception_kernels.utils import count_launches

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("needs the CPU interpreter (conftest sets it without a GPU)")
    blk = InceptionBlock(16, block_a(8)).eval()
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        blk(x)  # pack weights, fold BN
        with count_launches() as real:
            blk(x)
    with counting.stubbed_launches(), torch.no_grad(), count_launches() as stub:
        blk(x)
    assert real.count == stub.count > 0
    blk.train()
    real_bytes = memory.saved_activation_bytes(blk, x)
    with counting.stubbed_launches():
        stub_bytes = memory.saved_activation_bytes(blk, x)
    assert real_bytes == stub_bytes > 0
    assert os.environ.get("INCEPTION_KERNELS_BACKEND") == "triton"  # restored (conftest's value)


def test_op_counter_skips_views_and_allocations():
    with counting.OpCounter() as c:
        a = torch.empty(4, 4)
        b = a.view(16)[:4]  # views
        torch.relu(b)
        a.t().reshape(16)  # a copy: counted
        a.add_(1)
    assert dict(c.ops) == {"relu": 1, "clone": 1, "add_": 1}


def test_static_report_end_to_end(tmp_path):
    res = static.run_static(str(tmp_path), networks=("googlenet",), aot_arches=(90,), aot_dtypes=("bf16",),
                            aot_filter="epilogue_bwd", log=lambda *a: None)  # fmt: skip
    blob = json.loads((tmp_path / "results.json").read_text())
    (rec,) = blob["networks"]
    for key in ("name", "input_size", "macs", "params", "launches_per_forward", "eager_ops_per_forward",
                "saved_activation_bytes_per_image", "reference_saved_activation_bytes_per_image"):  # fmt: skip
        assert key in rec, key
    assert rec["name"] == "googlenet" and rec["input_size"] == 224
    assert rec["params"] == 6_624_904
    assert rec["macs"] / 1e9 == pytest.approx(1.5, rel=0.02)
    # ours launches fewer kernels than eager's conv + BN + ReLU (+ cat) per layer
    assert 0 < rec["launches_per_forward"] < rec["eager_ops_per_forward"]
    assert rec["eager_ops_per_forward"] >= 3 * 57  # 57 conv layers, each conv + BN + ReLU
    assert (
        rec["saved_activation_bytes_per_image"] > 0 and rec["reference_saved_activation_bytes_per_image"] > 0
    )
    f = rec["floors"]["32"]
    assert f["floor_us"] == pytest.approx(max(f["compute_us"], f["memory_us"]), rel=1.0)
    assert f["floor_us"] >= max(f["compute_us"], f["memory_us"]) * 0.999
    assert blob["aot"]["rows"] and all(r["ok"] for r in blob["aot"]["rows"])
    md = (tmp_path / "report.md").read_text()
    assert (
        "googlenet" in md and "AOT resource table" in md and "no time in this report is a measurement" in md
    )
    for png in ("static_roofline.png", "static_counts.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert res["networks"][0]["macs"] == rec["macs"]


def test_committed_static_results_are_complete():
    path = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "benchmarks", "results", "static", "results.json"
    )
    # committed to the repository: a missing file is a failure, not a skip (`make bench-static` regenerates it)
    assert os.path.exists(path), "benchmarks/results/static/results.json is missing: run `make bench-static`"
    blob = json.load(open(path))
    names = [r["name"] for r in blob["networks"]]
    assert names == list(PUBLISHED_GMACS)
    for r in blob["networks"]:
        assert r["macs"] / 1e9 == pytest.approx(PUBLISHED_GMACS[r["name"]], rel=0.02)


# ----------------------------------------------------------------------------------------------------------
# GPU suite structure with the fake timer
# ----------------------------------------------------------------------------------------------------------
TINY = {
    "name": "tiny-test",
    "ceilings": {"copy_mib": 1, "matmul_n": 32},
    "kernels": {"shapes": ("17x17_1x7_192-192", "35x35_1x1_128-320_res"), "batches": (2,), "dtypes": ("fp32",),
                "fp32_shapes": None, "compile_max_shapes": ("17x17_1x7_192-192",), "budget_s": None},
    "memops": {"cases": ("35x35_bn_relu_288",), "batches": (2,), "dtypes": ("fp32",), "compile_max_cases": (),
               "budget_s": None},
    "blocks": {"batch": 2, "size": 3, "compile_max": False, "labels": ("irv2_Block17",), "ours_dtype": torch.float32,
               "budget_s": None},
    "networks": {"names": ("googlenet",), "size": 32, "eval_batches": (1,), "train_batches": (2,),
                 "compile_batches": (1,), "compile_train": False, "compile_max_batches": (), "ours_dtype": torch.float32,
                 "budget_s": None},
    "tiny_shapes": True,
}  # fmt: skip
FAIL_SHAPE = "35x35_1x1_128-320_res"


def test_gpu_suite_structure_with_fake_timer(tmp_path, monkeypatch):
    from inception_kernels.bench import kernels, suite
    from inception_kernels.bench.common import identity_compiler

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    good_ours = kernels.ours_fn

    def ours_fn(shape):  # one shape computes a wrong result: its check must fail and its ratios vanish
        fn = good_ours(shape)
        return (lambda inp: fn(inp) * 1.5) if shape.name == FAIL_SHAPE else fn

    monkeypatch.setattr(kernels, "ours_fn", ours_fn)
    times = {"/ours/": 1.0, "/cudnn/": 2.0, "/compile/": 4.0, "/compile_max/": 3.0, "/eager": 2.5, "/copy/": 1.0,
             "/matmul/": 1.0}  # fmt: skip
    timers = [FakeTimer(times), FakeTimer(kind="graph")]
    res = suite.run_suite(str(tmp_path), plan=TINY, device="cpu", timers=timers, compiler=identity_compiler,
                          log=lambda *a: None)  # fmt: skip

    blob = json.loads((tmp_path / "results.json").read_text())
    assert set(blob) == {"meta", "ceilings", "kernels", "blocks", "networks"}
    meta = blob["meta"]
    for key in ("date", "torch", "triton", "cuda", "gpu_name", "driver", "git_commit", "timer"):
        assert key in meta, key
    assert meta["fake_timer"] is True
    assert blob["ceilings"]["copy_gbs"] == pytest.approx(
        2 * 2**20 / 1e-3 / 1e9
    )  # 1 MiB read + written in 1 ms

    good, bad, mem = blob["kernels"]
    assert good["name"] == "17x17_1x7_192-192" and good["check"]["status"] == "PASS" and not good["excluded"]
    # ratio = baseline time / our time (higher is better), from the fake times
    assert good["ratios"]["ours_vs_cudnn"] == {"fwd": 2.0, "fwdbwd": 2.0}
    assert good["ratios"]["ours_vs_compile"] == {"fwd": 4.0, "fwdbwd": 4.0}
    assert good["ratios"]["ours_vs_compile_max"] == {"fwd": 3.0, "fwdbwd": 3.0}
    assert set(good["times"]) >= {"ours", "cudnn", "compile", "compile_max", "ours@graph", "cudnn@graph"}
    assert good["times"]["ours"]["fwd"]["rounds_ms"] == [1.0, 1.0]  # timed twice, spread reported
    assert good["times"]["ours"]["fwd"]["spread_pct"] == 0.0
    assert good["tflops"]["ours"]["fwd"] == pytest.approx(good["flops"]["fwd"] / 1e-3 / 1e12)
    assert "pct_peak" in good and good["min_bytes"]["fwd"] > 0

    assert bad["name"] == FAIL_SHAPE and bad["check"]["status"] == "FAIL" and bad["excluded"]
    assert all(v is None for by_pass in bad["ratios"].values() for v in by_pass.values())
    assert (
        "ours" not in bad["times"] and "ours" not in bad["tflops"]
    )  # never a speed figure for a wrong result
    assert "cudnn" in bad["times"]  # the baselines are still measured

    assert mem["name"] == "35x35_bn_relu_288" and mem["check"]["status"] == "PASS"
    assert mem["ratios"]["ours_vs_eager"] == {"fwd": 2.5, "fwdbwd": 2.5}
    assert mem["gbs"]["ours"]["fwd"] == pytest.approx(mem["min_bytes"]["fwd"] / 1e-3 / 1e9)
    assert mem["pct_bw"]["ours"]["fwd"] == pytest.approx(
        100 * mem["gbs"]["ours"]["fwd"] / blob["ceilings"]["copy_gbs"]
    )

    (blk,) = blob["blocks"]
    assert blk["check"]["status"] == "PASS", blk["check"]
    assert blk["ratios"]["ours_vs_eager"] == {"eval": 2.5, "train": 2.5}
    assert blk["ratios"]["ours_vs_compile"] == {"eval": 4.0, "train": 4.0}

    ev, tr = blob["networks"]
    assert (ev["params"]["mode"], ev["params"]["batch"], tr["params"]["mode"]) == ("eval", 1, "train")
    assert ev["check"]["status"] == "PASS" and tr["check"]["status"] == "PASS", (ev["check"], tr["check"])
    assert set(ev["times"]) == {"ours", "ours@graph", "eager_nchw", "eager_cl", "compile"}
    assert ev["ratios"]["ours_vs_eager_cl"]["eval"] == 2.5
    assert ev["img_s"]["ours"]["eval"] == pytest.approx(1 / 1e-3)
    assert tr["ratios"]["ours_vs_eager_cl"]["train"] == 2.5

    md = (tmp_path / "report.md").read_text()
    assert "FAKE TIMES" in md and "higher is better" in md
    assert f"🔴 **FAIL** kernels `{FAIL_SHAPE}`" in md and "excluded from every ratio" in md
    assert "| **geomean** |" in md
    for png in ("speedup_kernels.png", "speedup_blocks.png", "speedup_networks.png", "roofline.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert res["kernels"][1]["excluded"]


def test_targeted_run_from_the_command_line(tmp_path, monkeypatch, capsys):
    """``bench --list`` and a targeted plan (--shapes, --networks, --batches, ...; what benchmarks/bench_conv.py and
    bench_models.py used to do) run on the CPU at toy sizes with a fake timer: only what was asked for runs."""
    import argparse

    from inception_kernels.bench import cli as bench_cli
    from inception_kernels.bench import kernels, suite
    from inception_kernels.bench.common import identity_compiler
    from inception_kernels.cli import main

    assert main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(s.name in listing for s in kernels.SHAPES) and all(n in listing for n in zoo.NETWORKS)

    parser = argparse.ArgumentParser()
    bench_cli.add_bench_arguments(parser)
    args = parser.parse_args(["--shapes", "320_res", "BN_RELU_288", "--networks", "googlenet", "--batches", "2",
                              "--train-batches", "2", "--dtypes", "fp32", "--no-compile", "--no-graph",
                              "--rounds", "1"])  # fmt: skip
    assert bench_cli.targeted(args) and not bench_cli.targeted(parser.parse_args(["--quick"]))
    plan, sections = bench_cli.plan_from_args(args)
    assert sections == ("ceilings", "kernels", "networks")
    assert plan["kernels"]["shapes"] == ["35x35_1x1_128-320_res"] and plan["memops"]["cases"] == ["35x35_bn_relu_288"]
    assert plan["deadline_s"] is None and plan["graph_ms"] is None and plan["kernels"]["fp32_shapes"] is None
    assert suite.PLANS["full"]["kernels"]["budget_s"] == 120  # the base plan is copied, not changed
    with pytest.raises(ValueError, match="no kernel shape matches"):
        suite.targeted_plan(shapes=["no-such-shape"])

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    plan.update(tiny_shapes=True, ceilings={"copy_mib": 1, "matmul_n": 32})
    plan["networks"].update(size=32, ours_dtype=torch.float32)
    timer = FakeTimer()
    res = suite.run_suite(str(tmp_path), plan=plan, sections=sections, device="cpu", timers=[timer],
                          compiler=identity_compiler, plots=False, log=lambda *a: None)  # fmt: skip
    assert "blocks" not in res and json.loads((tmp_path / "results.json").read_text())["meta"]["plan"]["name"]
    conv, mem = res["kernels"]
    assert (conv["name"], conv["params"]["batch"], conv["params"]["dtype"]) == ("35x35_1x1_128-320_res", 2, "fp32")
    assert conv["check"]["status"] == "PASS", conv["check"]
    # bench_conv.py's informational fields: ReLU sign flips, gradients through the reference's own mask
    assert 0 <= conv["check"]["relu_mask_mismatch"] <= 1
    assert set(conv["check"]["rel_err_ref_mask"]) == {"dx", "dw", "dbias", "dresidual"}
    assert "compile" not in conv["times"] and "cudnn" in conv["times"] and not any("@" in k for k in conv["times"])
    assert len(conv["times"]["ours"]["fwd"]["rounds_ms"]) == 1
    assert mem["name"] == "35x35_bn_relu_288" and "compile" not in mem["times"]
    ev, tr = res["networks"]
    assert (ev["name"], ev["params"]["batch"], tr["params"]["mode"], tr["params"]["batch"]) == ("googlenet", 2, "train", 2)
    assert set(ev["times"]) == {"ours", "eager_nchw", "eager_cl"} and set(tr["times"]) == {"ours", "eager_cl"}


def test_cli_bench_without_gpu_measures_nothing(capsys):
    from inception_kernels.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: `bench` would run the suite")
    assert main(["bench"]) == 3
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("label", ["v3_Mixed_6b", "v4_Inception_B", "irv2_Block17"])
def test_block_pairs_are_the_same_function(label, monkeypatch):
    """The benchmarked blocks: ours (our model's submodule) loads the reference block's weights and computes the
    same function (reference backend, fp32, eval)."""
    from inception_kernels.bench.blocks import block_pair

    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "reference")
    ours, ref = block_pair(label, "cpu")
    x = torch.randn(2, zoo.BLOCKS[label][2], 3, 3)
    with torch.no_grad():
        y, y_ref = ours.eval()(x), ref.eval()(x)
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, rtol=1e-4, atol=1e-4)


def test_benchmark_configurations_on_our_kernels(device):
    """The suite's per-configuration code on our kernels (the interpreter without a GPU): every op family's
    correctness check passes at toy sizes and our launchers really ran."""
    from inception_kernels.bench import kernels, memops
    from inception_kernels.utils import count_launches

    timers = [FakeTimer()]
    for case in memops.select(("35x35_maxpool3s2_288", "35x35_bn_relu_288", "35x35_residual_320")):
        with count_launches() as launches:
            rec = memops.bench_case(case.tiny(), 2, "fp32", device, timers, impls=("ours", "eager"))
        assert rec["check"]["status"] == "PASS", (case.name, rec["check"])
        assert launches.count > 0 and rec["ratios"]["ours_vs_eager"]["fwd"] is not None
    shape = kernels.select(["35x35_1x1_128-320_res"])[0].tiny()
    rec = kernels.bench_shape(shape, 2, "fp32", device, timers, impls=("ours", "cudnn"))
    assert rec["check"]["status"] == "PASS", rec["check"]


def test_spent_budget_records_skips_instead_of_running():
    from inception_kernels.bench import kernels, report
    from inception_kernels.bench.blocks import run_blocks
    from inception_kernels.bench.common import Budget

    timer = FakeTimer()
    recs = kernels.run_kernels("cpu", [timer], shapes=kernels.select(["8x8_3x3_448-384"]), budget=Budget(0),
                               log=lambda *a: None)  # fmt: skip
    recs += run_blocks("cpu", [timer], labels=("v3_Mixed_6b",), budget=Budget(0), log=lambda *a: None)
    assert not timer.calls
    assert all("time budget" in r["skipped"]["all"] for r in recs)
    lines = report.problems({"kernels": recs[:1], "blocks": recs[1:]})
    assert len(lines) == 2 and all("skipped" in line for line in lines)


def test_readme_summaries(tmp_path):
    from inception_kernels.bench import report

    blob = {"meta": {"mode": "full", "gpu_name": "X", "date": "2026-01-01", "fake_timer": True},
            "kernels": [{"name": "a", "params": {"batch": 1}, "check": {"status": "PASS"},
                         "ratios": {"ours_vs_cudnn": {"fwd": 2.0}, "ours@graph_vs_cudnn@graph": {"fwd": 8.0}}},
                        {"name": "b", "params": {"batch": 1}, "check": {"status": "PASS"},
                         "ratios": {"ours_vs_cudnn": {"fwd": 0.5}, "ours@graph_vs_cudnn@graph": {"fwd": 2.0}}},
                        {"name": "c", "params": {"batch": 1}, "check": {"status": "FAIL"},
                         "ratios": {"ours_vs_cudnn": {"fwd": None}}}]}  # fmt: skip
    md = report.summary_markdown(blob)
    assert "| kernels: conv2d, fwd | latency | 1.00× |" in md  # geomean of 2 and 0.5; the failure is excluded
    assert "| kernels: conv2d, fwd | CUDA-graph replay | 4.00× |" in md
    assert "1 configuration(s) failed" in md and "FAKE TIMES" in md
