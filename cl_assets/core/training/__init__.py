"""LoRA training on ChatML snapshots (TRL + PEFT): SFT on helpful answers, or KTO on 👍/👎.

Importing this package is cheap: torch, transformers, peft and trl load inside the functions.
"""

from cl_assets.core.training.config import TrainConfig
from cl_assets.core.training.data import SnapshotError, build_rows, load_rows, read_snapshot, render_row
from cl_assets.core.training.device import Precision, detect_precision
from cl_assets.core.training.trainer import LOSS_CURVE_PNG, TRAINING_JSON, TrainProgress, TrainResult, train_adapter

__all__ = [
    "LOSS_CURVE_PNG",
    "TRAINING_JSON",
    "Precision",
    "SnapshotError",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "build_rows",
    "detect_precision",
    "load_rows",
    "read_snapshot",
    "render_row",
    "train_adapter",
]
