"""Training throughput with and without per-image encryption in the loader, measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--size 256x512] [--steps 12] [--batch 4] [--workers 2]

Trains SETR (vit-tiny, Naive decoder by default) on procedural street scenes for a few steps with
`encryption.mode = none`, then with `per-image` (a fresh key per sample in the loader workers,
scheme bs-np-cs), alternating twice so that drift in machine load hits both alike. Prints the
best-run median images/s of each and the ratio; also the cost of the encryption itself (fresh key,
image and label map) per batch, timed alone, as a share of the measured step time. Goal:
encryption costs < 5% of step time.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encseg.data.streets import generate_streets
from encseg.engine.config import load_config
from encseg.engine.train import build_train_set, make_cipher, train


def run(cfg_args, out: Path, mode: str) -> float:
    cfg = load_config(None, "streets-cpu", cfg_args + [f'run.out="{out}"', f'encryption.mode="{mode}"'])
    train(cfg, progress=False)
    with (out / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["img_per_s"]) for r in rows[3:])  # skip warm-up steps


def encryption_cost(cfg_args, batch: int, passes: int = 5) -> float:
    """Seconds per batch for the loader-side per-image encryption alone (fresh key, image + label map),
    on augmented crops; the best of `passes` passes over the batch."""
    cfg = load_config(None, "streets-cpu", cfg_args + ['encryption.mode="per-image"', 'run.out="/tmp/unused"'])
    ds = build_train_set(cfg, None)  # augmentation only: the crops the cipher would see
    crops = []
    for i in range(batch):
        img, lab = ds.load(i)
        x, y = ds.transform(img, lab, (0, i))
        crops.append((np.ascontiguousarray(x.numpy().transpose(1, 2, 0)), y.numpy().astype(np.uint8)))
    cipher = make_cipher(cfg, create_key=False)
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for img, lab in crops:
            cipher(img, lab)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a small CPU)")
    ap.add_argument("--encoder", default="vit-tiny")
    ap.add_argument("--decoder", default="naive")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="auto (bf16 on CUDA and on CPUs with native bf16) | bf16 | off")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "streets"
        generate_streets(root, max(args.batch * (args.steps + 2), 32), 0, (h, w), seed=0)
        cfg_args = [
            f'data.root="{root}"', f"data.crop=[{h}, {w}]", f"model.img_size=[{h}, {w}]",
            f'model.encoder="{args.encoder}"', f'model.decoder="{args.decoder}"', "model.aux=false",
            f"run.steps={args.steps}", f"run.batch_size={args.batch}", f"run.ckpt_every={args.steps}",
            "run.log_every=1", f"data.workers={args.workers}", f"run.threads={args.threads}", f'run.device="{args.device}"',
            'encryption.scheme="bs-np-cs"', f'run.amp="{args.amp}"',
        ]  # fmt: skip
        speeds = {"none": [], "per-image": []}
        for rep in range(2):
            for mode in ("none", "per-image"):
                speeds[mode].append(run(cfg_args, Path(tmp) / f"{mode}-{rep}", mode))
        plain, enc = max(speeds["none"]), max(speeds["per-image"])
        enc_s = encryption_cost(cfg_args, args.batch)
    step_s = args.batch / plain
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else platform.processor() or platform.machine()
    print(f"device: {device}; {os.cpu_count()} CPUs; torch {torch.__version__}; {args.encoder}/{args.decoder} at {h}x{w}, "
          f"batch {args.batch}, {args.workers} loader workers, {args.threads} torch threads, amp {args.amp}")  # fmt: skip
    print(f"train images/s  plain loader: {plain:.2f}   per-image encryption (bs-np-cs): {enc:.2f}   "
          f"ratio {enc / plain:.3f} (step time +{(plain / enc - 1) * 100:.1f}%)")  # fmt: skip
    print(f"per-image encryption in the loader: {enc_s * 1000:.1f} ms per batch of {args.batch} (key, image, label map) "
          f"= {enc_s / step_s * 100:.2f}% of a {step_s * 1000:.0f} ms training step")  # fmt: skip
    print("runs (img/s):", {k: [round(v, 2) for v in vs] for k, vs in speeds.items()})


if __name__ == "__main__":
    main()
