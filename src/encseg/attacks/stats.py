"""What leaks whatever the key: per-block statistics, colour histograms, and the size of the space
of ciphertexts a scheme can produce (the key-space formula)."""

from __future__ import annotations

import math

import numpy as np

from encseg.cipher import Scheme

KEY_BITS = 256


def keyspace_terms(scheme: Scheme, height: int, width: int) -> dict[str, float]:
    """log2 of the number of distinct draws of each step for a (padded) height x width image.

    With n = (H/p)(W/p) blocks: BS n!, PS (p^2)! (one permutation per image; (q^2)! when restricted
    to q x q sub-blocks), PSB ((p^2)!)^n (one per block; ((q^2)!)^n restricted), NP 2^n, CS 6^n.
    Every draw gives a different transformation and the steps act on independent coordinates (which block, where in the block, sign, channel order), so
    for an image with pairwise-distinct pixels the count of distinct ciphertexts is the product.
    Images with repeated content (flat areas) have fewer.
    """
    p = scheme.block_size
    n = math.ceil(height / p) * math.ceil(width / p)
    terms: dict[str, float] = {}
    for step in scheme.steps:
        if step.name == "block-scramble":
            terms[step.code] = math.lgamma(n + 1) / math.log(2)
        elif step.name == "pixel-shuffle":
            q = step.group or p
            terms[step.code] = math.lgamma(q * q + 1) / math.log(2)
        elif step.name == "block-pixel-shuffle":  # one permutation per block (format v2)
            q = step.group or p
            terms[step.code] = n * math.lgamma(q * q + 1) / math.log(2)
        elif step.name == "negative-positive":
            terms[step.code] = float(n)
        elif step.name == "channel-shuffle":
            terms[step.code] = n * math.log2(6)
    return terms


def keyspace_bits(scheme: Scheme, height: int, width: int) -> tuple[float, float]:
    """(log2 of the number of distinct ciphertexts of a generic image, the same capped at the
    256-bit key): a key can select at most 2^256 of them."""
    bits = sum(keyspace_terms(scheme, height, width).values())
    return bits, min(bits, float(KEY_BITS))


def block_moments(img: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block mean and variance over all pixels and channels, blocks in row-major order."""
    H, W = img.shape[:2]
    b = np.asarray(img, np.float64).reshape(H // p, p, W // p, p, -1).swapaxes(1, 2).reshape(-1, p * p * img.shape[2])
    return b.mean(axis=1), b.var(axis=1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return float("nan")
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def block_leakage(plain: np.ndarray, enc: np.ndarray, block_src: np.ndarray | None, p: int) -> dict[str, float]:
    """Pearson correlations between each plain block's statistics and those of the encrypted block
    made from it (`block_src[b]`: original index of encrypted block b; None when blocks stay put).

    mean: mean over the block's pixels and channels (NP maps it to 255 - mean);
    abs_mean: |mean - 127.5| (what survives NP); var: variance (kept by PS, NP and CS alike).
    """
    pm, pv = block_moments(plain, p)
    em, ev = block_moments(enc, p)
    if block_src is not None:
        pm, pv = pm[block_src], pv[block_src]
    return {
        "mean": _corr(pm, em),
        "abs_mean": _corr(np.abs(pm - 127.5), np.abs(em - 127.5)),
        "var": _corr(pv, ev),
    }


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Total-variation distance (0 = same, 1 = disjoint) between the joint colour histograms of two
    uint8 RGB images, with `bins` levels per channel."""
    def hist(x: np.ndarray) -> np.ndarray:
        q = (x.reshape(-1, 3).astype(np.int64) * bins) // 256
        h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3)
        return h / h.sum()

    return float(0.5 * np.abs(hist(a) - hist(b)).sum())


def _nearest_is_neighbour(d: np.ndarray, src: np.ndarray, p: int) -> float:
    """Fraction of positions whose nearest other position under the distance matrix `d` (p^2 x p^2)
    came from a true 4-neighbour of the plain block (`src[j]`: the plain position at position j)."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    r, c = np.divmod(np.asarray(src), p)
    return float(np.mean(np.abs(r - r[nearest]) + np.abs(c - c[nearest]) == 1))


def pixel_adjacency_leak(enc: np.ndarray, p: int, pixel_src: np.ndarray | None,
                         block_pixel_src: np.ndarray | None = None) -> float:
    """How much one ciphertext tells about its pixel-shuffle permutation: the fraction of pixel
    positions whose most similar position (mean over all blocks of sum_c |x_a - x_b|, a distance NP
    and CS leave unchanged) is a true 4-neighbour in the plain block. PS draws one permutation per
    image, shared by all its blocks, so every block is a sample of the same unknown arrangement.

    With one permutation per block (`block_pixel_src`, format v2 PSB) positions do not correspond
    across blocks, so each block is its own (single) sample: the distance is that block's own, and
    the fraction is the mean over blocks. nan when the scheme does not shuffle pixels."""
    H, W = enc.shape[:2]
    b = np.asarray(enc, np.float64).reshape(H // p, p, W // p, p, 3).swapaxes(1, 2).reshape(-1, p * p, 3)
    if block_pixel_src is not None:
        return float(np.mean([_nearest_is_neighbour(np.abs(blk[:, None, :] - blk[None, :, :]).sum(axis=2), src, p)
                              for blk, src in zip(b.astype(np.float32), np.asarray(block_pixel_src))]))
    if pixel_src is None:
        return float("nan")
    d = np.zeros((p * p, p * p))
    for c in range(3):
        x = b[:, :, c]
        for a in range(p * p):  # row by row keeps memory at (blocks x p^2)
            d[a] += np.abs(x - x[:, a : a + 1]).mean(axis=0)
    return _nearest_is_neighbour(d, pixel_src, p)
