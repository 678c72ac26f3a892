"""ONNX export of a SETR model: input "image" [B,3,H,W] (normalised), output "logits" [B,C,H,W].

Batch, height and width are dynamic; height and width must be multiples of the patch size (the
exported graph encodes them as patch_size x a free integer).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encseg.errors import UserError


def export_onnx(model: nn.Module, out: str | Path, sample_size: tuple[int, int] | None = None, opset: int = 18) -> Path:
    """Export `model` (eval mode) to ONNX at `out` with dynamic batch and spatial size; written atomically."""
    out = Path(out)
    model = model.eval()
    p = model.config.patch_size
    h, w = sample_size or model.config.img_size
    if h % p or w % p:
        raise UserError(f"sample size {(h, w)} must be a multiple of the patch size {p}")
    # sample sides distinct from each other and from the batch, so no dimension is specialised by accident
    x = torch.randn(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows = torch.export.Dim("rows", min=1, max=1024)
    cols = torch.export.Dim("cols", min=1, max=1024)
    dynamic = {"x": {0: batch, 2: p * rows, 3: p * cols}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                input_names=["image"], output_names=["logits"], verbose=False,
            )
        program.save(str(tmp), external_data=False)
        os.replace(tmp, out)
    finally:
        quiet.setLevel(level)
        if tmp.exists():
            tmp.unlink()
    return out


def onnx_parity(model: nn.Module, onnx_path: str | Path, x: torch.Tensor) -> float:
    """Max abs difference between onnxruntime's and PyTorch's logits for input `x` (model in eval mode)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model.eval()(x).numpy()
    if got.shape != want.shape:
        raise AssertionError(f"onnx output shape {got.shape} != torch {want.shape}")
    return float(np.abs(got - want).max())
