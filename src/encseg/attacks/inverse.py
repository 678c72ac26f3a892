"""Learned inverse attack at an attacker's budget: a U-Net trained on (encrypted, plain) pairs to map
ciphertexts back to images (the ITN / known-pair attack of Sirichotedumrong, Kinoshita & Kiya, arXiv
1912.04746), on as many pairs as a time budget allows.

The attacker knows the public scheme and owns a scene generator (here the street renderer, with its
own seeds, disjoint from the victims' scenes). Pairs are made on the fly: every step renders a new
scene into a pool and draws a batch from it, each image encrypted under a fresh key (the per-image
setting: the attacker can only learn what all keys have in common) or under the one key of the
shared setting (the attacker has pairs under the victim's key). The budget is wall time
(`InverseConfig.minutes`), and a learning curve (held-out L1 and luminance SSIM against time)
shows whether more time would help. The attacker may also do anything the server can: with NP or
CS in the scheme, the network sees the canonicalised ciphertext (`encseg.attacks.canonical`) beside
the raw one, so a per-image key's NP/CS noise is removed before learning starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from encseg.attacks import metrics
from encseg.attacks.canonical import canonicalise
from encseg.cipher import Key, Scheme, encrypt


@dataclass
class InverseConfig:
    width: int = 32  # channels of the first U-Net level (x2 per level)
    depth: int = 3  # U-Net levels over the block grid
    batch: int = 8
    lr: float = 2e-3
    minutes: float = 10.0  # wall-time budget of one model (rendering, encryption and training together)
    max_steps: int = 0  # 0: no cap (the budget decides); tests cap the steps
    pool: int = 512  # attacker scenes kept; one new scene per `render_every` steps, the oldest dropped
    render_every: int = 1
    canonical: bool = True  # also feed the canonicalised ciphertext when the scheme has NP or CS
    curve_points: int = 10  # evaluations on held-out attacker scenes along the budget
    seed: int = 0


@dataclass
class InverseResult:
    """A trained inverse and how it got there (`curve`: one dict per evaluation)."""

    model: "UNet"
    mode: str
    steps: int
    pairs: int  # (encrypted, plain) pairs seen, each with its own draw of the key in per-image mode
    scenes: int  # distinct plain scenes rendered
    seconds: float
    curve: list[dict] = field(default_factory=list)


def uses_canonical(scheme: Scheme, cfg: InverseConfig) -> bool:
    return cfg.canonical and any(s.name in ("negative-positive", "channel-shuffle") for s in scheme.steps)


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
    With `canonical`, the input has 6 channels: the ciphertext and its canonicalised blocks.
    """

    def __init__(self, block_size: int, grid: tuple[int, int], width: int = 32, depth: int = 3,
                 canonical: bool = False) -> None:
        super().__init__()
        self.p, self.grid, self.canonical = block_size, tuple(grid), canonical
        d = (6 if canonical else 3) * block_size**2
        d_out = 3 * block_size**2
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
        self.head = nn.Sequential(nn.Conv2d(cin + d, 4 * width, 1), nn.ReLU(inplace=True), nn.Conv2d(4 * width, d_out, 1))

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


def model_input(encs: list[np.ndarray], p: int, canonical: bool) -> torch.Tensor:
    """The network's input for ciphertexts: RGB in [0, 1], and their canonical blocks when asked."""
    x = _to_tensor(encs)
    if canonical:
        x = torch.cat([x, _to_tensor([canonicalise(e, p) for e in encs])], 1)
    return x


def _lr_at(frac: float, cfg: InverseConfig) -> float:
    """Linear warm-up over the first 5% of the budget, then cosine to zero."""
    frac = min(max(frac, 0.0), 1.0)
    return cfg.lr * min(1.0, frac / 0.05 + 1e-3) * 0.5 * (1 + math.cos(math.pi * frac))


