"""Learned inverse attack: a small U-Net trained on (encrypted, plain) pairs to map ciphertexts back
to images (the ITN / known-pair attack of Sirichotedumrong, Kinoshita & Kiya, arXiv 1912.04746).

Two settings: "shared" (every pair and the victim's image under one key: the attacker learns that
key's mapping) and "per-image" (a fresh key for every pair each time it is drawn and for the victim:
the attacker can only learn what all keys have in common). The network works on the block grid
(see UNet), which makes the within-block steps (PS, NP, CS) easy to learn for one key; a fixed
block permutation is only learnable within the U-Net's receptive field on the grid.
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
    width: int = 32  # channels of the first U-Net level (x2 per level)
    depth: int = 3  # U-Net levels over the block grid
    steps: int = 200
    batch: int = 8
    lr: float = 3e-3
    seed: int = 0


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encrypted RGB -> plain RGB (both in [0, 1]) through a U-Net over the block grid.

    Each p x p block is unfolded into one 3p^2 vector (pixel_unshuffle), so a 1x1 layer can undo any
    within-block pixel permutation, channel order or negation exactly; 3x3 convolutions on the grid
    mix neighbouring blocks; a learned embedding per block position lets the shared-key attacker learn
    position-dependent mappings (a fixed key's per-block NP/CS states). The output is folded back.
    """

    def __init__(self, block_size: int, grid: tuple[int, int], width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.p, self.grid = block_size, tuple(grid)
        d = 3 * block_size**2
        self.embed = nn.Sequential(nn.Conv2d(d, 2 * width, 1), nn.ReLU(inplace=True), nn.Conv2d(2 * width, width, 1))
        self.pos = nn.Parameter(torch.zeros(1, width, *self.grid))
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = width
        for c in chans:
            self.down.append(_conv_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(_conv_block(cin + c, c))
            cin = c
        self.head = nn.Sequential(nn.Conv2d(cin + d, 4 * width, 1), nn.ReLU(inplace=True), nn.Conv2d(4 * width, d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.pixel_unshuffle(x, self.p)  # (B, 3p^2, R, C)
        if tuple(v.shape[-2:]) != self.grid:
            raise ValueError(f"the model was trained on a {self.grid} block grid, got {tuple(v.shape[-2:])}")
        h = self.embed(v) + self.pos
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.max_pool2d(h, 2, ceil_mode=True)
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1))
        return torch.sigmoid(F.pixel_shuffle(self.head(torch.cat([h, v], 1)), self.p))


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
    every image every time it is drawn (keys are never kept). Whole images, L1 loss, AdamW.
    """
    if mode not in ("shared", "per-image"):
        raise ValueError(f"mode must be shared or per-image (got {mode!r})")
    if mode == "shared" and shared_key is None:
        raise ValueError("shared mode needs a key")
    p = scheme.block_size
    H, W = plains[0].shape[:2]
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = UNet(p, (H // p, W // p), cfg.width, cfg.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.15)
    plain_t = _to_tensor(plains)
    enc_fixed = _to_tensor([encrypt(x, shared_key, scheme).data for x in plains]) if mode == "shared" else None
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(len(plains), (min(cfg.batch, len(plains)),), generator=g)
        if mode == "shared":
            x = enc_fixed[idx]
        else:
            x = _to_tensor([encrypt(plains[i], Key.generate(), scheme).data for i in idx.tolist()])
        loss = F.l1_loss(model(x), plain_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def invert(model: UNet, enc: np.ndarray) -> np.ndarray:
    """The model's reconstruction (uint8 HxWx3) of one encrypted image."""
    y = model(_to_tensor([enc]))[0].permute(1, 2, 0).numpy()
    return (y * 255.0).round().clip(0, 255).astype(np.uint8)
