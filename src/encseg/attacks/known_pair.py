"""Known-pair attack on a shared key: one (plain, encrypted) pair under a key gives away everything
that key does to any other image of the same size, with no learning.

Every step acts on whole blocks or on positions shared by all blocks: the encrypted block at b is
T_b(PS(plain block src[b])) with T_b one of 12 NP x CS colour maps. Sorting a block's pixels (as
24-bit RGB words) forgets PS, so matching sorted blocks under the 12 colour maps recovers src and
T_b; pixels that are equal in every matched block then pin the pixel permutation (one per image, or
one per block position with format v2's `psb`; several pairs narrow it down where pixels repeat).
This is why encseg uses a fresh key per image: a key is only ever applied to one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encseg.attacks.assignment import linear_assignment
from encseg.attacks.jigsaw import N_TRANSFORMS, apply_transform, inverse_transform, join_blocks, split_blocks


@dataclass
class RecoveredKey:
    """What a key does, as recovered from known pairs: encrypted block b came from plain block
    `block_src[b]` (-1: not found) under colour map `transforms[b]`, pixels gathered by `pixel_src`
    (one p*p gather for every block, or one row per block position for format v2's per-block PS)."""

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
        gather = np.broadcast_to(self.pixel_src, (len(blocks), p * p))[ok]
        y = np.empty_like(x)
        np.put_along_axis(y, gather[:, :, None], x, axis=1)  # y[gather[i]] = x[i]
        out[self.block_src[ok]] = y
        return join_blocks(out.reshape(-1, p, p, 3), self.grid)


def _words(blocks: np.ndarray) -> np.ndarray:
    """(n, p*p, 3) uint8 -> (n, p*p) int64 RGB words."""
    b = blocks.astype(np.int64)
    return (b[..., 0] << 16) | (b[..., 1] << 8) | b[..., 2]


def _match_blocks(pb: np.ndarray, eb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per encrypted block: the plain block and colour map whose sorted pixels it has (-1: none)."""
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
    return src, tr


def _gather(agree: np.ndarray, count: int) -> np.ndarray:
    """A gather consistent with every observation: the unique one when each encrypted position has
    a single plain position that always agreed, else a linear assignment maximising agreements."""
    m = len(agree)
    if count == 0:
        return np.arange(m)
    full = agree == count
    if np.all(full.sum(1) == 1):
        g = full.argmax(1)
        if len(np.unique(g)) == m:
            return g
    return linear_assignment(-agree.astype(np.float64))


def recover_key(plain: np.ndarray | list[np.ndarray], enc: np.ndarray | list[np.ndarray], block_size: int,
                per_block: bool = False) -> RecoveredKey:
    """Recover a shared key's effect from known (plain, encrypted) pairs of one padded size (one pair
    or lists of pairs). Block sources and colour maps come from the first pair; the pixel gather
    from every pair: encrypted position i may come from plain position j if their pixels are equal
    in every matched block (of every pair), and a linear assignment picks a gather among those.
    `per_block`: the scheme draws one pixel permutation per block position (format v2, `psb`)."""
    plains = plain if isinstance(plain, list) else [plain]
    encs = enc if isinstance(enc, list) else [enc]
    p = block_size
    grid = (plains[0].shape[0] // p, plains[0].shape[1] // p)
    n, m = grid[0] * grid[1], p * p
    agree = np.zeros((n if per_block else 1, m, m), np.int32)  # agree[g, i, j]: blocks where enc i equals plain j
    seen = np.zeros(n if per_block else 1, np.int32)  # matched blocks counted in each row of `agree`
    src = tr = None
    for k, (pl, en) in enumerate(zip(plains, encs)):
        pb = split_blocks(pl, p).reshape(-1, m, 3)
        eb = split_blocks(en, p).reshape(-1, m, 3)
        s, t = _match_blocks(pb, eb)
        if k == 0:
            src, tr = s, t
        for b in np.flatnonzero(s >= 0):
            a = _words(apply_transform(pb[s[b]][None, None], t[b])[0, 0])  # plain block, colour-mapped
            e = _words(eb[b][None])[0]
            agree[b if per_block else 0] += e[:, None] == a[None, :]
            seen[b if per_block else 0] += 1
    pixel_src = np.stack([_gather(a, k) for a, k in zip(agree, seen)])
    return RecoveredKey(grid, src, tr, pixel_src if per_block else pixel_src[0])
