"""The key stream of formats v1 and v2: an HKDF-SHA256 sub-key per step, AES-256-CTR over zero bytes,
and the draws made from it (permutations, one permutation per block, negate bits, channel orders).
See docs/encryption-format.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from itertools import permutations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encseg.cipher.keys import Key
from encseg.cipher.scheme import (
    BLOCK_PIXEL_SHUFFLE,
    BLOCK_SCRAMBLE,
    CHANNEL_SHUFFLE,
    NEGATIVE_POSITIVE,
    PIXEL_SHUFFLE,
    Scheme,
)

try:  # the optional C kernel (setup.py): same bytes as the numpy paths, faster; GIL released
    if os.environ.get("ENCSEG_NO_KERNEL"):
        raise ImportError
    from encseg.cipher import _blockkernel as _kernel
except ImportError:
    _kernel = None
# a kernel built before format v2 lacks the per-block entry points: v2 steps then take the numpy path
KERNEL_HAS_V2 = _kernel is not None and hasattr(_kernel, "argsort_rows_u64")

SALT = b"encseg/v1"  # the derivation's fixed label, for every step of every format version (v2 too)
# The six channel orders, lexicographic: RGB, RBG, GRB, GBR, BRG, BGR. out[c] = in[order[c]].
CHANNEL_ORDERS = np.array(list(permutations(range(3))), dtype=np.intp)
_CS_LIMIT = 2**32 - (2**32 % 6)  # words >= this are dropped so `u mod 6` is uniform


def _encryptor(key: Key, step_name: str):
    sub = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=step_name.encode("ascii")).derive(key.to_bytes())
    return Cipher(algorithms.AES(sub), modes.CTR(bytes(16))).encryptor()


def step_stream(key: Key, step_name: str, nbytes: int) -> bytes:
    """The first `nbytes` of the step's stream: AES-256-CTR(HKDF(key, salt, info=step), counter 0)."""
    enc = _encryptor(key, step_name)
    return enc.update(bytes(nbytes)) + enc.finalize()


_ZEROS = bytes(1 << 18)


def _stream_chunks(key: Key, step_name: str, nbytes: int, chunk: int = len(_ZEROS)):
    """step_stream's bytes, `chunk` at a time (the last one shorter), each encrypted into one reused
    buffer: a long stream never lives in memory whole, and the zero input stays in cache. The view
    yielded is overwritten by the next one."""
    enc = _encryptor(key, step_name)
    buf = memoryview(bytearray(chunk + 15))  # update_into wants block_size - 1 spare bytes
    zeros = memoryview(bytes(chunk)) if chunk > len(_ZEROS) else memoryview(_ZEROS)[:chunk]
    for off in range(0, nbytes, chunk):
        k = min(chunk, nbytes - off)
        enc.update_into(zeros[:k], buf[:k + 15])
        yield buf[:k]


def draw_permutation(key: Key, step_name: str, n: int) -> np.ndarray:
    """A permutation of n: indices sorted by (k_i, i) for little-endian uint64 words k_i (stable argsort)."""
    data = step_stream(key, step_name, 8 * n)
    if _kernel is not None:  # radix sort in C: ~10x numpy's timsort for the 8192 blocks of 1024x2048
        out = np.empty(n, np.int64)
        _kernel.stable_argsort_u64(data, out)
        return out
    return np.argsort(np.frombuffer(data, dtype="<u8"), kind="stable")


