"""The model as attacker: does the server's own segmentation model know where each block came from?

The server holds the model. If its token features (the ViT encoder's last layer, one vector per
patch) carry each block's original position, whoever holds the model can undo block scrambling.
Two measurements, both trained only on the attacker's own scenes under fresh keys:

- a position probe: a linear classifier from a block's features to its original row and column;
  its accuracy against chance, and the image it reassembles (every block sent to the cell it is
  most probably from, as one linear assignment, then the colour states solved by the jigsaw
  solver's fixed-position pass);
- a learned compatibility: bilinear forms f_i^T W f_j scoring "j right of i" and "j below i",
  trained as a softmax over the image's blocks, given to the jigsaw solver in place of MGC.

Two controls say how much of the probe's accuracy needs the model's hidden features: the same
probe on ciphertext-only block statistics (no model), and on the model's own output per block (the
class probabilities of its label map, which the server sees by design: a block's class alone says
roughly where it was, sky at the top and road at the bottom).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encseg.attacks import jigsaw
from encseg.attacks.assignment import linear_assignment
from encseg.attacks.canonical import canonical_blocks
from encseg.cipher import Scheme
from encseg.errors import UserError


# -- models and their features -------------------------------------------------------------------------

def checkpoint_scheme(extra: dict) -> str | None:
    """The scheme a checkpoint was trained for, from its JSON (`encryption` or `train_config`)."""
    for enc in (extra.get("encryption"), (extra.get("train_config") or {}).get("encryption")):
        if isinstance(enc, dict) and enc.get("scheme") and enc.get("mode", "per-image") != "none":
            return str(enc["scheme"])
    return None


def load_model(path: str | Path):
    """(model in eval mode, its config, the scheme it was trained for or None) from a checkpoint."""
    from encseg.models import load_checkpoint

    model, config, extra = load_checkpoint(path)
    return model, config, checkpoint_scheme(extra)


@torch.no_grad()
def token_features(model, imgs: list[np.ndarray], block_size: int) -> np.ndarray:
    """(B, blocks, D) the encoder's last-layer features, averaged over the tokens of each cipher block
    (blocks row-major). The model's own input layers (canonicalisation) run first, as in its forward."""
    from encseg.models import normalize

    x = normalize(np.stack(imgs))
    if getattr(model, "canonical", None) is not None:
        x = model.canonical(x)
    f = model.encoder(x)[-1]  # [B, D, gh, gw]
    patch = model.config.patch_size
    if block_size % patch:
        raise UserError(f"cipher block {block_size} is not a multiple of the model's patch size {patch}")
    k = block_size // patch
    if k > 1:
        f = F.avg_pool2d(f, k)
    return f.flatten(2).transpose(1, 2).float().numpy()


@torch.no_grad()
def label_features(model, imgs: list[np.ndarray], block_size: int) -> np.ndarray:
    """(B, blocks, classes) the model's own output per cipher block (mean class probabilities): what
    the server sees anyway, since it returns the label map. A probe on these measures how much
    position the block's class alone gives away (sky is at the top whoever looks)."""
    from encseg.models import normalize

    prob = torch.softmax(model(normalize(np.stack(imgs))).float(), 1)
    return F.avg_pool2d(prob, block_size).flatten(2).transpose(1, 2).numpy()


