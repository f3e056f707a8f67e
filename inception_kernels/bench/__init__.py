"""The benchmark suite behind ``inception-kernels bench``.

* :mod:`.static`  -- ``--static`` (CPU, no GPU): multiply-adds and minimal bytes per layer, roofline floors for a
  GPU spec, launches per forward (ours vs eager), saved-activation bytes in training, the AOT resource table.
* :mod:`.suite`   -- the GPU suite: :mod:`.ceilings`, :mod:`.kernels`, :mod:`.blocks`, :mod:`.networks`, timed
  through a pluggable :mod:`.timing` backend (CUDA events / CUDA-graph replay; a fake timer for tests).
* :mod:`.memory`  -- ``saved_activation_bytes(model, x)`` and peak-memory helpers.
* :mod:`.report`  -- ``results.json``, ``report.md`` (ratio tables, ours ÷ baseline speed, higher is better) and
  PNG plots.

Nothing here is imported by the rest of the package; matplotlib is needed only for the plots.
"""

from .memory import saved_activation_bytes, saved_activation_bytes_per_image

__all__ = ["saved_activation_bytes", "saved_activation_bytes_per_image"]
