"""Training augmentation as in SETR's Cityscapes pipeline (mmsegmentation), with numpy and Pillow only.

Random rescale (ratio 0.5-2.0 of a base size), random crop that avoids crops dominated by one class
(`cat_max_ratio`), horizontal flip, photometric distortion; the label map follows every geometric
step (nearest-neighbour resampling, padding with the ignore index). Then, when encryption is on,
the cipher (`encseg.cipher.CipherTransform`: a fresh key per sample per epoch, never stored) moves
the image and, geometry only, the label map; optionally (`jpeg_quality`) the encrypted image is then
JPEG-compressed at a random quality and decoded, as a client on the JPEG transport would send it
(docs/encryption-format.md section 10; the label map is untouched). All randomness comes from a generator seeded by
(seed, epoch, index), so a resumed run draws the same augmentations as an uninterrupted one; the
per-image keys come from the OS CSPRNG and are never reproducible, by design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from encseg.data.cityscapes import IGNORE_INDEX


@dataclass
class AugmentConfig:
    """The geometric and photometric augmentation of one training sample."""

    crop: tuple[int, int] = (512, 512)  # (H, W) of the training crop
    base_size: tuple[int, int] | None = None  # (H, W) the ratio applies to; None: the image's own size
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __post_init__(self) -> None:
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        if self.base_size is not None:
            self.base_size = (int(self.base_size[0]), int(self.base_size[1]))
        self.ratio_range = (float(self.ratio_range[0]), float(self.ratio_range[1]))


def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear for the image, nearest for the label map; `size` is (H, W)."""
    h, w = size
    if (h, w) == image.shape[:2]:
        return image, label
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return img, lab


def random_rescale(image, label, rng: np.random.Generator, base_size, ratio_range):
    """Scale so that the image fits `base_size` x ratio (aspect kept), ratio ~ U(ratio_range)."""
    h, w = image.shape[:2]
    ratio = rng.uniform(*ratio_range)
    bh, bw = base_size if base_size is not None else (h, w)
    scale = ratio * min(bh / h, bw / w)
    return resize(image, label, (max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)))


def random_crop(image, label, rng: np.random.Generator, crop, cat_max_ratio: float = 0.75):
    """A random crop; up to 10 tries for one where no class covers more than `cat_max_ratio` (mmseg)."""
    ch, cw = crop
    h, w = label.shape

    def pick():
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, x

    y, x = pick()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = np.bincount(label[y : y + ch, x : x + cw].ravel(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = pick()
    return image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def pad_to(image, label, size):
    """Pad bottom/right to at least `size`: zeros for the image, the ignore index for labels."""
    h, w = label.shape
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, label


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: brightness +-32, contrast 0.5-1.5 (before or after the HSV
    steps), saturation 0.5-1.5, hue +-18 degrees on the 0-180 scale; each applied with prob 0.5."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = img + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    do_sat, sat = rng.random() < 0.5, rng.uniform(0.5, 1.5)
    do_hue, hue = rng.random() < 0.5, int(rng.integers(-18, 19))
    if do_sat or do_hue:
        hsv = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("HSV")).astype(np.float32)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
        if do_hue:  # Pillow's hue is 0..255 for 0..360 degrees; mmseg's +-18 is on OpenCV's 0..180
            hsv[..., 0] = (hsv[..., 0] + hue * 256.0 / 180.0) % 256.0
        img = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, label: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator):
    """The whole geometric + photometric pipeline on uint8 arrays; returns crop-sized arrays."""
    image, label = random_rescale(image, label, rng, cfg.base_size, cfg.ratio_range)
    image, label = random_crop(image, label, rng, cfg.crop, cfg.cat_max_ratio)
    if rng.random() < cfg.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    if cfg.photometric:
        image = photometric_distortion(image, rng)
    image, label = pad_to(image, label, cfg.crop)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _arranged(cipher) -> object | None:
    """The scheme whose JPEG ciphertexts a client sends in the sorted arrangement (docs/encryption-format.md
    section 13), or None: training on JPEG samples arranges them as the client does."""
    from encseg.cipher.arrange import SORTED, transport_arrangement

    scheme = getattr(cipher, "scheme", None)
    if cipher is None or getattr(cipher, "mode", "none") == "none" or scheme is None:
        return None
    return scheme if transport_arrangement(scheme, "jpeg") == SORTED else None


