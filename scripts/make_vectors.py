"""Regenerate tests/vectors/*.json from the reference implementation (run after a deliberate format
change only: the vectors are the contract a second implementation must reproduce byte for byte)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encseg.cipher import Key, Scheme, encrypt, encrypt_mask, make_plan, step_stream
from encseg.cipher.keystream import SALT

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors"

# name, scheme text, block size, height, width, description
CASES = [
    ("01-bs-p4", "bs", 4, 8, 8, "block scrambling only, 2x2 blocks"),
    ("02-bs-np-cs-p4", "bs-np-cs", 4, 12, 16, "default step list, 3x4 blocks"),
    ("03-bs-ps-np-cs-p4", "bs-ps-np-cs", 4, 8, 12, "all four steps, full pixel shuffle"),
    ("04-ps-np-cs-pad", "ps-np-cs", 4, 10, 7, "sides not multiples of p: edge-replicate padding"),
    ("05-bs-ps4-np-cs-p8", "bs-ps4-np-cs", 8, 16, 16, "restricted pixel shuffle, q=4 inside p=8"),
    ("06-ps4-np-cs-pad-p8", "ps4-np-cs", 8, 13, 17, "restricted pixel shuffle with padding"),
    ("07-plain-p4", "plain", 4, 5, 5, "no steps: padding only"),
    ("08-bs-np-cs-p16", "bs-np-cs", 16, 20, 33, "default block size 16, padded to 32x48"),
    ("09-cs-np-bs-p2", "cs-np-bs", 2, 6, 6, "steps in another order: per-block draws indexed before scrambling"),
    ("10-np-ps2-bs-p4", "np-ps2-bs", 4, 8, 8, "NP first, restricted PS q=2, then BS"),
    ("11-bs-1x1", "bs-ps-np-cs", 4, 1, 1, "a single pixel, padded to one block"),
    # format v2: block-pixel-shuffle, one pixel permutation per block
    ("12-bs-psb-np-cs-p4", "bs-psb-np-cs", 4, 8, 12, "v2: one pixel permutation per block, 2x3 blocks"),
    ("13-bs-psb4-np-cs-pad-p8", "bs-psb4-np-cs", 8, 13, 17,
     "v2: per-block permutation of 4x4 sub-block positions, padded to 16x24"),
    ("14-np-psb2-bs-p4", "np-psb2-bs", 4, 8, 12,
     "v2, another order: per-block permutations (q=2) indexed before scrambling, then BS"),
    ("15-psb-np-cs-pad", "psb-np-cs", 4, 10, 7, "v2 without block scrambling, with edge-replicate padding"),
]


# format v3 (section 13): the sorted arrangement of a ciphertext. name, scheme text, block size,
# padded height, padded width, description. The "ciphertext" is drawn from a small palette that
# holds two colours of equal luminance and repeats colours, so ties of both kinds occur.
ARRANGED_CASES = [
    ("16-sorted-bs-psb-np-cs-p4", "bs-psb-np-cs", 4, 8, 12, "v3: whole 4x4 blocks sorted (q = p)"),
    ("17-sorted-bs-psb2-np-cs-p4", "bs-psb2-np-cs", 4, 8, 8, "v3: 2x2 groups sorted inside 4x4 blocks"),
    ("18-sorted-ps-np-cs-p8", "ps-np-cs", 8, 8, 16, "v3: a v1 pixel-shuffle scheme, 8x8 blocks"),
]
PALETTE = [(0, 0, 0), (255, 255, 255), (114, 0, 0), (2, 52, 26), (10, 200, 30), (200, 10, 30), (60, 60, 60),
           (61, 59, 62), (128, 128, 127)]


def _equal_luma_pair() -> None:
    lum = [299 * r + 587 * g + 114 * b for r, g, b in PALETTE]
    assert len(set(lum)) < len(lum), "the palette must hold two colours of equal luminance"


def make_arranged(name: str, text: str, p: int, h: int, w: int, description: str) -> dict:
    from encseg.cipher.reference import reference_arrange, reference_restore_labels

    _equal_luma_pair()
    scheme = Scheme.parse(text, block_size=p)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    data = np.array(PALETTE, np.uint8)[rng.integers(0, len(PALETTE), (h, w))]
    data[rng.random((h, w)) < 0.3] = rng.integers(0, 256, 3, dtype=np.uint8)  # some pixels off the palette
    labels = rng.integers(0, 19, (h, w), dtype=np.uint8)
    arranged, _ = reference_arrange(data, scheme)
    return {
        "name": name,
        "description": description,
        "format_version": 3,
        "scheme": scheme.to_dict(),
        "scheme_name": scheme.name,
        "padded_height": h,
        "padded_width": w,
        "ciphertext": data.tobytes().hex(),
        "arranged": arranged.tobytes().hex(),
        "labels": labels.tobytes().hex(),
        "restored_labels": reference_restore_labels(labels, data, scheme).tobytes().hex(),
    }


def subkey(key: Key, name: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=name.encode()).derive(key.to_bytes())


def make(name: str, text: str, p: int, h: int, w: int, description: str) -> dict:
    key = Key(hashlib.sha256(f"encseg test vector {name}".encode()).digest())
    scheme = Scheme.parse(text, block_size=p)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, (h, w), dtype=np.uint8)
    enc = encrypt(img, key, scheme)
    H, W = enc.data.shape[:2]
    plan = make_plan(key, scheme, H // p, W // p)
    # block-pixel-shuffle's draw is n permutations: recorded flat, block by block
    draws = {k: [int(v) for v in np.ravel(d).astype(np.int64)] for k, d in plan.draws.items()}
    return {
        "name": name,
        "description": description,
        "format_version": scheme.version,
        "key": key.hex(),
        "scheme": scheme.to_dict(),
        "scheme_name": scheme.name,
        "height": h,
        "width": w,
        "padded_height": H,
        "padded_width": W,
        "input": img.tobytes().hex(),
        "streams": {
            s.name: {"subkey": subkey(key, s.name).hex(), "first_32_bytes": step_stream(key, s.name, 32).hex()}
            for s in scheme.steps
        },
        "draws": draws,
        "ciphertext": enc.data.tobytes().hex(),
        "labels": labels.tobytes().hex(),
        "encrypted_labels": encrypt_mask(labels, key, scheme, fill=255).tobytes().hex(),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        v = make(*case)
        (OUT / f"{case[0]}.json").write_text(json.dumps(v, indent=1) + "\n")
    (OUT / "arranged").mkdir(exist_ok=True)
    for case in ARRANGED_CASES:
        v = make_arranged(*case)
        (OUT / "arranged" / f"{case[0]}.json").write_text(json.dumps(v, indent=1) + "\n")
    print(f"wrote {len(CASES)} vectors to {OUT} and {len(ARRANGED_CASES)} to {OUT / 'arranged'}")


if __name__ == "__main__":
    main()
