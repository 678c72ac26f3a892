"""A model ready to serve: eval mode, input normalisation, argmax and top-k, and what the service
tells clients about it (classes, palette, block size, the schemes it was trained for, and the client's
refiner shipped beside the checkpoint, whose public weights the browser page runs after decryption)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encseg.cipher import DEFAULT_SCHEME, Scheme
from encseg.errors import UserError


def default_classes(num_classes: int) -> tuple[list[str], list[list[int]]]:
    """Cityscapes names and palette for 19 classes; numbered classes and a fixed palette otherwise."""
    if num_classes == 19:
        from encseg.data.cityscapes import CLASS_NAMES, PALETTE

        return list(CLASS_NAMES), PALETTE.tolist()
    rng = np.random.default_rng(0)
    return [f"class {i}" for i in range(num_classes)], rng.integers(0, 256, (num_classes, 3)).tolist()


@dataclass
class ModelInfo:
    """What GET /v1/info reports. `schemes` are the schemes the model was trained for (not a whitelist)."""

    name: str
    num_classes: int
    patch_size: int
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    schemes: list[Scheme] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    key_mode: str | None = None  # how training images were keyed: per-image, shared or none
    trained_on: dict = field(default_factory=dict)  # what the checkpoint says of its data and score (TRAINED_ON_KEYS)
    invariances: tuple[str, ...] = ()  # scheme step codes the model commutes with by construction (SETRConfig.invariances)

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= 255:
            raise UserError(f"the service writes 8-bit label maps: 1..255 classes (got {self.num_classes})")
        if not self.class_names or not self.palette:
            names, palette = default_classes(self.num_classes)
            self.class_names = self.class_names or names
            self.palette = self.palette or palette
        if len(self.class_names) != self.num_classes or len(self.palette) != self.num_classes:
            raise UserError("class names and palette must have one entry per class")

    def order_free(self, scheme: Scheme) -> bool:
        """Whether the model ignores pixel order inside the q x q groups of `scheme`'s pixel shuffle, so
        a ciphertext may arrive in the sorted arrangement (docs/encryption-format.md section 13.3)."""
        from encseg.cipher.arrange import arrangement_group

        q = arrangement_group(scheme)
        if q is None or self.patch_size % q:  # a group must lie inside one of the model's patches
            return False
        return ("psb" if q == self.patch_size else f"psb{q}") in self.invariances

    @property
    def block_size(self) -> int:
        return self.schemes[0].block_size if self.schemes else self.patch_size


@dataclass
class Prediction:
    """One image's answer in encrypted geometry: labels [H,W] uint8; top-k ids [k,H,W] uint8, probs float32."""

    labels: np.ndarray
    topk_classes: np.ndarray | None = None
    topk_probs: np.ndarray | None = None


class Segmenter:
    """Runs a segmentation model on batches of encrypted uint8 images. One caller at a time (the
    batcher's single inference thread); torch's own intra-op threads do the parallel work."""

    def __init__(self, model: nn.Module, info: ModelInfo, device: str | torch.device = "cpu",
                 crop: int | tuple[int, int] | None = None, stride: int | tuple[int, int] | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.info = info
        self.crop = crop  # sliding-window size (multiples of the patch size), or None for whole images
        self.stride = stride  # sliding-window stride (None: the crop)
        self.scene_size: tuple[int, int] | None = None  # (H, W) of the scenes it was trained on, if recorded
        self.generator_version: int | None = None  # of the street scenes it was trained on, if recorded
        self.refiner: PageRefiner | None = None  # the client's refiner shipped beside the checkpoint, if any

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", crop: int | None = None) -> "Segmenter":
        """Load a checkpoint written by `encseg.models.save_checkpoint` (safetensors + JSON config).

        Without `crop`, the checkpoint's own inference setting (`extra["inference"]`, written for
        models trained on crops of larger scenes) picks sliding-window or whole-image inference."""
        from encseg.models import load_checkpoint

        path = Path(path)
        if not path.exists():
            raise UserError(f"checkpoint {path} does not exist")
        model, cfg, extra = load_checkpoint(path, device=device)
        try:
            extra = extra or {}
            cfg_dict = cfg.__dict__ if hasattr(cfg, "__dict__") else dict(cfg)
            info = ModelInfo(
                name=str(extra.get("name") or f"setr-{cfg_dict.get('decoder', '?')}-{cfg_dict.get('encoder', '?')}"),
                num_classes=int(cfg_dict["num_classes"]),
                patch_size=int(cfg_dict.get("patch_size", 16)),
                class_names=list(extra.get("class_names") or []),
                palette=[list(map(int, c)) for c in (extra.get("palette") or [])],
                schemes=schemes_from_extra(extra, int(cfg_dict.get("patch_size", 16))),
                config={k: v for k, v in cfg_dict.items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))},
                key_mode=key_mode_from_extra(extra),
                trained_on={k: extra[k] for k in TRAINED_ON_KEYS if extra.get(k) is not None},
                invariances=tuple(cfg.invariances) if hasattr(cfg, "invariances") else (),
            )
            stride = None
            if crop is None:
                hint = extra.get("inference") or {}
                crop = tuple(hint["crop"]) if hint.get("crop") else None
                stride = tuple(hint["stride"]) if crop and hint.get("stride") else None
            scene_size = tuple(int(v) for v in extra["scene_size"]) if extra.get("scene_size") else None
            generator = int(extra["generator_version"]) if extra.get("generator_version") is not None else None
        except UserError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            raise UserError(f"checkpoint {path}: its extra metadata (classes, palette, schemes, inference) is malformed") from None
        segmenter = cls(model, info, device, crop, stride)
        segmenter.scene_size, segmenter.generator_version = scene_size, generator
        segmenter.refiner = PageRefiner.beside(path, info.num_classes)
        return segmenter

    @torch.inference_mode()
    def predict(self, images: np.ndarray, topk: int = 0) -> list[Prediction]:
        """images: uint8 [B,H,W,3] (encrypted, sides multiples of the patch size) -> one Prediction each.

        Runs the shared inference path (`encseg.models.predict`: ImageNet normalisation, eval mode,
        optional sliding window), so the service answers exactly what evaluation measures."""
        from encseg.models import predict

        logits = predict(self.model, np.ascontiguousarray(images), device=self.device, crop=self.crop, stride=self.stride)
        labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
        out = [Prediction(labels[i]) for i in range(len(labels))]
        if topk > 0:
            k = min(topk, logits.shape[1])
            probs, idx = logits.float().softmax(1).topk(k, dim=1)
            probs, idx = probs.cpu().numpy(), idx.to(torch.uint8).cpu().numpy()
            for i, p in enumerate(out):
                p.topk_classes, p.topk_probs = idx[i], probs[i]
        return out


