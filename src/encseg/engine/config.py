"""Training configuration: dataclasses, named presets, TOML files and `--set section.key=value` overrides.

A TOML file has the sections [model] (any `SETRConfig` field), [data], [encryption], [optim],
[run] and, optionally, [distill]; a top-level `preset = "NAME"` starts from a preset and the file
overrides it:

    preset = "streets-cpu"
    [encryption]
    mode = "per-image"
    scheme = "bs-np-cs"
    [run]
    steps = 2000
    out = "runs/per-image"
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from encseg.errors import UserError
from encseg.models import SETRConfig

ENCRYPTION_MODES = ("none", "shared", "per-image")
OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTS = ("none", "inverse-sqrt", "inverse")


@dataclass
class DataConfig:
    root: str = "data/streets"
    split: str = "train"
    crop: tuple[int, int] = (512, 512)  # (H, W) training crop
    base_size: tuple[int, int] | None = None  # (H, W) the random ratio applies to; None: native size
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    workers: int = 2  # loader processes per training process (0: load in the main process)


@dataclass
class EncryptionConfig:
    mode: str = "none"  # "none" | "shared" (one key for all, the 2022 setting) | "per-image" (the paper)
    scheme: str = "bs-np-cs"  # a cipher preset or code list; its block size is the model's patch size
    key_file: str | None = None  # shared mode: the key file (created 0600 in the run folder if unset)
    jpeg_quality: tuple[int, int] | None = None  # [lo, hi]: JPEG-compress each encrypted sample at a random quality (JPEG transport)


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" (SETR: momentum, poly, heads x10) | "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    head_lr_mult: float = 10.0
    power: float = 0.9  # poly decay power
    min_lr: float = 1e-4  # poly floor (eta_min), scaled by each group's multiplier
    warmup_steps: int = 0  # linear warm-up from 0 (not in SETR's recipe; helps from-scratch AdamW)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    class_weights: str = "none"  # "none" (SETR) | "inverse-sqrt": CE weights 1/sqrt(class frequency), mean 1 | "inverse": 1/frequency (at most 100x apart), mean 1


@dataclass
class RunConfig:
    steps: int = 80000  # optimizer steps
    batch_size: int = 8  # images per process per micro-step
    accum: int = 1  # micro-steps per optimizer step (global batch = batch_size x accum x processes)
    amp: str = "auto"  # "auto": bf16 autocast on CUDA and on CPUs with native bf16 | "bf16" | "off"
    seed: int = 0
    out: str = "runs/train"
    ckpt_every: int = 1000
    keep: int = 2  # checkpoints kept besides the final model
    log_every: int = 10
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int = 0  # torch CPU threads per process (0: torch's default)


@dataclass
class DistillConfig:
    """Distillation from a plain teacher (off unless `teacher` is set; docs/training.md, "Probes").

    The teacher (a model checkpoint, normally SETR trained on plain images) sees each sample's plain
    crop; its logits, moved into the sample's encrypted geometry with the sample's own key, are soft
    targets: loss = CE + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the
    labelled pixels."""

    teacher: str | None = None  # model.safetensors of the teacher; None: no distillation
    weight: float = 1.0
    temperature: float = 2.0


@dataclass
class TrainConfig:
    model: SETRConfig = field(default_factory=SETRConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> "TrainConfig":
        e, o, r, d = self.encryption, self.optim, self.run, self.data
        if e.mode not in ENCRYPTION_MODES:
            raise UserError(f"encryption.mode must be one of {', '.join(ENCRYPTION_MODES)} (got {e.mode!r})")
        if o.name not in OPTIMIZERS:
            raise UserError(f"optim.name must be one of {', '.join(OPTIMIZERS)} (got {o.name!r})")
        if o.class_weights not in CLASS_WEIGHTS:
            raise UserError(f"optim.class_weights must be one of {', '.join(CLASS_WEIGHTS)} (got {o.class_weights!r})")
        if r.amp not in ("auto", "bf16", "off"):
            raise UserError(f"run.amp must be auto, bf16 or off (got {r.amp!r})")
        for name in ("steps", "batch_size", "accum", "ckpt_every", "log_every"):
            if getattr(r, name) < 1:
                raise UserError(f"run.{name} must be at least 1")
        p = self.model.block
        if d.crop[0] % p or d.crop[1] % p:
            raise UserError(f"data.crop {list(d.crop)} must be a multiple of the patch size {p}")
        if e.mode != "none":
            self.scheme()  # parses and validates
        k = self.distill
        if k.teacher is not None:
            if not isinstance(k.teacher, str) or not k.teacher:
                raise UserError(f"distill.teacher is the path of a model checkpoint (got {k.teacher!r})")
            if not (isinstance(k.weight, (int, float)) and k.weight >= 0):
                raise UserError(f"distill.weight must be >= 0 (got {k.weight!r})")
            if not (isinstance(k.temperature, (int, float)) and k.temperature > 0):
                raise UserError(f"distill.temperature must be > 0 (got {k.temperature!r})")
        if e.jpeg_quality is not None:
            q = e.jpeg_quality
            if len(q) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in q) or not 1 <= q[0] <= q[1] <= 100:
                raise UserError(f"encryption.jpeg_quality is [lo, hi] with 1 <= lo <= hi <= 100 (got {list(q)!r})")
            if d.crop[0] % 8 or d.crop[1] % 8 or (e.mode != "none" and self.scheme().block_size % 8):
                raise UserError("encryption.jpeg_quality needs a crop and a block size that are multiples of 8 (JPEG's 8x8 grid)")
        return self

    def scheme(self):
        from encseg.cipher import Scheme

        return Scheme.parse(self.encryption.scheme, block_size=self.model.block)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        if self.distill.teacher is None:  # off: the dict (and so every stored run record) is unchanged
            del d["distill"]
        return _lists(d)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        cfg = cls()
        apply_dict(cfg, d)
        return cfg.validate()


def _lists(x):
    """Tuples -> lists, recursively (TOML/JSON friendly)."""
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


SECTIONS = ("model", "data", "encryption", "optim", "run", "distill")


def _coerce(current: Any, value: Any, name: str) -> Any:
    """Convert a TOML value to the type of the field it replaces (tuples from lists, floats from ints)."""
    if isinstance(current, tuple) or (current is None and isinstance(value, list)):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} expects a list such as [512, 512] (got {value!r})")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise UserError(f"{name} expects true or false (got {value!r})")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and not isinstance(value, int):
        raise UserError(f"{name} expects an integer (got {value!r})")
    return value


def apply_dict(cfg: TrainConfig, d: dict) -> None:
    """Override `cfg` in place from {section: {field: value}}; unknown names are errors."""
    for section, values in d.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section [{section}]; sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"[{section}] must be a table of settings")
        target = getattr(cfg, section)
        known = {f.name for f in fields(target)}
        for key, value in values.items():
            if key not in known:
                raise UserError(f"unknown setting {section}.{key}; known: {', '.join(sorted(known))}")
            setattr(target, key, _coerce(getattr(target, key), value, f"{section}.{key}"))
    if "model" in d:  # re-run SETRConfig's own validation
        cfg.model = SETRConfig.from_dict(cfg.model.to_dict())


def parse_override(text: str) -> dict:
    """'run.steps=100' -> {'run': {'steps': 100}}; the value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value (got {text!r})")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {section: {key: value}}