def block_statistics(imgs: list[np.ndarray], p: int) -> np.ndarray:
    """(B, blocks, 72) ciphertext-only control features: each canonicalised block's 4 x 4 cell means
    and 8 quantiles of its values, per channel (no model)."""
    out = []
    for img in imgs:
        b = canonical_blocks(jigsaw.split_blocks(img, p)).astype(np.float32) / 255.0  # (N, p, p, 3)
        n = len(b)
        s = max(p // 4, 1)
        cells = b[:, : s * 4, : s * 4].reshape(n, 4, s, 4, s, 3).mean(axis=(2, 4)).reshape(n, -1)
        quant = np.quantile(b.reshape(n, -1, 3), np.linspace(0, 1, 8), axis=1).transpose(1, 0, 2).reshape(n, -1)
        out.append(np.concatenate([cells, quant], 1))
    return np.stack(out)


# -- the position probe ----------------------------------------------------------------------------------

@dataclass
class PositionProbe:
    """Linear row and column classifiers on standardised features."""

    mean: np.ndarray
    std: np.ndarray
    w_row: torch.Tensor
    w_col: torch.Tensor
    grid: tuple[int, int]

    def log_probs(self, feats: np.ndarray) -> np.ndarray:
        """(N, R*C) log-probability of every cell for each block (row and column independent)."""
        x = torch.from_numpy((feats - self.mean) / self.std).float()
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        with torch.no_grad():
            lr = F.log_softmax(x @ self.w_row, 1)
            lc = F.log_softmax(x @ self.w_col, 1)
        R, C = self.grid
        return (lr[:, :, None] + lc[:, None, :]).reshape(len(x), R * C).numpy()


def train_probe(feats: np.ndarray, sources: np.ndarray, grid: tuple[int, int], steps: int = 300,
                lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0, batch: int = 4096) -> PositionProbe:
    """Fit the probe: feats (M, D), sources (M,) original row-major block index of each feature
    (Adam on minibatches of `batch` features)."""
    R, C = grid
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    x = torch.from_numpy((feats - mean) / std).float()
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    r, c = (torch.from_numpy(v).long() for v in np.divmod(sources, C))
    g = torch.Generator().manual_seed(seed)
    w_row = (0.01 * torch.randn(x.shape[1], R, generator=g)).requires_grad_()
    w_col = (0.01 * torch.randn(x.shape[1], C, generator=g)).requires_grad_()
    opt = torch.optim.Adam([w_row, w_col], lr=lr)
    for _ in range(steps):
        i = torch.randint(len(x), (min(batch, len(x)),), generator=g) if len(x) > batch else slice(None)
        loss = F.cross_entropy(x[i] @ w_row, r[i]) + F.cross_entropy(x[i] @ w_col, c[i])
        loss = loss + weight_decay * (w_row.square().sum() + w_col.square().sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return PositionProbe(mean, std, w_row.detach(), w_col.detach(), grid)


def probe_accuracy(probe: PositionProbe, feats: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Row, column and exact-cell accuracy of the probe's most probable cell, with their chance levels."""
    R, C = probe.grid
    best = probe.log_probs(feats).argmax(1)
    br, bc = np.divmod(best, C)
    tr, tc = np.divmod(sources, C)
    return {"row": float(np.mean(br == tr)), "col": float(np.mean(bc == tc)), "exact": float(np.mean(best == sources)),
            "chance_row": 1.0 / R, "chance_col": 1.0 / C, "chance_exact": 1.0 / (R * C)}


def probe_placement(probe: PositionProbe, feats: np.ndarray) -> np.ndarray:
    """(R, C) the block put at each cell: the assignment of blocks to cells of greatest total
    log-probability (every cell gets one block)."""
    lp = probe.log_probs(feats)
    cell_of = linear_assignment(-lp)  # block -> cell
    placement = np.empty(len(lp), np.int64)
    placement[cell_of] = np.arange(len(lp))
    return placement.reshape(probe.grid)


# -- a learned compatibility for the jigsaw solver -------------------------------------------------------

@dataclass
class Compatibility:
    """Bilinear scores s(i, j) = x_i^T W x_j for "j right of i" (lr) and "j below i" (tb)."""

    mean: np.ndarray
    std: np.ndarray
    w_lr: torch.Tensor
    w_tb: torch.Tensor

    def dissimilarities(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x N non-negative dissimilarities (-log of the pair's probability, averaged over both
        directions of the softmax), for `jigsaw.dense_features`."""
        x = torch.from_numpy((feats - self.mean) / self.std).float()
        out = []
        with torch.no_grad():
            for w in (self.w_lr, self.w_tb):
                s = x @ w @ x.T
                s.fill_diagonal_(-1e9)
                d = -(F.log_softmax(s, 1) + F.log_softmax(s, 0)) / 2
                out.append(d.double().numpy())
        return out[0], out[1]


def _neighbour_pairs(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row-major index pairs (i, right of i) and (i, below i) on the plain grid."""
    R, C = grid
    idx = np.arange(R * C).reshape(R, C)
    return np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1), np.stack([idx[:-1].ravel(), idx[1:].ravel()], 1)


def train_compatibility(feats: np.ndarray, sources: np.ndarray, grid: tuple[int, int], steps: int = 200,
                        lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0, images: int = 4,
                        pairs: int = 128) -> Compatibility:
    """Fit the bilinear forms on attacker images: feats (B, N, D) in encrypted order, sources (B, N)
    original index of each block. Loss: softmax over the image's blocks for each true neighbour;
    each step takes `images` images and `pairs` neighbour pairs of each relation."""
    B, N, D = feats.shape
    mean, std = feats.reshape(-1, D).mean(0), feats.reshape(-1, D).std(0) + 1e-6
    x = torch.from_numpy((feats - mean) / std).float()
    pos = np.argsort(sources, axis=1)  # pos[b, k]: encrypted index of original block k
    neighbour_pairs = _neighbour_pairs(grid)
    g = torch.Generator().manual_seed(seed)
    ws = [(0.01 * torch.randn(D, D, generator=g)).requires_grad_() for _ in range(2)]
    opt = torch.optim.Adam(ws, lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        loss = 0.0
        bi = rng.choice(B, size=min(images, B), replace=False)
        for w, pr in zip(ws, neighbour_pairs):
            if not len(pr):
                continue
            pr = pr[rng.choice(len(pr), size=min(pairs, len(pr)), replace=False)]
            a = torch.from_numpy(pos[bi][:, pr[:, 0]])  # (b, P) encrypted index of the left/top member
            b = torch.from_numpy(pos[bi][:, pr[:, 1]])
            xb = x[torch.from_numpy(bi)]
            s = torch.gather(xb, 1, a[..., None].expand(-1, -1, D)) @ w @ xb.transpose(1, 2)  # (b, P, N)
            s = s.scatter(2, a[..., None], -1e9)  # a block is not its own neighbour
            loss = loss + F.cross_entropy(s.reshape(-1, N), b.reshape(-1))
        loss = loss + weight_decay * sum(w.square().sum() for w in ws)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Compatibility(mean, std, ws[0].detach(), ws[1].detach())


def solve_with(compat: Compatibility, feats: np.ndarray, blocks: np.ndarray, grid: tuple[int, int]) -> jigsaw.Solution:
    """The jigsaw solver's placement with the learned compatibility in place of MGC."""
    d_lr, d_tb = compat.dissimilarities(feats)
    return jigsaw.solve(blocks, grid, features=jigsaw.dense_features(d_lr, d_tb))


# -- attacker's training data --------------------------------------------------------------------------

def attacker_features(
    featurise: Callable[[list[np.ndarray]], np.ndarray],
    source: Callable[[int], np.ndarray],
    n: int,
    encrypt_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    batch: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, N, D) features and (n, N) original block indices of n attacker scenes, each encrypted by
    `encrypt_fn(img) -> (ciphertext, block sources)` (a fresh key each)."""
    feats, srcs = [], []
    for start in range(0, n, batch):
        encs = []
        for i in range(start, min(start + batch, n)):
            enc, src = encrypt_fn(source(i))
            encs.append(enc)
            srcs.append(src)
        feats.append(featurise(encs))
    return np.concatenate(feats), np.stack(srcs)


def block_sources(plan, n: int) -> np.ndarray:
    """Original row-major index of every encrypted block (identity without block scrambling)."""
    return np.arange(n) if plan.block_src is None else np.asarray(plan.block_src)


def scheme_scrambles(scheme: Scheme) -> bool:
    return any(s.name == "block-scramble" for s in scheme.steps)
