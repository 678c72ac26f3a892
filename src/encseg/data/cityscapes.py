"""Cityscapes, as the official download lays it out: 19 train classes, ignore 255, the official palette.

    ROOT/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{name}_gtFine_labelTrainIds.png   (preferred)
    ROOT/gtFine/{split}/{city}/{name}_gtFine_labelIds.png        (mapped to trainIds on the fly)

The procedural street benchmark (`encseg.data.streets`) writes the same layout, so this one loader
serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encseg.cipher.io import read_image, read_label_png
from encseg.errors import UserError

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# The official colours, in trainId order.
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

# labelId of each trainId (the official `labels.py`); every other labelId is ignored.
TRAIN_ID_TO_LABEL_ID = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], dtype=np.uint8
)
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
LABEL_ID_TO_TRAIN_ID[TRAIN_ID_TO_LABEL_ID] = np.arange(NUM_CLASSES, dtype=np.uint8)

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map official labelIds (0..33, -1 stored as 255) to trainIds 0..18, everything else to 255."""
    return LABEL_ID_TO_TRAIN_ID[np.asarray(label_ids, dtype=np.uint8)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """The inverse map for writing `*_labelIds.png`; ignore (255) becomes labelId 0 ('unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    return lut[np.asarray(train_ids, dtype=np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """HxW trainIds -> HxWx3 uint8 in the official palette; ignore (and anything >= 19) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(train_ids, dtype=np.uint8)]


@dataclass(frozen=True)
class CityscapesItem:
    """One image and its label file; `train_ids` says whether the label file holds trainIds already."""

    image: Path
    label: Path
    train_ids: bool

    @property
    def name(self) -> str:
        return self.image.name[: -len(IMAGE_SUFFIX)]


def list_split(root: str | Path, split: str) -> list[CityscapesItem]:
    """All (image, label) pairs of one split, sorted by city and name, with errors that name what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    image_dir = root / "leftImg8bit" / split
    label_dir = root / "gtFine" / split
    if not image_dir.is_dir():
        raise UserError(
            f"{root} is not in the Cityscapes layout: expected the folder {image_dir} "
            f"(leftImg8bit/{split}/<city>/<name>{IMAGE_SUFFIX})"
        )
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise UserError(f"no images in {image_dir}: expected files {image_dir}/<city>/<name>{IMAGE_SUFFIX}")
    items = []
    for image in images:
        stem = image.name[: -len(IMAGE_SUFFIX)]
        city = image.parent.name
        train_ids = label_dir / city / f"{stem}{TRAIN_IDS_SUFFIX}"
        label_ids = label_dir / city / f"{stem}{LABEL_IDS_SUFFIX}"
        if train_ids.is_file():
            items.append(CityscapesItem(image, train_ids, True))
        elif label_ids.is_file():
            items.append(CityscapesItem(image, label_ids, False))
        else:
            raise UserError(f"no label map for {image}: expected the file {train_ids} (or {label_ids.name} beside it)")
    return items


class CityscapesDataset:
    """Map-style dataset of (image HxWx3 uint8, trainIds HxW uint8) pairs, optionally transformed.

    `transform(image, label, sample_id)` is applied when given (augmentation, encryption, tensors);
    without it the raw arrays come back. The dataset is indexed by an int or by an
    `(epoch, index)` pair (what the engine's sampler yields); `sample_id` is that pair, so a
    transform can seed its randomness from it and a resumed run draws the same augmentations.
    Works as a `torch.utils.data.Dataset` and is picklable for loader workers.
    """

    def __init__(self, root: str | Path, split: str = "train", transform=None) -> None:
        self.root = Path(root)
        self.split = split
        self.items = list_split(self.root, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[index]
        image = read_image(item.image)
        label = read_label_png(item.label)
        if not item.train_ids:
            label = label_ids_to_train_ids(label)
        if label.shape != image.shape[:2]:
            raise UserError(f"label map {item.label} is {label.shape[0]}x{label.shape[1]} but its image is {image.shape[0]}x{image.shape[1]}")
        return image, label

    def __getitem__(self, key):
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        image, label = self.load(index)
        if self.transform is None:
            return image, label
        return self.transform(image, label, (epoch, index))
