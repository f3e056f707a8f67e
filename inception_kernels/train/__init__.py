"""Training: the Inception papers' recipe (TF RMSProp, staircase decay, label smoothing, aux heads, EMA, gradient
clipping), torchrun/DDP, multi-crop evaluation, and a built-in default that trains on a CPU in minutes.

``inception-kernels train`` / ``python -m inception_kernels.train`` run :func:`train`; ``inception-kernels eval``
runs :func:`evaluate_checkpoints`. The optimizer, schedule and EMA import without the ``[train]`` extra.
"""

from .ema import ModelEMA
from .errors import ConfigError
from .losses import inception_loss, smoothed_cross_entropy
from .optim import RMSpropTF, build_optimizer, param_groups
from .schedule import StaircaseLR

__all__ = [
    "ConfigError",
    "ModelEMA",
    "RMSpropTF",
    "StaircaseLR",
    "TrainConfig",
    "build_optimizer",
    "evaluate_checkpoints",
    "inception_loss",
    "param_groups",
    "smoothed_cross_entropy",
    "train",
]


def __getattr__(name):  # the loop pulls in the data stack (torchvision, scikit-learn, tqdm): load on use
    if name in ("train", "TrainConfig", "TrainResult", "NonFiniteLoss", "Preempted", "CheckpointWriteError"):
        from . import loop

        return getattr(loop, name)
    if name == "evaluate_checkpoints":
        from .cli import evaluate_checkpoints

        return evaluate_checkpoints
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
