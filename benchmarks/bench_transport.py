"""Upload size and codec time of the JPEG transport (docs/encryption-format.md section 10) on
1024x2048 scenes of the procedural street benchmark (not Cityscapes), all in one run:

- plain JPEG of the scene at each quality, as a camera client would send it without encseg
  (Pillow's default 4:2:0, and 4:4:4 -- the sampling the transport must use);
- the encrypted scene as PNG (what encseg sent before; the clients' compress_level=1 and level 9);
- the encrypted scene as JPEG (baseline 4:4:4, the transport) at each quality, per scheme: for a
  pixel-shuffled scheme in the sorted arrangement the clients use (format v3, section 13; encode
  time includes the sort), and, for comparison, in the key's shuffled order ("unsorted").

Bytes are the mean over the scenes; times are the best of --repeats per image, one thread. Encode
time is the client's (bytes from the ciphertext array, metadata included); decode time is the
server's (the PNG or JPEG header walk of encseg.service.validation, then decoding). The goal ratio
is encrypted JPEG bytes / plain JPEG bytes at the same quality (goal <= 1.5).

mIoU at each setting comes from a separate command (`encseg evaluate --jpeg-quality Q`, see
docs/benchmarks.md); pass its JSON files with --miou 'DIR/demo-*.json' to print them here as well
(repeat --miou for a second model: one table per pattern).

    .venv/bin/python benchmarks/bench_transport.py [--scenes 3 --repeats 3 --qualities 95,90,75,50]
        [--schemes bs-np-cs,bs-ps4-np-cs,bs-ps-np-cs,bs-psb-np-cs] [--miou 'DIR/demo-*.json' --miou 'DIR/ft-*.json']
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from encseg.cipher import Key, Scheme, encrypt  # noqa: E402
from encseg.cipher.arrange import SORTED, arrange, transport_arrangement  # noqa: E402
from encseg.cipher import jpeg as J  # noqa: E402
from encseg.cipher.io import METADATA_CHUNK, encode_png, metadata_text  # noqa: E402
from encseg.data.streets import render_scene  # noqa: E402

GOAL_RATIO = 1.5


def best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def plain_jpeg(img: np.ndarray, q: int, subsampling: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=q, subsampling=subsampling)
    return buf.getvalue()


def decode_plain(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def server_png(data: bytes) -> np.ndarray:
    from encseg.service.validation import Limits, decode_png, read_png_header

    return decode_png(data, read_png_header(data, Limits(max_pixels=1 << 22)))


def server_jpeg(data: bytes) -> np.ndarray:
    return J.decode_jpeg(data, J.read_jpeg_header(data, max_pixels=1 << 22))


def png_level9(arr: np.ndarray, text: dict) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", pnginfo=info, compress_level=9)
    return buf.getvalue()


def variants(scheme: Scheme) -> list[tuple[str, str]]:
    """(row label, arrangement): the transport clients use ("JPEG": sorted for a pixel-shuffled
    scheme), and for those schemes the key's shuffled order as well, for comparison."""
    chosen = transport_arrangement(scheme, "jpeg")
    return [("JPEG", chosen)] + ([("JPEG unsorted", "none")] if chosen == SORTED else [])