# A refiner's weights travel to the browser page as JSON: a 24-class, width-128 refiner is about 2 MB.
MAX_REFINER_FLOATS = 4 * 2**20


@dataclass(frozen=True)
class PageRefiner:
    """The client's refiner (encseg.models.refine) as GET /v1/refiner serves it: `summary` for
    /v1/info, `body` the JSON document (config + each tensor as shape and base64 of little-endian
    float32), built and checked once at start-up. Public weights, like the model's: nothing in it
    depends on a client, and it never meets a key."""

    summary: dict
    body: bytes

    @classmethod
    def beside(cls, checkpoint: str | Path, num_classes: int) -> "PageRefiner | None":
        """The refiner a checkpoint's JSON names (`extra.refiner.file`), or None; a refiner that does
        not load, or is for another number of classes, is a one-line UserError at start-up."""
        from encseg.models.refine import refiner_entry_beside

        entry = refiner_entry_beside(checkpoint)
        return None if entry is None else cls.from_file(entry[0], num_classes, entry[1])

    @classmethod
    def from_file(cls, path: str | Path, num_classes: int, named: dict | None = None) -> "PageRefiner":
        from encseg.models.refine import FORMAT, load_refiner

        refiner, extra = load_refiner(path)
        config = refiner.config
        if config.num_classes != num_classes:
            raise UserError(f"the refiner {Path(path).name} is for {config.num_classes} classes, the model has {num_classes}")
        state = refiner.state_dict()
        total = sum(t.numel() for t in state.values())
        if total > MAX_REFINER_FLOATS:
            raise UserError(f"the refiner {Path(path).name} has {total} weights, over the page's limit of {MAX_REFINER_FLOATS}")
        tensors = {}
        for name, t in state.items():
            arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
            if not np.isfinite(arr).all():
                raise UserError(f"the refiner {Path(path).name}: tensor {name} is malformed")
            tensors[name] = {"shape": [int(v) for v in t.shape], "data": base64.b64encode(arr.astype("<f4").tobytes()).decode("ascii")}

        def score(key: str) -> float | None:
            for source in (named or {}, extra):
                v = source.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    return float(v)
            return None

        summary = {"config": config.to_dict(), "val_miou_refined": score("val_miou_refined"),
                   "val_miou_server": score("val_miou_server"), "parameters": int(total)}
        body = json.dumps({"format": FORMAT, "config": config.to_dict(), "dtype": "float32-le", "tensors": tensors},
                          separators=(",", ":")).encode()
        return cls(summary, body)


# What a checkpoint's extra metadata may say about its training data and score (the demo model writes
# them, engine/experiment.py write_demo_asset); GET /v1/info passes them on so a client can say what
# the model is (the procedural street benchmark, not Cityscapes) and how well it scored.
TRAINED_ON_KEYS = ("benchmark", "val_miou_per_image_keys", "generator_version", "scene_size", "data")


def schemes_from_extra(extra: dict, block_size: int) -> list[Scheme]:
    """The scheme(s) a checkpoint was trained for, from its extra metadata: the engine's
    `train_config.encryption` ({"mode", "scheme"}; mode "none" means plain images), or a
    `scheme`/`schemes` entry (a name, a descriptor, or a list of them)."""
    enc = (extra.get("train_config") or {}).get("encryption") if isinstance(extra.get("train_config"), dict) else None
    raw = extra.get("schemes", extra.get("scheme"))
    if raw is None and isinstance(enc, dict):
        raw = "plain" if enc.get("mode") == "none" else enc.get("scheme")
    if raw is None:
        return [Scheme.parse(DEFAULT_SCHEME, block_size)]
    out = []
    for item in raw if isinstance(raw, list) else [raw]:
        out.append(Scheme.from_dict(item) if isinstance(item, dict) else Scheme.parse(str(item), block_size=block_size))
    return out


def key_mode_from_extra(extra: dict) -> str | None:
    """How the model's training images were keyed: "per-image", "shared", "none" (None if unrecorded)."""
    tc = extra.get("train_config")
    enc = tc.get("encryption") if isinstance(tc, dict) else None
    return enc.get("mode") if isinstance(enc, dict) else None