def train_inverse(
    source: Callable[[int], np.ndarray],
    scheme: Scheme,
    mode: str,
    cfg: InverseConfig,
    val: list[np.ndarray],
    shared_key: Key | None = None,
    tick: Callable[[float], None] = lambda frac: None,
) -> InverseResult:
    """Train the U-Net on pairs made on the fly from `source(i)` (the attacker's i-th plain scene,
    uint8 HxWx3, sides multiples of the block size) until the budget is spent.

    mode "per-image": a fresh key for every pair (keys are never kept); "shared": every pair under
    `shared_key`. `val`: held-out attacker scenes for the learning curve, each encrypted once (its own
    key, or the shared one). L1 loss, AdamW, time-based warm-up + cosine schedule. `tick(frac)`
    reports progress (fraction of the budget spent).
    """
    if mode not in ("shared", "per-image"):
        raise ValueError(f"mode must be shared or per-image (got {mode!r})")
    if mode == "shared" and shared_key is None:
        raise ValueError("shared mode needs a key")
    p = scheme.block_size
    canon = uses_canonical(scheme, cfg)
    first = source(0)
    H, W = first.shape[:2]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = UNet(p, (H // p, W // p), cfg.width, cfg.depth, canonical=canon)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)

    def key() -> Key:
        return shared_key if mode == "shared" else Key.generate()

    val_enc = [encrypt(x, key(), scheme).data for x in val]
    val_in = model_input(val_enc, p, canon) if val else None
    budget = max(cfg.minutes * 60.0, 1e-3)
    pool = [first]
    n_scenes = 1
    steps = pairs = 0
    ema = None
    curve: list[dict] = []
    t0 = time.perf_counter()
    next_eval = 0.0

    def evaluate(elapsed: float) -> None:
        row = {"seconds": round(elapsed, 2), "step": steps, "pairs": pairs, "scenes": n_scenes,
               "train_l1": None if ema is None else round(ema * 255, 3)}
        if val:
            model.eval()
            with torch.no_grad():
                out = [invert(model, e, x[None]) for e, x in zip(val_enc, val_in)]
            model.train()
            row["val_l1"] = round(float(np.mean([np.abs(o.astype(float) - v).mean() for o, v in zip(out, val)])), 3)
            row["val_ssim_lum"] = round(float(np.mean([metrics.ssim_luminance(o, v) for o, v in zip(out, val)])), 4)
        curve.append(row)

    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= next_eval:
            evaluate(elapsed)
            next_eval += budget / max(cfg.curve_points, 1)
            elapsed = time.perf_counter() - t0
        if elapsed >= budget or (cfg.max_steps and steps >= cfg.max_steps):
            break
        if steps % max(cfg.render_every, 1) == 0 and steps:
            img = source(n_scenes)
            n_scenes += 1
            if len(pool) < cfg.pool:
                pool.append(img)
            else:
                pool[n_scenes % cfg.pool] = img
        idx = rng.integers(len(pool), size=cfg.batch)
        plains = [pool[i] for i in idx]
        x = model_input([encrypt(im, key(), scheme).data for im in plains], p, canon)
        loss = F.l1_loss(model(x), _to_tensor(plains))
        frac = max(elapsed / budget, steps / cfg.max_steps if cfg.max_steps else 0.0)  # whichever ends first
        for g in opt.param_groups:
            g["lr"] = _lr_at(frac, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        pairs += len(plains)
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        tick(min(frac, 1.0))
    # Rounded as the curve's rows are (rounding is monotone), so no row lies past the result's time.
    seconds = round(time.perf_counter() - t0, 2)
    if not curve or curve[-1]["step"] != steps:
        evaluate(seconds)
    model.eval()
    return InverseResult(model, mode, steps, pairs, n_scenes, seconds, curve)


@torch.no_grad()
def invert(model: UNet, enc: np.ndarray, x: torch.Tensor | None = None) -> np.ndarray:
    """The model's reconstruction (uint8 HxWx3) of one encrypted image (`x`: its prepared input)."""
    if x is None:
        x = model_input([enc], model.p, model.canonical)
    was = model.training
    model.eval()
    y = model(x)[0].permute(1, 2, 0).numpy()
    model.train(was)
    return (y * 255.0).round().clip(0, 255).astype(np.uint8)