# -- presets --------------------------------------------------------------------------------------


def _cityscapes_pup_large() -> TrainConfig:
    """The paper-size setting: ViT-L/16 SETR-PUP on Cityscapes, 768x768 crops, batch 8, 80k iterations
    (run with 8 processes x batch 1 under torchrun; SyncBatchNorm on CUDA)."""
    return TrainConfig(
        model=SETRConfig(encoder="vit-large", decoder="pup", img_size=(768, 768), norm="syncbn"),
        data=DataConfig(root="data/cityscapes", crop=(768, 768), base_size=(1024, 2048), workers=4),
        encryption=EncryptionConfig(mode="per-image", scheme="bs-np-cs"),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, head_lr_mult=10.0, min_lr=1e-4),
        run=RunConfig(steps=80000, batch_size=1, out="runs/cityscapes-pup-large", ckpt_every=4000, log_every=50),
    )


def _streets_cpu() -> TrainConfig:
    """The CPU budget on the procedural street benchmark (`encseg experiment --budget cpu-small`).

    SETR-PUP on a 6-layer ViT-Tiny, from scratch, 4000 steps of batch 4 on 128x256 scenes, one
    CPU thread (two runs share two cores), bf16 autocast where the CPU has it (`run.amp = "auto"`).
    (256x512 scenes with 128x256 crops and sliding-window scoring learn slower at this budget:
    32.8 against 38.0 mIoU after 2500 steps; docs/training.md, "Calibration".)
    Departures from SETR's recipe, each for a CPU budget: AdamW (SGD from scratch learns far
    slower), decoder width 32 instead of 256 and no auxiliary heads (at 256 channels the decoder
    costs several times the encoder), inverse-sqrt class weights (rare thin classes get some signal
    in a few thousand samples), and no rescaling or photometric distortion (flips only): this budget
    leaves the model underfitting, where augmentation costs more than it gives (43.3 against 38.1
    mIoU on the same scenes). Batch 4 for twice the steps of batch 8 sees the same images for 8% more
    time and scores 45.9 against 44.9 (docs/training.md, "Calibration")."""
    return TrainConfig(
        model=SETRConfig(encoder="vit-tiny-6", decoder="pup", img_size=(128, 256), channels=32, aux=False),
        data=DataConfig(root="data/streets-cpu-small", crop=(128, 256), ratio_range=(1.0, 1.0), photometric=False,
                        workers=1),  # fmt: skip
        encryption=EncryptionConfig(mode="none"),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01, head_lr_mult=1.0, min_lr=1e-5, warmup_steps=50,
                          grad_clip=1.0, class_weights="inverse-sqrt"),  # fmt: skip
        run=RunConfig(steps=4000, batch_size=4, out="runs/streets-cpu", ckpt_every=1000, log_every=10, threads=1),
    )


