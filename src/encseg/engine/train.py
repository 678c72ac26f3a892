"""Training: SETR on (optionally encrypted) segmentation data, resumable step for step.

One function, `train(cfg)`, read top to bottom: build the model, the optimizer and the data, then
loop over optimizer steps. What makes `--resume` continue exactly where a run stopped:
- the data order is a function of (seed, epoch) (`ResumableSampler`, a DistributedSampler that can
  start mid-epoch), and every sample's augmentation is a function of (seed, epoch, index);
- torch's RNG is re-seeded from (seed, step, rank) at every step (drop-path, if any);
- a checkpoint holds the model, the optimizer state (momentum / Adam moments) and the step, written
  to a fresh folder that `latest.json` points to only once complete (an atomic rename);
- on resume the CSV log is cut back to the checkpoint's step, so no step appears twice.
Per-image keys are drawn from the OS CSPRNG and are never reproducible, by design: a resumed
encrypted run sees the same crops as an uninterrupted one, under different keys.

Optional distillation (`cfg.distill`): a plain teacher's logits on each sample's plain crop, moved
into the sample's encrypted geometry, are soft targets beside the labels (`soft_targets`,
`distill_loss`). The loader returns the geometry as a gather index made inside the cipher; no key
reaches this process.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from encseg.cipher.io import write_atomic
from encseg.data.augment import AugmentConfig, TrainTransform
from encseg.data.cityscapes import IGNORE_INDEX, CityscapesDataset
from encseg.engine import distributed
from encseg.engine.config import TrainConfig
from encseg.errors import UserError
from encseg.models import build_setr, load_checkpoint, normalize, save_checkpoint
from encseg.models.checkpoint import _unwrap

LOG_FIELDS = ("step", "epoch", "loss", "loss_main", "lr", "img_per_s", "elapsed_s")


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, index) pairs and can skip the first `skip` of an epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


# -- learning rate -------------------------------------------------------------------------------


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Poly decay from 1 to min_lr/lr over the run (SETR), after an optional linear warm-up."""
    o, total = cfg.optim, cfg.run.steps
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    floor = o.min_lr / o.lr
    return (1 - floor) * (1 - step / total) ** o.power + floor


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = _unwrap(model).parameter_groups(o.lr, o.head_lr_mult)
    for g in groups:
        g["base_lr"] = g["lr"]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


