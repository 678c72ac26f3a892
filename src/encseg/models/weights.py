"""Import pretrained ViT weights from a local file (timm names, or the original ViT .npz layout).

Nothing is downloaded: the user names a file. `.safetensors` is read with safetensors, `.pth/.pt/.bin`
with `torch.load(weights_only=True)` (no unpickling of code), `.npz` with `numpy.load(allow_pickle=False)`.
The position embedding is resized to the model's grid (class-token entry kept), and the report
lists what was loaded, what the model kept from its own init, and what the file had that was unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encseg.errors import UserError
from encseg.models.vit import SetPatchEmbed, ViT, resize_pos_embed


@dataclass
class ImportReport:
    """What a weight import did: loaded keys, model keys left at init, unused file keys, resizes."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.resized:
            lines += [f"resized {k}: {v}" for k, v in self.resized.items()]
        if self.missing:
            lines.append(f"missing (kept at init): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unused from file: {', '.join(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ViT state dict from .safetensors, .pth/.pt/.bin (weights only) or .npz, in timm names."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif suffix in (".pth", ".pt", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code, corrupt file
            raise UserError(f"cannot read {path} as a weights-only checkpoint: {exc}") from None
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise UserError(f"{path} does not hold a state dict")
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if any(k.startswith("Transformer/") for k in arrays):
            sd = convert_jax_vit(arrays)
        else:
            sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    else:
        raise UserError(f"unsupported weights format {suffix!r}; use .safetensors, .pth/.pt/.bin or .npz")
    return _strip_prefixes(sd)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not any(k.startswith("blocks.") for k in sd):
        for prefix in ("backbone.", "encoder."):
            if any(k.startswith(prefix + "blocks.") for k in sd):
                return {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


def convert_jax_vit(w: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename and reshape the original (JAX/big_vision) ViT .npz layout into timm's names and shapes."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    if "embedding/kernel" in w:
        sd["patch_embed.proj.weight"] = t(w["embedding/kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
        sd["patch_embed.proj.bias"] = t(w["embedding/bias"])
    if "cls" in w:
        sd["cls_token"] = t(w["cls"])
    if "Transformer/posembed_input/pos_embedding" in w:
        sd["pos_embed"] = t(w["Transformer/posembed_input/pos_embedding"])
    if "Transformer/encoder_norm/scale" in w:
        sd["norm.weight"] = t(w["Transformer/encoder_norm/scale"])
        sd["norm.bias"] = t(w["Transformer/encoder_norm/bias"])
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = src + "MultiHeadDotProductAttention_1/"
        sd[dst + "norm1.weight"] = t(w[src + "LayerNorm_0/scale"])
        sd[dst + "norm1.bias"] = t(w[src + "LayerNorm_0/bias"])
        # query/key/value kernels are [D, heads, head_dim]; timm's fused qkv weight is [3D, D]
        sd[dst + "attn.qkv.weight"] = torch.cat([t(w[mha + n + "/kernel"]).flatten(1).T for n in ("query", "key", "value")])
        sd[dst + "attn.qkv.bias"] = torch.cat([t(w[mha + n + "/bias"]).flatten() for n in ("query", "key", "value")])
        sd[dst + "attn.proj.weight"] = t(w[mha + "out/kernel"]).flatten(0, 1).T  # [heads, hd, D] -> [D, D]
        sd[dst + "attn.proj.bias"] = t(w[mha + "out/bias"])
        sd[dst + "norm2.weight"] = t(w[src + "LayerNorm_2/scale"])
        sd[dst + "norm2.bias"] = t(w[src + "LayerNorm_2/bias"])
        for j, fc in ((0, "fc1"), (1, "fc2")):
            sd[dst + f"mlp.{fc}.weight"] = t(w[src + f"MlpBlock_3/Dense_{j}/kernel"]).T
            sd[dst + f"mlp.{fc}.bias"] = t(w[src + f"MlpBlock_3/Dense_{j}/bias"])
        i += 1
    known = {"embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
             "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"}
    for k, v in w.items():  # keep the rest (classifier head, pre-logits) so the report can list it
        if k not in known and not k.startswith("Transformer/encoderblock_"):
            sd[k] = t(v)
    return sd


def _pos_grid(length: int, src_grid: tuple[int, int] | None, model_grid: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(number of prefix entries, grid) of a stored position embedding with `length` rows.

    Given `src_grid`, that; else the model's own grid if the length fits it; else a square grid.
    """
    if src_grid is not None:
        prefix = length - src_grid[0] * src_grid[1]
        if prefix < 0:
            raise UserError(f"pos_embed has {length} entries, fewer than the grid {src_grid}")
        return prefix, tuple(src_grid)
    if length - model_grid[0] * model_grid[1] in (0, 1, 2):
        return length - model_grid[0] * model_grid[1], tuple(model_grid)
    for prefix in (1, 0, 2):  # class token (timm ViT), none, class + distillation token (DeiT)
        side = math.isqrt(length - prefix)
        if length - prefix > 0 and side * side == length - prefix:
            return prefix, (side, side)
    raise UserError(f"cannot infer the grid of a {length}-entry pos_embed; pass src_grid=(h, w)")


def map_vit_state_dict(
    sd: dict[str, torch.Tensor], encoder: ViT, src_grid: tuple[int, int] | None = None, mode: str = "bilinear"
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Map a timm-named state dict onto `encoder`'s parameters (shapes checked, pos_embed resized).

    Pure: works on meta tensors too (for shape checks of large presets without allocating them).
    """
    target = encoder.state_dict()
    report = ImportReport()
    out: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in sd.items():
        if key == "pos_embed" and "pos_embed" in target:
            prefix, grid = _pos_grid(value.shape[1], src_grid, encoder.grid)
            cls_entry = value[:, :1] if prefix else torch.zeros_like(value[:, :1])  # no class entry in file
            grid_part = value[:, prefix:]
            resized = resize_pos_embed(grid_part, grid, encoder.grid, 0, mode)
            value = torch.cat([cls_entry, resized], dim=1) if encoder.num_prefix else resized
            if grid != encoder.grid or prefix != encoder.num_prefix:
                report.resized[key] = f"{prefix}+{grid[0]}x{grid[1]} -> {encoder.num_prefix}+{encoder.grid[0]}x{encoder.grid[1]}"
        elif key.startswith("patch_embed.") and isinstance(encoder.patch_embed, SetPatchEmbed):
            report.unexpected.append(key)  # a linear p x p embedding does not fit the set embedding
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            mismatched.append(f"{key}: file {list(value.shape)} vs model {list(target[key].shape)}")
            continue
        out[key] = value
    if mismatched:
        raise UserError("pretrained weights do not fit the encoder: " + "; ".join(mismatched))
    report.loaded = sorted(out)
    report.missing = sorted(k for k in target if k not in out)
    return out, report


def load_vit_weights(
    model: nn.Module, path: str | Path, src_grid: tuple[int, int] | None = None, mode: str = "bilinear"
) -> ImportReport:
    """Load pretrained ViT weights from `path` into a ViT or a SETR's encoder; returns the report."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    if not isinstance(encoder, ViT):
        raise TypeError("load_vit_weights needs a ViT or a model with a ViT `.encoder`")
    mapped, report = map_vit_state_dict(read_state_dict(path), encoder, src_grid, mode)
    with torch.no_grad():
        params = encoder.state_dict()
        for key, value in mapped.items():
            params[key].copy_(value.to(params[key].dtype))
    return report
