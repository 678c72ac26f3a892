"""CLI: `encseg attack` runs the attack suite and writes a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from encseg.cipher.commands import parse_size
from encseg.cipher.scheme import PRESETS, Scheme
from encseg.errors import UserError

ALL_SCHEMES = list(PRESETS)  # "plain" first: the calibration row (what the attacks get with no encryption)


def attack(
    schemes: str = typer.Option("all", help="comma-separated schemes, or 'all' (" + ", ".join(ALL_SCHEMES) + ")"),
    images: int = typer.Option(20, help="held-out benchmark images to attack"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for report.md, results.json and PNG grids"),
    size: str = typer.Option("256x512", help="image size HxW (multiples of the block size)"),
    block_size: int = typer.Option(16, help="block size p"),
    train_images: int = typer.Option(32, help="(encrypted, plain) training scenes for the learned inverse"),
    inverse_steps: int = typer.Option(150, help="training steps of each learned-inverse U-Net"),
    inverse_width: int = typer.Option(32, help="channels of the U-Net's first level"),
    seed: int = typer.Option(0, help="benchmark seed (test/train scenes of encseg.data.streets)"),
    threads: int = typer.Option(1, help="torch threads (0: torch's default; on a busy machine more threads are slower)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Attack every scheme (jigsaw solver, learned inverse, statistics) on held-out street scenes."""
    from encseg.attacks.inverse import InverseConfig  # torch: imported only when the command runs
    from encseg.attacks.report import run_suite

    names = ALL_SCHEMES if schemes.strip() == "all" else [s.strip() for s in schemes.split(",") if s.strip()]
    if not names:
        raise UserError("no schemes given")
    parsed = [Scheme.parse(n, block_size=block_size) for n in names]
    h, w = parse_size(size)
    if h % block_size or w % block_size:
        raise UserError(f"size {h}x{w} must be a multiple of the block size {block_size}")
    if h < 32 or w < 32:
        raise UserError("size must be at least 32x32 (the benchmark renderer's minimum)")
    if images < 1 or train_images < 1:
        raise UserError("--images and --train-images must be at least 1")
    if inverse_steps < 0:
        raise UserError("--inverse-steps must be >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = InverseConfig(width=max(4, inverse_width - inverse_width % 4), steps=inverse_steps)
    command = "encseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = run_suite(parsed, images, out, (h, w), train_images, cfg, seed=seed, command=command, progress=progress)
    typer.echo(f"wrote {out / 'report.md'} and {len(results)} PNG grids")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)
