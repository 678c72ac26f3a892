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

        try:
            sd = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - corrupt header, truncated file
            raise UserError(f"cannot read {path} as safetensors: {_one_line(exc)}") from None
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
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - not a zip, object arrays (pickles), truncated
            raise UserError(f"cannot read {path} as a numpy .npz of arrays: {_one_line(exc)}") from None
        prefix = jax_prefix(arrays)
        if prefix is not None:
            try:
                sd = convert_jax_vit(arrays, prefix)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - missing pieces, odd shapes
                raise UserError(f"{path}: the JAX ViT layout is incomplete or has odd shapes ({_one_line(exc)})") from None
        else:
            try:
                sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
            except TypeError as exc:
                raise UserError(f"{path}: an array has a type torch cannot hold ({_one_line(exc)})") from None
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# Prefixes of the original ViT .npz files timm reads: none (vit_jax), "opt/target/" (older
# checkpoints), "params/" (big_vision), "params/img/" (big_vision SigLIP image towers).
JAX_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def jax_prefix(w: dict) -> str | None:
    """The prefix under which an .npz holds a JAX ViT (`embedding/kernel`), or None if it holds none."""
    for prefix in sorted(JAX_PREFIXES, key=len, reverse=True):
        if f"{prefix}embedding/kernel" in w or f"{prefix}Transformer/encoder_norm/scale" in w:
            return prefix
    return None


def convert_jax_vit(w: dict[str, np.ndarray], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Rename and reshape an original ViT .npz into timm's names and shapes, as timm's `_load_weights`
    reads them: the vit_jax layout (`Transformer/encoderblock_N/`, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3), big_vision's (`params/` prefix, `pos_embedding` at the top,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0), and the scanned layout of either
    (`Transformer/encoderblock/` with a leading layer axis). The numbering is read from the file, so
    either naming under any of the prefixes works."""
    prefix = jax_prefix(w) if prefix is None else prefix
    if prefix is None:
        raise UserError("not a JAX ViT .npz (no embedding/kernel)")
    big_vision = any("/MultiHeadDotProductAttention_0/" in k for k in w)  # big_vision's sub-module numbers
    mha_i, mlp_i, ln2_i = (0, 0, 1) if big_vision else (1, 3, 2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    P = prefix
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str, layer: int | None = None) -> np.ndarray:
        used.add(name)
        a = w[name]
        return a[layer] if layer is not None else a

    if P + "embedding/kernel" in w:
        sd["patch_embed.proj.weight"] = t(get(P + "embedding/kernel").transpose(3, 2, 0, 1))  # HWIO -> OIHW
        sd["patch_embed.proj.bias"] = t(get(P + "embedding/bias"))
    if P + "cls" in w:
        sd["cls_token"] = t(get(P + "cls"))
    for pos in (P + "pos_embedding", P + "Transformer/posembed_input/pos_embedding"):
        if pos in w:
            sd["pos_embed"] = t(get(pos))
    if P + "Transformer/encoder_norm/scale" in w:
        sd["norm.weight"] = t(get(P + "Transformer/encoder_norm/scale"))
        sd["norm.bias"] = t(get(P + "Transformer/encoder_norm/bias"))
    scanned = P + "Transformer/encoderblock/LayerNorm_0/scale" in w
    depth = w[P + "Transformer/encoderblock/LayerNorm_0/scale"].shape[0] if scanned else 0
    i = 0
    while (scanned and i < depth) or (not scanned and f"{P}Transformer/encoderblock_{i}/LayerNorm_0/scale" in w):
        src = f"{P}Transformer/encoderblock/" if scanned else f"{P}Transformer/encoderblock_{i}/"
        idx = i if scanned else None
        dst = f"blocks.{i}."
        mha = src + f"MultiHeadDotProductAttention_{mha_i}/"
        sd[dst + "norm1.weight"] = t(get(src + "LayerNorm_0/scale", idx))
        sd[dst + "norm1.bias"] = t(get(src + "LayerNorm_0/bias", idx))
        # query/key/value kernels are [D, heads, head_dim]; timm's fused qkv weight is [3D, D]
        sd[dst + "attn.qkv.weight"] = torch.cat([t(get(mha + n + "/kernel", idx)).flatten(1).T for n in ("query", "key", "value")])
        sd[dst + "attn.qkv.bias"] = torch.cat([t(get(mha + n + "/bias", idx)).flatten() for n in ("query", "key", "value")])
        sd[dst + "attn.proj.weight"] = t(get(mha + "out/kernel", idx)).flatten(0, 1).T  # [heads, hd, D] -> [D, D]
        sd[dst + "attn.proj.bias"] = t(get(mha + "out/bias", idx))
        sd[dst + "norm2.weight"] = t(get(src + f"LayerNorm_{ln2_i}/scale", idx))
        sd[dst + "norm2.bias"] = t(get(src + f"LayerNorm_{ln2_i}/bias", idx))
        for j, fc in ((0, "fc1"), (1, "fc2")):
            sd[dst + f"mlp.{fc}.weight"] = t(get(src + f"MlpBlock_{mlp_i}/Dense_{j}/kernel", idx)).T
            sd[dst + f"mlp.{fc}.bias"] = t(get(src + f"MlpBlock_{mlp_i}/Dense_{j}/bias", idx))
        i += 1
    for k, v in w.items():  # keep the rest (classifier head, pre-logits, MAP head) so the report can list it
        if k not in used and not k.startswith(P + "Transformer/encoderblock"):
            try:
                sd[k] = t(v)
            except TypeError:
                continue
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
    sd = read_state_dict(path)
    try:
        mapped, report = map_vit_state_dict(sd, encoder, src_grid, mode)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - odd ranks or sizes in the file
        raise UserError(f"{path}: the weights do not fit the encoder ({_one_line(exc)})") from None
    if not mapped:
        shown = ", ".join(report.unexpected[:5]) or "nothing"
        raise UserError(f"{path}: no tensor fits the encoder (nothing loaded); the file holds {shown}"
                        + (" ..." if len(report.unexpected) > 5 else "") + " -- not a timm or original ViT layout?")
    with torch.no_grad():
        params = encoder.state_dict()
        for key, value in mapped.items():
            params[key].copy_(value.to(params[key].dtype))
    return report
