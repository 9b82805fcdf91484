"""Paper §3.2.3 / §4.1.2: training an IP-Adapter on a folder of captioned images.

``Trainer`` imports accelerate only when a run is built, so importing this package stays cheap.
"""

from .data import (
    CaptionedImage,
    CaptionedImageDataset,
    DatasetError,
    EpochBatchSampler,
    FolderScan,
    resize_center_crop,
    scan_captioned_folder,
    scan_dataset,
    scan_json_list,
)
from .recipe import (
    AdapterTrainingModel,
    Conditioning,
    DropRates,
    FrozenModels,
    TrainingError,
    encode_conditioning,
    install_for_training,
    micro_batch_generator,
    sample_drops,
    training_loss,
)
from .trainer import StepLog, TrainConfig, Trainer, TrainingState, TrainResult, checkpoint_folders

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