def _smoke() -> TrainConfig:
    """A seconds-long run for tests and a first look: a 2-layer ViT on 64x128 crops."""
    return TrainConfig(
        model=SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(64, 128), channels=32),
        data=DataConfig(root="data/streets-smoke", crop=(64, 128), ratio_range=(0.75, 1.25), workers=0),
        encryption=EncryptionConfig(mode="none"),
        optim=OptimConfig(name="sgd", lr=0.01),
        run=RunConfig(steps=10, batch_size=2, out="runs/smoke", ckpt_every=5, log_every=1),
    )


PRESETS = {
    "cityscapes-pup-large": _cityscapes_pup_large,
    "streets-cpu": _streets_cpu,
    "smoke": _smoke,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def load_config(path: str | Path | None = None, preset_name: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Preset (or defaults), then the TOML file, then `--set` overrides; validated."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path} is not valid TOML: {exc}") from None
        file_preset = data.pop("preset", None)
        if file_preset and preset_name and file_preset != preset_name:
            raise UserError(f"{path} names preset {file_preset!r} but --preset says {preset_name!r}")
        preset_name = preset_name or file_preset
    cfg = preset(preset_name) if preset_name else TrainConfig()
    apply_dict(cfg, data)
    for text in overrides:
        apply_dict(cfg, parse_override(text))
    return cfg.validate()


def clone(cfg: TrainConfig) -> TrainConfig:
    return copy.deepcopy(cfg)
