"""Build script for inception-kernels.

The package works as pure Python: Triton kernels compile just in time on the GPU they run on, so
``pip install -e .`` works on any machine, with or without nvcc or a GPU. When nvcc and a CUDA build of torch are
both present, this script also builds the CUDA C++ extension ``inception_kernels._C`` from ``csrc/`` (the
``torch.ops.inception_kernels_cuda`` ops); otherwise it prints why it skipped it and installs the pure-Python
package. A failing extension build is reported and skipped too, unless ``INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1``.

Environment:
  INCEPTION_KERNELS_SKIP_CUDA_BUILD=1     do not build the extension
  INCEPTION_KERNELS_CUDA_ARCHS="80;90"    SASS for these compute capabilities (default 80 and 90) plus PTX for the
                                          newest of them; separators ; , or space; "9.0" and "sm_90" also accepted
  INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1  make a skipped or failed extension build an error (CI)
  CUDA_HOME / CUDA_PATH                   the CUDA toolkit (else /usr/local/cuda, else found from nvcc on PATH)
  MAX_JOBS                                parallel compile jobs (torch's ninja build)

torch must be importable when this script runs for the extension to be built. pip's default build isolation
hides the installed torch (it is deliberately not a build requirement: that would download a multi-GB torch
into every isolated build), so build the extension with
``pip install --no-build-isolation -e .`` (or ``--no-deps --no-build-isolation``).
"""

import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = ["csrc/bindings.cpp", "csrc/batchnorm.cu", "csrc/pool.cu", "csrc/residual.cu"]


def _say(msg: str) -> None:
    print(f"inception-kernels setup: {msg}", file=sys.stderr, flush=True)


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home() -> str | None:
    """The CUDA toolkit root holding bin/nvcc and include/cuda_runtime.h, or None."""
    ok = lambda d: (
        d
        and os.path.isfile(os.path.join(d, "bin", "nvcc"))
        and os.path.isfile(os.path.join(d, "include", "cuda_runtime.h"))
    )
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc may be a wrapper script (e.g. /usr/local/bin/nvcc exec'ing the real one): try its real path's root.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            with open(nvcc, encoding="utf-8", errors="ignore") as f:
                m = re.search(r"(/\S+)/bin/nvcc", f.read(4096))
            if m:
                candidates.append(m.group(1))
        except OSError:
            pass
    for d in candidates:
        if ok(d):
            return d
    return None


def cuda_archs() -> list[str]:
    """Compute capabilities to build SASS for, e.g. ["80", "90"] (INCEPTION_KERNELS_CUDA_ARCHS)."""
    raw = os.environ.get("INCEPTION_KERNELS_CUDA_ARCHS", "80;90")
    archs = []
    for tok in re.split(r"[;,\s]+", raw.strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(?:sm_|compute_)?(\d+)\.?(\d)?([af]?)", tok)
        if not m:
            raise SystemExit(f"INCEPTION_KERNELS_CUDA_ARCHS: cannot read {tok!r} (expected e.g. 80;90)")
        archs.append(m.group(1) + (m.group(2) or "") + m.group(3))
    if not archs:
        raise SystemExit("INCEPTION_KERNELS_CUDA_ARCHS is empty")
    return sorted(set(archs), key=lambda a: int(re.sub(r"\D", "", a)))


def _skip(reason: str):
    msg = f"NOT building the CUDA C++ extension inception_kernels._C: {reason}. The package installs as pure Python (Triton and reference backends)."
    if _truthy("INCEPTION_KERNELS_REQUIRE_CUDA_BUILD"):
        raise SystemExit(
            f"inception-kernels setup: {msg} (INCEPTION_KERNELS_REQUIRE_CUDA_BUILD=1 makes this an error)"
        )
    _say(msg)
    return [], {}


def cuda_extension():
    """([CUDAExtension], {"build_ext": BuildExtension}) when the extension can be built, else ([], {})."""
    if _truthy("INCEPTION_KERNELS_SKIP_CUDA_BUILD"):
        return _skip("INCEPTION_KERNELS_SKIP_CUDA_BUILD is set")
    home = _cuda_home()
    if home is None:
        return _skip("no CUDA toolkit found (nvcc with include/cuda_runtime.h; set CUDA_HOME)")
    try:
        import torch
    except ImportError:
        return _skip(
            "torch is not importable in the build environment (pip's build isolation hides it: "
            "use `pip install --no-build-isolation -e .`)"
        )
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is not a CUDA build")
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = cuda_archs()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs

    class OptionalBuildExtension(BuildExtension):
        """A failed extension build leaves a working pure-Python install (unless REQUIRE is set)."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any compiler/toolchain failure
                if _truthy("INCEPTION_KERNELS_REQUIRE_CUDA_BUILD"):
                    raise
                _say(
                    f"building the CUDA C++ extension FAILED ({type(e).__name__}: {e}); installing without it"
                )

    _say(
        f"building the CUDA C++ extension inception_kernels._C with {home}/bin/nvcc for sm_{', sm_'.join(archs)} (+PTX compute_{archs[-1]})"
    )
    # Find torch's libraries (libc10.so, ...) even when _C is imported before torch: next to an installed
    # torch in site-packages, else where torch was at build time (editable installs).
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    ext = CUDAExtension(
        name="inception_kernels._C",
        sources=CSRC,
        define_macros=[("IK_PYTHON_MODULE", None)],
        extra_link_args=["-Wl,-rpath,$ORIGIN/../torch/lib", f"-Wl,-rpath,{torch_lib}"],
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", *gencode],
        },
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = cuda_extension()

setup(
    name="inception-kernels",
    version="0.1.0",
    description="Fused Triton kernels and autograd ops for the Inception family of networks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["inception_kernels", "inception_kernels.*"]),
    # data files read at run time (ops/shipped_defaults.json: the chooser's shipped tuning table); MANIFEST.in
    # puts them and csrc/ into the sdist
    package_data={"inception_kernels": ["*.json", "*/*.json", "*/*/*.json"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy",
    ],
    extras_require={
        # The trainer: built-in digits data (scikit-learn), progress bars, plots, YAML run configs.
        "train": ["torchvision", "scikit-learn", "tqdm", "matplotlib", "pyyaml"],
        "bench": ["matplotlib"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "ruff", "build", "torchvision", "timm",
                "scikit-learn", "tqdm", "matplotlib", "pyyaml"],
    },
    entry_points={"console_scripts": ["inception-kernels=inception_kernels.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
