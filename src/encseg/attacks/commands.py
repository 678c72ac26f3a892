"""CLI: `encseg attack` runs the attack suite and writes a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from encseg.cipher.commands import parse_size
from encseg.cipher.scheme import PRESETS
from encseg.errors import UserError

ALL_SCHEMES = list(PRESETS)  # "plain" first: the calibration row (what the attacks get with no encryption)


def _models(values: list[str], labels: list[str]) -> dict[str, str]:
    """`SCHEME=PATH` pairs, or a bare PATH whose checkpoint JSON names the scheme it was trained for."""
    from encseg.attacks.probe import checkpoint_scheme
    from encseg.models import read_checkpoint_meta

    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            path = v
            if not Path(path).is_file():
                raise UserError(f"--model: checkpoint not found: {path}")
            name = checkpoint_scheme(read_checkpoint_meta(path).get("extra", {}))
            if name is None:
                raise UserError(f"--model {path}: its JSON names no scheme; give it as SCHEME=PATH")
        if not Path(path).is_file():
            raise UserError(f"--model: checkpoint not found: {path}")
        if name not in labels:
            raise UserError(f"--model {v}: scheme {name!r} is not among --schemes ({', '.join(labels)})")
        out[name] = path
    return out


def attack(
    schemes: str = typer.Option("all", help="comma-separated schemes (NAME or NAME/BLOCK for another cipher block size), "
                                            "or 'all' (" + ", ".join(ALL_SCHEMES) + ")"),
    images: int = typer.Option(20, help="held-out benchmark images to attack"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for report.md, results.json and PNGs"),
    size: str = typer.Option("256x512", help="image size HxW (multiples of the block size)"),
    block_size: int = typer.Option(16, help="block size p (for schemes named without /BLOCK)"),
    inverse_minutes: float = typer.Option(10.0, help="wall-time budget of each learned inverse (per-image keys)"),
    shared_inverse_minutes: float = typer.Option(None, help="budget of the shared-key learned inverse (default: --inverse-minutes)"),
    inverse_width: int = typer.Option(32, help="channels of the U-Net's first level"),
    model: list[str] = typer.Option([], "--model", help="segmentation model to attack with: SCHEME=PATH or PATH "
                                                        "(scheme from its JSON); repeatable"),
    segmenter: Path = typer.Option(None, help="plain SETR checkpoint for the semantic leakage score"),
    probe_scenes: int = typer.Option(48, help="attacker scenes for the position probe and the learned compatibility"),
    seed: int = typer.Option(0, help="benchmark seed (victims are split `test`; the attacker uses another seed)"),
    grid_scale: float = typer.Option(0.5, help="size of the PNG grids relative to the scenes"),
    threads: int = typer.Option(1, help="torch threads (0: torch's default; on a busy machine more threads are slower)"),
    quick: bool = typer.Option(False, help="seconds-long settings for tests: tiny budgets, few attacker scenes"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Attack every scheme (jigsaw, PS leak, model as attacker, learned inverse, known pairs) on held-out scenes."""
    from encseg.attacks.inverse import InverseConfig  # torch: imported only when the command runs
    from encseg.attacks.suite import SchemeSpec, SuiteConfig, run_suite

    names = ALL_SCHEMES if schemes.strip() == "all" else [s.strip() for s in schemes.split(",") if s.strip()]
    if not names:
        raise UserError("no schemes given")
    try:
        specs = [SchemeSpec.parse(n, block_size) for n in names]
    except ValueError:
        raise UserError(f"a /BLOCK suffix must be an integer (got {schemes!r})") from None
    h, w = parse_size(size)
    for s in specs:
        p = s.scheme.block_size
        if h % p or w % p:
            raise UserError(f"size {h}x{w} must be a multiple of the block size {p} (scheme {s.label})")
    if h < 32 or w < 32:
        raise UserError("size must be at least 32x32 (the benchmark renderer's minimum)")
    if images < 1 or probe_scenes < 1:
        raise UserError("--images and --probe-scenes must be at least 1")
    if inverse_minutes <= 0 or (shared_inverse_minutes is not None and shared_inverse_minutes <= 0):
        raise UserError("inverse budgets must be positive minutes")
    if not 0.05 <= grid_scale <= 1.0:
        raise UserError("--grid-scale must be between 0.05 and 1")
    if segmenter is not None and not segmenter.is_file():
        raise UserError(f"--segmenter: checkpoint not found: {segmenter}")
    models = _models(model, [s.label for s in specs])
    if threads:
        import torch

        from encseg.attacks._blas import set_blas_threads

        torch.set_num_threads(threads)
        set_blas_threads(threads)
    inv = InverseConfig(width=max(4, inverse_width - inverse_width % 4), minutes=inverse_minutes)
    cfg = SuiteConfig(images=images, size=(h, w), seed=seed, inverse=inv, shared_inverse_minutes=shared_inverse_minutes,
                      probe_scenes=probe_scenes, models=models, segmenter=str(segmenter) if segmenter else None,
                      grid_scale=grid_scale)
    if quick:
        inv.minutes, inv.max_steps, inv.batch, inv.curve_points, inv.pool = min(inverse_minutes, 0.05), 3, 2, 2, 4
        cfg.shared_inverse_minutes = None
        cfg.val_images, cfg.baseline_scenes, cfg.known_pairs = 1, 2, 1
        cfg.probe_scenes, cfg.probe_steps, cfg.compat_steps = min(probe_scenes, 2), 5, 5
    command = "encseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = run_suite(specs, cfg, out, command=command, progress=progress, threads=threads)
    typer.echo(f"wrote {out / 'report.md'}, results.json and {len(results)} PNG grids")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)
