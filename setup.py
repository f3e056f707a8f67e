"""Build script for inception-kernels.

The package is pure Python today: Triton kernels compile just in time on the GPU they run on, so
``pip install -e .`` works on any machine, with or without nvcc or a GPU. The CUDA C++ extension
(``inception_kernels._C`` from ``csrc/``) is added by the training-fusion work; until then there is
nothing to compile and this file only declares the package.
"""

from setuptools import find_packages, setup

setup(
    name="inception-kernels",
    version="0.1.0",
    description="Fused Triton kernels and autograd ops for the Inception family of networks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["inception_kernels", "inception_kernels.*"]),
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
        "dev": ["pytest>=7", "ruff", "torchvision", "timm", "scikit-learn", "tqdm", "matplotlib", "pyyaml"],
    },
    entry_points={"console_scripts": ["inception-kernels=inception_kernels.cli:main"]},
)
