"""Known-pair attack on a shared key: one (plain, encrypted) pair under a key gives away everything
that key does to any other image of the same size, with no learning.

Every step acts on whole blocks or on positions shared by all blocks: the encrypted block at b is
T_b(PS(plain block src[b])) with T_b one of 12 NP x CS colour maps. Sorting a block's pixels (as
24-bit RGB words) forgets PS, so matching sorted blocks under the 12 colour maps recovers src and
T_b; a block whose pixels are all distinct then pins the pixel permutation. This is why encseg uses
a fresh key per image: a key is only ever applied to one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encseg.attacks.jigsaw import N_TRANSFORMS, apply_transform, inverse_transform, join_blocks, split_blocks


@dataclass
class RecoveredKey:
    """What a key does, as recovered from one pair: encrypted block b came from plain block
    `block_src[b]` (-1: not found) under colour map `transforms[b]`, pixels gathered by `pixel_src`."""

    grid: tuple[int, int]
    block_src: np.ndarray
    transforms: np.ndarray
    pixel_src: np.ndarray

    def decrypt(self, enc: np.ndarray) -> np.ndarray:
        """Undo the recovered transformation on another ciphertext of the same key (unmatched
        blocks stay black)."""
        p = enc.shape[0] // self.grid[0]
        blocks = split_blocks(enc, p).reshape(-1, p * p, 3)
        out = np.zeros_like(blocks)
        ok = self.block_src >= 0
        undo = np.array([inverse_transform(t) for t in self.transforms])
        x = apply_transform(blocks[ok][:, None], undo[ok])[:, 0]  # (m, p*p, 3) via a 1 x p*p "block"
        y = np.empty_like(x)
        y[:, self.pixel_src] = x
        out[self.block_src[ok]] = y
        return join_blocks(out.reshape(-1, p, p, 3), self.grid)


def _words(blocks: np.ndarray) -> np.ndarray:
    """(n, p*p, 3) uint8 -> (n, p*p) int64 RGB words."""
    b = blocks.astype(np.int64)
    return (b[..., 0] << 16) | (b[..., 1] << 8) | b[..., 2]


def recover_key(plain: np.ndarray, enc: np.ndarray, block_size: int) -> RecoveredKey:
    """Recover a shared key's effect from one (plain, encrypted) pair of the same padded size."""
    p = block_size
    grid = (plain.shape[0] // p, plain.shape[1] // p)
    pb = split_blocks(plain, p).reshape(-1, p * p, 3)
    eb = split_blocks(enc, p).reshape(-1, p * p, 3)
    n = len(pb)
    table: dict[bytes, tuple[int, int]] = {}
    for t in range(N_TRANSFORMS):
        words = np.sort(_words(apply_transform(pb[:, None], t)[:, 0]), axis=1)
        for j in range(n):
            table.setdefault(words[j].tobytes(), (j, t))
    enc_words = np.sort(_words(eb), axis=1)
    src = np.full(n, -1)
    tr = np.zeros(n, int)
    for b in range(n):
        hit = table.get(enc_words[b].tobytes())
        if hit is not None:
            src[b], tr[b] = hit
    # pixel permutation: vote over matched blocks whose pixels are all distinct
    votes = np.zeros((p * p, p * p), int)
    for b in np.flatnonzero(src >= 0):
        a = _words(apply_transform(pb[src[b]][None, None], tr[b])[0, 0])  # plain block, colour-mapped
        if len(np.unique(a)) < p * p:
            continue
        order = np.argsort(a)
        k = order[np.searchsorted(a[order], _words(eb[b][None])[0])]
        votes[np.arange(p * p), k] += 1
    pixel_src = votes.argmax(axis=1) if votes.any() else np.arange(p * p)
    return RecoveredKey(grid, src, tr, pixel_src)
