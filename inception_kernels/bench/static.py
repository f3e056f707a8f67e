"""``inception-kernels bench --static``: what can be known about the networks without a GPU.

Per network (googlenet 224², inception_v3 / inception_v4 / inception_resnet_v2 299²):

* multiply-adds and minimal bytes per layer and in total (:func:`.counting.layer_profile`; bf16 activations and
  weights, every activation written once and read once per consumer layer, BN / ReLU / concat fused away);
* the roofline floors for a GPU spec (default H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s) at batch 1, 32, 256:
  ``max(2·MACs / peak, bytes / bandwidth)`` and the img/s it caps;
* kernel launches per eval forward: ours (our kernels + the ATen ops that run besides, on the fused path walked
  with stubbed launches) vs the kernel-launching ATen ops of the torchvision / timm model in eager fp32 (bf16
  autocast adds one weight cast per conv and linear);
* saved-activation bytes per image of a training step, ours (fused path) vs torchvision / timm, fp32 (bf16 halves
  both): :func:`.memory.saved_activation_bytes_per_image`;
* the AOT resource table of every kernel x config (:mod:`inception_kernels.aot`), by default for sm_90 in bf16
  (the H100 fast path; ~1.5 s per compile on 2 cores without a Triton cache, so the full sm_80/sm_90 x fp32/bf16/fp16
  table -- ``--aot-arch 80 90 --aot-dtype fp32 bf16 fp16`` or ``inception-kernels check`` -- takes minutes).

Everything but the AOT compiles runs on the ``meta`` device or on batch-1/2 CPU tensors whose convolutions are not
executed, so the whole report takes seconds plus the compiles.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from . import zoo
from .counting import count_eager_ops, count_our_launches, layer_profile, stubbed_launches
from .memory import saved_activation_bytes_per_image


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float  # dense tensor-core peak, TFLOP/s
    bandwidth_tbs: float  # DRAM bandwidth, TB/s


H100 = GPUSpec("H100 SXM (datasheet)", 989.0, 3.35)
FLOOR_BATCHES = (1, 32, 256)
ELEM_BYTES = 2  # bf16


def roofline_floors(layers, spec: GPUSpec, batches=FLOOR_BATCHES, elem_bytes: int = ELEM_BYTES) -> dict:
    """{batch: {compute_us, memory_us, floor_us, bound, max_img_s}} for one forward of ``batch`` images, the
    layers executed back to back (each layer's floor is the larger of its two; the network floor is their sum)."""
    out = {}
    for n in batches:
        comp = mem = floor = 0.0
        for layer in layers:
            c = 2 * layer.macs * n / (spec.bf16_tflops * 1e12)
            m = layer.bytes(n, elem_bytes) / (spec.bandwidth_tbs * 1e12)
            comp, mem, floor = comp + c, mem + m, floor + max(c, m)
        out[n] = {
            "compute_us": comp * 1e6,
            "memory_us": mem * 1e6,
            "floor_us": floor * 1e6,
            "bound": "compute" if comp >= mem else "memory",
            "max_img_s": n / floor if floor > 0 else None,
        }
    return out


def analyze_network(name: str, spec: GPUSpec = H100, input_size: int | None = None) -> dict:
    """The static record of one network (see the module docstring)."""
    t0 = time.perf_counter()
    size = input_size or zoo.native_size(name)
    ref = zoo.reference_model(name, "meta").eval()
    ours_meta = zoo.our_model(name, "meta")
    layers = layer_profile(ours_meta, size)
    macs = sum(layer.macs for layer in layers)
    eager = count_eager_ops(ref, torch.empty(1, 3, size, size, device="meta"))

    ours = ours_meta.to_empty(device="cpu")  # uninitialized weights: only the structure is used
    ours.eval()
    launches = count_our_launches(ours, torch.zeros(1, 3, size, size))

    def images(n, device):
        return lambda k: torch.zeros(k, 3, size, size, device=device)

    ours.train()
    with stubbed_launches():
        saved_ours = saved_activation_bytes_per_image(ours, images(1, "cpu"))
    ref.train()
    saved_ref = saved_activation_bytes_per_image(ref, images(1, "meta"))

    act_bytes = sum(layer.act_elems for layer in layers) * ELEM_BYTES
    weight_bytes = sum(layer.weight_elems for layer in layers) * ELEM_BYTES
    return {
        "name": name,
        "input_size": size,
        "reference": f"{zoo.NETWORKS[name][0]}.{zoo.NETWORKS[name][1]}",
        "macs": macs,
        "flops": 2 * macs,
        "params": zoo.n_params(ref),
        "min_bytes_per_image": act_bytes,
        "weight_bytes": weight_bytes,
        "launches_per_forward": launches["total"],
        "our_kernel_launches": launches["our_kernels"],
        "other_ops_per_forward": launches["other_ops"],
        "eager_ops_per_forward": int(sum(eager.values())),
        "eager_ops": dict(eager),
        "saved_activation_bytes_per_image": saved_ours,
        "reference_saved_activation_bytes_per_image": saved_ref,
        "floors": {str(k): v for k, v in roofline_floors(layers, spec).items()},
        "layers": [layer.as_dict() for layer in layers],
        "seconds": time.perf_counter() - t0,
    }


def run_static(
    out_dir: str | None = None,
    networks=tuple(zoo.NETWORKS),
    spec: GPUSpec = H100,
    aot_arches=(90,),
    aot_dtypes=("bf16",),
    aot: bool = True,
    aot_filter: str | None = None,
    plots: bool = True,
    log=print,
) -> dict:
    """Analyze ``networks``, compile the AOT table, and (with ``out_dir``) write ``results.json``, ``report.md``
    and the plots there. Returns the results dict."""
    from . import report
    from .env import environment

    t0 = time.perf_counter()
    results = {
        "meta": {**environment(None), "mode": "static", "spec": asdict(spec), "elem_bytes": ELEM_BYTES},
        "networks": [],
    }
    for name in networks:
        rec = analyze_network(name, spec)
        results["networks"].append(rec)
        log(
            f"static: {name} {rec['macs'] / 1e9:.2f} GMAC, launches {rec['launches_per_forward']} vs eager "
            f"{rec['eager_ops_per_forward']} ops, saved {rec['saved_activation_bytes_per_image'] / 2**20:.1f} vs "
            f"{rec['reference_saved_activation_bytes_per_image'] / 2**20:.1f} MiB/img ({rec['seconds']:.1f} s)"
        )
    if aot:
        from .. import aot as aot_mod

        t1 = time.perf_counter()
        rows = aot_mod.compile_all(arches=tuple(aot_arches), dtypes=tuple(aot_dtypes), name_filter=aot_filter)
        results["aot"] = {
            "arches": list(aot_arches),
            "dtypes": list(aot_dtypes),
            "filter": aot_filter,
            "seconds": time.perf_counter() - t1,
            "rows": [{k: r.get(k) for k in aot_mod.FIELDS} for r in rows],
        }
        log(f"static: AOT table {len(rows)} compiles ({results['aot']['seconds']:.0f} s)")
    results["meta"]["total_wall_s"] = time.perf_counter() - t0
    if out_dir is not None:
        report.write_static(out_dir, results, plots=plots)
    return results