def draw_block_permutations(key: Key, n: int, m: int) -> np.ndarray:
    """n permutations of m (format v2, block-pixel-shuffle), one row per block: row b is the stable
    argsort of little-endian uint64 words [b*m, (b+1)*m) of the step's stream."""
    out = np.empty((n, m), np.int64)
    rows = max(1, len(_ZEROS) // (8 * m))  # rows sorted per chunk of the stream, while it is in cache
    for i, data in enumerate(_stream_chunks(key, BLOCK_PIXEL_SHUFFLE, 8 * n * m, 8 * m * rows)):
        dest = out[i * rows:(i + 1) * rows]
        if _kernel is not None and KERNEL_HAS_V2:
            _kernel.argsort_rows_u64(data, dest, m)
        else:
            dest[:] = np.argsort(np.frombuffer(data, dtype="<u8").reshape(-1, m), axis=1, kind="stable")
    return out


def draw_negate_bits(key: Key, n: int) -> np.ndarray:
    """One bool per block: bit 0 of a little-endian uint32 word."""
    words = np.frombuffer(step_stream(key, NEGATIVE_POSITIVE, 4 * n), dtype="<u4")
    return (words & 1).astype(bool)


def draw_channel_orders(key: Key, n: int) -> np.ndarray:
    """One index into CHANNEL_ORDERS per block, from uint32 words with rejection of the top 4 values."""
    m = n + 8
    while True:  # the stream is a prefix-stable function of its length, so asking for more is safe
        words = np.frombuffer(step_stream(key, CHANNEL_SHUFFLE, 4 * m), dtype="<u4")
        kept = words[words < _CS_LIMIT]
        if kept.size >= n:
            return (kept[:n] % 6).astype(np.intp)
        m *= 2


def expand_group_permutation(perm_q: np.ndarray, p: int, q: int) -> np.ndarray:
    """The p*p gather that applies a permutation of q*q positions inside every q x q sub-block
    (along the last axis: one row of permutations, one per block, gives one row of gathers)."""
    r, c = np.divmod(np.arange(p * p), p)
    base = (r // q) * q * p + (c // q) * q  # the top-left pixel of each position's sub-block
    offset = np.arange(q * q) // q * p + np.arange(q * q) % q  # a sub-block position's offset from it
    j = (r % q) * q + (c % q)  # each position's index inside its sub-block
    return base + offset[perm_q[..., j]]


def _rows_by_final_position(origin_then: np.ndarray, origin: np.ndarray) -> np.ndarray | None:
    """For each final block position, the position its block had when `origin_then` was the state
    (positions -> original blocks); None when no block has moved since."""
    then = np.empty_like(origin_then)
    then[origin_then] = np.arange(origin_then.size)  # original block -> its position then
    rows = then[origin]
    return None if np.array_equal(rows, np.arange(rows.size)) else rows


@dataclass(frozen=True, repr=False)
class Plan:
    """What a key does to an image of nh x nw blocks, fused into one gather and per-block flips.

    Encrypted block b is original block `block_src[b]` with its pixels gathered by `pixel_src` (one
    p*p gather for every block, pixel-shuffle) or by its own row `block_pixel_src[b]` (an n x p*p
    array, block-pixel-shuffle, expanded on first use from `block_perms[b]`, block b's permutation of
    q*q positions with q = `block_group`; at most one of the two is set), channels reordered by
    CHANNEL_ORDERS[orders[b]] and negated where `negate[b]`. `draws` keeps each step's raw draw (for
    test vectors). Holds no key; still derived from one, so it is not printed.
    """

    block_size: int
    grid: tuple[int, int]
    block_src: np.ndarray | None
    pixel_src: np.ndarray | None
    negate: np.ndarray | None
    orders: np.ndarray | None
    draws: dict
    block_perms: np.ndarray | None = None
    block_group: int | None = None

    @cached_property
    def block_pixel_src(self) -> np.ndarray | None:
        if self.block_perms is None:
            return None
        q, p = self.block_group, self.block_size
        return self.block_perms if q == p else expand_group_permutation(self.block_perms, p, q)

    def __repr__(self) -> str:
        return f"Plan(block_size={self.block_size}, grid={self.grid})"


def make_plan(key: Key, scheme: Scheme, nh: int, nw: int) -> Plan:
    """Derive every draw for an image of nh x nw blocks and fuse the steps (see Plan)."""
    p, n = scheme.block_size, nh * nw
    origin = np.arange(n)  # origin[b]: which original block sits at position b right now
    block_src = pixel_src = block_perms = block_group = negate = orders = None
    draws: dict = {}
    for step in scheme.steps:
        if step.name == BLOCK_SCRAMBLE:
            perm = draw_permutation(key, BLOCK_SCRAMBLE, n)
            draws[step.name] = perm
            origin = origin[perm]
            block_src = origin
        elif step.name == PIXEL_SHUFFLE:
            q = step.group or p
            perm = draw_permutation(key, PIXEL_SHUFFLE, q * q)
            draws[step.name] = perm
            pixel_src = perm if q == p else expand_group_permutation(perm, p, q)
        elif step.name == BLOCK_PIXEL_SHUFFLE:
            q = step.group or p
            perms = draw_block_permutations(key, n, q * q)  # row b: the block at position b now
            draws[step.name] = perms
            block_perms, block_group, origin_then = perms, q, origin  # re-indexed at the end
        elif step.name == NEGATIVE_POSITIVE:
            bits = draw_negate_bits(key, n)
            draws[step.name] = bits
            negate = np.empty(n, bool)
            negate[origin] = bits  # the bit travels with the block it was drawn for
        elif step.name == CHANNEL_SHUFFLE:
            draw = draw_channel_orders(key, n)
            draws[step.name] = draw
            orders = np.empty(n, np.intp)
            orders[origin] = draw
    # per-block flags were stored by original block; re-index them by final position
    if negate is not None:
        negate = negate[origin]
    if orders is not None:
        orders = orders[origin]
    if block_perms is not None:
        rows = _rows_by_final_position(origin_then, origin)
        if rows is not None:
            block_perms = block_perms[rows]
    return Plan(p, (nh, nw), block_src, pixel_src, negate, orders, draws, block_perms, block_group)
