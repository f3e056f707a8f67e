"""Test configuration.

Without a CUDA GPU the Triton kernels run in the interpreter: ``TRITON_INTERPRET=1`` must be set before Triton
kernels are defined, so it is set here, before anything imports :mod:`inception_kernels`. With a GPU the same tests
run the compiled kernels on CUDA tensors, and the ``gpu``-marked tests run too.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch):
    """Tests exercise our kernels unless a test asks for another backend."""
    monkeypatch.setenv("INCEPTION_KERNELS_BACKEND", "triton")
    if HAS_CUDA:
        # fp32 tests compare at IEEE precision; TF32 is tested separately.
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture
def poison(monkeypatch):
    """Every buffer our launchers allocate starts as NaN, so an element a kernel fails to write shows up."""
    from inception_kernels.ops import _tile

    def poison_value(t):
        return float("nan") if t.is_floating_point() else -1

    def poisoned(alloc):
        def make(*a, **k):
            t = alloc(*a, **k)
            return t.fill_(poison_value(t))

        return make

    for alloc in ("new_cl", "new_buf"):  # the one place every launcher allocates from
        monkeypatch.setattr(_tile, alloc, poisoned(getattr(_tile, alloc)))


_SEED = int(os.environ.get("INCEPTION_KERNELS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist (``make test`` runs ``-n auto``): every worker uses the seed the header prints."""
    node.workerinput["inception_kernels_seed"] = _SEED


def pytest_configure(config):
    global _SEED
    _SEED = getattr(config, "workerinput", {}).get("inception_kernels_seed", _SEED)


def pytest_report_header(config):
    return f"inception-kernels test seed: {_SEED} (set INCEPTION_KERNELS_TEST_SEED to replay)"


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs every run, reproducible from the seed printed in the header."""
    import zlib

    torch.manual_seed(_SEED + zlib.crc32(request.node.nodeid.encode()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test names the seed that drew its inputs (``pytest -q``, which ``make test`` runs, hides the header)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(
            ("inception-kernels test seed", f"INCEPTION_KERNELS_TEST_SEED={_SEED} replays this test's inputs")
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"inception-kernels test seed: {_SEED} (INCEPTION_KERNELS_TEST_SEED={_SEED} replays)")
