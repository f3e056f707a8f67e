"""Registry of every Triton kernel in the package, for the ahead-of-time compile check (``inception_kernels.aot``).

Each op file registers its kernels with :func:`register_kernel`. A :class:`KernelSpec` carries the *undecorated*
Python function (so the AOT tool can build a fresh ``triton.JITFunction`` even when the process runs the
interpreter), every autotune config the launcher may pick, and for each dtype the Triton type of every
runtime parameter (or the value of every constexpr parameter that is not a config meta-parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fn: Callable
    # triton.Config objects: .kwargs are the block-size constexprs, plus num_warps / num_stages.
    configs: tuple
    # dtype name -> {param: "*fp32" | "*bf16" | "i32" | "i64" | "fp32" | <constexpr value>} for every parameter
    # that is not in config.kwargs. A two-parameter function is called as arg_types(dtype, config), for types that
    # depend on the config (a tensor descriptor's block shape).
    arg_types: Callable[..., dict[str, object]]
    # applies(config, dtype, arch) -> False for the combinations the launcher never runs (a config whose pipelined
    # tiles do not fit that architecture at that element size, a TMA variant on an arch without TMA).
    applies: Callable[[object, str, int], bool] | None = None


KERNELS: list[KernelSpec] = []


def register_kernel(spec: KernelSpec) -> KernelSpec:
    KERNELS.append(spec)
    return spec
