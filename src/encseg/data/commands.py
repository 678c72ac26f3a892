"""CLI: `encseg data streets` (write the procedural street benchmark in the Cityscapes layout)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from encseg.cipher.commands import parse_size

data_app = typer.Typer(help="Datasets: generate the procedural street benchmark.", no_args_is_help=True)


@data_app.command("streets")
def streets_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="dataset folder to write (Cityscapes layout)"),
    train: int = typer.Option(2000, help="number of training scenes"),
    val: int = typer.Option(200, help="number of validation scenes"),
    size: str = typer.Option("256x512", help="HEIGHTxWIDTH of every scene"),
    seed: int = typer.Option(0, help="benchmark seed; each scene's seed derives from it, its split and its index"),
    workers: int = typer.Option(0, help="processes (0: one per CPU, at most 8)"),
) -> None:
    """Render procedural street scenes with Cityscapes trainId labels (a benchmark, not Cityscapes)."""
    from encseg.data.streets import generate_streets

    h, w = parse_size(size)
    t0 = time.perf_counter()
    generate_streets(out, train, val, (h, w), seed, workers=workers or None, progress=True)
    typer.echo(f"wrote {train} train + {val} val scenes ({h}x{w}, seed {seed}) to {out} in {time.perf_counter() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    """Add `encseg data ...` to the app."""
    app.add_typer(data_app, name="data")
