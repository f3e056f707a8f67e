"""The one-call GPU check (benchmarks/gpu_check.sh -> inception_kernels.bench.gpucheck) on the CPU: the dry run of
every step end to end (the files a lent GPU would send back, the headline rows with fake times, a route that does
not exist recorded as unavailable, measurements that would not fit skipped and recorded), the driver's deadline
logic under a fake clock, and the subprocess limit."""

import json
import os
import sys
import time

import pytest

from inception_kernels.bench import gpucheck, headline
from inception_kernels.bench.timing import FakeClock

pytest.importorskip("torchvision")
pytest.importorskip("timm")


def test_dry_run_of_every_step(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    backend = os.environ.get("INCEPTION_KERNELS_BACKEND")
    assert gpucheck.main(["--dry-run", "--out", str(tmp_path)]) == 0
    assert os.environ.get("INCEPTION_KERNELS_BACKEND") == backend  # restored after every route
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
        "suite/report.md",
        "suite/results.json",
    ]
    assert len(files) <= 8  # what the device tool sends back

    blob = json.loads((tmp_path / "gpu_check.json").read_text())
    assert blob["meta"]["dry_run"] is True and blob["failed_steps"] == []
    steps = blob["steps"]
    assert list(steps) == list(gpucheck.STEP_NAMES)
    assert all(s["status"] == "ok" for s in steps.values()), {n: s["status"] for n, s in steps.items()}

    setup = steps["setup"]
    assert setup["versions"]["torch"] and setup["versions"]["inception_kernels"]
    # the smoke selection picks tests of every family (collected only in a dry run)
    assert setup["smoke"]["collect_only"] and setup["smoke"]["rc"] == 0
    assert setup["smoke"]["counts"]["collected"] >= 10
    tests = steps["tests"]["pytest"]
    assert tests["rc"] == 0 and tests["counts"]["collected"] > 20  # the rest of test_pool_residual.py

    (v3,) = steps["headline"]["networks"].values()
    assert v3["network"] == "inception_v3" and v3["status"] == "done" and v3["config"]["size"] == 75
    rows = v3["rows"]
    assert list(rows) == headline.row_names(gpucheck.DRY_ROUTES)
    eager, ours = rows["eager"], rows["ours[reference]"]
    for r in (eager, ours):
        assert r["check_eval"]["status"] == "PASS" and r["check_train"]["status"] == "PASS", r
        assert set(r["first_call_s"]) == {"eval", "latency", "train"}
    # fake ms per call (gpucheck.DRY_TIMES): eager 2.0, ours 1.0, graph replay 0.25; batch 2
    assert eager["eval_img_s"] == pytest.approx(1000.0) and ours["eval_img_s"] == pytest.approx(2000.0)
    assert ours["train_img_s"] == pytest.approx(2000.0) and ours["latency_ms"] == 1.0
    assert ours["latency_graph_ms"] == 0.25
    assert ours["check_eval"]["rel_err"]["logits"] < 1e-4  # reference backend, fp32: the same function
    gone = rows["ours[no-such-route]"]
    assert gone["status"].startswith("route unavailable: ValueError") and "no-such-route" in gone["status"]
    assert gone["eval_img_s"] is None and rows["ours[no-such-route]+compile"]["status"].startswith("skipped")
    # the fake clock moved by the GPU estimates: the compiled rows' later measurements did not fit
    skipped = {(name, k) for name, r in rows.items() for k in r["skipped"]}
    assert ("compile", "eval") not in skipped and ("compile", "train") in skipped
    assert all("would not fit" in rows[n]["skipped"][k] for n, k in skipped)

    nets = steps["networks"]["networks"]
    assert nets["googlenet"]["rows"]["ours[reference]"]["eval_img_s"] == pytest.approx(2000.0)
    for name in ("inception_v4", "inception_resnet_v2"):  # no time left for them in the networks step
        assert nets[name]["status"].startswith("skipped: would not fit"), nets[name]["status"]

    suite = json.loads((tmp_path / "suite" / "results.json").read_text())
    assert set(suite) == {"meta", "ceilings", "kernels"} and suite["meta"]["fake_timer"] is True
    assert (
        steps["kernels"]["suite"]["n"] == len(suite["kernels"]) > 0 and steps["kernels"]["suite"]["fail"] == 0
    )

    md = (tmp_path / "gpu_check.md").read_text()
    assert "FAKE TIMES" in md and "### inception_v3 (75²" in md and "### googlenet (32²" in md
    assert "| ours[reference] | ok | PASS | PASS | 2000 | 2.00× |" in md
    assert "- ours[no-such-route]: route unavailable: ValueError" in md
    assert "- compile train: skipped (would not fit" in md
    log = (tmp_path / "gpu_check.log").read_text()
    assert "== [0s] setup" in log and "== done" in log


def test_driver_skips_what_does_not_fit_and_goes_on_after_an_error(tmp_path):
    limits = {}

    def runner(name, sim, fail=False):
        def run(limit):
            limits[name] = limit
            if fail:
                raise RuntimeError("boom")
            return sim

        return run

    runners = {
        "setup": runner("setup", 100),
        "headline": runner("headline", 0, fail=True),
        "networks": runner("networks", 500),  # runs to its limit
        "tests": runner("tests", 150),
        "kernels": runner("kernels", 10),
    }
    blob = gpucheck.run_check(str(tmp_path), dry=True, deadline_s=400, clock=FakeClock(), runners=runners)
    st = blob["steps"]
    assert limits == {"setup": 120, "headline": 250, "networks": 130, "tests": 150}
    assert st["headline"]["status"] == "error" and "RuntimeError: boom" in st["headline"]["note"]
    assert [st[n]["status"] for n in ("setup", "networks", "tests")] == ["ok"] * 3
    # 100 + 0 + 130 + 150 = 380 s spent: 10 s left (after the 10 s reserve) < the kernel step's 30 s minimum
    assert st["kernels"]["status"] == "skipped" and "would not fit" in st["kernels"]["reason"]
    assert blob["failed_steps"] == ["headline"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| kernels | skipped |" in md and "| headline | error |" in md


def test_run_cmd_kills_a_step_at_its_limit(tmp_path):
    rec = gpucheck.Record(str(tmp_path))
    code = "import time; print('started', flush=True); time.sleep(60)"
    t0 = time.perf_counter()
    r = gpucheck.run_cmd([sys.executable, "-c", code], 2.0, rec)
    assert r["timed_out"] and r["rc"] != 0 and time.perf_counter() - t0 < 20
    assert "started" in (tmp_path / "gpu_check.log").read_text()
    r = gpucheck.run_cmd([sys.executable, "-c", "raise SystemExit(3)"], 10.0, rec)
    assert r == {"rc": 3, "timed_out": False, "wall_s": r["wall_s"]}


def test_junit_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
        '<testcase classname="tests.test_b" name="test_ok2"/>'
        "</testsuite></testsuites>"
    )
    counts, failed = gpucheck.parse_junit(str(xml))
    assert counts == {"tests": 4, "failures": 1, "errors": 0, "skipped": 1, "passed": 2}
    assert failed == ["tests.test_a::test_bad"]
    assert gpucheck.step_failed("tests", {"status": "ok", "pytest": {"rc": 1, "counts": counts}})
    assert not gpucheck.step_failed("tests", {"status": "ok", "pytest": {"rc": 0, "counts": {"passed": 3}}})


def test_smoke_selection_is_disjoint_from_the_remaining_tests():
    assert gpucheck.remaining_k() == f"not ({gpucheck.SMOKE_K})"
    for f in gpucheck.SMOKE_FILES:
        assert os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), f)), f
