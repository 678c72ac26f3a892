"""Datasets and augmentation: Cityscapes in its official layout, the procedural street benchmark that
writes the same layout, and SETR's training augmentation (numpy + Pillow, no torchvision)."""

from encseg.data.augment import AugmentConfig, TrainTransform, augment
from encseg.data.cityscapes import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    CityscapesDataset,
    colorize,
    label_ids_to_train_ids,
    list_split,
)
from encseg.data.streets import generate_streets, render_scene

__all__ = [
    "AugmentConfig", "CLASS_NAMES", "CityscapesDataset", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE",
    "TrainTransform", "augment", "colorize", "generate_streets", "label_ids_to_train_ids", "list_split",
    "render_scene",
]
