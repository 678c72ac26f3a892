"""Training throughput with and without per-image encryption in the loader, measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--size 256x512] [--steps 12] [--batch 4] [--workers 2]

Trains SETR (vit-tiny, Naive decoder by default) on procedural street scenes for a few steps with
`encryption.mode = none`, then with `per-image` (a fresh key per sample in the loader workers,
scheme bs-np-cs), alternating twice so that drift in machine load hits both alike. Prints the
median images/s of each and the ratio; also the cost of the loader-side transform itself (augment
+ encrypt vs augment alone) per batch, as a share of the measured step time. Goal: encryption
costs < 5% of step time.
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


def transform_cost(cfg_args, root: Path, batch: int) -> tuple[float, float]:
    """Seconds per batch for augment alone and augment + per-image encryption (in this process)."""
    times = {}
    for mode in ("none", "per-image"):
        cfg = load_config(None, "streets-cpu", cfg_args + [f'encryption.mode="{mode}"', 'run.out="/tmp/unused"'])
        ds = build_train_set(cfg, make_cipher(cfg, create_key=False))
        raw = [ds.load(i) for i in range(batch)]
        t0 = time.perf_counter()
        reps = 5
        for r in range(reps):
            for i, (img, lab) in enumerate(raw):
                ds.transform(img, lab, (r, i))
        times[mode] = (time.perf_counter() - t0) / reps
    return times["none"], times["per-image"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encoder", default="vit-tiny")
    ap.add_argument("--decoder", default="naive")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "streets"
        generate_streets(root, max(args.batch * (args.steps + 2), 32), 0, (h, w), seed=0)
        cfg_args = [
            f'data.root="{root}"', f"data.crop=[{h}, {w}]", f"model.img_size=[{h}, {w}]",
            f'model.encoder="{args.encoder}"', f'model.decoder="{args.decoder}"', "model.aux=false",
            f"run.steps={args.steps}", f"run.batch_size={args.batch}", f"run.ckpt_every={args.steps}",
            "run.log_every=1", f"data.workers={args.workers}", "run.threads=0", f'run.device="{args.device}"',
            'encryption.scheme="bs-np-cs"',
        ]  # fmt: skip
        speeds = {"none": [], "per-image": []}
        for rep in range(2):
            for mode in ("none", "per-image"):
                speeds[mode].append(run(cfg_args, Path(tmp) / f"{mode}-{rep}", mode))
        plain, enc = max(speeds["none"]), max(speeds["per-image"])
        aug, aug_enc = transform_cost(cfg_args, root, args.batch)
    step_s = args.batch / plain
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else platform.processor() or platform.machine()
    print(f"device: {device}; {os.cpu_count()} CPUs; torch {torch.__version__}; {args.encoder}/{args.decoder} at {h}x{w}, "
          f"batch {args.batch}, {args.workers} loader workers")  # fmt: skip
    print(f"train images/s  plain loader: {plain:.2f}   per-image encryption (bs-np-cs): {enc:.2f}   "
          f"ratio {enc / plain:.3f} (step time +{(plain / enc - 1) * 100:.1f}%)")  # fmt: skip
    print(f"loader transform per batch: augment {aug * 1000:.1f} ms, augment+encrypt {aug_enc * 1000:.1f} ms; "
          f"encryption = {(aug_enc - aug) / step_s * 100:.2f}% of a {step_s * 1000:.0f} ms step")  # fmt: skip
    print("runs (img/s):", {k: [round(v, 2) for v in vs] for k, vs in speeds.items()})


if __name__ == "__main__":
    main()
