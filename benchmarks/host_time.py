"""Host time of our path vs eager PyTorch on the same machine (no GPU needed): DESIGN.md §5, issue 12 item 3.

    python benchmarks/host_time.py [--repeat 200] [--json PATH] [--autocast]

* one fused ``ops.conv2d`` eval call (folded BN + ReLU, a tiny 1x16x8x8 input so the ATen side is mostly host
  time), and the same call through its plan (``ops.conv.plan_forward``: decided once, as layers and blocks run
  it), Triton launches stubbed out (``bench.counting.stubbed_launches``: our Python runs, no kernel does), vs one
  ATen ``relu(conv2d(x))`` on the same tensor;
* an inception_v3 eval forward and a training step (forward + backward, batch 2, 75x75) on our path with launches
  stubbed (after one warm call): host milliseconds, launches and host time per launch, vs the number of ATen ops
  eager PyTorch (torchvision) runs for the same model (counted on the meta device). Both models are
  channels_last (``model.to(memory_format=torch.channels_last)``, as the trainer does on CUDA: our kernels then
  read every weight as it is). Before each training step every parameter's version is moved on, as an optimizer
  step moves it (without its arithmetic), so any weight copy is made again as in a real training loop
  (``train_*``); ``train_*_unchanged_weights``: the weights left as they were; ``train_*_nchw_weights``: our model
  with (K, C, R, S)-contiguous weights (one channels_last copy per R×S weight per step).

Eager PyTorch's host time for the same network cannot be read from its full-width CPU run (its convolutions do
their arithmetic on this CPU). The proxy (``eager_narrow_*``): torchvision's inception_v3 with every channel
count divided by 16 (the input's 3 channels and the classes kept), so the same 746 ATen ops with the same autograd
graph run on 1/256 of the multiply-adds. What it still computes makes its figure an upper bound of eager's host
time; a CUDA device adds a launch (a few µs) to each of its ops, as a GPU adds Triton's launch path to ours (both
left out here). Ours and the proxy are timed interleaved (fp32 only).

The classifier is the one layer whose arithmetic the two sides do not share: ours runs it at full width (2048
features into 1000 classes, forward and backward about 3 ms on a 2-core VM, one thread), the narrowed twin at 128
features (about 0.25 ms), and neither is host time. ``*_same_head``: our model with a classifier that reads the
first 128 of its 2048 pooled features (one slice more), so both sides do the same head arithmetic; timed in the
same interleaved rounds. That is the like-for-like host comparison; the plain figures are kept for continuity.

``--autocast``: the network figures under CPU autocast (ours fp16, the dtype the interpreter's launch path
takes; eager's op count bf16 on CPU tensors, as ATen's CPU conv backward has no fp16 kernel: the count does not
depend on which 16-bit dtype), with the fp32 model: the casts autocast adds are in both.

One thread (``torch.set_num_threads(1)``); medians. The ratios are what to compare across commits: absolute
microseconds depend on the machine and its load, which the output states.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _interleaved_us(fns: dict, repeat: int) -> dict:
    """Median microseconds of each of ``fns`` with their calls interleaved (one of each per round, the order
    rotating), so that the machine's drifting speed (a shared VM's) moves every figure alike and their ratios hold."""
    names = list(fns)
    for _ in range(max(5, repeat // 10)):
        for name in names:
            fns[name]()
    times: dict = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def _median_us(fn, repeat: int) -> float:
    return _interleaved_us({"fn": fn}, repeat)["fn"]


def conv_call(repeat: int) -> dict:
    import torch.nn.functional as F

    from inception_kernels.bench.counting import stubbed_launches
    from inception_kernels.ops import conv2d
    from inception_kernels.ops.conv import plan_forward

    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    w, s, b = torch.randn(32, 16, 3, 3), torch.ones(32), torch.zeros(32)
    with torch.no_grad(), stubbed_launches():  # the stub only touches Triton: ATen's conv runs as ever
        # the same call decided once (what a ConvBNAct layer and the block engine run after their first call)
        run = plan_forward(x, w, padding=1, scale=s, bias=b, activation="relu")
        t = _interleaved_us({
            "ours": lambda: conv2d(x, w, padding=1, scale=s, bias=b, activation="relu"),
            "planned": lambda: run(x),
            "aten": lambda: F.relu(F.conv2d(x, w, padding=1)),
        }, repeat)  # fmt: skip
    ours, planned, aten = t["ours"], t["planned"], t["aten"]
    return {"ours_us": ours, "aten_us": aten, "ratio": ours / aten, "planned_us": planned,
            "planned_ratio": planned / aten}  # fmt: skip


NARROW = 16  # the proxy's channel divisor (every inception_v3 width but the input's 3 is a multiple of 16)


def narrowed(model: torch.nn.Module, f: int = NARROW) -> torch.nn.Module:
    """``model`` with every conv / BN / linear width divided by ``f`` (a conv reading the 3 input channels keeps
    them; the linear keeps its classes), fresh parameters of those shapes: the same graph of ATen ops, 1/f² of
    the arithmetic."""
    nn = torch.nn
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.out_channels % f or (m.in_channels != 3 and m.in_channels % f):
                raise ValueError(f"{m}: widths not divisible by {f}")
            m.in_channels = m.in_channels if m.in_channels == 3 else m.in_channels // f
            m.out_channels //= f
            m.weight = nn.Parameter(torch.randn(m.out_channels, m.in_channels, *m.kernel_size) * 0.1)
            if m.bias is not None:
                m.bias = nn.Parameter(torch.zeros(m.out_channels))
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features //= f
            c = m.num_features
            m.weight, m.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
            m.running_mean, m.running_var = torch.zeros(c), torch.ones(c)
        elif isinstance(m, nn.Linear):
            m.in_features //= f
            m.weight = nn.Parameter(torch.randn(m.out_features, m.in_features) * 0.01)
    return model


class _FirstFeatures(torch.nn.Module):
    """A classifier reading the first ``n`` features (the narrowed twin's head width; see the module docstring)."""

    def __init__(self, n: int, classes: int):
        super().__init__()
        self.n, self.fc = n, torch.nn.Linear(n, classes)

    def forward(self, x):
        return self.fc(x[:, : self.n])


def _same_head(ours: torch.nn.Module, narrow: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``ours`` whose classifier does the narrowed twin's head arithmetic."""
    import copy

    m = copy.deepcopy(ours)
    fc = narrow.fc
    setattr(m, m.head_name, _FirstFeatures(fc.in_features, fc.out_features).to(memory_format=torch.channels_last))
    return m


def network(repeat: int, autocast: bool = False) -> dict:
    import contextlib
    import copy

    import torchvision

    from inception_kernels.bench.counting import OpCounter, count_eager_ops, stubbed_launches
    from inception_kernels.models import create_model
    from inception_kernels.utils import count_launches

    torch.manual_seed(0)
    ours_nchw = create_model("inception_v3", aux_logits=False)
    ours = copy.deepcopy(ours_nchw).to(memory_format=torch.channels_last)
    ref = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    x = torch.randn(2, 3, 75, 75).contiguous(memory_format=torch.channels_last)
    out = {"autocast": "ours fp16, eager bf16 (CPU)" if autocast else None}

    def amp(dtype):
        return torch.autocast("cpu", dtype=dtype) if autocast else contextlib.nullcontext()

    def fwd(model, x, dtype=torch.float16):
        with amp(dtype):
            return model(x)

    with stubbed_launches():
        ours.eval()
        with torch.no_grad():
            fwd(ours, x)  # warm: weights packed and BN folded once, as in any second call
        with torch.no_grad(), count_launches() as n, OpCounter() as aten:
            fwd(ours, x)
        out["eval_launches"] = n.count
        out["eval_device_launches"] = n.count + aten.total - n.aten
        narrow = None if autocast else narrowed(copy.deepcopy(ref)).to(memory_format=torch.channels_last)
        same = None if narrow is None else _same_head(ours, narrow)
        with torch.no_grad():
            fns = {"ours": lambda: fwd(ours, x)}
            if narrow is not None:
                narrow.eval()
                same.eval()
                fwd(same, x)  # its plans made
                fns["eager_narrow"] = lambda: narrow(x)
                fns["ours_same_head"] = lambda: fwd(same, x)
            t = _interleaved_us(fns, max(3, repeat // 20))
        out["eval_host_ms"] = t["ours"] / 1e3
        if narrow is not None:
            out["eager_narrow_eval_host_ms"] = t["eager_narrow"] / 1e3
            out["eval_host_ratio_to_eager_narrow"] = t["ours"] / t["eager_narrow"]
            out["eval_host_ms_same_head"] = t["ours_same_head"] / 1e3
            out["eval_host_ratio_to_eager_narrow_same_head"] = t["ours_same_head"] / t["eager_narrow"]

        def step(model, update=True):
            if update:  # an optimizer step's effect on the versions (weight copies are made again), no launch
                params = tuple(model.parameters())
                torch._C._autograd._unsafe_set_version_counter(params, tuple(p._version + 1 for p in params))
            model.zero_grad(set_to_none=True)
            fwd(model, x).float().sum().backward()

        for model, update, tag in ((ours, True, ""), (ours, False, "_unchanged_weights"),
                                   (ours_nchw, True, "_nchw_weights")):  # fmt: skip
            model.train()
            step(model)
            step(model, update)
            with count_launches() as n, OpCounter() as aten:
                step(model, update)
            out[f"train_launches{tag}"] = n.count
            # every kernel of the step: ours (Triton and the ATen helpers our launchers call) and the ATen ops
            # around them (BN running-stat counters, the head, the loss), each once
            out[f"train_device_launches{tag}"] = n.count + aten.total - n.aten
            fns = {"ours": lambda m=model, u=update: step(m, u)}
            if narrow is not None and tag == "":
                narrow.train()
                same.train()
                step(same)
                step(same)
                fns["eager_narrow"] = lambda: step(narrow)
                fns["ours_same_head"] = lambda: step(same)
            t = _interleaved_us(fns, max(10, repeat // 20))
            out[f"train_host_ms{tag}"] = t["ours"] / 1e3
            if len(fns) > 1:
                out["train_host_ms_same_head"] = t["ours_same_head"] / 1e3
                out["train_host_ratio_to_eager_narrow_same_head"] = t["ours_same_head"] / t["eager_narrow"]
                with OpCounter() as aten:
                    step(narrow)
                out["eager_narrow_train_ops"] = aten.total  # the same op graph as eager's at full width
                out["eager_narrow_train_host_ms"] = t["eager_narrow"] / 1e3
                out["train_host_ratio_to_eager_narrow"] = t["ours"] / t["eager_narrow"]
    # the ATen ops eager PyTorch runs for the same model (counted on the meta device: no arithmetic). Its whole-
    # network host time cannot be separated from CPU arithmetic here, so the host comparison is per call (above).
    # (autocast casts CPU tensors only, so its count runs them)
    ref = (ref if autocast else ref.to("meta")).to(memory_format=torch.channels_last)
    xm = x if autocast else x.to("meta")
    ref.eval()
    with amp(torch.bfloat16):
        out["eager_eval_ops"] = sum(count_eager_ops(ref, xm).values())
    ref.train()
    with OpCounter() as c:
        fwd(ref, xm, torch.bfloat16).float().sum().backward()
    out["eager_train_ops"] = sum(c.ops.values())
    out["eval_host_us_per_launch"] = out["eval_host_ms"] * 1e3 / out["eval_launches"]
    out["train_host_us_per_launch"] = out["train_host_ms"] * 1e3 / out["train_launches"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json")
    p.add_argument("--no-network", action="store_true")
    p.add_argument("--autocast", action="store_true", help="the network figures under CPU autocast (see above)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    res = {"load_avg": os.getloadavg(), "cpu_count": os.cpu_count(), "conv_call": conv_call(args.repeat)}
    if not args.no_network:
        res["inception_v3"] = network(args.repeat, args.autocast)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
