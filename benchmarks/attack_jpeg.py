"""Privacy check of the JPEG transport: the attack suite's attacks (encseg.attacks, public entry
points) on JPEG ciphertexts (baseline 4:4:4, quality Q) against the same attacks on lossless (PNG)
ciphertexts, same scheme, same held-out street scenes (procedural benchmark, not Cityscapes), one
fresh key per image. `encseg attack` has no JPEG option, so this script JPEG-compresses the
ciphertexts itself; the learned-inverse attacker is trained on JPEG ciphertexts too (it sees what
the server sees).

For a pixel-shuffled scheme the JPEG column is what clients send: the sorted arrangement (format v3,
docs/encryption-format.md section 13), then JPEG; a third column attacks the sorted arrangement as a
lossless PNG, to show what the arrangement alone changes. Sorting each block is a function of the
ciphertext, and compression can only remove information; the numbers say how much the attacks lose
or gain with each.

    .venv/bin/python benchmarks/attack_jpeg.py [--scheme bs-np-cs --quality 90 --images 10
        --train-images 32 --inverse-steps 150 --size 256x512]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import encseg.attacks.inverse as inverse_mod  # noqa: E402
from encseg.attacks import metrics, stats  # noqa: E402
from encseg.attacks.inverse import InverseConfig, invert, train_inverse  # noqa: E402
from encseg.attacks.suite import jigsaw_attack  # noqa: E402
from encseg.cipher import EncryptedImage, Key, Scheme, encrypt, make_plan  # noqa: E402
from encseg.cipher.arrange import SORTED, arrange, transport_arrangement  # noqa: E402
from encseg.cipher.jpeg import jpeg_roundtrip  # noqa: E402
from encseg.data.streets import render_scene, scene_seed  # noqa: E402


def sent(data: np.ndarray, scheme: Scheme, quality: int | None, arranged: bool) -> np.ndarray:
    """What the server receives: the ciphertext, sorted inside its groups if `arranged`, then through
    JPEG at `quality` (None: lossless)."""
    data = arrange(data, scheme) if arranged else data
    return data if quality is None else jpeg_roundtrip(data, quality)


class _SentCiphertexts:
    """Stands in for `encrypt` inside the inverse attack's training loop: the same ciphertext, as sent."""

    def __init__(self, quality: int | None, arranged: bool) -> None:
        self.quality, self.arranged = quality, arranged

    def __call__(self, img, key, scheme):
        enc = encrypt(img, key, scheme)
        return EncryptedImage(sent(enc.data, scheme, self.quality, self.arranged), enc.original_size, enc.scheme)


def attack(scheme: Scheme, tests, trains, cfg: InverseConfig, quality: int | None, arranged: bool = False) -> dict[str, float]:
    p = scheme.block_size
    R, C = tests[0].shape[0] // p, tests[0].shape[1] // p
    rows = []
    for img in tests:
        key = Key.generate()
        enc = sent(encrypt(img, key, scheme).data, scheme, quality, arranged)
        plan = make_plan(key, scheme, R, C)  # ground truth, for scoring only
        del key
        recon, dc, nc, secs = jigsaw_attack(enc, scheme, img, plan.block_src)
        leak = stats.block_leakage(img, enc, plan.block_src, p)
        rows.append({"jigsaw direct": dc, "jigsaw neighbour": nc, "jigsaw SSIM": metrics.ssim(recon, img),
                     "block mean corr": leak["mean"], "block |mean| corr": leak["abs_mean"],
                     "block var corr": leak["var"], "histogram distance": stats.histogram_distance(img, enc)})
    saved = inverse_mod.encrypt
    if quality is not None or arranged:
        inverse_mod.encrypt = _SentCiphertexts(quality, arranged)
    try:
        model = train_inverse(lambda i: trains[i % len(trains)], scheme, "per-image", cfg, []).model
    finally:
        inverse_mod.encrypt = saved
    for i, img in enumerate(tests):
        enc = sent(encrypt(img, Key.generate(), scheme).data, scheme, quality, arranged)
        rows[i]["inverse SSIM (per-image keys)"] = metrics.ssim(invert(model, enc), img)
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scheme", default="bs-np-cs")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=32)
    ap.add_argument("--inverse-steps", type=int, default=150)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    scheme = Scheme.parse(args.scheme)
    t0 = time.perf_counter()
    tests = [render_scene(scene_seed(args.seed, "test", i), (h, w))[0] for i in range(args.images)]
    trains = [render_scene(scene_seed(args.seed, "train", i), (h, w))[0] for i in range(args.train_images)]
    cfg = InverseConfig(minutes=60.0, max_steps=args.inverse_steps, pool=len(trains))
    arranged = transport_arrangement(scheme, "jpeg") == SORTED  # as clients send JPEG
    png = attack(scheme, tests, trains, cfg, None)
    jpg = attack(scheme, tests, trains, cfg, args.quality, arranged)
    spng = attack(scheme, tests, trains, cfg, None, True) if arranged else None
    print(f"scheme {scheme.name}, {args.images} held-out street scenes {h}x{w} (procedural benchmark, not Cityscapes), "
          f"fresh key per image; learned inverse: {args.train_images} training scenes, {args.inverse_steps} steps; "
          f"{time.perf_counter() - t0:.0f}s")
    print(f"chance for jigsaw direct comparison: {1 / ((h // scheme.block_size) * (w // scheme.block_size)):.4f}")
    jname = ("sorted " if arranged else "") + f"JPEG q{args.quality}"
    print(f"{'measure (lower = less leaked)':<32} {'PNG':>8} {jname:>15} {'JPEG-PNG':>9}"
          + (f" {'sorted PNG':>11} {'sorted-PNG':>11}" if spng else ""))
    for k in png:
        print(f"{k:<32} {png[k]:8.4f} {jpg[k]:15.4f} {jpg[k] - png[k]:+9.4f}"
              + (f" {spng[k]:11.4f} {spng[k] - png[k]:+11.4f}" if spng else ""))


if __name__ == "__main__":
    main()
