"""SETR checkpoints: weights as safetensors, config + extra metadata as JSON beside them, written atomically.

`model.safetensors` holds the tensors (and a copy of the JSON in its metadata, so a lone file still
describes itself); `model.json` holds {"format", "config", "extra"}. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from encseg.cipher.io import write_atomic
from encseg.errors import UserError
from encseg.models.setr import SETR, SETRConfig, build_setr

FORMAT = "encseg-setr/1"


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, model: nn.Module, config: SETRConfig | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Save `model` to `path` (.safetensors) and its config + `extra` (JSON-serialisable) to path.with_suffix('.json')."""
    path = Path(path)
    model = _unwrap(model)
    config = config if config is not None else model.config
    meta = {"format": FORMAT, "config": config.to_dict(), "extra": extra or {}}
    text = json.dumps(meta, indent=2, sort_keys=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"encseg": text}))
    write_atomic(path.with_suffix(".json"), (text + "\n").encode())
    return path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The {"format", "config", "extra"} record of a checkpoint (the JSON beside it, else its metadata)."""
    path = Path(path)
    side = path.with_suffix(".json")
    try:
        if side.is_file():
            meta = json.loads(side.read_text())
        else:
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("encseg")
            meta = None if text is None else json.loads(text)
    except Exception as exc:  # unreadable JSON, not a safetensors file
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: no {side.name} beside it and no config in its metadata")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SETR, SETRConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode on `device`, config, extra).

    Every tensor must be present with the model's shape: a mismatch raises a UserError naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    meta = read_checkpoint_meta(path)
    config = SETRConfig.from_dict(meta["config"])
    model = build_setr(config)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise UserError(f"cannot read checkpoint tensors from {path}: {exc}") from None
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise UserError(f"checkpoint {path} does not match its config ({config.encoder}/{config.decoder}): {shown}")
    model.load_state_dict(state)
    return model.to(device).eval(), config, meta.get("extra", {})
