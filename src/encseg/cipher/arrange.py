"""The sorted arrangement (docs/encryption-format.md, section 13): how a pixel-shuffled ciphertext
travels as JPEG without paying for the shuffle.

A scheme with `pixel-shuffle` or `block-pixel-shuffle` (group q, or the block size p) leaves every
q x q group of the ciphertext holding a key-dependent arrangement of its pixels. A server whose
model is order-free inside each group (encseg's sorted and DeepSets embeddings, by construction)
gets the same answer whatever the order, so the client may send each group's pixels **sorted**
instead: by luminance 299 R + 587 G + 114 B, then R, G, B, laid out row-major in the group. The
sorted group is a function of the group's pixel multiset alone, which the shuffled group shows
anyway, so the server learns nothing it did not; and a smooth ramp costs JPEG a fraction of the
bytes of shuffled noise (docs/benchmarks.md).

The server's label map comes back in the arranged geometry; `restore_labels` moves it to the
ciphertext's geometry, recomputing the order from the ciphertext the client still holds, and then
`decrypt_mask` undoes the cipher's geometry as usual. The order is never stored or sent: like the
ciphertext it is rebuilt from the plain image and the key (`encrypt` is deterministic).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from encseg.cipher.scheme import GROUPED_STEPS, Scheme
from encseg.errors import UserError

SORTED = "sorted"
ARRANGEMENTS = ("none", SORTED)
LUMA = (299, 587, 114)  # integer BT.601 weights: the primary sort key


def arrangement_group(scheme: Scheme) -> int | None:
    """The side q of the groups whose pixel order the scheme makes meaningless, or None if it has no
    pixel-shuffle step (then nothing may be sorted: the order carries the image)."""
    for step in scheme.steps:
        if step.name in GROUPED_STEPS:
            return step.group or scheme.block_size
    return None


def check_arrangement(scheme: Scheme, arrangement: str) -> str:
    """Refuse, in one line, an arrangement the scheme does not allow; return it."""
    if arrangement not in ARRANGEMENTS:
        raise UserError(f"the arrangement is {' or '.join(ARRANGEMENTS)} (got {arrangement!r})")
    if arrangement == SORTED and arrangement_group(scheme) is None:
        raise UserError(
            f"the sorted arrangement needs a scheme with pixel shuffling (ps or psb); in {scheme.name} the "
            "pixel order inside a block is part of the image"
        )
    return arrangement


@lru_cache(maxsize=16)
def _group_index(height: int, width: int, p: int, q: int) -> np.ndarray:
    """[G, q*q] flat (row-major) pixel indices of every q x q group: blocks row-major, their groups
    row-major, pixels row-major inside a group. Read-only (cached)."""
    r = p // q
    idx = np.arange(height * width, dtype=np.int64).reshape(height // p, r, q, width // p, r, q)
    idx = idx.transpose(0, 3, 1, 4, 2, 5).reshape(-1, q * q)
    idx.setflags(write=False)
    return idx


def _order(data: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """(slots, sources), both [G, q*q] flat indices: arranged pixel slots[g, j] is ciphertext pixel
    sources[g, j], the j-th of its group in (luminance, R, G, B) order (ties: ciphertext order)."""
    q = arrangement_group(scheme)
    if q is None:
        check_arrangement(scheme, SORTED)
    h, w = data.shape[:2]
    scheme.check_size(h, w)
    slots = _group_index(h, w, scheme.block_size, q)
    pix = data.reshape(-1, 3)[slots].astype(np.int64)  # [G, q*q, 3]
    r, g, b = pix[..., 0], pix[..., 1], pix[..., 2]
    key = ((LUMA[0] * r + LUMA[1] * g + LUMA[2] * b) << 24) | (r << 16) | (g << 8) | b
    order = np.argsort(key, axis=1, kind="stable")
    return slots, np.take_along_axis(slots, order, axis=1)


def _moved(x: np.ndarray, slots: np.ndarray, sources: np.ndarray, inverse: bool = False) -> np.ndarray:
    """`x` (any Hp x Wp[...] array) with ciphertext pixel sources[g, j] moved to slot slots[g, j], or back."""
    flat = x.reshape(slots.size, -1)
    dst, src = (sources, slots) if inverse else (slots, sources)
    out = np.empty_like(flat)
    out[dst.reshape(-1)] = flat[src.reshape(-1)]
    return out.reshape(x.shape)


def arrange(data: np.ndarray, scheme: Scheme) -> np.ndarray:
    """The ciphertext (uint8 Hp x Wp x 3) with the pixels of every q x q group sorted."""
    return _moved(data, *_order(data, scheme))


def arrange_labels(labels: np.ndarray, data: np.ndarray, scheme: Scheme) -> np.ndarray:
    """A map in the ciphertext's geometry (labels, or any Hp x Wp[...] array) moved as `arrange(data)`
    moves the pixels: for training on arranged samples."""
    return _moved(labels, *_order(data, scheme))


def arrange_sample(data: np.ndarray, scheme: Scheme, *maps: np.ndarray) -> tuple[np.ndarray, ...]:
    """`arrange(data)` and every map moved with it (`arrange_labels`), from one sort: a training sample."""
    order = _order(data, scheme)
    return tuple(_moved(x, *order) for x in (data, *maps))


def restore_labels(labels: np.ndarray, data: np.ndarray, scheme: Scheme) -> np.ndarray:
    """A label map the server computed on `arrange(data)`, moved back to `data`'s (the ciphertext's)
    geometry: the inverse of `arrange_labels`."""
    h, w = data.shape[:2]
    if labels.shape[:2] != (h, w):
        raise UserError(f"a {labels.shape[0]}x{labels.shape[1]} label map does not fit a {h}x{w} ciphertext")
    return _moved(labels, *_order(data, scheme), inverse=True)


def transport_arrangement(scheme: Scheme, fmt: str, arrangement: str = "auto") -> str:
    """The arrangement a ciphertext travels in: `auto` is sorted for JPEG when the scheme shuffles
    pixels (the label map still decrypts exactly; the image was never going to: section 10), else
    none. PNG stays unarranged under `auto`, so an encrypted PNG decrypts with its key alone."""
    if arrangement == "auto":
        return SORTED if fmt == "jpeg" and arrangement_group(scheme) is not None else "none"
    return check_arrangement(scheme, arrangement)