def random_jpeg(image: np.ndarray, rng: np.random.Generator, quality: tuple[int, int]) -> np.ndarray:
    """The image after a JPEG round trip (baseline 4:4:4, as the transport sends ciphertexts) at a
    quality drawn uniformly from [lo, hi]; sides must be multiples of 8."""
    from encseg.cipher.jpeg import jpeg_roundtrip

    return jpeg_roundtrip(image, int(rng.integers(quality[0], quality[1] + 1)))


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class TrainTransform:
    """Augment, encrypt (optional `cipher`: an `encseg.cipher.CipherTransform`), JPEG-compress the
    result at a random quality in `jpeg_quality` = (lo, hi) if given, and make tensors.

    Called by the dataset as `transform(image, label, (epoch, index))`; returns (uint8 image
    tensor [3, H, W], int64 label tensor [H, W]). Normalisation happens on the device, so batches
    travel between processes as bytes. Picklable for loader workers.

    With `geometry=True` (distillation from a plain teacher, docs/training.md) it also returns the
    augmented plain crop (uint8 [3, H, W], flipped exactly as the ciphertext was) and `where`
    (int64 [H*W]): encrypted pixel i came from plain pixel where[i], so `plain_map.flatten()[where]`
    is any plain-geometry map (the label map, a teacher's logits) in this sample's encrypted
    geometry. `where` is computed by passing an index map through the cipher as its "label map",
    so the key never leaves the cipher; it is a function of the key, used for one training step
    in memory and never logged or stored.
    """

    def __init__(self, cfg: AugmentConfig, cipher=None, seed: int = 0, jpeg_quality: tuple[int, int] | None = None,
                 geometry: bool = False) -> None:  # fmt: skip
        self.cfg, self.cipher, self.seed = cfg, cipher, int(seed)
        self.jpeg_quality = None if jpeg_quality is None else (int(jpeg_quality[0]), int(jpeg_quality[1]))
        self.geometry = bool(geometry)

    def __call__(self, image: np.ndarray, label: np.ndarray, sample_id: tuple[int, int]):
        rng = np.random.default_rng([self.seed, int(sample_id[0]), int(sample_id[1])])
        image, label = augment(image, label, self.cfg, rng)
        if self.geometry:
            return self._with_geometry(image, label, rng)
        if self.cipher is not None:
            image, label = self.cipher(image, label)
        if self.jpeg_quality is not None:  # after encryption, as a client would: arranged, then JPEG
            scheme = _arranged(self.cipher)
            if scheme is not None:
                from encseg.cipher.arrange import arrange_sample

                image, label = arrange_sample(image, scheme, label)
            image = random_jpeg(image, rng, self.jpeg_quality)
        return _chw(image), torch.from_numpy(label.astype(np.int64))

    def _with_geometry(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        plain = image
        h, w = label.shape
        where = np.arange(h * w, dtype=np.int64).reshape(h, w)
        if self.cipher is not None:
            image, where = self.cipher(image, where)  # the same key moves the pixels and the index map
            if where.shape != (h, w):  # padding would give made-up indices; crops are multiples of the block
                raise ValueError(f"a {h}x{w} crop is not a multiple of the cipher's block size")
        where = where.reshape(-1)
        label = label.reshape(-1)[where].reshape(h, w)  # == the cipher's own label map under that key
        if self.jpeg_quality is not None:
            scheme = _arranged(self.cipher)
            if scheme is not None:  # the index map moves with the pixels, so `where` stays exact
                from encseg.cipher.arrange import arrange_sample

                image, label, where = arrange_sample(image, scheme, label, where.reshape(h, w))
                where = where.reshape(-1)
            image = random_jpeg(image, rng, self.jpeg_quality)
        return _chw(image), torch.from_numpy(label.astype(np.int64)), _chw(plain), torch.from_numpy(where)