def print_miou(pattern: str) -> None:
    rows: dict[str, list[float]] = defaultdict(list)
    for path in sorted(glob.glob(pattern)):
        d = json.loads(open(path).read())
        q = d.get("jpeg_quality")
        tail = " unsorted" if q is not None and d.get("arrangement") == "none" else ""
        rows["PNG" if q is None else f"JPEG q{q}{tail}"].append(float(d["miou"]))
    if not rows:
        print(f"\nno mIoU results match {pattern!r}")
        return
    png = statistics.mean(rows["PNG"]) if rows.get("PNG") else None
    print(f"\nmIoU (from `encseg evaluate`, files {pattern}; per-image keys, 100 val scenes 128x256):")
    print(f"{'transport':<19} {'runs':>4} {'mean':>6} {'min':>6} {'max':>6} {'vs PNG':>7}")
    order = ["PNG"] + sorted((k for k in rows if k != "PNG"), key=lambda k: (-int(k[6:].split()[0]), k))
    for k in order:
        v = rows.get(k)
        if not v:
            continue
        delta = "" if png is None or k == "PNG" else f"{statistics.mean(v) - png:+.2f}"
        print(f"{k:<19} {len(v):>4} {statistics.mean(v):6.2f} {min(v):6.2f} {max(v):6.2f} {delta:>7}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=3)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--qualities", default="95,90,75,50")
    ap.add_argument("--schemes", default="bs-np-cs,bs-ps4-np-cs,bs-ps-np-cs,bs-psb-np-cs")  # the default scheme last
    ap.add_argument("--miou", action="append", default=[], help="glob of `encseg evaluate --json` files to summarise (repeatable)")
    args = ap.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    schemes = [Scheme.parse(s.strip()) for s in args.schemes.split(",") if s.strip()]
    size = (args.height, args.width)

    t0 = time.perf_counter()
    scenes = [render_scene(1000 + i, size)[0] for i in range(args.scenes)]
    print(f"{args.scenes} street scenes {size[0]}x{size[1]} (procedural benchmark, not Cityscapes; "
          f"rendered in {time.perf_counter() - t0:.1f}s); best of {args.repeats}, 1 thread; MB = 10^6 bytes")

    # rows: (label, quality or None) -> lists of (bytes, encode s, decode s) over scenes
    rows: dict[tuple[str, int | None], list[tuple[int, float, float]]] = defaultdict(list)
    for img in scenes:
        for q in qualities:
            for sub, label in ((2, "plain JPEG 4:2:0"), (0, "plain JPEG 4:4:4")):
                te, data = best(lambda: plain_jpeg(img, q, sub), args.repeats)
                td, _ = best(lambda: decode_plain(data), args.repeats)
                rows[(label, q)].append((len(data), te, td))
        for scheme in schemes:
            enc = encrypt(img, Key.generate(), scheme)
            text = metadata_text(scheme, enc.original_size)
            te, data = best(lambda: encode_png(enc.data, text), args.repeats)
            td, _ = best(lambda: server_png(data), args.repeats)
            rows[(f"{scheme.name} PNG", None)].append((len(data), te, td))
            te, data = best(lambda: png_level9(enc.data, text), 1)
            rows[(f"{scheme.name} PNG level 9", None)].append((len(data), te, float("nan")))
            for label, arrangement in variants(scheme):
                atext = metadata_text(scheme, enc.original_size, arrangement)[METADATA_CHUNK]

                def client(q, arrangement=arrangement, atext=atext):
                    sent = arrange(enc.data, scheme) if arrangement == SORTED else enc.data
                    return J.encode_jpeg(sent, q, atext)

                for q in qualities:
                    te, data = best(lambda: client(q), args.repeats)
                    tw, _ = best(lambda: J.read_jpeg_header(data, max_pixels=1 << 22), args.repeats)
                    td, out = best(lambda: server_jpeg(data), args.repeats)
                    assert out.shape == enc.data.shape
                    rows[(f"{scheme.name} {label}", q)].append((len(data), te, td))
                    rows[(f"{scheme.name} {label} walk", q)].append((0, 0.0, tw))

    def mean(key, i):
        return statistics.mean(r[i] for r in rows[key])

    print(f"\n{'what':<26} {'q':>3} {'MB':>7} {'enc ms':>7} {'dec ms':>7} {'/plain420':>9} {'/plain444':>9} {'PNG/this':>8}  goal")
    for q in qualities:
        for label in ("plain JPEG 4:2:0", "plain JPEG 4:4:4"):
            b = mean((label, q), 0)
            print(f"{label:<26} {q:>3} {b / 1e6:7.3f} {mean((label, q), 1) * 1e3:7.1f} {mean((label, q), 2) * 1e3:7.1f}")
    met = []
    for scheme in schemes:
        png = mean((f"{scheme.name} PNG", None), 0)
        print(f"{scheme.name + ' PNG':<26} {'-':>3} {png / 1e6:7.3f} {mean((f'{scheme.name} PNG', None), 1) * 1e3:7.1f} "
              f"{mean((f'{scheme.name} PNG', None), 2) * 1e3:7.1f}")
        png9 = mean((f"{scheme.name} PNG level 9", None), 0)
        print(f"{scheme.name + ' PNG level 9':<26} {'-':>3} {png9 / 1e6:7.3f} "
              f"{mean((f'{scheme.name} PNG level 9', None), 1) * 1e3:7.1f} {'-':>7}")
        for label, _ in variants(scheme):
            for q in qualities:
                key = (f"{scheme.name} {label}", q)
                b = mean(key, 0)
                r420, r444 = b / mean(("plain JPEG 4:2:0", q), 0), b / mean(("plain JPEG 4:4:4", q), 0)
                ok = r420 <= GOAL_RATIO
                goal = f"{'met' if ok else 'MISSED'} (<= {GOAL_RATIO}x plain 4:2:0)"
                if label == "JPEG":  # the transport clients use; "unsorted" is for comparison
                    met.append((scheme.name, q, ok))
                else:
                    goal = "(not sent by clients)"
                print(f"{scheme.name + ' ' + label:<26} {q:>3} {b / 1e6:7.3f} {mean(key, 1) * 1e3:7.1f} "
                      f"{mean(key, 2) * 1e3:7.1f} {r420:9.2f} {r444:9.2f} {png / b:8.1f}  {goal}")
        walk = statistics.mean(mean((f"{scheme.name} JPEG walk", q), 2) for q in qualities)
        print(f"{'  (marker walk alone)':<26} {'':>3} {'':>7} {'':>7} {walk * 1e3:7.2f}")
    print("\nbytes goal (encrypted JPEG <= 1.5x plain JPEG 4:2:0 at the same quality): "
          + ", ".join(f"{s} q{q} {'met' if ok else 'missed'}" for s, q, ok in met))
    for pattern in args.miou:
        print_miou(pattern)


if __name__ == "__main__":
    main()
