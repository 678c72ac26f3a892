"""Block canonicalisation from the ciphertext alone: the attacker's (numpy) version of what the
server may do before any model sees a block.

Per p x p block: undo NP when the block's mean over pixels and channels is above 127.5
(x -> 255 - x), then order the block's three channels by ascending channel mean. Ties are broken
deterministically (a channel-mean tie by the channels' values read in pixel order, a mean of exactly
127.5 by taking the lexicographically smaller of the two candidates), so every one of the 12
NP x CS variants of a block maps to the same block: the NP/CS state, uniform noise under a
per-image key, is removed and nothing else is.
"""

from __future__ import annotations

import numpy as np

from encseg.attacks.jigsaw import join_blocks, split_blocks


def _order_channels(x: np.ndarray) -> np.ndarray:
    """(N, m, 3) uint8 -> channels sorted by (sum, values in pixel order), per block."""
    sums = x.astype(np.int64).sum(axis=1)  # (N, 3)
    order = np.argsort(sums, axis=1, kind="stable")
    s = np.take_along_axis(sums, order, axis=1)
    tied = np.flatnonzero((s[:, 0] == s[:, 1]) | (s[:, 1] == s[:, 2]))
    for b in tied:  # rare: equal channel sums; decide by the channels' values
        ch = [x[b, :, c].tobytes() for c in range(3)]
        order[b] = sorted(range(3), key=lambda c: (int(sums[b, c]), ch[c]))
    return np.take_along_axis(x, order[:, None, :], axis=2)


def canonical_blocks(blocks: np.ndarray) -> np.ndarray:
    """Canonical form of uint8 blocks (N, ..., 3): the same array for every NP x CS variant."""
    shape = blocks.shape
    x = np.ascontiguousarray(blocks).reshape(shape[0], -1, 3)
    twice_sum = 2 * x.astype(np.int64).sum(axis=(1, 2))
    limit = 255 * x.shape[1] * 3  # 2 * 127.5 * values per block
    neg = twice_sum > limit
    y = _order_channels(np.where(neg[:, None, None], 255 - x, x).astype(np.uint8))
    for b in np.flatnonzero(twice_sum == limit):  # mean exactly 127.5: both candidates, keep the smaller
        other = _order_channels((255 - x[b : b + 1]).astype(np.uint8))[0]
        if other.tobytes() < y[b].tobytes():
            y[b] = other
    return y.reshape(shape)


def canonicalise(img: np.ndarray, p: int) -> np.ndarray:
    """Canonicalise every p x p block of an image (H, W, 3 uint8, sides multiples of p)."""
    H, W = img.shape[:2]
    return join_blocks(canonical_blocks(split_blocks(img, p)), (H // p, W // p))
