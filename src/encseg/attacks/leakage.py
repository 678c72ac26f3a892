"""Semantic leakage: how much of what a segmenter can use did an attack recover?

A plain SETR (trained on plain scenes) segments each attack's reconstructions and a content-free
baseline (the mean of the attacker's own scenes, the same for every victim); with mIoU over the
held-out scenes (one confusion matrix, the Cityscapes protocol),

    leakage = (mIoU(reconstructions) - mIoU(baseline)) / (mIoU(plain images) - mIoU(baseline)),

0 when the attack recovered nothing a segmenter can use beyond the dataset prior, 1 when it
recovered everything (both by construction). It is a recognisability score where SSIM is not: on
these scenes a flat guess already scores a high SSIM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from encseg.engine.evaluate import confusion_matrix, iou_from_confusion

Segment = Callable[[np.ndarray], np.ndarray]  # uint8 HxWx3 -> trainIds, at the segmenter's resolution


class Segmenter:
    """A checkpoint run on images resized to the size it was trained at (`SETRConfig.img_size`):
    the scenes of the attack (e.g. 256x512) are rendered views of the same streets at another scale."""

    def __init__(self, path: str | Path) -> None:
        from encseg.models import load_checkpoint

        self.model, self.config, _ = load_checkpoint(path)
        self.size = tuple(self.config.img_size)
        self.path = str(path)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        from encseg.models import predict

        h, w = self.size
        x = img if img.shape[:2] == (h, w) else np.array(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        return predict(self.model, x).argmax(0).numpy().astype(np.uint8)

    def labels(self, label: np.ndarray) -> np.ndarray:
        """Ground truth at the segmenter's resolution (nearest neighbour)."""
        h, w = self.size
        if label.shape == (h, w):
            return label
        return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def miou(segment: Segment, images: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """mIoU (0..1) of `segment` over the images against labels at the segmenter's resolution."""
    conf = None
    for img, lab in zip(images, labels):
        c = confusion_matrix(segment(img), lab)
        conf = c if conf is None else conf + c
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def leakage(m_attack: float, m_baseline: float, m_plain: float) -> float | None:
    """The normalised score; None when the segmenter does no better on plain images than on the
    baseline (nothing to normalise by)."""
    den = m_plain - m_baseline
    if not np.isfinite(den) or den <= 1e-9:
        return None
    return float((m_attack - m_baseline) / den)
