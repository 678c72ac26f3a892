"""CLI: export (a SETR checkpoint to ONNX with dynamic batch and spatial size)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from encseg.errors import UserError


def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="SETR checkpoint (.safetensors with its .json beside it)"),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write"),
    size: Optional[str] = typer.Option(None, help="HEIGHTxWIDTH of the tracing sample (default: the config's img_size)"),
    opset: int = typer.Option(18, help="ONNX opset version"),
    check: bool = typer.Option(False, help="compare onnxruntime with PyTorch on a random input and print the max abs difference"),
) -> None:
    """Export a checkpoint to ONNX: input "image" [B,3,H,W] normalised, output "logits" [B,C,H,W]; B, H, W dynamic."""
    import torch

    from encseg.models.checkpoint import load_checkpoint
    from encseg.models.export import export_onnx, onnx_parity

    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out must end in .onnx (got {out})")
    model, config, _ = load_checkpoint(checkpoint)
    sample = None
    if size is not None:
        try:
            sample = tuple(int(v) for v in size.lower().split("x"))
            assert len(sample) == 2 and min(sample) > 0
        except (ValueError, AssertionError):
            raise UserError(f"--size must look like HEIGHTxWIDTH, e.g. 512x1024 (got {size!r})") from None
    export_onnx(model, out, sample_size=sample, opset=opset)
    p = config.patch_size
    typer.echo(f"wrote {out} ({config.encoder}/{config.decoder}, {config.num_classes} classes; "
               f"batch, height and width dynamic, sides multiples of {p})")
    if check:
        h, w = sample or config.img_size
        diff = onnx_parity(model, out, torch.randn(1, 3, h, w))
        typer.echo(f"onnxruntime vs PyTorch max abs diff: {diff:.3g}")
        if diff >= 1e-4:
            raise UserError(f"onnxruntime output differs from PyTorch by {diff:.3g}")


def register(app: typer.Typer) -> None:
    """Add the model commands to the `encseg` app."""
    app.command("export")(export_cmd)
