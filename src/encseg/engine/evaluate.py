"""Evaluation with the Cityscapes protocol, on plain or encrypted test images.

One confusion matrix over the whole split (ignore 255); IoU = TP / (TP + FP + FN) per class; mIoU is
the mean over the classes whose IoU is defined (TP + FP + FN > 0). Whole-image or sliding-window
inference (`encseg.models.predict`).

Encrypted evaluation is what a client does: each test image gets its own fresh key (or, in the
2022 setting, the one shared key), the model sees only the encrypted image, and the predicted label
map is moved back with that key (`decrypt_mask`, geometry only) before it is compared with the
plain ground truth. The key is then dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encseg.data.cityscapes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, CityscapesDataset, colorize
from encseg.errors import UserError
from encseg.models import predict


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """conf[g, p] = pixels of ground-truth class g predicted as p, shape [C, C + 1]; column C counts
    the pixels predicted as ignore (255) or any id outside the classes. Ignore-labelled ground truth
    is skipped.

    As in cityscapesScripts (evalPixelLevelSemanticLabeling: fn = conf[g, :].sum() - tp, fp over
    evaluated ground-truth classes only), a prediction outside the classes is a miss of the true
    class and a false positive of none; it is never clipped into a class."""
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise UserError(f"prediction and ground truth differ in size ({pred.size} vs {gt.size} pixels)")
    valid = (gt != IGNORE_INDEX) & (gt >= 0) & (gt < num_classes)
    p = pred[valid]
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    idx = gt[valid] * (num_classes + 1) + p
    return np.bincount(idx, minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN where the class is neither present nor predicted.

    Takes [C, C + 1] (from `confusion_matrix`: the last column, predictions outside the classes,
    adds to FN only) or a square [C, C]."""
    c = conf.shape[0]
    tp = np.diag(conf[:, :c]).astype(np.float64)
    fp = conf[:, :c].sum(0) - tp
    fn = conf.sum(1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


@dataclass
class EvalResult:
    confusion: np.ndarray
    images: int
    encryption: str = "none"
    scheme: str | None = None
    seconds: float = 0.0
    names: tuple[str, ...] = field(default=CLASS_NAMES)

    @property
    def iou(self) -> np.ndarray:
        return iou_from_confusion(self.confusion)

    @property
    def miou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        c = self.confusion.shape[0]
        return float(np.diag(self.confusion[:, :c]).sum() / max(self.confusion.sum(), 1) * 100)

    def to_dict(self) -> dict:
        return {
            "miou": round(self.miou, 3),
            "pixel_accuracy": round(self.pixel_accuracy, 3),
            "iou": {n: (None if np.isnan(v) else round(float(v) * 100, 3)) for n, v in zip(self.names, self.iou)},
            "images": self.images,
            "encryption": self.encryption,
            "scheme": self.scheme,
            "seconds": round(self.seconds, 2),
        }

    def table(self) -> str:
        """A per-class IoU table in Markdown."""
        lines = ["| class | IoU |", "|---|---:|"]
        for n, v in zip(self.names, self.iou):
            lines.append(f"| {n} | {'n/a' if np.isnan(v) else f'{v * 100:.2f}'} |")
        lines.append(f"| **mIoU** | **{self.miou:.2f}** |")
        return "\n".join(lines)


def _encryptor(mode: str, scheme, shared_key):
    """(key for this image) callable for the mode; None for plain evaluation."""
    from encseg.cipher import Key

    if mode == "none":
        return None
    if mode == "per-image":
        return Key.generate
    if mode == "shared":
        if shared_key is None:
            raise UserError("shared-key evaluation needs the key file (--key)")
        return lambda: shared_key
    raise UserError(f"encryption must be none, shared or per-image (got {mode!r})")


def evaluate(
    model: torch.nn.Module,
    dataset: CityscapesDataset,
    device: str | torch.device = "cpu",
    encryption: str = "none",
    scheme=None,
    shared_key=None,
    crop: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    batch_size: int = 4,
    save_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = False,
    jpeg_quality: int | None = None,
    arrangement: str = "auto",
    refiner=None,
) -> EvalResult:
    """Score `model` on `dataset` (raw arrays, no transform) with plain or encrypted test images;
    with `jpeg_quality`, each ciphertext goes through the JPEG transport (encode at that quality,
    check, decode) before the model sees it, as a JPEG client's would, in the client's `arrangement`
    (`auto`: sorted for JPEG when the scheme shuffles pixels; encseg.cipher.arrange). With `refiner`
    (encseg.models.refine), each decrypted label map goes through the client's refiner before scoring."""
    from encseg.cipher import decrypt_mask, encrypt
    from encseg.cipher.arrange import SORTED, arrange, restore_labels, transport_arrangement
    from encseg.cipher.jpeg import check_block_size, jpeg_roundtrip

    new_key = _encryptor(encryption, scheme, shared_key)
    if new_key is not None and scheme is None:
        raise UserError("encrypted evaluation needs a scheme")
    if jpeg_quality is not None:
        if new_key is None:
            raise UserError("JPEG transport applies to encrypted test images (pass an encryption mode)")
        check_block_size(scheme.block_size)
    arranged = False
    if new_key is not None:
        arranged = transport_arrangement(scheme, "jpeg" if jpeg_quality is not None else "png", arrangement) == SORTED
    elif arrangement not in ("auto", "none"):
        raise UserError("an arrangement applies to encrypted test images (pass an encryption mode)")
    num_classes = getattr(getattr(model, "config", None), "num_classes", NUM_CLASSES)
    conf = np.zeros((num_classes, num_classes + 1), dtype=np.int64)  # last column: predicted outside the classes
    n = len(dataset) if limit is None else min(limit, len(dataset))
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="evaluate", unit="img", dynamic_ncols=True)
    model.eval()
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        batch = [dataset.load(i) for i in range(start, min(start + batch_size, n))]
        inputs, keys, sizes, ciphertexts = [], [], [], []
        for image, _ in batch:
            if new_key is None:
                inputs.append(image)
                continue
            key = new_key()
            enc = encrypt(image, key, scheme)
            sent = arrange(enc.data, scheme) if arranged else enc.data
            inputs.append(sent if jpeg_quality is None else jpeg_roundtrip(sent, jpeg_quality))
            ciphertexts.append(enc.data)
            keys.append(key)
            sizes.append(enc.original_size)
        same = all(x.shape == inputs[0].shape for x in inputs)
        if same:
            logits = predict(model, np.stack(inputs), device, crop, stride)
            preds = [lg.argmax(0) for lg in logits]
        else:
            preds = [predict(model, x, device, crop, stride).argmax(0) for x in inputs]
        for j, ((image, label), pred) in enumerate(zip(batch, preds)):
            pred = pred.numpy().astype(np.uint8)
            pred_encrypted = pred
            if keys:
                if arranged:
                    pred = pred_encrypted = restore_labels(pred, ciphertexts[j], scheme)
                pred = np.asarray(decrypt_mask(pred, keys[j], scheme, sizes[j]))
            if refiner is not None:
                pred = refiner.refine(pred)
            conf += confusion_matrix(pred, label, num_classes)
            if save_dir is not None:
                name = dataset.items[start + j].name
                Image.fromarray(colorize(pred)).save(save_dir / f"{name}_pred.png")
                overlay = (0.5 * image + 0.5 * colorize(pred)).astype(np.uint8)
                Image.fromarray(overlay).save(save_dir / f"{name}_overlay.png")
                if keys:
                    Image.fromarray(inputs[j]).save(save_dir / f"{name}_encrypted.png")
                    Image.fromarray(colorize(pred_encrypted)).save(save_dir / f"{name}_pred_encrypted_geometry.png")
        keys.clear()  # the per-image keys end here
        ciphertexts.clear()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return EvalResult(conf, n, encryption, None if scheme is None else scheme.name, time.perf_counter() - t0,
                      CLASS_NAMES[:num_classes] if num_classes <= NUM_CLASSES else tuple(map(str, range(num_classes))))  # fmt: skip


def write_result(result: EvalResult, path: str | Path, extra: dict | None = None) -> None:
    """The result (and any `extra`) as JSON, with the confusion matrix."""
    d = result.to_dict() | {"confusion": result.confusion.tolist()} | (extra or {})
    Path(path).write_text(json.dumps(d, indent=2) + "\n")
