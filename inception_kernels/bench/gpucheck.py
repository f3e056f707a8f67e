"""The one-call GPU check (``benchmarks/gpu_check.sh`` installs the package, then runs this).

Steps, in order of value, each writing its results into the output folder before the next one starts
(``gpu_check.json``, ``gpu_check.md`` -- one section per step, rewritten after every row -- and ``gpu_check.log``;
the kernel step adds ``suite/results.json`` and ``suite/report.md``: 5 files, the device tool returns at most 8):

1. ``setup``    -- the pip install's result (run by the shell script), versions, nvidia-smi, and a GPU smoke test:
   a few existing op tests per family (conv, BN, pools, residual; NaN-poisoned outputs, against the upcast
   reference) selected by ``-k`` (:data:`SMOKE_K`);
2. ``headline`` -- :mod:`.headline` for inception_v3 at 299²;
3. ``networks`` -- the same rows for googlenet, inception_v4, inception_resnet_v2 as time allows;
4. ``tests``    -- the remaining tests on the GPU (all but the smoke ones and the AOT compiles);
5. ``kernels``  -- the ceilings, kernel and memory-bound op sections of the suite (:func:`.suite.run_suite`).

Time: a global deadline (default 540 s from the shell script's start, ``--t0``) and per-step limits
(:data:`STEPS`): a step runs with ``min(its max, what is left - RESERVE_S)`` seconds, in a subprocess killed at
that limit (its rows written so far stay); a step whose minimum does not fit is skipped, and the skip recorded.
Inside the Python steps every measurement has a cost estimate (see :mod:`.headline`) and is skipped when it would
not fit. The exit status is 0 when every step that ran passed, 1 otherwise.

``--dry-run``: the whole sequence on the CPU (steps in this process but the kernel step, a :class:`~.timing.FakeClock` moved by the
steps' simulated GPU durations, fake timer, toy sizes, reference backend, ``torch.compile`` replaced by identity,
the pytest steps only collecting) -- every code path a GPU run takes, in about a minute; every number made up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .env import REPO_ROOT

PIP_LOG = "/tmp/gpu_check_pip.log"  # gpu_check.sh's pip install log
DEADLINE_S = 540.0  # 9 minutes: the device tool's command limit is 10
RESERVE_S = 10.0  # kept back for the final summary


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    min_s: float  # skipped when less than this is left
    max_s: float  # its limit when time is plentiful
    dry_s: float  # its simulated GPU duration in a dry run (0: the step moves the fake clock itself)


STEPS = (
    Step("setup", "versions + GPU smoke test", 30, 120, 75),
    Step("headline", "headline table: inception_v3", 60, 250, 0),
    Step("networks", "googlenet, inception_v4, inception_resnet_v2", 45, 130, 0),
    Step("tests", "remaining GPU tests", 30, 150, 120),
    Step("kernels", "kernel and memory-bound op sections", 30, 120, 60),
)
STEP_NAMES = tuple(s.name for s in STEPS)

# A few op tests per family (tests/test_conv.py, test_conv_gpu.py, test_batchnorm.py, test_pool_residual.py) and the
# training step's CUDA-graph replay on a small model (test_graphs.py; the network-level graph tests run later).
SMOKE_FILES = (
    "tests/test_conv.py",
    "tests/test_conv_gpu.py",
    "tests/test_batchnorm.py",
    "tests/test_graphs.py",
    "tests/test_pool_residual.py",  # (last: a dry run's test step collects it)
)
SMOKE_K = ("(test_forward_backward_vs_fp64 and 3x3_multiblock) or test_split_destination_horizontal_fusion"
           " or test_gpu_cuda_graph_capture or (test_gpu_vs_fp64_flash_rule and v3_6b_1x7)"
           " or test_bn_act_backward_matches_explicit_formula or test_conv_bn_act_into_slice_under_autograd"
           " or test_bn_stats_large_mean_small_spread or test_pool_into_slice_from_slice"
           " or test_scaled_residual_into_slice or test_gpu_graphed_step_equals_ordinary_steps")  # fmt: skip
HEADLINE_NETWORKS = ("inception_v3",)
DRY_ROUTES = ("reference", "no-such-route")
# fake ms per call in a dry run, by label (first match wins): ours twice as fast as eager, and so on
DRY_TIMES = {"@graph/": 0.25, "+compile/": 0.8, "/ours": 1.0, "/compile/": 1.5, "/eager/": 2.0}
OTHER_NETWORKS = ("googlenet", "inception_v4", "inception_resnet_v2")


# ------------------------------------------------------------------------------------------------ the record
class Record:
    """``gpu_check.json`` + ``gpu_check.md`` in ``out``, rewritten (atomically) on every update; the driver and the
    step subprocesses take turns, never at once."""

    def __init__(self, out: str):
        self.out = out
        self.json_path = os.path.join(out, "gpu_check.json")
        self.md_path = os.path.join(out, "gpu_check.md")
        self.log_path = os.path.join(out, "gpu_check.log")

    def load(self) -> dict:
        try:
            with open(self.json_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"meta": {}, "steps": {}}

    def save(self, blob: dict) -> None:
        from .report import write_json

        write_json(self.json_path + ".tmp", blob)
        os.replace(self.json_path + ".tmp", self.json_path)
        with open(self.md_path + ".tmp", "w") as f:
            f.write(render_md(blob))
        os.replace(self.md_path + ".tmp", self.md_path)

    def update(self, step: str | None = None, **fields) -> dict:
        blob = self.load()
        if step is None:
            blob.update(fields)
        else:
            blob.setdefault("steps", {}).setdefault(step, {}).update(fields)
        self.save(blob)
        return blob

    def log(self, msg: str) -> None:
        print(msg, flush=True)
        with open(self.log_path, "a") as f:
            f.write(msg + "\n")


# ------------------------------------------------------------------------------------------------ markdown
def render_md(blob: dict) -> str:
    from . import headline

    meta = blob.get("meta", {})
    fake = bool(meta.get("dry_run"))
    lines = ["# GPU check", ""]
    if fake:
        lines += ["**DRY RUN on the CPU: FAKE TIMES, toy sizes — no number here is a measurement.**", ""]
    stamp = ", ".join(f"{k} {meta.get(k)}" for k in ("date", "gpu_name", "driver", "python", "torch", "triton",
                                                       "torchvision", "timm", "git_commit") if k in meta)  # fmt: skip
    lines += [stamp, "", f"deadline {meta.get('deadline_s')} s, wall so far {_f(meta.get('wall_s'))} s", ""]
    lines += ["| step | status | wall s | limit s | note |", "|---|---|---:|---:|---|"]
    steps = blob.get("steps", {})
    for name in STEP_NAMES:
        s = steps.get(name, {})
        lines.append(f"| {name} | {s.get('status', 'not started')} | {_f(s.get('wall_s'))} | "
                     f"{_f(s.get('limit_s'))} | {s.get('note', '')} |")  # fmt: skip
    lines.append("")
    for name in STEP_NAMES:
        s = steps.get(name)
        if not s:
            continue
        title = next(st.title for st in STEPS if st.name == name)
        lines += [
            f"## {name}: {title}",
            "",
            f"status: {s.get('status')}" + (f" — {s['reason']}" if s.get("reason") else ""),
            "",
        ]
        if "pip" in s:
            lines += [f"pip install -e .: rc {s['pip'].get('rc')}", ""]
        if "versions" in s:
            lines += [
                "| component | version |",
                "|---|---|",
                *(f"| {k} | {v} |" for k, v in s["versions"].items()),
                "",
            ]
        for key in ("pytest", "smoke"):
            if key in s:
                lines += _pytest_md(s[key])
        for res in s.get("networks", {}).values():
            lines += headline.markdown(res, fake=fake)
        if "suite" in s:
            lines += [f"suite: {s['suite'].get('summary', '')} (details: suite/report.md)", ""]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return f"{v:.0f}" if isinstance(v, (int, float)) else "–"


def _pytest_md(p: dict) -> list[str]:
    c = p.get("counts") or {}
    desc = ", ".join(f"{v} {k}" for k, v in c.items()) or "no counts"
    out = [f"pytest rc {p.get('rc')}{' (collect only)' if p.get('collect_only') else ''}: {desc}"]
    out += [f"- FAILED {t}" for t in p.get("failed", [])]
    return [*out, ""]


# ------------------------------------------------------------------------------------------------ processes
def run_cmd(argv, timeout: float, rec: Record, env=None) -> dict:
    """Run ``argv`` in its own process group, its output into the log (and stdout), killed at ``timeout``."""
    t0 = time.perf_counter()
    rec.log(f"$ {shlex.join(argv)}   (limit {timeout:.0f} s)")
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)  # fmt: skip

    def pump():
        for line in proc.stdout:
            rec.log(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    return {"rc": proc.returncode, "timed_out": timed_out, "wall_s": time.perf_counter() - t0}


def parse_junit(path: str) -> tuple[dict, list[str]]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    failed = [f"{tc.get('classname')}::{tc.get('name')}" for tc in root.iter("testcase")
              if tc.find("failure") is not None or tc.find("error") is not None]  # fmt: skip
    return c, failed[:40]


def pytest_step(files, kexpr: str, timeout: float, rec: Record, *, collect_only: bool, workers: int) -> dict:
    """pytest on ``files`` selected by ``-k kexpr``; counts from its junit xml (or, collect-only, its output)."""
    tmp = tempfile.mkdtemp(prefix="gpu-check-")
    xml = os.path.join(tmp, "junit.xml")
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *files, "-k", kexpr]
    if collect_only:
        argv.append("--collect-only")
    else:
        argv.append(f"--junitxml={xml}")
        if workers > 1 and _importable("xdist"):
            argv += ["-n", str(workers)]
        if _importable("pytest_timeout"):
            argv += ["--timeout", "150"]
    env = dict(os.environ)
    env.setdefault("INCEPTION_KERNELS_TEST_SEED", str(int.from_bytes(os.urandom(3), "little")))
    before = _log_size(rec)
    r = run_cmd(argv, timeout, rec, env=env)
    res = {"rc": r["rc"], "timed_out": r["timed_out"], "wall_s": r["wall_s"], "collect_only": collect_only,
           "seed": env["INCEPTION_KERNELS_TEST_SEED"], "counts": {}, "failed": []}  # fmt: skip
    if collect_only:
        with open(rec.log_path, errors="replace") as f:
            f.seek(before)
            text = f.read()
        import re

        m = re.search(r"(\d+)(?:/\d+)? tests? collected", text) or re.search(r"(\d+) tests? collected", text)
        res["counts"] = {"collected": int(m.group(1))} if m else {}
    elif os.path.exists(xml):
        with contextlib.suppress(Exception):
            res["counts"], res["failed"] = parse_junit(xml)
    return res


def _log_size(rec: Record) -> int:
    try:
        return os.path.getsize(rec.log_path)
    except OSError:
        return 0


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def remaining_k() -> str:
    return f"not ({SMOKE_K})"


# ------------------------------------------------------------------------------------------------ the steps
def versions(dry: bool) -> dict:
    import torch

    from .env import _run, environment

    dev = torch.device("cuda" if (torch.cuda.is_available() and not dry) else "cpu")
    meta = environment(dev)
    for mod in ("torchvision", "timm", "inception_kernels"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            meta[mod] = f"import failed: {type(e).__name__}: {e}"[:200]
    meta["cuda_available"] = torch.cuda.is_available()
    smi = None if dry else _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                                 "--format=csv,noheader"])  # fmt: skip
    meta["nvidia_smi"] = smi
    return meta


def python_step(
    name: str, out: str, seconds: float, *, dry: bool, clock=None, routes=None, log=print
) -> float:
    """Run Python step ``name`` with ``seconds`` of budget, its results written into ``out``'s record as they
    come. Returns the seconds the step took by its clock (simulated under a fake clock)."""
    import torch

    from . import headline
    from .common import Budget, configure_dynamo, identity_compiler, torch_compiler
    from .timing import EventTimer, FakeTimer

    rec = Record(out)
    clock = clock or time.perf_counter
    t0 = clock()
    budget = Budget(seconds, clock)
    device = "cpu" if dry else "cuda"
    if name in ("headline", "networks"):
        configure_dynamo()
        if not dry:
            torch.set_float32_matmul_precision("high")
        plan = headline.PLANS["dry" if dry else "gpu"]
        timer = FakeTimer(DRY_TIMES) if dry else EventTimer(25.0, 200.0)
        compiler = identity_compiler if dry else torch_compiler
        # dry run: the reference backend as the working route and a route that does not exist (the
        # route-unavailable path); the GPU routes do not run on a CPU without the interpreter
        routes = tuple(routes or (DRY_ROUTES if dry else headline.ROUTES))
        nets = HEADLINE_NETWORKS if name == "headline" else OTHER_NETWORKS
        results: dict = {}
        for net in nets:

            def sink(res, net=net):
                results[net] = res
                rec.update(name, networks=results)

            with _backend_env("reference" if dry else None):
                headline.run_network(net, device, timer, plan=plan, routes=routes, compiler=compiler, budget=budget,
                                     clock=clock, sink=sink, log=log)  # fmt: skip
    elif name == "kernels":
        from .suite import PLANS, run_suite
        from .timing import GraphTimer

        suite_out = os.path.join(out, "suite")
        if dry:
            plan = dict(PLANS["tiny"], name="tiny")
            timers, compiler = [FakeTimer(), FakeTimer(kind="graph", ours_factor=0.4)], identity_compiler
        else:
            plan = dict(PLANS["quick"], name="gpu-check")
            left = max(budget.left() - 15.0, 10.0)  # 15 s for the ceilings and the writing
            plan["deadline_s"] = left
            plan["kernels"] = dict(plan["kernels"], budget_s=0.75 * left)
            plan["memops"] = dict(plan["memops"], budget_s=0.25 * left)
            timers, compiler = [EventTimer(*plan["event_ms"]), GraphTimer(plan["graph_ms"])], None
        with _backend_env("reference" if dry else None):
            res = run_suite(suite_out, plan=plan, device=device, timers=timers, compiler=compiler,
                            sections=("ceilings", "kernels"), plots=False, log=log)  # fmt: skip
        recs = res.get("kernels", [])
        st = [r["check"].get("status") for r in recs]
        skipped = sum(1 for r in recs if r.get("skipped"))
        summary = (f"{len(recs)} configurations: {st.count('PASS')} PASS, {st.count('FAIL')} FAIL, "
                   f"{st.count('ERROR')} ERROR, {skipped} with skips; copy "
                   f"{res.get('ceilings', {}).get('copy_gbs', 0):.0f} GB/s")  # fmt: skip
        rec.update(name, suite={"summary": summary, "folder": "suite", "n": len(recs),
                                "fail": st.count("FAIL") + st.count("ERROR")})  # fmt: skip
    else:
        raise ValueError(f"not a Python step: {name}")
    return clock() - t0


@contextlib.contextmanager
def _backend_env(value: str | None):
    if value is None:
        yield
        return
    old = os.environ.get("INCEPTION_KERNELS_BACKEND")
    os.environ["INCEPTION_KERNELS_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("INCEPTION_KERNELS_BACKEND", None)
        else:
            os.environ["INCEPTION_KERNELS_BACKEND"] = old


def step_failed(name: str, s: dict) -> bool:
    """Did a step that ran find a problem (a failed test, a failed correctness check, an error)?"""
    if s.get("status") in ("error", "timed out"):
        return True
    for key in ("smoke", "pytest"):
        p = s.get(key)
        if (
            p
            and not p.get("collect_only")
            and (p.get("rc") not in (0, 5) or p.get("counts", {}).get("failures"))
        ):
            return True
    for net in s.get("networks", {}).values():
        if str(net.get("status", "")).startswith("ERROR"):
            return True
        for r in net.get("rows", {}).values():
            if any(r[c].get("status") in ("FAIL", "ERROR") for c in ("check_eval", "check_train")):
                return True
    return bool(s.get("suite", {}).get("fail"))


# ------------------------------------------------------------------------------------------------ the driver
def run_check(out: str, *, dry: bool = False, deadline_s: float = DEADLINE_S, t0: float | None = None,
              steps=STEP_NAMES, pip_rc: int | None = None, clock=None, runners=None, workers: int = 8,
              routes=None) -> dict:  # fmt: skip
    """Run the steps in order within ``deadline_s`` of ``t0`` (epoch seconds; default now). ``runners``
    (tests): ``{step: f(limit_s) -> simulated seconds}`` replacing a step's body."""
    from .timing import FakeClock

    os.makedirs(out, exist_ok=True)
    rec = Record(out)
    if dry and clock is None:
        clock = FakeClock()
    fake = isinstance(clock, FakeClock)
    start = clock() if fake else (t0 if t0 is not None else time.time())
    now = clock if fake else time.time
    rec.save({"meta": {"deadline_s": deadline_s, "dry_run": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
              "steps": {}})  # fmt: skip
    rec.log(
        f"== gpu check ({'DRY RUN, fake clock' if dry else 'GPU'}), deadline {deadline_s:.0f} s, out {out}"
    )
    runners = dict(runners or {})
    for st in STEPS:
        if st.name not in steps:
            rec.update(st.name, status="not requested")
            continue
        left = deadline_s - (now() - start) - RESERVE_S
        limit = min(st.max_s, left)
        if limit < st.min_s:
            reason = f"would not fit: needs >= {st.min_s:.0f} s, {max(left, 0):.0f} s left of the {deadline_s:.0f} s deadline"
            rec.update(st.name, status="skipped", reason=reason, limit_s=max(limit, 0))
            rec.log(f"== [{now() - start:.0f}s] {st.name}: skipped ({reason})")
            continue
        rec.log(f"== [{now() - start:.0f}s] {st.name}: {st.title} (limit {limit:.0f} s)")
        rec.update(st.name, status="running", limit_s=limit)
        ts = now()
        status, note = "ok", ""
        try:
            if st.name in runners:
                sim = runners[st.name](limit)
            else:
                sim = _run_step(st, out, limit, rec, dry=dry, clock=clock, pip_rc=pip_rc, workers=workers,
                                routes=routes)  # fmt: skip
            if isinstance(sim, dict):
                status, note, sim = sim.get("status", "ok"), sim.get("note", ""), sim.get("sim_s", 0.0)
        except Exception as e:  # noqa: BLE001 - recorded, the next step goes on
            status, note, sim = "error", f"{type(e).__name__}: {e}"[:300], 0.0
            rec.log(f"!! {st.name}: {note}")
        if fake:  # simulated GPU time: a test's runner says it, the pytest steps have theirs (dry_s); the
            # Python steps of a dry run move the clock themselves
            sim_s = sim if st.name in runners else st.dry_s
            clock.advance(min(float(sim_s or 0.0), limit))
        wall = now() - ts
        s = rec.load()["steps"].get(st.name, {})
        if status == "ok" and step_failed(st.name, {**s, "status": status}):
            status = "problems found"
        rec.update(st.name, status=status, note=note, wall_s=wall)
        blob = rec.update(None, meta={**rec.load()["meta"], "wall_s": now() - start})
    blob = rec.load()
    failed = [
        n for n, s in blob["steps"].items() if s.get("status") in ("error", "timed out", "problems found")
    ]
    rec.update(None, meta={**blob["meta"], "wall_s": now() - start}, failed_steps=failed)
    rec.log(f"== done in {now() - start:.0f} s; steps with problems: {failed or 'none'}; {rec.md_path}")
    return rec.load()


def _run_step(st: Step, out: str, limit: float, rec: Record, *, dry: bool, clock, pip_rc, workers, routes):
    t_step = time.perf_counter()
    if st.name == "setup":
        v = versions(dry)
        rec.update(None, meta={**rec.load()["meta"], **{k: v.get(k) for k in (
            "date", "gpu_name", "driver", "python", "torch", "triton", "torchvision", "timm", "git_commit")}})  # fmt: skip
        keys = (
            "python",
            "torch",
            "cuda",
            "cudnn",
            "triton",
            "torchvision",
            "timm",
            "inception_kernels",
            "gpu_name",
            "gpu_sms",
            "gpu_mem_gib",
            "driver",
            "nvidia_smi",
            "cuda_available",
            "git_commit",
            "git_dirty",
        )
        pip = {"rc": pip_rc}
        with contextlib.suppress(OSError):  # written by gpu_check.sh (pip_rc is None when it did not run)
            if pip_rc is None:
                raise OSError
            with open(PIP_LOG, errors="replace") as f:
                pip["tail"] = f.read().strip().splitlines()[-5:]
        rec.update("setup", versions={k: v.get(k) for k in keys}, pip=pip)
        if not dry and not v["cuda_available"]:
            return {"status": "error", "note": "no CUDA GPU visible to torch"}
        smoke = pytest_step(
            SMOKE_FILES,
            SMOKE_K,
            max(limit - (time.perf_counter() - t_step), 10.0),
            rec,
            collect_only=dry,
            workers=min(workers, 4),
        )
        rec.update("setup", smoke=smoke)
        if smoke["timed_out"]:
            return {"status": "timed out", "note": "smoke tests"}
        return 0.0
    if st.name == "tests":
        # a dry run collects one file: enough to show that the selection works
        files = SMOKE_FILES[-1:] if dry else ("tests", "--ignore=tests/test_aot.py")
        res = pytest_step(files, remaining_k(), limit, rec, collect_only=dry, workers=workers)
        rec.update("tests", pytest={**res, "files": list(files)})
        return {"status": "timed out", "note": "partial"} if res["timed_out"] else 0.0
    # Python steps: in this process under a dry run, else in a subprocess killed at the limit
    if (
        dry and st.name != "kernels"
    ):  # the kernel step runs as a subprocess in a dry run too (that path, tested)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # toy sizes: intra-op threads only thrash (20x slower on a loaded 2-core CI box)
        try:
            return python_step(st.name, out, limit, dry=True, clock=clock, routes=routes, log=rec.log)
        finally:
            torch.set_num_threads(threads)
    argv = [
        sys.executable,
        "-m",
        "inception_kernels.bench.gpucheck",
        "--out",
        out,
        "--step",
        st.name,
        "--step-seconds",
        f"{limit - 25:.0f}",
    ]  # 25 s of the limit: start-up, imports, CUDA init, teardown
    if routes:
        argv += ["--routes", *routes]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry:
        argv.append("--dry-run")
        env["OMP_NUM_THREADS"] = "1"
    r = run_cmd(argv, limit, rec, env=env)
    if r["timed_out"]:
        return {"status": "timed out", "note": f"killed at {limit:.0f} s (rows written so far kept)"}
    if r["rc"] != 0:
        return {"status": "error", "note": f"rc {r['rc']} (see gpu_check.log)"}
    return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m inception_kernels.bench.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", help="output folder (default $OUT, else benchmarks/results/gpu-check-<date>)")
    p.add_argument("--dry-run", action="store_true", help="CPU: every step's code path, fake clock and times")
    p.add_argument("--deadline", type=float, default=None, help=f"seconds in all (default {DEADLINE_S:.0f})")
    p.add_argument(
        "--t0", type=float, default=None, help="epoch seconds the deadline counts from (default now)"
    )
    p.add_argument("--pip-rc", type=int, default=None, help="exit status of the shell script's pip install")
    p.add_argument("--steps", nargs="+", default=list(STEP_NAMES), choices=STEP_NAMES)
    p.add_argument("--routes", nargs="+", default=None, help="INCEPTION_KERNELS_BACKEND values for ours")
    p.add_argument("--workers", type=int, default=int(os.environ.get("TEST_WORKERS", "8")))
    p.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)  # internal: one Python step
    p.add_argument("--step-seconds", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    out = (
        a.out
        or os.environ.get("OUT")
        or os.path.join(REPO_ROOT, "benchmarks", "results", f"gpu-check-{time.strftime('%Y-%m-%d')}")
    )
    if a.step:
        # a step subprocess prints; the driver copies its output into the log
        python_step(a.step, out, a.step_seconds or 120.0, dry=a.dry_run, routes=a.routes, log=print)
        return 0
    deadline = a.deadline if a.deadline is not None else float(os.environ.get("DEADLINE", DEADLINE_S))
    if a.dry_run and a.deadline is None:  # every step runs (the driver's skips have their own test)
        deadline = sum(st.max_s for st in STEPS) + RESERVE_S
    blob = run_check(out, dry=a.dry_run, deadline_s=deadline, t0=a.t0, steps=a.steps, pip_rc=a.pip_rc,
                     workers=a.workers, routes=a.routes)  # fmt: skip
    return 1 if blob.get("failed_steps") else 0


if __name__ == "__main__":
    sys.exit(main())
