#!/usr/bin/env bash
# Device check for a session that is lent a GPU (issue 4, item 9). Budget: <= 6 minutes.
#
#   scripts/device_check.sh            # results printed and written to ${OUT:-device-check}/device_check.json
#
# 1. times vit-base SETR-PUP training steps at 768x768, batch 4, per-image-key encryption (bs-np-cs,
#    a fresh key per sample in the loader workers), bf16 autocast; reports images/s and peak memory;
# 2. times sliding-window evaluation (crop 768, stride 512) of two 1024x2048 street scenes, each
#    encrypted with its own key, the prediction decrypted before scoring;
# 3. checks that GPU and CPU agree on a forward pass (fp32, TF32 off), and reports how often bf16
#    changes the argmax.
# Needs torch with CUDA plus numpy, pillow, safetensors, cryptography, typer and tqdm; nothing is
# downloaded (the machine has no network). Uses the working tree's sources (PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PY=.venv/bin/python
fi
OUT_DIR=${OUT:-device-check}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OUT_DIR

"$PY" - <<'PY'
import sys
missing = []
for mod in ("torch", "numpy", "PIL", "safetensors", "cryptography", "typer", "tqdm"):
    try:
        __import__(mod)
    except ImportError:
        missing.append(mod)
if missing:
    sys.exit(f"device_check: missing Python packages {missing}; install them (no network here?) and rerun")
import torch
if not torch.cuda.is_available():
    sys.exit("device_check: torch sees no CUDA device")
PY

timeout 330 "$PY" - <<'PY'
import json, os, statistics, tempfile, time, csv
from pathlib import Path

import numpy as np
import torch

from encseg.cipher import Scheme
from encseg.data.cityscapes import CityscapesDataset
from encseg.data.streets import generate_streets
from encseg.engine.config import load_config
from encseg.engine.evaluate import evaluate
from encseg.engine.train import train
from encseg.models import SETRConfig, build_setr, load_checkpoint

t_all = time.perf_counter()
out_dir = Path(os.environ["OUT_DIR"])
card = torch.cuda.get_device_name()
report = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda}
print(f"device: {card} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    # -- data: scenes for training crops, and two full Cityscapes-size scenes for evaluation
    t0 = time.perf_counter()
    generate_streets(tmp / "train", 24, 0, (512, 1024), seed=0, workers=8)
    generate_streets(tmp / "eval", 0, 2, (1024, 2048), seed=1, workers=2)
    report["data_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"scenes rendered in {report['data_seconds']} s", flush=True)

    # -- 1. training steps: vit-base PUP, 768x768, batch 4, per-image keys, bf16
    steps = 30
    cfg = load_config(None, "cityscapes-pup-large", [
        'model.encoder="vit-base"', 'model.norm="bn"', f'data.root="{tmp / "train"}"', "data.base_size=[1024, 2048]",
        "data.workers=8", f"run.steps={steps}", "run.batch_size=4", f"run.ckpt_every={steps}", "run.log_every=1",
        'run.amp="bf16"', 'run.device="cuda"', f'run.out="{tmp / "run"}"', 'encryption.mode="per-image"',
        'encryption.scheme="bs-np-cs"',
    ])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, progress=False)
    torch.cuda.synchronize()
    with (tmp / "run" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    ips = statistics.median(float(r["img_per_s"]) for r in rows[5:])
    report["train"] = {
        "model": "vit-base/pup", "crop": [768, 768], "batch": 4, "amp": "bf16", "encryption": "per-image bs-np-cs",
        "steps": steps, "images_per_s": round(ips, 2), "step_s": round(4 / ips, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "wall_s": round(time.perf_counter() - t0, 1), "final_loss": float(rows[-1]["loss"]),
    }
    print("train:", report["train"], flush=True)

    # -- 2. sliding-window evaluation of two 1024x2048 images, each with its own fresh key
    model, config, _ = load_checkpoint(tmp / "run" / "model.safetensors", "cuda")
    ds = CityscapesDataset(tmp / "eval", "val")
    scheme = Scheme.parse("bs-np-cs", block_size=16)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        r = evaluate(model, ds, "cuda", "per-image", scheme, crop=768, stride=512, batch_size=1)
    torch.cuda.synchronize()
    report["sliding_eval"] = {
        "images": 2, "size": [1024, 2048], "crop": 768, "stride": 512, "encryption": "per-image bs-np-cs",
        "seconds": round(time.perf_counter() - t0, 2), "per_image_s": round((time.perf_counter() - t0) / 2, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "miou_untrained": round(r.miou, 2),
    }
    print("sliding-window eval:", report["sliding_eval"], flush=True)

# -- 3. GPU vs CPU on one forward pass (fp32, TF32 off), and what bf16 changes
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
net = build_setr(SETRConfig(encoder="vit-base", decoder="pup", img_size=(512, 512))).eval()
x = torch.randn(1, 3, 512, 512)
with torch.inference_mode():
    cpu = net(x)
    net_gpu = net.cuda()
    gpu = net_gpu(x.cuda()).float().cpu()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = net_gpu(x.cuda()).float().cpu()
diff = (cpu - gpu).abs().max().item()
scale = cpu.abs().max().item()
report["cpu_gpu"] = {
    "max_abs_diff": diff, "max_abs_logit": scale, "agree": diff <= 1e-3 * max(scale, 1.0),
    "argmax_equal_fp32": float((cpu.argmax(1) == gpu.argmax(1)).float().mean()),
    "argmax_equal_bf16": float((cpu.argmax(1) == bf16.argmax(1)).float().mean()),
}
print("cpu vs gpu:", report["cpu_gpu"], flush=True)
report["total_s"] = round(time.perf_counter() - t_all, 1)
(out_dir / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
if not report["cpu_gpu"]["agree"]:
    raise SystemExit("GPU and CPU disagree on the forward pass")
PY
