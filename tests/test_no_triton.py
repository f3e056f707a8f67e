"""Without Triton (macOS / Windows CPU users): the package, its models and the reference backend work, and asking
for a Triton route says why it cannot.

A subprocess hides Triton (``sys.modules["triton"] = None`` makes ``import triton`` raise ImportError, exactly what
an interpreter without it does), builds a model, runs it forward and backward, and saves what it computed; this
process (with Triton) runs the same model on the reference backend and compares: the same ATen ops on the same
machine give the same numbers.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["triton"] = None
    import torch
    import inception_kernels
    from inception_kernels import _backend, create_model, ops
    from inception_kernels.ops import dispatch

    out = {"triton_available": _backend.triton_available()}
    torch.manual_seed(0)
    model = create_model("inception_v3", num_classes=7, aux_logits=False, width_mult=0.25).eval()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        y = model(x)
    torch.save(y, sys.argv[1])
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    out["grad_finite"] = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    w = torch.randn(4, 3, 3, 3)
    with dispatch.use_backend("triton"):
        try:
            ops.conv2d(x, w, padding=1)
            out["forced"] = "ran"
        except Exception as e:
            out["forced"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    """
)


def test_import_models_and_reference_backend_without_triton(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCEPTION_KERNELS_")}
    env["INCEPTION_KERNELS_BACKEND"] = "auto"
    path = tmp_path / "y.pt"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["triton_available"] is False
    assert facts["grad_finite"] is True
    assert facts["forced"].startswith("NotImplementedError") and "triton is not installed" in facts["forced"]

    from inception_kernels import create_model

    torch.manual_seed(0)
    model = create_model("inception_v3", num_classes=7, aux_logits=False, width_mult=0.25, backend="reference")
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(torch.load(path), expected, rtol=0, atol=0)
