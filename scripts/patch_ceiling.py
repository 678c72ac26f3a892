"""How well any patch-level model could do on the street benchmark at a given scene size.

Predicts every PxP patch as its majority label (what a model that decides once per ViT token, with
perfect knowledge, would output) and scores that with the Cityscapes protocol. The gap between
this ceiling and a trained model is learning; the ceiling itself is resolution. Measured on the
procedural street benchmark, not Cityscapes.

    python scripts/patch_ceiling.py --size 128x256 --scenes 60 [--patch 16]
"""

from __future__ import annotations

import argparse

import numpy as np

from encseg.cipher.commands import parse_size
from encseg.data.cityscapes import CLASS_NAMES, IGNORE_INDEX
from encseg.data.streets import render_scene, scene_seed
from encseg.engine.evaluate import confusion_matrix, iou_from_confusion


def patch_majority(label: np.ndarray, p: int) -> np.ndarray:
    h, w = label.shape
    blocks = label[: h // p * p, : w // p * p].reshape(h // p, p, w // p, p).transpose(0, 2, 1, 3).reshape(h // p, w // p, p * p)
    counts = np.stack([(blocks == c).sum(-1) for c in range(len(CLASS_NAMES))], -1)
    maj = np.where(counts.sum(-1) > 0, counts.argmax(-1), IGNORE_INDEX).astype(np.uint8)
    return np.repeat(np.repeat(maj, p, 0), p, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--scenes", type=int, default=60, help="validation scenes (seed 0)")
    ap.add_argument("--patch", type=int, default=16)
    a = ap.parse_args()
    size = parse_size(a.size)
    conf = np.zeros((19, 20), np.int64)  # confusion_matrix: [C, C + 1]
    pixels = np.zeros(19)
    for i in range(a.scenes):
        _, label = render_scene(scene_seed(0, "val", i), size)
        pixels += np.bincount(label.ravel(), minlength=256)[:19]
        conf += confusion_matrix(patch_majority(label, a.patch), label)
    iou = iou_from_confusion(conf) * 100
    print(f"patch-majority ceiling at {size[0]}x{size[1]}, patch {a.patch}, {a.scenes} scenes: mIoU {np.nanmean(iou):.1f}")
    for name, v, f in zip(CLASS_NAMES, iou, 100 * pixels / pixels.sum()):
        print(f"  {name:14s} IoU {v:5.1f}   pixels {f:5.2f}%")


if __name__ == "__main__":
    main()
