"""A literal, block-by-block reading of docs/encryption-format.md (formats v1, v2 and v3): slow on purpose.

The tests use it as an oracle independent of the fused implementation in transform.py, and
benchmarks/bench_cipher.py uses it as the loop-over-blocks baseline that public scripts follow.
"""

from __future__ import annotations

import struct
from itertools import permutations

import numpy as np

from encseg.cipher.keys import Key
from encseg.cipher.keystream import step_stream
from encseg.cipher.scheme import Scheme

ORDERS = list(permutations(range(3)))


def _perm(key: Key, name: str, m: int) -> list[int]:
    data = step_stream(key, name, 8 * m)
    words = struct.unpack(f"<{m}Q", data)
    return sorted(range(m), key=lambda i: (words[i], i))


def _block_perms(key: Key, n: int, m: int) -> list[list[int]]:
    """Format v2: block b's permutation sorts words [b*m, (b+1)*m) of the block-pixel-shuffle stream."""
    words = struct.unpack(f"<{n * m}Q", step_stream(key, "block-pixel-shuffle", 8 * n * m))
    return [sorted(range(m), key=lambda i: (words[b * m + i], i)) for b in range(n)]


def _bits(key: Key, n: int) -> list[int]:
    return [w & 1 for w in struct.unpack(f"<{n}I", step_stream(key, "negative-positive", 4 * n))]


def _orders(key: Key, n: int) -> list[int]:
    m = n
    while True:
        words = struct.unpack(f"<{m}I", step_stream(key, "channel-shuffle", 4 * m))
        kept = [u % 6 for u in words if u < 2**32 - 2**32 % 6]
        if len(kept) >= n:
            return kept[:n]
        m += n


