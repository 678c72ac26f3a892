"""Encrypt, decrypt and move label maps between plain and encrypted geometry (vectorised numpy;
label/logit maps also as torch tensors on any device)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encseg.cipher.keys import Key
from encseg.cipher.keystream import CHANNEL_ORDERS, KERNEL_HAS_V2, Plan, _kernel, make_plan
from encseg.cipher.scheme import Scheme
from encseg.errors import UserError

_INVERSE_ORDERS = np.argsort(CHANNEL_ORDERS, axis=1)

def kernel_available() -> bool:
    """Whether the optional C kernel (setup.py) was built; otherwise the numpy path runs (same bytes)."""
    return _kernel is not None


def _use_kernel(plan: Plan) -> bool:
    return _kernel is not None and (plan.block_perms is None or KERNEL_HAS_V2)


def _run_kernel(x: np.ndarray, plan: Plan, inverse: bool) -> np.ndarray:
    (nh, nw), p = plan.grid, plan.block_size
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)

    def arr(a, dtype):
        return None if a is None else np.ascontiguousarray(a, dtype=dtype)

    if plan.block_perms is not None:  # n permutations of q*q, one per block: the kernel expands them
        _kernel.apply(x, out, nh, nw, p, arr(plan.block_src, np.int64), arr(plan.block_perms, np.int64),
                      arr(plan.negate, np.uint8), arr(plan.orders, np.uint8), inverse, plan.block_group)
        return out
    _kernel.apply(x, out, nh, nw, p, arr(plan.block_src, np.int64), arr(plan.pixel_src, np.int64),
                  arr(plan.negate, np.uint8), arr(plan.orders, np.uint8), inverse)
    return out


def _inverse_rows(perms: np.ndarray) -> np.ndarray:
    """Row-wise inverse of an n x m array of permutations: inv[b, perms[b, j]] = j (a scatter, no sort)."""
    inv = np.empty_like(perms)
    np.put_along_axis(inv, perms, np.broadcast_to(np.arange(perms.shape[-1], dtype=perms.dtype), perms.shape), axis=-1)
    return inv


@dataclass(frozen=True)
class EncryptedImage:
    """An encrypted image (uint8, sides multiples of the block size) and the size to crop back to."""

    data: np.ndarray
    original_size: tuple[int, int]
    scheme: Scheme

    def __repr__(self) -> str:
        h, w = self.data.shape[:2]
        return f"EncryptedImage({h}x{w}, original_size={self.original_size}, scheme={self.scheme.name!r})"


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise UserError(f"expected an 8-bit RGB image as a uint8 array of shape HxWx3 (got {got})")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise UserError("the image is empty (zero height or width)")


def pad_to_blocks(x: np.ndarray, p: int, fill: int | None = None) -> np.ndarray:
    """Pad the two spatial axes (axes 0, 1 of HxW[xC]) up to multiples of p: edge-replicate, or `fill`."""
    h, w = x.shape[:2]
    ph, pw = -h % p, -w % p
    if not ph and not pw:
        return x
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (x.ndim - 2)
    if fill is None:
        return np.pad(x, pad, mode="edge")
    return np.pad(x, pad, mode="constant", constant_values=fill)


def plan_for(key: Key, scheme: Scheme, height: int, width: int) -> Plan:
    """The plan for an image of padded size height x width (both multiples of the block size)."""
    scheme.check_size(height, width)
    p = scheme.block_size
    return make_plan(key, scheme, height // p, width // p)


# -- images (H x W x 3, uint8) ------------------------------------------------------------------

def _gather_reordered(gather, n: int, pp: int, orders: np.ndarray, table: np.ndarray,
                      dest: np.ndarray | None = None) -> np.ndarray:
    """out[dest[b], :, c] = gather([b])[:, c'] with c' = table[orders[b], c], one group per channel order.

    Six groups of strided copies beat a per-element fancy index on the channel axis by ~4x."""
    out = np.empty((n, pp, 3), np.uint8)
    for o in range(6):
        idx = np.flatnonzero(orders == o)
        if idx.size:
            sub = gather(idx)
            where = idx if dest is None else dest[idx]
            for c in range(3):
                out[where, :, c] = sub[:, :, table[o, c]]
    return out


def _word(p: int) -> np.dtype:
    """The widest unsigned type whose size divides a block row (p*3 bytes): block moves copy whole words."""
    for size in (8, 4, 2):
        if (3 * p) % size == 0:
            return np.dtype(f"<u{size}")
    return np.dtype(np.uint8)


def _block_view(x: np.ndarray, nh: int, nw: int, p: int) -> np.ndarray:
    """(nh*p, nw*p, 3) image as (nh, p, nw, words-per-block-row): block rows move as whole words."""
    w = _word(p)
    return np.ascontiguousarray(x).reshape(nh * p, nw * p * 3).view(w).reshape(nh, p, nw, 3 * p // w.itemsize)


def _image_to_blocks(x: np.ndarray, nh: int, nw: int, p: int, src: np.ndarray | None,
                     orders: np.ndarray | None = None, table: np.ndarray = CHANNEL_ORDERS,
                     dest: np.ndarray | None = None) -> np.ndarray:
    """(nh*p, nw*p, 3) image -> (n, p*p, 3) blocks, in one pass: block b of the result is image block
    src[b] (row-major if src is None), channel-reordered by table[orders[b]] and stored at dest[b]."""
    v = _block_view(x, nh, nw, p)
    n = nh * nw
    if src is None:
        src = np.arange(n)
    bi, bj = np.divmod(src, nw)

    def gather(idx) -> np.ndarray:
        return v[bi[idx], :, bj[idx]].view(np.uint8).reshape(-1, p * p, 3)

    if orders is not None:
        return _gather_reordered(gather, n, p * p, orders, table, dest)
    blocks = gather(slice(None))
    if dest is not None:
        out = np.empty_like(blocks)
        out[dest] = blocks
        return out
    return blocks


def _blocks_to_image(blocks: np.ndarray, nh: int, nw: int, p: int) -> np.ndarray:
    w = _word(p)
    v = np.ascontiguousarray(blocks).reshape(nh * nw * p, 3 * p).view(w).reshape(nh, nw, p, 3 * p // w.itemsize)
    return v.transpose(0, 2, 1, 3).copy().view(np.uint8).reshape(nh * p, nw * p, 3)


def apply_plan_to_image(x: np.ndarray, plan: Plan) -> np.ndarray:
    """Encrypt a padded image with a plan: block gather fused with channel orders, pixel gather, NP."""
    if _use_kernel(plan):
        return _run_kernel(x, plan, inverse=False)
    (nh, nw), p = plan.grid, plan.block_size
    blocks = _image_to_blocks(x, nh, nw, p, plan.block_src, plan.orders)  # BS + CS fused
    if plan.pixel_src is not None:
        blocks = np.take(blocks, plan.pixel_src, axis=1)  # PS commutes with CS
    if plan.block_pixel_src is not None:
        blocks = np.take_along_axis(blocks, plan.block_pixel_src[:, :, None], axis=1)  # row b: block b's own gather
    if plan.negate is not None:
        blocks ^= (plan.negate.astype(np.uint8) * np.uint8(255))[:, None, None]  # 255 - x == x ^ 0xFF
    return _blocks_to_image(blocks, nh, nw, p)


def invert_plan_on_image(y: np.ndarray, plan: Plan) -> np.ndarray:
    """Exact inverse of apply_plan_to_image: undo channel orders while scattering blocks home, then PS, NP."""
    if _use_kernel(plan):
        return _run_kernel(y, plan, inverse=True)
    (nh, nw), p = plan.grid, plan.block_size
    blocks = _image_to_blocks(y, nh, nw, p, None, plan.orders, _INVERSE_ORDERS, dest=plan.block_src)
    if plan.pixel_src is not None:
        blocks = np.take(blocks, np.argsort(plan.pixel_src), axis=1)
    if plan.block_pixel_src is not None:  # blocks are home now: invert each one's gather at its home
        inverse = _inverse_rows(plan.block_pixel_src)
        if plan.block_src is not None:
            inverse[plan.block_src] = inverse.copy()
        blocks = np.take_along_axis(blocks, inverse[:, :, None], axis=1)
    if plan.negate is not None:
        negate = plan.negate
        if plan.block_src is not None:
            negate = np.empty_like(negate)
            negate[plan.block_src] = plan.negate  # flags by original position
        blocks ^= (negate.astype(np.uint8) * np.uint8(255))[:, None, None]
    return _blocks_to_image(blocks, nh, nw, p)


def encrypt(img: np.ndarray, key: Key, scheme: Scheme) -> EncryptedImage:
    """Encrypt an 8-bit RGB image (padded by edge replication to multiples of the block size)."""
    _check_image(img)
    x = pad_to_blocks(img, scheme.block_size)
    plan = plan_for(key, scheme, *x.shape[:2])
    return EncryptedImage(apply_plan_to_image(np.ascontiguousarray(x), plan), tuple(img.shape[:2]), scheme)


def decrypt(enc: EncryptedImage, key: Key) -> np.ndarray:
    """The exact inverse of `encrypt`, cropped back to the original size."""
    _check_image(enc.data)
    h, w = enc.original_size
    H, W = enc.data.shape[:2]
    if not (0 < h <= H and 0 < w <= W and H - h < enc.scheme.block_size and W - w < enc.scheme.block_size):
        raise UserError(f"original size {h}x{w} does not fit the encrypted size {H}x{W}")
    plan = plan_for(key, enc.scheme, H, W)
    return invert_plan_on_image(np.ascontiguousarray(enc.data), plan)[:h, :w]


# -- label and logit maps (..., H, W), numpy or torch ---------------------------------------------

def _take(x, idx: np.ndarray, axis: int):
    if isinstance(x, np.ndarray):
        return np.take(x, idx, axis=axis)
    import torch

    return x.index_select(axis % x.dim(), torch.as_tensor(idx, device=x.device))


def _geometry(x, plan: Plan, inverse: bool):
    (nh, nw), p = plan.grid, plan.block_size
    lead = tuple(x.shape[:-2])
    blocks = x.reshape(*lead, nh, p, nw, p).swapaxes(-3, -2).reshape(*lead, nh * nw, p * p)
    if plan.block_pixel_src is not None:  # one gather over all n*p*p positions: block b, pixel j <- flat[b, j]
        n, pp = nh * nw, p * p
        src = np.arange(n) if plan.block_src is None else plan.block_src
        flat = (src[:, None] * pp + plan.block_pixel_src).reshape(-1)
        if inverse:
            flat = _inverse_rows(flat)
        blocks = _take(blocks.reshape(*lead, n * pp), flat, -1)
    elif inverse:
        if plan.pixel_src is not None:
            blocks = _take(blocks, np.argsort(plan.pixel_src), -1)
        if plan.block_src is not None:
            blocks = _take(blocks, np.argsort(plan.block_src), -2)
    else:
        if plan.block_src is not None:
            blocks = _take(blocks, plan.block_src, -2)
        if plan.pixel_src is not None:
            blocks = _take(blocks, plan.pixel_src, -1)
    return blocks.reshape(*lead, nh, nw, p, p).swapaxes(-3, -2).reshape(*lead, nh * p, nw * p)


def encrypt_mask(mask: np.ndarray, key: Key, scheme: Scheme, fill: int = 255) -> np.ndarray:
    """Move a label map (H x W) into the encrypted geometry of the same key; padding gets `fill`."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise UserError(f"a label map is a 2-D array (got shape {getattr(mask, 'shape', None)})")
    m = pad_to_blocks(mask, scheme.block_size, fill=fill)
    return np.ascontiguousarray(_geometry(m, plan_for(key, scheme, *m.shape), inverse=False))


def apply_geometry(x, key: Key, scheme: Scheme, inverse: bool = False):
    """Apply (or undo) the key's pixel movements to any (..., H, W) array or tensor; no padding/crop."""
    H, W = x.shape[-2:]
    return _geometry(x, plan_for(key, scheme, int(H), int(W)), inverse)


def decrypt_mask(x, key: Key, scheme: Scheme, original_size: tuple[int, int]):
    """Undo only the geometry (BS, PS) of a label map (H x W) or logits (C x H x W, or B x C x H x W for
    one image's batch of crops) in encrypted geometry, and crop the padding. numpy or torch in, same out."""
    if x.ndim < 2:
        raise UserError("decrypt_mask expects a label map (H x W) or logits (C x H x W)")
    H, W = (int(s) for s in x.shape[-2:])
    h, w = original_size
    p = scheme.block_size
    if not (0 < h <= H and 0 < w <= W and H - h < p and W - w < p):
        raise UserError(f"original size {h}x{w} does not fit the encrypted map size {H}x{W}")
    return _geometry(x, plan_for(key, scheme, H, W), inverse=True)[..., :h, :w]


class CipherTransform:
    """A picklable data-loader transform: (img, mask) -> encrypted (img, mask) under
    mode "per-image" (a fresh key every call, never stored), "shared" (one key), or "none"."""

    def __init__(self, scheme: Scheme, mode: str = "per-image", shared_key: Key | None = None) -> None:
        if mode not in ("per-image", "shared", "none"):
            raise UserError(f"encryption mode must be none, shared or per-image (got {mode!r})")
        if mode == "shared" and shared_key is None:
            raise UserError("shared-key encryption needs a key")
        self.scheme, self.mode, self._shared_key = scheme, mode, shared_key

    def __call__(self, img: np.ndarray, mask: np.ndarray | None = None):
        if self.mode == "none":
            return img, mask
        key = Key.generate() if self.mode == "per-image" else self._shared_key
        enc = encrypt(img, key, self.scheme).data
        enc_mask = None if mask is None else encrypt_mask(mask, key, self.scheme)
        del key  # per-image keys exist only for the duration of this call
        return enc, enc_mask

    def __repr__(self) -> str:
        return f"CipherTransform(scheme={self.scheme.name!r}, mode={self.mode!r})"
