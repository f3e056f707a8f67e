"""Block benchmark: one block of each family, fused (our block engine) vs the torchvision / timm module in eager
(channels_last, bf16 autocast) and under ``torch.compile`` (default, max-autotune), eval and train.

Blocks (``zoo.BLOCKS``): Inception-v3 ``Mixed_6b`` (17×17, 768 ch), Inception-v4 Inception-B (``features.11``,
17×17, 1024 ch), Inception-ResNet-v2 Block17 (``repeat_1.0``, 17×17, 1088 ch). Both modules are built on the
``meta`` device from their network, materialized on the target device and given the same random weights and BN
statistics (ours loads the reference's state dict). Ours runs in bf16 weights and activations; the references in
fp32 weights under bf16 autocast.

Passes: ``eval`` -- forward without autograd, eval mode (BN folded in ours); ``train`` -- forward + backward of the
input and every parameter, train mode (batch statistics). Correctness: eval output, and in train the output and
the input gradient, against the fp32 reference module: rel. error <= max(3e-2 (5e-2 for the input gradient), 2× the
error of the reference module itself under bf16 autocast) -- the flash-attention rule.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn as nn

from ..utils import count_macs, rel_err
from . import zoo
from .common import COMPILE_MODES, Budget, autocast, finalize, identity_compiler, new_record, reset_dynamo
from .kernels import progress
from .timing import Rotator, check_error, check_result, measure, num_sets, sync, tolerances

PASSES = ("eval", "train")
BASELINES = ("eager", "compile", "compile_max")
THRESHOLDS = {"eval_y": 3e-2, "train_y": 3e-2, "train_dx": 5e-2}


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights (He-normal convs), BN affine and running statistics near identity."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


def block_pair(label: str, device) -> tuple[nn.Module, nn.Module]:
    """(ours, reference) for a ``zoo.BLOCKS`` label, same weights, on ``device``."""
    net, path, _, _ = zoo.BLOCKS[label]
    ref = zoo.reference_model(net, "meta").get_submodule(path)
    ref = randomize_(ref.to_empty(device=device))
    ours = zoo.our_model(net, "meta").get_submodule(path).to_empty(device=device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def bench_block(label: str, device, timers, *, batch: int = 32, size: int | None = None,
                impls=("ours", "eager", "compile"), compiler=None, rounds: int = 2, ceilings=None,
                ours_dtype=torch.bfloat16) -> dict:  # fmt: skip
    compiler = compiler or identity_compiler
    reset_dynamo()
    net, path, cin, native = zoo.BLOCKS[label]
    hw = size or native
    dev = torch.device(device)
    cl = torch.channels_last
    t0 = time.perf_counter()
    ours, ref = block_pair(label, dev)
    ours = ours.to(ours_dtype).to(memory_format=cl)  # channels_last weights, as the eager rows: read as they are
    ref_cl = copy.deepcopy(ref).to(memory_format=cl)
    x0 = torch.randn(batch, cin, hw, hw, device=dev).contiguous(memory_format=cl)
    macs = count_macs(ref, x0.shape[-2:], in_channels=cin)
    rec = new_record("blocks", label, {"batch": batch, "hw": hw, "source": f"{zoo.NETWORKS[net][0]} {net}.{path}"},
                     flops={"eval": 2 * macs * batch, "train": 6 * macs * batch}, items=batch)  # fmt: skip
    set_bytes = 2 * x0.numel() * 2
    k_sets = num_sets(set_bytes)
    xs = [x0] + [torch.randn_like(x0) for _ in range(k_sets - 1)]
    gos = [None] * k_sets
    ac = autocast(dev, enabled=ours_dtype != torch.float32)  # fp32 runs (CPU structure tests): no autocast

    # ---------------------------------------------------------------- correctness (first set)
    ref_f = copy.deepcopy(ref).float()
    try:
        with torch.no_grad():
            want = ref_f.eval()(x0)
            got = ours.eval()(x0.to(ours_dtype))
        xr = x0.clone().requires_grad_(True)
        xo = x0.to(ours_dtype).requires_grad_(True)
        yr = ref_f.train()(xr)
        go = torch.randn_like(yr)
        (dxr,) = torch.autograd.grad(yr, xr, go)
        yo = ours.train()(xo)
        (dxo,) = torch.autograd.grad(yo, xo, go.to(yo.dtype))
        sync(dev)
        # the same-dtype PyTorch error: the reference module itself under bf16 autocast
        ref_ac = copy.deepcopy(ref)
        with torch.no_grad(), ac:
            want_ac = ref_ac.eval()(x0)
        xa = x0.clone().requires_grad_(True)
        with ac:
            ya = ref_ac.train()(xa)
        (dxa,) = torch.autograd.grad(ya, xa, go.to(ya.dtype))
        errs = {"eval_y": rel_err(got, want), "train_y": rel_err(yo, yr), "train_dx": rel_err(dxo, dxr)}
        ref_errs = {
            "eval_y": rel_err(want_ac, want),
            "train_y": rel_err(ya, yr),
            "train_dx": rel_err(dxa, dxr),
        }
        rec["check"] = check_result(errs, tolerances(THRESHOLDS, ref_errs))
        rec["check"]["reference_autocast_rel_err"] = ref_errs
        del ref_ac
        gos = [torch.randn_like(yr).to(memory_format=cl) for _ in range(k_sets)]
    except Exception as e:  # noqa: BLE001
        rec["check"] = check_error(e)
    del ref_f

    # ---------------------------------------------------------------- implementations
    def ref_call(m):
        def f(x):
            with ac:
                return m(x)

        return f

    # separate eval-mode and train-mode copies: no mode switch inside the timed calls
    ours_e, ours_t = ours.eval(), copy.deepcopy(ours).train()
    ref_e, ref_t = ref_cl.eval(), copy.deepcopy(ref_cl).train()
    fns = {}
    for name in impls:
        if name == "ours":
            if rec["check"]["status"] == "PASS":
                fns[name] = (ours_e, ours_t, ours_dtype)
        elif name == "eager":
            fns[name] = (ref_call(ref_e), ref_call(ref_t), torch.float32)
        else:
            try:
                mode = COMPILE_MODES[name]
                fns[name] = (compiler(ref_call(ref_e), mode), compiler(ref_call(ref_t), mode), torch.float32)
            except Exception as e:  # noqa: BLE001
                rec["baseline_checks"][name] = check_error(e)
    closures = {}
    for name, (f_eval, f_train, dt) in fns.items():
        sets = [(x.to(dt), None if g is None else g.to(ours_dtype)) for x, g in zip(xs, gos)]
        train_sets = [(x.clone().requires_grad_(True), g) for x, g in sets]
        ne, nt = Rotator(sets), Rotator(train_sets)

        def run_eval(fn=f_eval, ne=ne):
            with torch.no_grad():
                fn(ne()[0])

        def run_train(fn=f_train, nt=nt):
            x, g = nt()
            y = fn(x)
            y.backward(g.to(y.dtype) if g is not None else torch.ones_like(y))

        closures[name] = {"eval": run_eval, "train": run_train}
        try:  # a compile error surfaces at the first call: record it for this baseline only
            run_eval()
            run_train()
            sync(dev)
        except Exception as e:  # noqa: BLE001
            rec["baseline_checks"][name] = check_error(e)
            del closures[name]
    for timer in timers:
        sfx = "" if getattr(timer, "kind", "events") == "events" else f"@{timer.kind}"
        if sfx:
            continue  # block timings: events only (host overhead is part of what fusion saves)
        res = measure(closures, timer, rounds=rounds, label=f"blocks/{label}/{batch}")
        rec["times"].update(res)
    finalize(rec, [("ours", b) for b in BASELINES], ceilings)
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def run_blocks(device, timers, *, labels=tuple(zoo.BLOCKS), batch: int = 32, size: int | None = None,
               compile_max: bool = False, compiler=None, budget: Budget | None = None, rounds: int = 2,
               ceilings=None, ours_dtype=torch.bfloat16, compile: bool = True, log=print) -> list[dict]:  # fmt: skip
    budget = budget or Budget(None)
    recs = []
    for label in labels:
        if not budget.allows(10):
            rec = new_record("blocks", label, {"batch": batch})
            rec["skipped"]["all"] = "time budget of the blocks section spent"
            recs.append(rec)
            continue
        impls = ["ours", "eager"]
        skipped = {}
        for name, cost in (("compile", 40), ("compile_max", 150)):  # eval + train compiles of one block
            if not compile or (name == "compile_max" and not compile_max):
                continue
            if budget.allows(cost):
                impls.append(name)
            else:
                skipped[name] = "time budget"
        try:
            rec = bench_block(label, device, timers, batch=batch, size=size, impls=impls, compiler=compiler,
                              rounds=rounds, ceilings=ceilings, ours_dtype=ours_dtype)  # fmt: skip
        except Exception as e:  # noqa: BLE001
            rec = new_record("blocks", label, {"batch": batch})
            rec["check"] = check_error(e)
            finalize(rec, [], ceilings)
        rec["skipped"].update(skipped)
        recs.append(rec)
        log(progress(rec))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return recs
