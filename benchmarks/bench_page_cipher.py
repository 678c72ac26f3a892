"""The browser page's cipher (WebCrypto + JS, static/js/cipher.js) on a 1024x2048 RGB image in headless
Debian chromium, against the Python package's cipher on the same size in the same run (the baseline):
encrypt (key derivation included), decrypt, decrypt_mask of a label map, and the page's PNG/JPEG encoding
of the ciphertext. Medians of N runs; the page's times are what a user waits for before the upload.

    .venv/bin/python benchmarks/bench_page_cipher.py [--repeats 5] [--schemes bs-np-cs,bs-ps-np-cs]

Needs node, tests/browser/node_modules (npm ci) and /usr/bin/chromium, like tests/test_browser.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encseg.cipher import Key, Scheme, decrypt, decrypt_mask, encrypt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _service_support import serve  # noqa: E402


def python_times(name: str, repeats: int, h: int = 1024, w: int = 2048) -> dict[str, float]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = (np.arange(h * w) % 19).astype(np.uint8).reshape(h, w)
    scheme = Scheme.parse(name)
    t: dict[str, list[float]] = {"encrypt": [], "decrypt": [], "decrypt_mask": []}
    for _ in range(repeats):
        key = Key.generate()
        t0 = time.perf_counter()
        enc = encrypt(img, key, scheme)
        t1 = time.perf_counter()
        decrypt(enc, key)
        t2 = time.perf_counter()
        decrypt_mask(labels, key, scheme, (h, w))
        t3 = time.perf_counter()
        t["encrypt"].append(t1 - t0)
        t["decrypt"].append(t2 - t1)
        t["decrypt_mask"].append(t3 - t2)
    return {k: 1000 * statistics.median(v) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--schemes", default="bs-np-cs,bs-ps-np-cs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with serve() as srv:
        p = subprocess.run(["node", str(ROOT / "tests/browser/run.mjs"), "bench", srv.url, str(args.repeats), args.schemes],
                           cwd=ROOT / "tests/browser", capture_output=True, text=True, timeout=1200)
    if p.returncode:
        sys.exit(f"node run.mjs bench failed: {p.stderr[-2000:]}")
    page = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"1024x2048x3 random image; {page['userAgent'].split(') ')[-1]}; navigator.hardwareConcurrency "
          f"{page['cores']}; in-page copy {page['copy_ms']:.1f} ms; medians of {args.repeats}")
    print(f"{'scheme':<14}{'op':<14}{'page ms':>9}{'python ms':>11}{'page/py':>9}")
    for name in args.schemes.split(","):
        py = python_times(name, args.repeats)
        for op, ms in page["schemes"][name].items():
            base = py.get(op)
            ratio = f"{ms / base:9.1f}" if base else f"{'':>9}"
            print(f"{name:<14}{op:<14}{ms:9.1f}{(f'{base:11.1f}' if base else f'{chr(32) * 11}')}{ratio}")


if __name__ == "__main__":
    main()
