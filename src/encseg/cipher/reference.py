"""A literal, block-by-block reading of docs/encryption-format.md (formats v1 and v2): slow on purpose.

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
