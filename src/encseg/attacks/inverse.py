"""Learned inverse attack: a small U-Net trained on (encrypted, plain) pairs to map ciphertexts back
to images (the ITN / known-pair attack of Sirichotedumrong, Kinoshita & Kiya, arXiv 1912.04746).

Two settings: "shared" (every pair and the victim's image under one key: the attacker learns that
key's mapping) and "per-image" (a fresh key for every pair each time it is drawn and for the victim:
the attacker can only learn what all keys have in common). Two coordinate channels let the network
learn position-dependent mappings such as a fixed key's per-block flips; a convolutional network
still cannot learn a fixed block permutation beyond its receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encseg.cipher import Key, Scheme, encrypt


@dataclass
class InverseConfig:
    width: int = 16  # channels of the first level (x2 per level)
    depth: int = 3  # levels (2 poolings for depth 3)
    steps: int = 150
    batch: int = 8
    crop: int = 64  # training crop side, a multiple of the block size (aligned to the block grid)
    lr: float = 3e-3
    seed: int = 0


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: (encrypted RGB + y, x coordinates) -> plain RGB, all in [0, 1]."""

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = 5
        for c in chans:
            self.down.append(_conv_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(_conv_block(cin + c, c))
            cin = c
        self.out = nn.Conv2d(cin, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return torch.sigmoid(self.out(x))


def _with_coords(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, full: tuple[int, int]) -> torch.Tensor:
    """Append the absolute (y, x) position in the full image, in [0, 1], as two channels."""
    B, _, h, w = x.shape
    H, W = full
    ys = (top[:, None] + torch.arange(h)[None]).float() / max(H - 1, 1)
    xs = (left[:, None] + torch.arange(w)[None]).float() / max(W - 1, 1)
    return torch.cat([x, ys[:, None, :, None].expand(B, 1, h, w), xs[:, None, None, :].expand(B, 1, h, w)], 1)


def _to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


def train_inverse(
    plains: list[np.ndarray],
    scheme: Scheme,
    mode: str,
    cfg: InverseConfig,
    shared_key: Key | None = None,
) -> UNet:
    """Train the U-Net on pairs made from `plains` (uint8 HxWx3, sides multiples of the block size).

    mode "shared": all pairs under `shared_key`, encrypted once; "per-image": a fresh key for
    every image every time it is drawn (keys are never kept).
    """
    if mode not in ("shared", "per-image"):
        raise ValueError(f"mode must be shared or per-image (got {mode!r})")
    if mode == "shared" and shared_key is None:
        raise ValueError("shared mode needs a key")
    p = scheme.block_size
    H, W = plains[0].shape[:2]
    crop = min(cfg.crop - cfg.crop % p or p, H - H % p, W - W % p)
    g = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = UNet(cfg.width, cfg.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.15)
    plain_t = _to_tensor(plains)
    enc_fixed = _to_tensor([encrypt(x, shared_key, scheme).data for x in plains]) if mode == "shared" else None
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(len(plains), (cfg.batch,), generator=g)
        if mode == "shared":
            enc = enc_fixed[idx]
        else:
            enc = _to_tensor([encrypt(plains[i], Key.generate(), scheme).data for i in idx.tolist()])
        top = torch.from_numpy(rng.integers(0, (H - crop) // p + 1, cfg.batch) * p)
        left = torch.from_numpy(rng.integers(0, (W - crop) // p + 1, cfg.batch) * p)
        rows = top[:, None] + torch.arange(crop)[None]
        cols = left[:, None] + torch.arange(crop)[None]
        b = torch.arange(cfg.batch)[:, None, None, None]
        c = torch.arange(3)[None, :, None, None]
        x = _with_coords(_cut_batch(enc, b, c, rows, cols), top, left, (H, W))
        y = _cut_batch(plain_t[idx], b, c, rows, cols)
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def _cut_batch(x: torch.Tensor, b, c, rows, cols) -> torch.Tensor:
    """Per-sample crops: x[k, :, rows[k], cols[k]]."""
    return x[b, c, rows[:, None, :, None], cols[:, None, None, :]]


@torch.no_grad()
def invert(model: UNet, enc: np.ndarray) -> np.ndarray:
    """The model's reconstruction (uint8 HxWx3) of one encrypted image."""
    x = _to_tensor([enc])
    H, W = enc.shape[:2]
    x = _with_coords(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), (H, W))
    y = model(x)[0].permute(1, 2, 0).numpy()
    return (y * 255.0).round().clip(0, 255).astype(np.uint8)
