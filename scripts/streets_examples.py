"""Write docs/streets_examples.png: procedural street scenes beside their colourised labels.

    .venv/bin/python scripts/streets_examples.py [OUT.png] [--size 256x512] [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from encseg.data.cityscapes import CLASS_NAMES, PALETTE, colorize
from encseg.data.streets import render_scene


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="docs/streets_examples.png")
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 3, 10, 21])
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rows = []
    for seed in args.seeds:
        img, lab = render_scene(seed, (h, w))
        rows.append(np.concatenate([img, np.full((h, 4, 3), 255, np.uint8), colorize(lab)], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], 0)
    legend_h = 22 * ((len(CLASS_NAMES) + 6) // 7) + 8
    canvas = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + legend_h), "white")
    canvas.paste(Image.fromarray(sheet), (0, 0))
    draw = ImageDraw.Draw(canvas)
    col_w = sheet.shape[1] // 7
    for i, name in enumerate(CLASS_NAMES):
        x, y = 6 + (i % 7) * col_w, sheet.shape[0] + 6 + (i // 7) * 22
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(c) for c in PALETTE[i]), outline=(0, 0, 0))
        draw.text((x + 20, y + 1), name, fill=(0, 0, 0))
    canvas.save(args.out)
    print(f"wrote {args.out} (seeds {args.seeds}, {h}x{w})")


if __name__ == "__main__":
    main()
