"""Cipher throughput on a 1024x2048 RGB image, key derivation included, against two baselines measured
in the same run: numpy.copy of the same array (the physical limit of a permutation cipher) and the
loop-over-blocks implementation public learnable-encryption scripts use (encseg.cipher.reference).
Format v2's one-permutation-per-block schemes are also timed against their v1 counterparts
(bs-psb-np-cs against bs-ps-np-cs, ...) in the same run.

    .venv/bin/python benchmarks/bench_cipher.py [--height 1024 --width 2048 --repeats 7]
        [--schemes bs-ps-np-cs,bs-psb-np-cs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from encseg.cipher import PRESETS, Key, Scheme, decrypt, encrypt  # noqa: E402
from encseg.cipher.reference import reference_decrypt, reference_encrypt  # noqa: E402

GOALS = {"bs-np-cs": (0.1, 20.0), "bs-ps-np-cs": (0.05, None)}
V1_COUNTERPART = {"bs-psb-np-cs": "bs-ps-np-cs", "bs-psb4-np-cs": "bs-ps4-np-cs", "psb-np-cs": "ps-np-cs"}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--loop-repeats", type=int, default=2)
    ap.add_argument("--schemes", default=",".join(PRESETS), help="comma-separated schemes (default: every preset)")
    args = ap.parse_args()
    img = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    mb = img.nbytes / 1e6
    copy_t, _ = best_of(lambda: np.copy(img), args.repeats * 3)
    print(f"image {args.height}x{args.width}x3 = {mb:.1f} MB; numpy.copy {mb / copy_t:,.0f} MB/s (best of {args.repeats * 3})")
    print(f"{'scheme':<14} {'enc MB/s':>9} {'dec MB/s':>9} {'enc/copy':>9} {'dec/copy':>9} {'loop enc':>9} {'enc/loop':>9} {'dec/loop':>9}  goal")
    timings: dict[str, tuple[float, float]] = {}
    for name in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        scheme = Scheme.parse(name)
        key = Key.generate()  # a fresh key per call below: derivation is inside the timed region
        enc_t, _ = best_of(lambda: encrypt(img, Key.generate(), scheme), args.repeats)
        enc = encrypt(img, key, scheme)
        dec_t, _ = best_of(lambda: decrypt(enc, key), args.repeats)
        loop_e, _ = best_of(lambda: reference_encrypt(img, Key.generate(), scheme), args.loop_repeats)
        loop_d, _ = best_of(lambda: reference_decrypt(enc.data, key, scheme, enc.original_size), args.loop_repeats)
        timings[name] = (enc_t, dec_t)
        goal = GOALS.get(name)
        verdict = ""
        if goal:
            ok = min(copy_t / enc_t, copy_t / dec_t) >= goal[0] and (goal[1] is None or min(loop_e / enc_t, loop_d / dec_t) >= goal[1])
            verdict = f">= {goal[0]}x copy" + (f", >= {goal[1]:.0f}x loop" if goal[1] else "") + (": met" if ok else ": MISSED")
        print(f"{name:<14} {mb / enc_t:9.0f} {mb / dec_t:9.0f} {copy_t / enc_t:9.3f} {copy_t / dec_t:9.3f} "
              f"{mb / loop_e:9.0f} {loop_e / enc_t:9.1f} {loop_d / dec_t:9.1f}  {verdict}")
    for v2, v1 in V1_COUNTERPART.items():  # the price of one permutation per block, same run
        if v2 in timings and v1 in timings:
            print(f"{v2} / {v1}: encrypt {timings[v2][0] / timings[v1][0]:.2f}x the time, "
                  f"decrypt {timings[v2][1] / timings[v1][1]:.2f}x")


if __name__ == "__main__":
    main()
