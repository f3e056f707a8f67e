"""Writing results: ``results.json``, ``report.md`` (ratio tables: ours ÷ baseline *speed*, i.e. baseline time ÷
our time, higher is better) and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
import os

from .common import geomean

FAIL = "🔴 **FAIL**"
ERROR = "🔴 **ERROR**"


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    return str(o)  # dtypes, devices


def write_json(path: str, blob: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(blob), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _fx(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _f(v, fmt=".1f") -> str:
    return "—" if v is None else format(v, fmt)


def _status_cell(check: dict) -> str:
    st = check.get("status", "?")
    return {"PASS": "PASS", "FAIL": FAIL, "ERROR": ERROR}.get(st, st)


def _stamp(meta: dict) -> str:
    gpu = meta.get("gpu_name") or f"no GPU ({meta.get('cpu') or 'CPU'})"
    commit = (meta.get("git_commit") or "unknown")[:12] + (" (dirty)" if meta.get("git_dirty") else "")
    return (f"{gpu}, driver {meta.get('driver') or '—'}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
            f"CUDA {meta.get('cuda') or '—'}, cuDNN {meta.get('cudnn') or '—'}, git {commit}, {meta.get('date')}")  # fmt: skip


# ==========================================================================================================
# Static report
# ==========================================================================================================
def _mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def render_static(results: dict, plot_files=()) -> str:
    meta, spec = results["meta"], results["meta"]["spec"]
    nets = results["networks"]
    L = [f"# Static report — {spec['name']} roofline — {meta['date'][:10]}", ""]
    L.append(f"Generated on the CPU by `inception-kernels bench --static` ({meta.get('total_wall_s', 0):.0f} s): "
             f"{_stamp(meta)}. No GPU was used; no time in this report is a measurement.")  # fmt: skip
    L.append("")
    L.append(
        f"Floors: {spec['bf16_tflops']:g} TFLOP/s dense bf16, {spec['bandwidth_tbs']:g} TB/s; minimal bytes in bf16 "
        "(each layer reads its input and weights once and writes its output once; BN, ReLU and concat fused away, "
        "a residual sum reads the residual once). A network's floor is the sum of its layers' "
        "`max(2·MACs/peak, bytes/bandwidth)`. Launches: ours = our kernels + the ATen ops that run besides them "
        "(pools, head, input layout), eval forward; eager = kernel-launching ATen ops of the torchvision / timm "
        "model, eval forward in fp32 (bf16 autocast adds one weight cast per conv/linear). Saved activations: "
        "bytes the autograd graph of one training forward holds (unique storages, parameters excluded) per image, "
        "fp32 (bf16 halves both). Ratios: reference ÷ ours, higher is better."
    )
    L.append("")
    L.append("| network | input | params | GMACs | min MB/img | weights MB | launches ours | eager ops | "
             "ops ratio | saved MiB/img ours | saved MiB/img ref | memory ratio |")  # fmt: skip
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in nets:
        so, sr = r["saved_activation_bytes_per_image"], r["reference_saved_activation_bytes_per_image"]
        L.append(
            f"| {r['name']} | {r['input_size']}² | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e9:.2f} | "
            f"{r['min_bytes_per_image'] / 1e6:.1f} | {r['weight_bytes'] / 1e6:.1f} | {r['launches_per_forward']} | "
            f"{r['eager_ops_per_forward']} | {r['eager_ops_per_forward'] / r['launches_per_forward']:.2f}× | "
            f"{_mib(so)} | {_mib(sr)} | {sr / so if so else float('nan'):.2f}× |"
        )
    L.append("")
    L.append(f"## Roofline floors ({spec['name']})")
    L.append("")
    batches = list(nets[0]["floors"]) if nets else []
    L.append("| network | " + " | ".join(f"batch {b}: floor µs (bound) | max img/s" for b in batches) + " |")
    L.append("|---|" + "---:|---:|" * len(batches))
    for r in nets:
        cells = []
        for b in batches:
            f = r["floors"][b]
            cells += [f"{f['floor_us']:.0f} ({f['bound']})", f"{f['max_img_s']:,.0f}"]
        L.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Our kernel launches / other ATen ops per eval forward: " + "; ".join(
        f"{r['name']} {r['our_kernel_launches']} + {r['launches_per_forward'] - r['our_kernel_launches']} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(r['other_ops_per_forward'].items()))})" for r in nets) + ".")  # fmt: skip
    L.append("")
    for png in (os.path.basename(p) for p in plot_files):
        L += [f"![{png[:-4]}]({png})", ""]
    for r in nets:
        L.append(f"<details><summary>{r['name']}: {len(r['layers'])} layers (MACs and minimal bytes at batch 1, bf16)"
                 "</summary>")  # fmt: skip
        L.append("")
        L.append("| layer | op | output | MMACs | act KB | weight KB | FLOP/byte @ b32 |")
        L.append("|---|---|---|---:|---:|---:|---:|")
        for ly in r["layers"]:
            b32 = (32 * ly["act_elems"] + ly["weight_elems"]) * 2
            ai = 2 * ly["macs"] * 32 / b32 if b32 else 0
            L.append(f"| {ly['name']} | {ly['op']} | {'×'.join(map(str, ly['out_shape'][1:]))} | "
                     f"{ly['macs'] / 1e6:.1f} | {ly['act_elems'] * 2 / 1e3:.1f} | {ly['weight_elems'] * 2 / 1e3:.1f} | "
                     f"{ai:.0f} |")  # fmt: skip
        L.append("")
        L.append("</details>")
        L.append("")
    aot = results.get("aot")
    if aot:
        rows = aot["rows"]
        bad = [r for r in rows if not r.get("ok")]
        spills = [r for r in rows if (r.get("spill_bytes") or 0) > 0]
        L.append(
            f"## AOT resource table (sm_{', sm_'.join(map(str, aot['arches']))}; {', '.join(aot['dtypes'])})"
        )
        L.append("")
        L.append(f"{len(rows)} kernel × config × arch × dtype compiles in {aot['seconds']:.0f} s: "
                 f"{len(bad)} failed, {len(spills)} with spills; max registers "
                 f"{max((r.get('registers') or 0) for r in rows)}, max shared memory "
                 f"{max((r.get('shared_bytes') or 0) for r in rows)} B. `mma` counts HMMA/HGMMA lines in the SASS.")  # fmt: skip
        L.append("")
        L.append("| kernel | config | arch | dtype | regs | spill B | shared B | mma | ok |")
        L.append("|---|---|---|---|---:|---:|---:|---:|---|")
        for r in rows:
            L.append(f"| {r['kernel']} | {r['config']} | sm_{r['arch']} | {r['dtype']} | {_f(r.get('registers'), 'd')} | "
                     f"{_f(r.get('spill_bytes'), 'd')} | {_f(r.get('shared_bytes'), 'd')} | "
                     f"{_f(r.get('mma_instructions'), 'd')} | {'ok' if r.get('ok') else FAIL + ' ' + str(r.get('error'))} |")  # fmt: skip
        L.append("")
    return "\n".join(L)


def write_static(out_dir: str, results: dict, plots: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    files = []
    if plots:
        from . import plots as P

        files = P.static_plots(out_dir, results)
    write_json(os.path.join(out_dir, "results.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_static(results, files) + "\n")
    return [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md"), *files]


# ==========================================================================================================
# GPU suite report
# ==========================================================================================================
SECTION_TITLES = {"kernels": "Kernels: every fused op on Inception's layer shapes (conv2d; pool2d, batch_norm_act, "
                             "scaled_residual)",
                  "blocks": "Blocks: fused block engine vs the torchvision / timm module",
                  "networks": "Networks"}  # fmt: skip


def _row_key(rec: dict) -> str:
    p = rec["params"]
    return " ".join(f"{k}={v}" for k, v in p.items() if k not in ("spec", "source", "input_sets"))


def _pairs_passes(recs):
    cols = []
    for r in recs:
        for pair, by_pass in r.get("ratios", {}).items():
            for p in by_pass:
                if (pair, p) not in cols:
                    cols.append((pair, p))
    return cols


def ratio_table(recs: list[dict]) -> list[str]:
    cols = _pairs_passes(recs)
    if not cols:
        return ["(no ratios)"]
    L = ["| config | check | " + " | ".join(f"{p}: {pair.replace('_vs_', ' vs ')}" for pair, p in cols) + " |",
         "|---|---|" + "---:|" * len(cols)]  # fmt: skip
    for r in recs:
        if r.get("skipped", {}).get("all"):
            L.append(f"| {r['name']} {_row_key(r)} | skipped: {r['skipped']['all']} |" + " |" * len(cols))
            continue
        vals = [r.get("ratios", {}).get(pair, {}).get(p) for pair, p in cols]
        L.append(
            f"| {r['name']} {_row_key(r)} | {_status_cell(r['check'])} | "
            + " | ".join(_fx(v) for v in vals)
            + " |"
        )
    gm = [geomean([r.get("ratios", {}).get(pair, {}).get(p) for r in recs]) for pair, p in cols]
    L.append("| **geomean** | | " + " | ".join(_fx(v) for v in gm) + " |")
    return L


def absolute_table(recs: list[dict]) -> list[str]:
    L = ["| config | impl | pass | ms | spread | img/s | peak MiB | TFLOP/s | % peak | GB/s | % copy BW |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in recs:
        for impl, passes in r.get("times", {}).items():
            for p, t in passes.items():
                head = f"| {r['name']} {_row_key(r)} | {impl} | {p} |"
                if "error" in t:
                    L.append(f"{head} error: {t['error'][:160]} | | | | | | | |")
                    continue
                if "ms" not in t:
                    L.append(f"{head} {t.get('excluded', '—')} | | | | | | | |")
                    continue
                L.append(
                    f"{head} {t['ms']:.3f} | {_f(t.get('spread_pct'))}% | "
                    f"{_f(r.get('img_s', {}).get(impl, {}).get(p), ',.0f')} | "
                    f"{_f(r.get('memory', {}).get(impl, {}).get(p), ',.0f')} | "
                    f"{_f(r.get('tflops', {}).get(impl, {}).get(p))} | {_f(r.get('pct_peak', {}).get(impl, {}).get(p))} | "
                    f"{_f(r.get('gbs', {}).get(impl, {}).get(p), ',.0f')} | {_f(r.get('pct_bw', {}).get(impl, {}).get(p))} |"
                )
    return L


def problems(results: dict) -> list[str]:
    L = []
    for sec in ("kernels", "blocks", "networks"):
        for r in results.get(sec, []):
            st = r["check"].get("status")
            if st in ("FAIL", "ERROR"):
                L.append(f"- {FAIL if st == 'FAIL' else ERROR} {sec} `{r['name']}` {_row_key(r)}: "
                         f"{r['check'].get('error', '')} — excluded from every ratio")  # fmt: skip
            for b, c in r.get("baseline_checks", {}).items():
                if c.get("status") not in (None, "PASS"):
                    L.append(f"- baseline {b} {c['status']} ({sec} `{r['name']}` {_row_key(r)}): "
                             f"{str(c.get('error', ''))[:200]}")  # fmt: skip
            for what, why in r.get("skipped", {}).items():
                L.append(f"- skipped {sec} `{r['name']}` {_row_key(r)} {what}: {why}")
    return L


def render_gpu(results: dict, plot_files=()) -> str:
    meta = results["meta"]
    title = meta.get("gpu_name") or "no GPU"
    L = [f"# Benchmark suite — {title} — {str(meta.get('date'))[:10]}", ""]
    if meta.get("fake_timer"):
        L += ["> **FAKE TIMES.** This report was produced by the fake timing backend (structure test / dry run); "
              "no number in it is a measurement.", ""]  # fmt: skip
    L.append(
        f"{_stamp(meta)}. Mode: {meta.get('mode')}; timer: {meta.get('timer')}; wall {meta.get('total_wall_s', 0):.0f} s."
    )
    L.append("")
    L.append(
        "Ratios are ours ÷ baseline in speed (baseline time ÷ our time): **higher is better**, > 1 means ours is "
        "faster. Each time is the mean of 2 rounds (spread = (max−min)/min), each round the median of many calls "
        "after warm-up, rotating over ≥ 3 input sets when one set is < 100 MB. `@graph`: CUDA-graph replay (GPU "
        "time without host overhead). A configuration whose correctness check failed gets no speed figure."
    )
    L.append("")
    c = results.get("ceilings")
    if c:
        L += ["## Ceilings (measured in this run)", "",
              "| copy bandwidth GB/s (read + write) | bf16 matmul TFLOP/s |", "|---:|---:|",
              f"| {_f(c.get('copy_gbs'), ',.0f')} | {_f(c.get('bf16_tflops'))} |", ""]  # fmt: skip
    if any(results.get(sec) for sec in ("kernels", "blocks", "networks")):
        L += ["## Summary", "", summary_markdown(results), ""]
    probs = problems(results)
    if probs:
        L += ["## Failures, errors and skipped items", ""] + probs + [""]
    for sec in ("kernels", "blocks", "networks"):
        recs = results.get(sec)
        if not recs:
            continue
        L += [f"## {SECTION_TITLES[sec]}", "", "### Speed ratios (ours ÷ baseline, higher is better)", ""]
        L += ratio_table(recs) + [""]
        png = f"speedup_{sec}.png"
        if png in {os.path.basename(p) for p in plot_files}:
            L += [f"![{sec} speed-up]({png})", ""]
        L += ["### Absolute numbers", ""] + absolute_table(recs) + [""]
    if "roofline.png" in {os.path.basename(p) for p in plot_files}:
        L += ["## Roofline (kernels, ours, measured ceilings)", "", "![roofline](roofline.png)", ""]
    return "\n".join(L)


def write_gpu(out_dir: str, results: dict, plots: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    files = []
    if plots:
        from . import plots as P

        files = P.gpu_plots(out_dir, results)
    write_json(os.path.join(out_dir, "results.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_gpu(results, files) + "\n")
    return [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md"), *files]


# ==========================================================================================================
# README summary
# ==========================================================================================================
def summary_markdown(results: dict, folder: str = "") -> str:
    """A short table for the README: the static per-network figures, or the GPU suite's geometric-mean ratios per
    section and baseline (ours ÷ baseline speed, higher is better), with the stamp."""
    meta = results["meta"]
    if meta.get("mode") == "static":
        L = ["| network | GMACs | launches ours / eager ops | saved MiB/img ours / reference | floor µs b1 / b256 |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in results["networks"]:
            f = r["floors"]
            L.append(f"| {r['name']} {r['input_size']}² | {r['macs'] / 1e9:.2f} | {r['launches_per_forward']} / "
                     f"{r['eager_ops_per_forward']} | {_mib(r['saved_activation_bytes_per_image'])} / "
                     f"{_mib(r['reference_saved_activation_bytes_per_image'])} | {f['1']['floor_us']:.0f} / "
                     f"{f['256']['floor_us']:.0f} |")  # fmt: skip
        L.append("")
        L.append(f"`bench --static`, git {(meta.get('git_commit') or '?')[:7]}, {meta['date'][:10]}; saved bytes fp32; "
                 f"floors for {meta['spec']['name']}.")  # fmt: skip
        return "\n".join(L)
    base_label = {"cudnn": "eager / cuDNN", "eager": "eager / cuDNN", "eager_cl": "eager / cuDNN",
                  "eager_nchw": "eager NCHW", "compile": "torch.compile", "compile_max": "max-autotune"}  # fmt: skip
    cols = ["eager / cuDNN", "eager NCHW", "torch.compile", "max-autotune"]
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for sec in ("kernels", "blocks", "networks"):
        for r in results.get(sec, []):
            sub = sec
            if sec == "kernels":
                sub = "kernels: conv2d" if "op" not in r["params"] else "kernels: pool / BN / residual"
            elif sec == "networks":
                sub = f"networks: {r['params'].get('mode')}"
            for pair, by_pass in r.get("ratios", {}).items():
                ours, base = pair.split("_vs_")
                timing = "CUDA-graph replay" if "@graph" in ours else "latency"
                for p, v in by_pass.items():
                    key = (sub if sec == "networks" else f"{sub}, {p}", timing)
                    groups.setdefault(key, {}).setdefault(base_label[base.split("@")[0]], []).append(v)
    L = ["| section, pass | ours timed as | " + " | ".join(f"vs {c}" for c in cols) + " |",
         "|---|---|" + "---:|" * len(cols)]  # fmt: skip
    for (sub, timing), g in groups.items():
        if all(geomean(g.get(c, [])) is None for c in cols):
            continue
        L.append(f"| {sub} | {timing} | " + " | ".join(_fx(geomean(g.get(c, []))) for c in cols) + " |")
    L.append("")
    fails = sum(r["check"].get("status") in ("FAIL", "ERROR") for s in ("kernels", "blocks", "networks")
                for r in results.get(s, []))  # fmt: skip
    L.append(f"Geometric means of ours ÷ baseline speed (higher is better); {meta.get('gpu_name')}, "
             f"{str(meta.get('date'))[:10]}, torch {meta.get('torch')}, triton {meta.get('triton')}, git "
             f"{(meta.get('git_commit') or '?')[:7]}; {fails} configuration(s) failed their correctness check "
             f"and are excluded. CUDA-graph replay: kernels compare replay with replay (GPU time); networks compare "
             f"ours replayed with the baselines' per-call latency. Full report: `{folder or 'report.md'}`.")  # fmt: skip
    if meta.get("fake_timer"):
        L.append("**FAKE TIMES (structure test): not measurements.**")
    return "\n".join(L)


def main(argv=None) -> int:
    """``python -m inception_kernels.bench.report DIR``: print the README summary of DIR/results.json."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("folder")
    args = ap.parse_args(argv)
    with open(os.path.join(args.folder, "results.json")) as f:
        print(summary_markdown(json.load(f), os.path.join(args.folder, "report.md")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