def _pixel_gather(perm: list[int], p: int, q: int) -> list[int]:
    """Position j of a block takes position src[j], sub-block by sub-block, as section 6 says."""
    src = [0] * (p * p)
    for a in range(p // q):
        for b in range(p // q):
            for j in range(q * q):
                dr, dc = a * q + j // q, b * q + j % q
                sr, sc = a * q + perm[j] // q, b * q + perm[j] % q
                src[dr * p + dc] = sr * p + sc
    return src


def reference_encrypt(img: np.ndarray, key: Key, scheme: Scheme) -> np.ndarray:
    """Encrypt with a Python loop over blocks, step by step, in list order."""
    p = scheme.block_size
    h, w = img.shape[:2]
    x = np.pad(img, ((0, -h % p), (0, -w % p), (0, 0)), mode="edge")
    nh, nw = x.shape[0] // p, x.shape[1] // p
    n = nh * nw
    blocks = [x[(b // nw) * p:(b // nw + 1) * p, (b % nw) * p:(b % nw + 1) * p].copy() for b in range(n)]
    for step in scheme.steps:
        if step.name == "block-scramble":
            perm = _perm(key, step.name, n)
            blocks = [blocks[perm[b]] for b in range(n)]
        elif step.name == "pixel-shuffle":
            q = step.group or p
            src = _pixel_gather(_perm(key, step.name, q * q), p, q)
            blocks = [blk.reshape(p * p, 3)[src].reshape(p, p, 3) for blk in blocks]
        elif step.name == "block-pixel-shuffle":
            q = step.group or p
            perms = _block_perms(key, n, q * q)  # perms[b]: for the block at position b now
            blocks = [blk.reshape(p * p, 3)[_pixel_gather(perms[b], p, q)].reshape(p, p, 3) for b, blk in enumerate(blocks)]
        elif step.name == "negative-positive":
            bits = _bits(key, n)
            blocks = [255 - blk if bit else blk for blk, bit in zip(blocks, bits)]
        elif step.name == "channel-shuffle":
            orders = _orders(key, n)
            blocks = [blk[:, :, list(ORDERS[o])] for blk, o in zip(blocks, orders)]
    out = np.empty_like(x)
    for b, blk in enumerate(blocks):
        out[(b // nw) * p:(b // nw + 1) * p, (b % nw) * p:(b % nw + 1) * p] = blk
    return out


def reference_decrypt(enc: np.ndarray, key: Key, scheme: Scheme, original_size: tuple[int, int]) -> np.ndarray:
    """Invert step by step in reverse order, looping over blocks."""
    p = scheme.block_size
    nh, nw = enc.shape[0] // p, enc.shape[1] // p
    n = nh * nw
    blocks = [enc[(b // nw) * p:(b // nw + 1) * p, (b % nw) * p:(b % nw + 1) * p].copy() for b in range(n)]
    for step in reversed(scheme.steps):
        if step.name == "block-scramble":
            perm = _perm(key, step.name, n)
            restored = [None] * n
            for b in range(n):
                restored[perm[b]] = blocks[b]
            blocks = restored
        elif step.name == "pixel-shuffle":
            q = step.group or p
            inv = np.argsort(_pixel_gather(_perm(key, step.name, q * q), p, q))
            blocks = [blk.reshape(p * p, 3)[inv].reshape(p, p, 3) for blk in blocks]
        elif step.name == "block-pixel-shuffle":
            q = step.group or p
            perms = _block_perms(key, n, q * q)
            blocks = [blk.reshape(p * p, 3)[np.argsort(_pixel_gather(perms[b], p, q))].reshape(p, p, 3)
                      for b, blk in enumerate(blocks)]
        elif step.name == "negative-positive":
            blocks = [255 - blk if bit else blk for blk, bit in zip(blocks, _bits(key, n))]
        elif step.name == "channel-shuffle":
            blocks = [blk[:, :, list(np.argsort(ORDERS[o]))] for blk, o in zip(blocks, _orders(key, n))]
    out = np.empty_like(enc)
    for b, blk in enumerate(blocks):
        out[(b // nw) * p:(b // nw + 1) * p, (b % nw) * p:(b % nw + 1) * p] = blk
    return out[: original_size[0], : original_size[1]]


def _groups_of_block(p: int, q: int) -> list[list[tuple[int, int]]]:
    """The (row, column) cells of each q x q group of a p x p block: groups row-major, cells row-major."""
    return [[(a * q + j // q, b * q + j % q) for j in range(q * q)] for a in range(p // q) for b in range(p // q)]


def reference_arrange(enc: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """Format v3 (section 13.1), one group at a time: each group's pixels sorted by (K_j, j), with
    K = (299 R + 587 G + 114 B) * 2^24 + R * 2^16 + G * 2^8 + B. Returns the arranged image and, per
    group (blocks row-major, then groups), the (row, column) of the ciphertext pixel at each slot."""
    p = scheme.block_size
    step = next(s for s in scheme.steps if s.name in ("pixel-shuffle", "block-pixel-shuffle"))
    q = step.group or p
    out = enc.copy()
    sources = []
    for br in range(enc.shape[0] // p):
        for bc in range(enc.shape[1] // p):
            for cells in _groups_of_block(p, q):
                pos = [(br * p + r, bc * p + c) for r, c in cells]
                pix = [tuple(int(v) for v in enc[y, x]) for y, x in pos]
                keys = [(299 * r + 587 * g + 114 * b) * 2**24 + r * 2**16 + g * 2**8 + b for r, g, b in pix]
                order = sorted(range(len(pos)), key=lambda j: (keys[j], j))
                for slot, j in enumerate(order):
                    out[pos[slot]] = enc[pos[j]]
                sources.append([pos[j] for j in order])
    return out, sources


def reference_restore_labels(labels: np.ndarray, enc: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Section 13.2: a label map in arranged geometry moved back to the ciphertext's geometry."""
    p = scheme.block_size
    step = next(s for s in scheme.steps if s.name in ("pixel-shuffle", "block-pixel-shuffle"))
    q = step.group or p
    _, sources = reference_arrange(enc, scheme)
    out = labels.copy()
    g = 0
    for br in range(enc.shape[0] // p):
        for bc in range(enc.shape[1] // p):
            for cells in _groups_of_block(p, q):
                for slot, (r, c) in enumerate(cells):
                    out[sources[g][slot]] = labels[br * p + r, bc * p + c]
                g += 1
    return out
