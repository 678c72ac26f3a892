"""Fine-tune a per-image-key model with the JPEG-transport augmentation (`encryption.jpeg_quality`):
each training sample is encrypted under a fresh key, then JPEG-compressed at a random quality, as a
JPEG client sends it. A short, time-boxed run on one thread, from the shipped demo model, on the
procedural street benchmark (not Cityscapes); score the result with `encseg evaluate
--jpeg-quality Q` (docs/benchmarks.md). `encseg train` starts from random weights, hence this
script: it reuses the training loop's pieces (config, data, loss, optimizer, checkpoint format).

    .venv/bin/python benchmarks/finetune_jpeg.py --data /tmp/transport-data --out /tmp/transport-ft \
        [--checkpoint src/encseg/assets/demo.safetensors --scheme bs-psb-np-cs --quality 50,95 --minutes 9 --lr 2e-4]

The scheme defaults to the one the checkpoint is exported for (`extra.encryption.scheme`, what a
client sends it), not the one its own training run used (`train_config`), which can differ: the
shipped demo model was trained on bs-ps-np-cs and is served for bs-psb-np-cs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from encseg.engine.config import TrainConfig  # noqa: E402
from encseg.engine.train import _autocast, build_train_set, class_weights, make_cipher, segmentation_loss  # noqa: E402
from encseg.models import load_checkpoint, normalize, save_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="src/encseg/assets/demo.safetensors")
    ap.add_argument("--data", required=True, help="street benchmark folder the model was trained on (its train split)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scheme", default=None, help="cipher scheme of the training samples (default: the checkpoint's served scheme)")
    ap.add_argument("--quality", default="50,95", help="lo,hi of the random JPEG quality")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the training loop")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model, mcfg, extra = load_checkpoint(args.checkpoint)
    model = model.float()
    d = dict(extra["train_config"])
    lo, hi = (int(v) for v in args.quality.split(","))
    d["data"] = dict(d["data"], root=args.data, workers=0)
    scheme = args.scheme or (extra.get("encryption") or {}).get("scheme") or d["encryption"]["scheme"]
    d["encryption"] = dict(d["encryption"], scheme=scheme, jpeg_quality=[lo, hi])
    d["run"] = dict(d["run"], threads=1, seed=args.seed, out=args.out)
    cfg = TrainConfig.from_dict(d)
    dataset = build_train_set(cfg, make_cipher(cfg, create_key=False))
    loader = DataLoader(dataset, batch_size=cfg.run.batch_size, sampler=RandomSampler(dataset), drop_last=True)
    weight = None
    if cfg.optim.class_weights != "none":
        weight = class_weights(dataset, cfg.model.num_classes, power={"inverse-sqrt": 0.5, "inverse": 1.0}[cfg.optim.class_weights])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=cfg.optim.weight_decay)
    autocast = _autocast(cfg, torch.device("cpu"))
    model.train()
    budget, t0, step, losses = args.minutes * 60, time.perf_counter(), 0, []
    epoch = 0
    while step < args.max_steps and time.perf_counter() - t0 < budget:
        for images, labels in loader:
            frac = min(1.0, (time.perf_counter() - t0) / budget)
            for g in opt.param_groups:
                g["lr"] = args.lr * (1 - frac) + args.lr * 0.05 * frac  # linear decay over the time budget
            with autocast:
                loss, _ = segmentation_loss(model(normalize(images)), labels, cfg.model.aux_weight, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            if step % 50 == 0:
                print(f"step {step} epoch {epoch} loss {sum(losses[-50:]) / 50:.4f} "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
            if step >= args.max_steps or time.perf_counter() - t0 >= budget:
                break
        epoch += 1
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new_extra = dict(extra, train_config=cfg.to_dict(), name=f"{extra.get('name', 'model')}-jpeg-finetuned",
                     finetune={"from": str(args.checkpoint), "steps": step, "seconds": round(seconds, 1),
                               "jpeg_quality": [lo, hi], "scheme": scheme, "lr": args.lr, "threads": 1,
                               "command": "benchmarks/finetune_jpeg.py"})
    new_extra.pop("val_miou_per_image_keys", None)  # not measured for this model
    model.eval()
    path = save_checkpoint(out / "model.safetensors", model, extra=new_extra)
    print(f"fine-tuned {step} steps ({seconds:.0f}s, 1 thread, scheme {scheme}, JPEG quality {lo}-{hi}) -> {path}")


if __name__ == "__main__":
    main()
