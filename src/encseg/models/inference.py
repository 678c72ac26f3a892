"""The one inference path shared by the engine, the CLI and the service: normalise, pad, (slide), crop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encseg.errors import UserError

# ImageNet mean / std on the 0..255 scale (mmsegmentation's img_norm_cfg)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 RGB images [B,3,H,W] or [B,H,W,3] (or one image without B) -> float32 [B,3,H,W], ImageNet mean/std.

    Channels-first is assumed when dimension 1 has size 3 (so [B,3,H,3] reads as channels-first).
    """
    x = torch.from_numpy(np.ascontiguousarray(img)) if isinstance(img, np.ndarray) else torch.as_tensor(img)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise UserError(f"expected images [B,3,H,W] or [B,H,W,3], got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        if x.shape[-1] != 3:
            raise UserError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x.float() - mean) / std).contiguous()


def pixel_values(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize` on its 0..255 grid: float32 [B,3,H,W] of integer values (rounded, clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).round().clamp(0, 255)


def _sliding_window(model: nn.Module, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch: int) -> torch.Tensor:
    """mmsegmentation's slide inference: average the logits of overlapping crop windows."""
    B, _, H, W = x.shape
    ch, cw = min(crop[0], H), min(crop[1], W)
    sh, sw = stride
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            boxes.append((y2 - ch, x2 - cw))  # windows at the border are shifted back inside
    logits = count = None
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        windows = torch.cat([x[:, :, y : y + ch, x0 : x0 + cw] for y, x0 in chunk])
        out = model(windows).float()
        if logits is None:
            logits = x.new_zeros((B, out.shape[1], H, W), dtype=torch.float32)
            count = x.new_zeros((1, 1, H, W), dtype=torch.float32)
        for i, (y, x0) in enumerate(chunk):
            logits[:, :, y : y + ch, x0 : x0 + cw] += out[i * B : (i + 1) * B]
            count[:, :, y : y + ch, x0 : x0 + cw] += 1
    return logits / count


@torch.inference_mode()
def predict(
    model: nn.Module,
    img: np.ndarray,
    device: str | torch.device = "cpu",
    crop: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    window_batch: int = 4,
) -> torch.Tensor:
    """Logits [C,H,W] (float32, CPU) of a uint8 image HxWx3; a stack [B,H,W,3] gives [B,C,H,W].

    The image is normalised, padded (edge replicate) to a multiple of the patch size, run whole or
    by sliding windows of `crop` with `stride` (both multiples of the patch size, so windows stay on
    the block grid of an encrypted image), and the logits are cropped back to HxW. The model must
    already be on `device`; its train/eval mode is restored afterwards.
    """
    arr = np.asarray(img)
    single = arr.ndim == 3
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise UserError(f"expected a uint8 image HxWx3 (or a stack BxHxWx3), got {arr.dtype} {arr.shape}")
    config = getattr(model, "config", None)
    p = getattr(config, "block", getattr(config, "patch_size", 16))  # the cipher block (canonicalisation, block positions)
    x = normalize(torch.from_numpy(np.ascontiguousarray(arr if not single else arr[None])).to(device))
    H, W = x.shape[-2:]
    pad_h, pad_w = -H % p, -W % p
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    was_training = model.training
    model.eval()
    try:
        if crop is None:
            logits = model(x).float()
        else:
            crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
            stride = crop if stride is None else ((stride, stride) if isinstance(stride, int) else tuple(stride))
            if any(v <= 0 or v % p for v in (*crop, *stride)):
                raise UserError(f"crop {crop} and stride {stride} must be positive multiples of the patch size {p}")
            logits = _sliding_window(model, x, crop, stride, window_batch)
    finally:
        model.train(was_training)
    logits = logits[:, :, :H, :W].cpu()
    return logits[0] if single else logits