# -- checkpoints -----------------------------------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, keep: int) -> Path:
    """checkpoints/step-N/{model.safetensors, model.json, train_state.safetensors}, then latest.json."""
    folder = out / "checkpoints" / f"step-{step:07d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    extra = {"train_config": cfg.to_dict(), "step": step}
    save_checkpoint(folder / "model.safetensors", model, extra=extra)
    tensors, meta = _optimizer_tensors(opt)
    meta["step"] = step
    write_atomic(folder / "train_state.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), metadata={"encseg-train": json.dumps(meta)}))  # fmt: skip
    pointer = {"step": step, "checkpoint": str(folder.relative_to(out))}
    write_atomic(out / "latest.json", (json.dumps(pointer) + "\n").encode())
    old = sorted(p for p in (out / "checkpoints").iterdir() if p.is_dir() and p != folder)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def load_training_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore model and optimizer from `out/latest.json`; returns the step to continue from."""
    pointer = json.loads((out / "latest.json").read_text())
    folder = out / pointer["checkpoint"]
    loaded, _, extra = load_checkpoint(folder / "model.safetensors")
    _unwrap(model).load_state_dict(loaded.state_dict())
    from safetensors import safe_open

    path = folder / "train_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["encseg-train"])
    opt.load_state_dict(_optimizer_from_tensors(load_file(str(path)), meta))
    return int(meta["step"])


# -- the log -----------------------------------------------------------------------------------------


class CsvLog:
    """log.csv (one row per logged step), cut back to `start_step` on resume; TensorBoard if installed."""

    def __init__(self, path: Path, start_step: int) -> None:
        rows = []
        if start_step > 0 and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()
        self.tb = None
        try:  # optional: only when tensorboard happens to be installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start_step + 1)
        except Exception:
            self.tb = None

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "loss_main", "lr", "img_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# -- the loop ----------------------------------------------------------------------------------------


def segmentation_loss(out, target: torch.Tensor, aux_weight: float, weight: torch.Tensor | None = None):
    """Cross-entropy (ignore 255) of the main head plus `aux_weight` x that of each auxiliary head."""
    main = F.cross_entropy(out["out"].float(), target, weight=weight, ignore_index=IGNORE_INDEX)
    total = main
    for logits in out["aux"]:
        total = total + aux_weight * F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)
    return total, main


def class_weights(dataset: CityscapesDataset, num_classes: int, sample: int = 200, power: float = 0.5) -> torch.Tensor:
    """1/frequency**power per class (pixel frequency over up to `sample` evenly spaced label maps),
    at most 100x apart, scaled to mean 1 over the classes seen; unseen classes get the largest weight.
    Deterministic."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for i in np.linspace(0, len(dataset) - 1, min(sample, len(dataset))).astype(int):
        _, label = dataset.load(int(i))
        counts += np.bincount(label.ravel(), minlength=256)[:num_classes]
    seen = counts > 0
    w = np.zeros(num_classes)
    w[seen] = (counts[seen] / counts.sum()) ** -power
    w[seen] = np.maximum(w[seen], w[seen].max() / 100)
    w[seen] /= w[seen].mean()
    w[~seen] = w[seen].max() if seen.any() else 1.0
    return torch.tensor(w, dtype=torch.float32)


def shared_key_path(cfg: TrainConfig) -> Path:
    return Path(cfg.encryption.key_file) if cfg.encryption.key_file else Path(cfg.run.out) / "shared.key"


def make_cipher(cfg: TrainConfig, create_key: bool):
    """The loader-side cipher of the configured mode (None when training on plain images)."""
    e = cfg.encryption
    if e.mode == "none":
        return None
    from encseg.cipher import CipherTransform, Key, load_key, save_key

    key = None
    if e.mode == "shared":
        path = shared_key_path(cfg)
        if not path.exists():
            if not create_key:
                raise UserError(f"shared-key run without its key file {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_key(Key.generate(), path)
        key = load_key(path)
    return CipherTransform(cfg.scheme(), e.mode, key)


def build_train_set(cfg: TrainConfig, cipher) -> CityscapesDataset:
    """The training set; with distillation on, each sample also carries its plain crop and geometry."""
    d = cfg.data
    aug = AugmentConfig(d.crop, d.base_size, d.ratio_range, d.cat_max_ratio, d.flip_prob, d.photometric)
    transform = TrainTransform(aug, cipher, cfg.run.seed, cfg.encryption.jpeg_quality, geometry=cfg.distill.teacher is not None)
    return CityscapesDataset(d.root, d.split, transform=transform)


# -- distillation from a plain teacher ---------------------------------------------------------------


def load_teacher(cfg: TrainConfig, device: torch.device) -> nn.Module | None:
    """The frozen teacher of `cfg.distill` (eval mode, no gradients), or None when distillation is off."""
    if cfg.distill.teacher is None:
        return None
    teacher, tcfg, _ = load_checkpoint(cfg.distill.teacher, device=device)
    if tcfg.num_classes != cfg.model.num_classes:
        raise UserError(f"distill.teacher has {tcfg.num_classes} classes, the model {cfg.model.num_classes}")
    teacher.requires_grad_(False)
    return teacher.eval()


def soft_targets(teacher: nn.Module, plain: torch.Tensor, where: torch.Tensor, size: tuple[int, int], autocast) -> torch.Tensor:
    """The teacher's logits on the plain crops (uint8 [B, 3, H, W]), moved into each sample's encrypted
    geometry: out[b, :, i] = logits[b, :, where[b, i]] over the H*W pixels (float32 [B, C, H, W])."""
    with torch.no_grad(), autocast:
        logits = teacher(normalize(plain))
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    b, c, h, w = logits.shape
    return logits.reshape(b, c, h * w).gather(2, where.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)


def distill_loss(student: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(softmax(targets / T) || softmax(student / T)), averaged over the labelled pixels."""
    t = float(temperature)
    log_s = F.log_softmax(student.float() / t, dim=1)
    log_t = F.log_softmax(targets.float() / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)  # [B, H, W]
    keep = labels != IGNORE_INDEX
    return t * t * (kl[keep].mean() if keep.any() else kl.sum() * 0.0)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays off here: CUDA, or a CPU whose oneDNN runs bf16 natively (AVX-512
    or AMX; on the 2-core machine the cpu-small model trained about 1.25-1.4x faster than in fp32,
    docs/benchmarks.md)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(cfg: TrainConfig, device: torch.device):
    """The run's autocast context, decided once per run (reusable for every micro-step)."""
    amp = cfg.run.amp
    enabled = amp == "bf16" or (amp == "auto" and native_bf16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train as `cfg` says; returns the final model path (out/model.safetensors).

    `stop_after` ends the process's work after that many steps of this invocation (a checkpoint is
    written first), which is how long jobs are split into slices; `resume` continues from
    out/latest.json.
    """
    cfg.validate()
    r = cfg.run
    if r.threads:
        torch.set_num_threads(r.threads)
    d = distributed.init(r.device)
    out = Path(r.out)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if d.is_main:
        cipher = make_cipher(cfg, create_key=True)  # shared mode: rank 0 creates the key file
    distributed.barrier(d)
    if not d.is_main:
        cipher = make_cipher(cfg, create_key=False)

    torch.manual_seed(r.seed)  # the same initial weights in every process
    model = distributed.convert_norms(build_setr(cfg.model), d).to(d.device)
    teacher = load_teacher(cfg, d.device)
    opt = make_optimizer(model, cfg)
    start = 0
    if resume and (out / "latest.json").exists():
        start = load_training_state(out, model, opt)
    elif resume and d.is_main and progress:
        print(f"no checkpoint in {out}; starting from step 0")
    net = distributed.wrap(model, d)
    net.train()

    dataset = build_train_set(cfg, cipher)
    sampler = ResumableSampler(dataset, d.world, d.rank, r.seed)
    per_step = r.batch_size * r.accum  # samples per process per optimizer step
    steps_per_epoch = sampler.num_samples // per_step
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} training images are too few for {d.world} process(es) x batch {r.batch_size} x accum {r.accum}")
    workers = cfg.data.workers
    loader = DataLoader(
        dataset, batch_size=r.batch_size, sampler=sampler, drop_last=True, num_workers=workers,
        pin_memory=d.device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
    )  # fmt: skip

    log = CsvLog(out / "log.csv", start) if d.is_main else None
    if d.is_main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    bar = None
    if d.is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=r.steps, initial=start, desc=Path(r.out).name, unit="step", dynamic_ncols=True)
    end = r.steps if stop_after is None else min(r.steps, start + stop_after)
    step, t_start = start, time.perf_counter()
    t_window, img_window, loss_window, main_window, n_window = time.perf_counter(), 0, 0.0, 0.0, 0
    aux_w = cfg.model.aux_weight
    autocast = _autocast(cfg, d.device)
    weight = None
    if cfg.optim.class_weights != "none":
        power = {"inverse-sqrt": 0.5, "inverse": 1.0}[cfg.optim.class_weights]
        weight = class_weights(dataset, cfg.model.num_classes, power=power).to(d.device)
    try:
        while step < end:
            epoch, within = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            sampler.skip = within * per_step
            batches = iter(loader)
            for _ in range(within, steps_per_epoch):
                if step >= end:
                    break
                torch.manual_seed(r.seed * 1_000_003 + step * 1009 + d.rank)
                factor = lr_factor(step, cfg)
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
                step_loss = step_main = 0.0
                for micro in range(r.accum):
                    batch = next(batches)
                    x = normalize(batch[0].to(d.device, non_blocking=True))
                    y = batch[1].to(d.device, non_blocking=True)
                    targets = None
                    if teacher is not None:  # batch[3]: the geometry, used for this step only
                        plain, where = batch[2].to(d.device), batch[3].to(d.device)
                        targets = soft_targets(teacher, plain, where, tuple(y.shape[-2:]), autocast)
                        del where, batch
                    sync = micro == r.accum - 1 or not d.enabled
                    with (contextlib.nullcontext() if sync else net.no_sync()), autocast:
                        pred = net(x)
                        loss, main = segmentation_loss(pred, y, aux_w, weight)
                        if targets is not None:
                            loss = loss + cfg.distill.weight * distill_loss(pred["out"], targets, y, cfg.distill.temperature)
                        (loss / r.accum).backward()
                    step_loss += loss.item() / r.accum
                    step_main += main.item() / r.accum
                if not math.isfinite(step_loss):
                    raise UserError(f"loss became {step_loss} at step {step + 1}; lower optim.lr or enable optim.grad_clip")
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                img_window += per_step * d.world
                loss_window += step_loss
                main_window += step_main
                n_window += 1
                if step % r.log_every == 0 or step == end:
                    loss_avg = distributed.mean_over_ranks(loss_window / n_window, d)
                    main_avg = distributed.mean_over_ranks(main_window / n_window, d)
                    now = time.perf_counter()
                    ips = img_window / max(now - t_window, 1e-9)
                    if d.is_main:
                        row = {"step": step, "epoch": epoch, "loss": f"{loss_avg:.5f}", "loss_main": f"{main_avg:.5f}",
                               "lr": f"{opt.param_groups[0]['lr']:.6g}", "img_per_s": f"{ips:.2f}",
                               "elapsed_s": f"{now - t_start:.1f}"}  # fmt: skip
                        log.write(row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss_avg:.3f}", img_s=f"{ips:.1f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
                    t_window, img_window, loss_window, main_window, n_window = now, 0, 0.0, 0.0, 0
                if bar is not None:
                    bar.update(1)
                if step % r.ckpt_every == 0 or step == end:
                    if d.is_main:
                        save_training_state(out, net, opt, step, cfg, r.keep)
                    distributed.barrier(d)
        final = out / "model.safetensors"
        if step >= r.steps and d.is_main:
            extra = {"train_config": cfg.to_dict(), "step": step, "world_size": d.world}
            save_checkpoint(final, net, extra=extra)
        return final
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        distributed.shutdown(d)
