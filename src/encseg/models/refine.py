"""The client's refiner: puts back, after decryption, what block scrambling hid from the server.

A server model that is exactly equivariant to block scrambling cannot know where a block sits in
the image, and that is most of the price of privacy (docs/training.md). The client can: once it has
decrypted the server's label map with its key, every label is back in place. `ClientRefiner` is a
small CNN that the client runs on the decrypted label map alone (one-hot labels and each pixel's
relative position; not the image) and that returns corrected logits: a position prior and a
smoothing across blocks that the server's model could not learn. It runs after decryption, on the
client, sees nothing but the label map the client already holds, and sends nothing anywhere: what
the server receives and returns, and so every privacy figure, is unchanged.

The context path works on a coarse grid (class fractions per cell, dilated 3x3 convolutions): 1/`scale`
of the training size, kept at the same number of rows for larger or smaller images (`grid_rows`),
and a 1x1 convolution fuses it with the full-resolution labels: about 4k multiply-adds per pixel at
the defaults. Saved like a model checkpoint: safetensors + a JSON sidecar, written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from encseg.cipher.io import write_atomic
from encseg.errors import UserError

FORMAT = "encseg-refiner/1"


@dataclass(frozen=True)
class RefinerConfig:
    num_classes: int = 19
    width: int = 32
    scale: int = 4  # the context path works at 1/scale resolution ...
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    grid_rows: int = 0  # ... or, when set, on a grid of this many rows at any image size (the training size / scale)

    def __post_init__(self) -> None:
        ok = (1 <= self.num_classes <= 1024 and 1 <= self.width <= 1024 and 1 <= self.scale <= 64
              and 1 <= len(self.dilations) <= 16 and all(1 <= d <= 64 for d in self.dilations)
              and 0 <= self.grid_rows <= 4096)  # fmt: skip
        if not ok:
            raise UserError(f"refiner config out of range: {asdict(self)}"[:300])

    def to_dict(self) -> dict:
        return asdict(self) | {"dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, d: dict) -> RefinerConfig:
        if not isinstance(d, dict):
            raise UserError("refiner config: expected a JSON object")
        try:
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            if "dilations" in known:
                known["dilations"] = tuple(int(v) for v in known["dilations"])
            for k in ("num_classes", "width", "scale", "grid_rows"):
                if k in known:
                    known[k] = int(known[k])
            return cls(**known)
        except (TypeError, ValueError) as exc:
            raise UserError(f"refiner config: {exc}"[:300]) from None


def _coords(b: int, h: int, w: int, device) -> torch.Tensor:
    """[B,2,H,W]: each cell's row and column, -1 at the top/left edge and +1 at the bottom/right."""
    y = torch.linspace(-1.0, 1.0, h, device=device).view(1, 1, h, 1).expand(b, 1, h, w)
    x = torch.linspace(-1.0, 1.0, w, device=device).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([y, x], dim=1)


class ClientRefiner(nn.Module):
    """Decrypted labels [B,H,W] (integers; values >= num_classes count as unknown) -> logits [B,C,H,W]."""

    def __init__(self, config: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.config = config
        c, w = config.num_classes, config.width
        layers: list[nn.Module] = [nn.Conv2d(c + 2, w, 3, padding=1), nn.ReLU(inplace=True)]
        for d in config.dilations:
            layers += [nn.Conv2d(w, w, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
        self.context = nn.Sequential(*layers)
        self.fuse = nn.Conv2d(w + c, c, 1)
        self.label_gain = nn.Parameter(torch.tensor(4.0))  # the decrypted label's own vote, learned

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        c, s = self.config.num_classes, self.config.scale
        b, h, w = labels.shape
        labels = labels.long()
        onehot = F.one_hot(labels.clamp(0, c), c + 1)[..., :c].permute(0, 3, 1, 2).float()  # unknown: all zero
        if self.config.grid_rows:  # the same grid at every image size: a position means the same everywhere
            lh = self.config.grid_rows
            lw = max(1, round(lh * w / h))
        else:
            lh, lw = max(1, h // s), max(1, w // s)
        low = F.adaptive_avg_pool2d(onehot, (lh, lw))
        ctx = self.context(torch.cat([low, _coords(b, lh, lw, labels.device)], dim=1))
        ctx = F.interpolate(ctx, size=(h, w), mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([ctx, onehot], dim=1)) + self.label_gain * onehot

    @torch.no_grad()
    def refine(self, labels: np.ndarray) -> np.ndarray:
        """One decrypted label map (uint8 HxW) -> the refined label map (uint8 HxW)."""
        arr = np.asarray(labels)
        if arr.ndim != 2:
            raise UserError(f"the refiner takes one HxW label map, got shape {arr.shape}")
        dev = next(self.parameters()).device
        x = torch.from_numpy(arr.astype(np.int64)).unsqueeze(0).to(dev)
        was = self.training
        self.eval()
        out = self(x)[0].argmax(0).to("cpu").numpy().astype(np.uint8)
        self.train(was)
        return out


def save_refiner(path: str | Path, refiner: ClientRefiner, extra: dict[str, Any] | None = None) -> Path:
    """refiner.safetensors (+ the JSON in its metadata) and refiner.json beside it, atomically."""
    path = Path(path)
    text = json.dumps({"format": FORMAT, "config": refiner.config.to_dict(), "extra": extra or {}}, indent=2, sort_keys=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in refiner.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"encseg": text}))
    write_atomic(path.with_suffix(".json"), (text + "\n").encode())
    return path


def load_refiner(path: str | Path, device: str | torch.device = "cpu") -> tuple[ClientRefiner, dict[str, Any]]:
    """(refiner in eval mode, extra) from a file `save_refiner` wrote; a clear one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no refiner at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("encseg", "null"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{path}: not an encseg refiner (format {FORMAT!r} expected)")
        refiner = ClientRefiner(RefinerConfig.from_dict(meta.get("config") or {}))
        state = load_file(str(path))
        refiner.load_state_dict(state, strict=True)
    except UserError:
        raise
    except Exception as exc:  # a corrupt or foreign file: say which, in one line
        raise UserError(f"{path}: cannot read the refiner ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return refiner.to(device).eval(), meta.get("extra") or {}


def refiner_entry_beside(checkpoint: str | Path) -> tuple[Path, dict] | None:
    """(the refiner file, the JSON's `extra.refiner` entry) that a model checkpoint's JSON names
    (`extra.refiner.file`: a bare file name in the checkpoint's folder, nothing else), if that file
    exists; else None."""
    try:
        extra = json.loads(Path(checkpoint).with_suffix(".json").read_text()).get("extra") or {}
    except (OSError, ValueError, AttributeError):
        return None
    ref = extra.get("refiner") if isinstance(extra, dict) else None
    name = ref.get("file") if isinstance(ref, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None
    path = Path(checkpoint).parent / name
    return (path, ref) if path.is_file() else None


def refiner_path_beside(checkpoint: str | Path) -> Path | None:
    """The refiner file a model checkpoint's JSON names (see `refiner_entry_beside`), or None."""
    entry = refiner_entry_beside(checkpoint)
    return None if entry is None else entry[0]


def refiner_beside(checkpoint: str | Path) -> ClientRefiner | None:
    """The refiner shipped beside a model checkpoint (see `refiner_path_beside`), loaded, or None."""
    path = refiner_path_beside(checkpoint)
    return None if path is None else load_refiner(path)[0]
