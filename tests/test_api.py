"""The public API at the top level: plain functions with real signatures, subpackages as attributes, lazy loading."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn as nn

import inception_kernels

REPO = Path(__file__).resolve().parents[1]


def test_optimize_is_a_plain_function_with_its_signature():
    opt = inception_kernels.optimize
    assert inspect.isfunction(opt) and opt.__module__ == "inception_kernels.convert"
    sig = inspect.signature(opt)
    assert list(sig.parameters) == ["model", "inplace", "verbose", "backend", "cuda_graph"]
    assert sig.parameters["inplace"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["inplace"].default is False and sig.parameters["verbose"].default is False
    assert "Run ``model``'s Inception blocks" in inspect.getdoc(opt)
    from inception_kernels import optimize, optimize_report

    assert optimize is opt and optimize_report is inception_kernels.convert.report
    assert inspect.isfunction(optimize_report)
    assert list(inspect.signature(optimize_report).parameters) == ["model"]


def test_subpackages_and_functions_resolve_as_attributes():
    import inception_kernels.models
    import inception_kernels.nn
    import inception_kernels.ops
    import inception_kernels.train

    assert inception_kernels.models is sys.modules["inception_kernels.models"]
    assert inception_kernels.nn is sys.modules["inception_kernels.nn"]
    assert inception_kernels.ops is sys.modules["inception_kernels.ops"]
    assert inception_kernels.train is sys.modules["inception_kernels.train"]
    assert inception_kernels.create_model is inception_kernels.models.create_model
    assert inception_kernels.list_models is inception_kernels.models.list_models
    assert "inception_v3" in inception_kernels.list_models()
    assert inception_kernels.conv2d is inception_kernels.ops.conv2d
    assert inception_kernels.OptimizeReport is inception_kernels.convert.OptimizeReport
    assert set(inception_kernels.__all__) <= set(dir(inception_kernels))
    for name in inception_kernels.__all__:
        assert getattr(inception_kernels, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        inception_kernels.nope  # noqa: B018
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        inception_kernels.create_model("nope")


def test_create_model_at_the_top_level():
    model = inception_kernels.create_model("googlenet", num_classes=7, aux_logits=False)
    assert isinstance(model, nn.Module) and model.fc.out_features == 7


def test_import_is_lazy_and_help_works():
    """``import inception_kernels`` loads no kernel module (TRITON_INTERPRET may still be chosen afterwards);
    ``help()`` of the package and of ``optimize`` renders."""
    code = textwrap.dedent("""
        import sys, pydoc
        import inception_kernels
        assert "inception_kernels.ops" not in sys.modules and "triton" not in sys.modules, sorted(sys.modules)
        text = pydoc.render_doc(inception_kernels.optimize, renderer=pydoc.plaintext)
        assert "optimize(model: 'nn.Module', *, inplace: 'bool' = False, verbose: 'bool' = False, backend:" in text, text
        pydoc.render_doc(inception_kernels, renderer=pydoc.plaintext)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_all_lists_exactly_the_lazy_names():
    assert set(inception_kernels.__all__) == set(inception_kernels._LAZY) | {"__version__"}


def test_library_code_never_exits_the_process():
    """``SystemExit`` / ``sys.exit`` only in ``if __name__ == "__main__":`` entry points: library functions raise
    exceptions (ValueError, ConfigError, ...) and the CLI turns them into exit codes."""
    import ast

    offenders = []
    for path in sorted((REPO / "inception_kernels").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                guarded |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            text = ast.unparse(node) if isinstance(node, (ast.Raise, ast.Call)) else ""
            exits = (isinstance(node, ast.Raise) and "SystemExit" in text) or (
                isinstance(node, ast.Call) and text.startswith(("sys.exit(", "exit(", "os._exit("))
            )
            if exits and id(node) not in guarded:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:80]}")
    assert not offenders, "\n".join(offenders)
