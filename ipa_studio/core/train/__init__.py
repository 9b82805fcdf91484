"""Paper §3.2.3 / §4.1.2: training an IP-Adapter on a folder of captioned images.

The names below load their module (and with it torch) on first use: the window imports
``core.train.process`` to run training in a separate process and must not pay for torch itself.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(
        (
            "CaptionedImage",
            "CaptionedImageDataset",
            "DatasetError",
            "EpochBatchSampler",
            "FolderScan",
            "resize_center_crop",
            "scan_captioned_folder",
            "scan_dataset",
            "scan_json_list",
        ),
        "data",
    ),
    **dict.fromkeys(
        (
            "AdapterTrainingModel",
            "Conditioning",
            "DropRates",
            "FrozenModels",
            "TrainingError",
            "encode_conditioning",
            "install_for_training",
            "micro_batch_generator",
            "sample_drops",
            "training_loss",
        ),
        "recipe",
    ),
    **dict.fromkeys(
        ("StepLog", "TrainConfig", "Trainer", "TrainingState", "TrainResult", "checkpoint_folders"),
        "trainer",
    ),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "AdapterTrainingModel",
    "CaptionedImage",
    "CaptionedImageDataset",
    "Conditioning",
    "DatasetError",
    "DropRates",
    "EpochBatchSampler",
    "FolderScan",
    "FrozenModels",
    "StepLog",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "TrainingState",
    "checkpoint_folders",
    "encode_conditioning",
    "install_for_training",
    "micro_batch_generator",
    "resize_center_crop",
    "sample_drops",
    "scan_captioned_folder",
    "scan_dataset",
    "scan_json_list",
    "training_loss",
]
