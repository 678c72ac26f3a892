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


MAX_SIDECAR_BYTES = 16 * 2**20
# Bounds on a config read from a file, checked before anything is built (a hostile or corrupt JSON
# must not make the loader allocate terabytes). Fields not named here: ints 0..65536.
_INT_RANGES = {"num_classes": (1, 1024), "patch_size": (1, 64), "channels": (1, 4096), "cipher_block": (0, 256),
               "pixel_group": (0, 64)}
_FLOAT_RANGES = {"drop_path": (0.0, 1.0), "aux_weight": (0.0, 100.0)}
MAX_IMG_SIDE = 8192


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise ValueError("a number with more than 18 digits")
    return int(text)


def _no_constant(text: str):
    raise ValueError(f"{text} is not JSON")


def _parse_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise UserError(f"{what} is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{what} is not valid JSON ({str(exc)[:80]})") from None


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The {"format", "config", "extra"} record of a checkpoint (the JSON beside it, else its metadata),
    with its config checked (types, ranges) before anything is built."""
    path = Path(path)
    side = path.with_suffix(".json")
    if side.is_file():
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            raise UserError(f"{side} is over {MAX_SIDECAR_BYTES} bytes; a checkpoint's JSON is a few KB")
        try:
            meta = _parse_json(side.read_bytes(), str(side))
        except OSError as exc:
            raise UserError(f"cannot read {side}: {exc.strerror}") from None
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("encseg")
        except Exception as exc:  # noqa: BLE001 - not a safetensors file, corrupt header
            raise UserError(f"cannot read checkpoint {path}: {_one_line(exc)}") from None
        meta = None if text is None else _parse_json(text, f"{path}'s metadata")
    if not isinstance(meta, dict):
        raise UserError(f"{path}: no {side.name} beside it and no config in its metadata")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown checkpoint format {str(meta.get('format'))[:40]!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"{path}: the checkpoint's config is not a JSON object")
    if not isinstance(meta.get("extra", {}), dict):
        raise UserError(f"{path}: the checkpoint's extra metadata is not a JSON object")
    check_config_dict(meta["config"], str(side if side.is_file() else path))
    return meta


def check_config_dict(d: dict[str, Any], what: str) -> None:
    """Types and ranges of a stored SETRConfig, field by field, against the dataclass's own defaults."""
    defaults = SETRConfig.__dataclass_fields__
    for name, value in d.items():
        f = defaults.get(name)
        if f is None:
            continue  # SETRConfig.from_dict names unknown fields
        default = f.default if not callable(f.default_factory) else f.default_factory()  # type: ignore[misc]
        bad = f"{what}: config field {name!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{bad} must be true or false")
        elif isinstance(default, int):
            low, high = _INT_RANGES.get(name, (0, 65536))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(f"{bad} must be an integer in {low}..{high}")
        elif isinstance(default, float):
            low, high = _FLOAT_RANGES.get(name, (0.0, 1e6))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
                raise UserError(f"{bad} must be a number in {low}..{high}")
        elif isinstance(default, str):
            if not isinstance(value, str) or len(value) > 64:
                raise UserError(f"{bad} must be a short string")
        elif isinstance(default, tuple):
            if not (isinstance(value, (list, tuple)) and len(value) == len(default)
                    and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMG_SIDE for v in value)):
                raise UserError(f"{bad} must be {len(default)} integers in 1..{MAX_IMG_SIDE}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint tensors from {path}: {_one_line(exc)}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SETR, SETRConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode on `device`, config, extra).

    The config is checked (types, ranges), then the model is built on the meta device (no memory)
    and its tensor names and shapes compared with the file's header; only a checkpoint that
    matches is built for real and loaded. A mismatch raises a UserError naming the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    meta = read_checkpoint_meta(path)
    try:
        config = SETRConfig.from_dict(meta["config"])
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_setr(config).state_dict().items()}
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a config the model cannot be built from
        raise UserError(f"checkpoint {path}: its config does not describe a model ({_one_line(exc)})") from None
    stored = _file_shapes(path)
    problems = [f"missing {k}" for k in shapes if k not in stored]
    problems += [f"unexpected {k}" for k in stored if k not in shapes]
    problems += [f"{k}: file {list(v)} vs model {list(shapes[k])}" for k, v in stored.items() if k in shapes and v != shapes[k]]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise UserError(f"checkpoint {path} does not match its config ({config.encoder}/{config.decoder}): {shown}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint tensors from {path}: {_one_line(exc)}") from None
    model = build_setr(config)
    model.load_state_dict(state)
    return model.to(device).eval(), config, meta.get("extra", {})
