"""Training the client's refiner (`encseg train-refiner`; the model is encseg.models.refine).

The model creator runs the server's model on its own training images the way a client would (a
fresh key per image, encrypt, segment, decrypt the label map, drop the key) and trains the refiner to
map those decrypted label maps to the true labels. Then it scores server-only and refined
predictions on the validation split, each image under its own fresh key. On the procedural street
benchmark (not Cityscapes) unless the data says otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encseg.errors import UserError

IGNORE = 255


def served_scheme(config, extra: dict):
    """The scheme a client encrypts with for this checkpoint (its served scheme, else the one it was
    trained on), or None for a model trained on plain images."""
    from encseg.cipher import Scheme

    served = (extra.get("encryption") or {}).get("scheme")
    trained = (extra.get("train_config") or {}).get("encryption") or {}
    if served:
        return Scheme.parse(served, block_size=config.block) if isinstance(served, str) else Scheme.from_dict(served)
    if trained.get("mode", "none") == "none":
        return None
    return Scheme.parse(trained.get("scheme") or "bs-psb-np-cs", block_size=config.block)


def client_labels(model, dataset, scheme, device="cpu", batch_size: int = 16, limit: int | None = None,
                  progress: bool = False, desc: str = "server") -> np.ndarray:  # fmt: skip
    """The server model's label maps as a client gets them: per image a fresh key, encrypt, predict,
    decrypt the labels, drop the key (plain images when `scheme` is None). uint8 [N,H,W]."""
    from encseg.cipher import Key, decrypt_mask, encrypt
    from encseg.models.inference import predict

    n = len(dataset) if limit is None else min(limit, len(dataset))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, unit="img", dynamic_ncols=True)
    out = []
    model.eval()
    for start in range(0, n, batch_size):
        images = [dataset.load(i)[0] for i in range(start, min(start + batch_size, n))]
        sent, keys, sizes = [], [], []
        for img in images:
            if scheme is None:
                sent.append(img)
                continue
            key = Key.generate()
            enc = encrypt(img, key, scheme)
            sent.append(enc.data)
            keys.append(key)
            sizes.append(enc.original_size)
        if all(x.shape == sent[0].shape for x in sent):
            preds = [lg.argmax(0).numpy().astype(np.uint8) for lg in predict(model, np.stack(sent), device, None, None)]
        else:
            preds = [predict(model, x, device, None, None)[0].argmax(0).numpy().astype(np.uint8) for x in sent]
        for j, p in enumerate(preds):
            out.append(np.asarray(decrypt_mask(p, keys[j], scheme, sizes[j])) if keys else p)
        keys.clear()  # the per-image keys end here
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    shapes = {x.shape for x in out}
    if len(shapes) != 1:
        raise UserError(f"the refiner trains on scenes of one size; this split has sizes {sorted(shapes)[:4]}")
    return np.stack(out)


def _miou(conf: np.ndarray) -> float:
    from encseg.engine.evaluate import iou_from_confusion

    return float(np.nanmean(iou_from_confusion(conf)) * 100)


def score_refiner(refiner, preds: np.ndarray, truths: list[np.ndarray]) -> tuple[float, float]:
    """(server-only mIoU, refined mIoU) of decrypted label maps against the truth, one confusion matrix each."""
    from encseg.engine.evaluate import confusion_matrix

    c = refiner.config.num_classes
    before = np.zeros((c, c + 1), np.int64)
    after = before.copy()
    for p, t in zip(preds, truths):
        before += confusion_matrix(p, t, c)
        after += confusion_matrix(refiner.refine(p), t, c)
    return _miou(before), _miou(after)


def fit_refiner(preds: np.ndarray, truth: np.ndarray, num_classes: int, minutes: float = 4.0, steps: int | None = None,
                width: int = 32, batch_size: int = 8, lr: float = 3e-3, seed: int = 0, device="cpu",
                progress: bool = False):  # fmt: skip
    """Train a ClientRefiner from decrypted label maps `preds` to `truth` (both [N,H,W]) for `minutes`,
    or exactly `steps`; returns (refiner in eval mode on the CPU, steps, seconds)."""
    from encseg.models.refine import ClientRefiner, RefinerConfig

    n, c = len(preds), num_classes
    counts = np.bincount(truth[truth != IGNORE].ravel(), minlength=c)[:c].astype(np.float64)
    weight = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    weight = (weight / weight.mean()).to(device)  # inverse-sqrt class weights, as the training runs use
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale = RefinerConfig.scale  # the grid: 1/scale of the training size, the same rows at any other size
    refiner = ClientRefiner(RefinerConfig(num_classes=c, width=width, grid_rows=max(1, preds.shape[1] // scale))).to(device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="refiner", unit="step", dynamic_ncols=True)
    t0, step, loss_ema = time.perf_counter(), 0, None
    refiner.train()
    while (steps and step < steps) or (not steps and time.perf_counter() - t0 < minutes * 60):
        idx = rng.integers(0, n, batch_size)
        p, y = preds[idx], truth[idx]
        if rng.random() < 0.5:  # a street mirrored is a street
            p, y = p[:, :, ::-1], y[:, :, ::-1]
        logits = refiner(torch.from_numpy(np.ascontiguousarray(p).astype(np.int64)).to(device))
        target = torch.from_numpy(np.ascontiguousarray(y).astype(np.int64)).to(device)
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    if bar is not None:
        bar.close()
    return refiner.to("cpu").eval(), step, time.perf_counter() - t0


def refine_run(model, data: Path, scheme, steps: int, device="cpu", seed: int = 0) -> tuple[object, dict]:
    """The experiment's refiner stage for one trained model: fit a refiner on its decrypted training
    labels for exactly `steps`, score server-only and refined on the val split (a fresh key per image)."""
    from encseg.data.cityscapes import CityscapesDataset

    train_set, val_set = CityscapesDataset(data, "train"), CityscapesDataset(data, "val")
    preds = client_labels(model, train_set, scheme, device)
    truth = np.stack([train_set.load(i)[1] for i in range(len(preds))])
    refiner, done, seconds = fit_refiner(preds, truth, model.config.num_classes, steps=steps, seed=seed, device=device)
    val_preds = client_labels(model, val_set, scheme, device)
    before, after = score_refiner(refiner, val_preds, [val_set.load(i)[1] for i in range(len(val_preds))])
    return refiner, {"steps": done, "seconds": round(seconds, 1), "miou_server": round(before, 2), "miou": round(after, 2)}


def train_refiner(checkpoint: Path, data: Path, out: Path, minutes: float = 4.0, steps: int | None = None,
                  width: int = 32, batch_size: int = 8, lr: float = 3e-3, seed: int = 0, threads: int = 1,
                  progress: bool = True, limit: int | None = None) -> dict:  # fmt: skip
    """Train a refiner for the server model `checkpoint` on `data`'s train split for `minutes` (or
    exactly `steps`), score it on the val split, save out/refiner.safetensors; returns the summary."""
    from encseg.data.cityscapes import CityscapesDataset
    from encseg.models import load_checkpoint
    from encseg.models.refine import save_refiner

    if minutes <= 0 and not steps:
        raise UserError("give the refiner some budget: --minutes > 0 or --steps > 0")
    if threads:
        torch.set_num_threads(threads)
    model, config, extra = load_checkpoint(checkpoint)
    scheme = served_scheme(config, extra)
    train_set, val_set = CityscapesDataset(data, "train"), CityscapesDataset(data, "val")
    t0 = time.perf_counter()
    preds = client_labels(model, train_set, scheme, limit=limit, progress=progress, desc="server labels (train)")
    truth = np.stack([train_set.load(i)[1] for i in range(len(preds))])
    if truth.shape != preds.shape:
        raise UserError(f"labels {truth.shape[1:]} and scenes {preds.shape[1:]} differ in size in {data}")
    refiner, step, train_s = fit_refiner(preds, truth, config.num_classes, minutes, steps, width, batch_size, lr, seed,
                                         progress=progress)  # fmt: skip
    val_preds = client_labels(model, val_set, scheme, progress=progress, desc="server labels (val)")
    val_truth = [val_set.load(i)[1] for i in range(len(val_preds))]
    before, after = score_refiner(refiner, val_preds, val_truth)
    summary = {
        "server_checkpoint": str(checkpoint), "server_model": extra.get("name") or Path(checkpoint).stem,
        "scheme": scheme.name if scheme is not None else "none", "data": str(data), "train_images": len(preds),
        "steps": step, "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - t0, 1),
        "val_images": len(val_preds), "val_miou_server": round(before, 2), "val_miou_refined": round(after, 2),
        "width": width, "batch_size": batch_size, "lr": lr, "seed": seed,
    }  # fmt: skip
    save_refiner(Path(out) / "refiner.safetensors", refiner, summary)
    return summary
