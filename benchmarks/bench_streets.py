"""Rendering a street scene against reading one back, measured in the same run.

    .venv/bin/python benchmarks/bench_streets.py [--size 256x512] [--scenes 8]

Renders `--scenes` procedural scenes (one process), writes each as the benchmark's PNG pair, then
times decoding that pair the way the training loader does. Prints the median seconds per scene of
both and their ratio. Goal (the benchmark's, from its issue): a 256x512 scene renders well under a
second, so `encseg data streets` writes thousands in minutes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from encseg.cipher.commands import parse_size
from encseg.cipher.io import read_label_png
from encseg.data.streets import render_scene, scene_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--scenes", type=int, default=8)
    a = ap.parse_args()
    size = parse_size(a.size)
    render_scene(scene_seed(0, "val", 0), size)  # warm-up
    render_s, read_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.scenes):
            t0 = time.perf_counter()
            img, lab = render_scene(scene_seed(0, "val", i), size)
            render_s.append(time.perf_counter() - t0)
            Image.fromarray(img).save(Path(tmp) / "i.png", compress_level=1)
            Image.fromarray(lab).save(Path(tmp) / "l.png", compress_level=6)
            t0 = time.perf_counter()
            back = np.asarray(Image.open(Path(tmp) / "i.png").convert("RGB"))
            lab_back = read_label_png(Path(tmp) / "l.png")
            read_s.append(time.perf_counter() - t0)
            assert back.shape[:2] == lab_back.shape == size
    r, d = statistics.median(render_s), statistics.median(read_s)
    print(f"{platform.processor() or platform.machine()}, scenes {size[0]}x{size[1]}, {a.scenes} scenes")
    print(f"render: {r * 1000:.1f} ms/scene (median; goal well under 1 s: {'met' if r < 0.75 else 'NOT met'})")
    print(f"read back (PNG decode, image + labels): {d * 1000:.1f} ms/scene")
    print(f"ratio render / read back: {r / d:.1f}x")


if __name__ == "__main__":
    main()
