"""`encseg demo`: the whole round trip on one held-out street scene, with pictures.

Client: a fresh key, encrypt. Server: segment the encrypted image (in this process, with the demo
model trained only on images under fresh keys). Client: undo the label map's geometry with the key,
drop the key. Writes plain / encrypted / prediction-in-encrypted-geometry / decrypted overlay /
ground-truth PNGs and the image's mIoU. The scene comes from the procedural street benchmark's
test split (never used in training), not from Cityscapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from encseg.errors import UserError

DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo.safetensors"


def run_demo(out: Path, checkpoint: Path = DEMO_CHECKPOINT, scene: int = 0, size: tuple[int, int] | None = None,
             scheme_text: str | None = None, refine: bool = True) -> dict:
    """Run the round trip and write the pictures; returns the summary it also writes as JSON."""
    from encseg.cipher import Scheme
    from encseg.cipher.io import encode_png, write_atomic
    from encseg.data.cityscapes import CLASS_NAMES, colorize
    from encseg.data.streets import GENERATOR_VERSION, render_scene, scene_seed
    from encseg.engine.evaluate import confusion_matrix, iou_from_confusion
    from encseg.service.client import LocalBackend, segment_image
    from encseg.service.segmenter import Segmenter

    if not Path(checkpoint).exists():
        raise UserError(f"checkpoint {checkpoint} does not exist (the demo model ships in src/encseg/assets/)")
    segmenter = Segmenter.from_checkpoint(checkpoint)
    info = segmenter.info
    block = int(info.config.get("cipher_block") or info.patch_size)
    scheme = Scheme.parse(scheme_text, block_size=block) if scheme_text else info.schemes[0]
    if size is None:  # the scene size the model was trained on (its crops may be smaller)
        size = segmenter.scene_size or tuple(int(v) for v in info.config.get("img_size", (256, 512)))
    if segmenter.generator_version not in (None, GENERATOR_VERSION):
        typer.echo(f"note: {checkpoint} was trained on street scenes of generator version {segmenter.generator_version}; "
                   f"this scene comes from version {GENERATOR_VERSION}, so expect a lower score", err=True)
    img, truth = render_scene(scene_seed(0, "test", scene), size)

    # client: fresh key, encrypt; server: sees only the encrypted image; client: undo the geometry
    from encseg.models.refine import refiner_beside

    refiner = refiner_beside(checkpoint) if refine else None
    result = segment_image(img, LocalBackend(segmenter), scheme, info.palette, refiner=refiner)
    enc, labels_enc, labels, overlay = result.encrypted, result.encrypted_labels, result.mask, result.overlay
    server_labels = result.server_mask
    del result  # drops the key with it: nothing writes it

    conf = confusion_matrix(labels, truth)
    iou = iou_from_confusion(conf)
    miou = float(np.nanmean(iou) * 100)
    pixel_acc = float(np.trace(conf) / max(conf.sum(), 1) * 100)
    refined = {}
    if server_labels is not None:
        refined = {"refiner": "the client's refiner ran on the decrypted label map (encseg.models.refine)",
                   "mIoU_server_alone": round(float(np.nanmean(iou_from_confusion(confusion_matrix(server_labels, truth))) * 100), 2)}
    out.mkdir(parents=True, exist_ok=True)
    pictures = {
        "1_plain.png": img,
        "2_encrypted_what_the_server_sees.png": enc.data,
        "3_prediction_in_encrypted_geometry.png": colorize(labels_enc),
        "4_decrypted_prediction_overlay.png": overlay,
        "5_decrypted_prediction.png": colorize(labels),
        "6_ground_truth.png": colorize(truth),
    }
    if server_labels is not None:
        pictures["7_decrypted_server_labels_before_the_refiner.png"] = colorize(server_labels)
    for name, arr in pictures.items():
        write_atomic(out / name, encode_png(arr))
    write_atomic(out / "prediction_labels.png", encode_png(labels))
    summary = {
        "benchmark": "encseg procedural streets, test split (not Cityscapes)",
        "scene": scene,
        "size": list(size),
        "scheme": scheme.name,
        "checkpoint": str(checkpoint),
        "model": info.name,
        "mIoU": round(miou, 2),
        "pixel_accuracy": round(pixel_acc, 2),
        **refined,
        "per_class_IoU": {CLASS_NAMES[i]: round(float(v) * 100, 2) for i, v in enumerate(iou) if not np.isnan(v)},
        "key": "generated for this image, used, and discarded (never written)",
        **price_of_privacy(checkpoint),
        "files": sorted(pictures) + ["prediction_labels.png"],
    }
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def price_of_privacy(checkpoint: Path) -> dict:
    """The shipped model's validation mIoU with per-image keys and the plain model's at the same budget,
    from the checkpoint's JSON (written by `encseg experiment --demo-out`); {} when it does not say."""
    path = Path(checkpoint).with_suffix(".json")
    try:
        extra = json.loads(path.read_text()).get("extra") or {}
    except (OSError, ValueError):
        return {}
    out = {}
    ref = extra.get("refiner") if isinstance(extra.get("refiner"), dict) else {}
    if isinstance(ref.get("val_miou_refined"), (int, float)):
        out["val_mIoU_per_image_keys_refined"] = round(float(ref["val_miou_refined"]), 2)
    if isinstance(extra.get("val_miou_per_image_keys"), (int, float)):
        out["val_mIoU_per_image_keys"] = round(float(extra["val_miou_per_image_keys"]), 2)
    if isinstance(extra.get("plain_val_miou"), (int, float)):
        out["val_mIoU_plain_model_same_budget"] = round(float(extra["plain_val_miou"]), 2)
    return out


def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="folder for the PNGs and summary.json"),
    checkpoint: Path = typer.Option(DEMO_CHECKPOINT, help="model checkpoint (.safetensors + .json)"),
    scene: int = typer.Option(0, help="index of the held-out test scene"),
    size: Optional[str] = typer.Option(None, help="scene size HxW (default: the model's training size)"),
    scheme: Optional[str] = typer.Option(None, help="override the scheme the model was trained for"),
    refiner: bool = typer.Option(True, help="run the client's refiner shipped beside the model on the decrypted labels"),
) -> None:
    """Encrypt a held-out street scene with a fresh key, segment it, decrypt the label map, write PNGs."""
    from encseg.cipher.commands import parse_size

    s = run_demo(out, checkpoint, scene, parse_size(size) if size else None, scheme, refiner)
    typer.echo(f"scene {s['scene']} ({s['size'][0]}x{s['size'][1]}, {s['benchmark']})")
    typer.echo(f"scheme {s['scheme']}, model {s['model']}: a fresh key encrypted it, the model saw only the encrypted image")
    if "mIoU_server_alone" in s:
        typer.echo(f"mIoU {s['mIoU']:.2f}  pixel accuracy {s['pixel_accuracy']:.2f}  (this one image: decrypted label map "
                   f"refined on the client; the server's labels alone {s['mIoU_server_alone']:.2f})")
    else:
        typer.echo(f"mIoU {s['mIoU']:.2f}  pixel accuracy {s['pixel_accuracy']:.2f}  (this one image, after decrypting the label map)")
    if "val_mIoU_per_image_keys" in s:
        plain = s.get("val_mIoU_plain_model_same_budget")
        refined = s.get("val_mIoU_per_image_keys_refined") if "mIoU_server_alone" in s else None
        line = f"validation split (100 scenes), a fresh key per image: {s['val_mIoU_per_image_keys']:.1f} mIoU"
        if refined is not None:
            line = (f"validation split (100 scenes), a fresh key per image: {refined:.1f} mIoU with the client's refiner "
                    f"({s['val_mIoU_per_image_keys']:.1f} from the server's labels alone)")
        if plain is not None:
            best = refined if refined is not None else s["val_mIoU_per_image_keys"]
            line += f" vs {plain:.1f} for plain SETR on plain images at the same budget ({best / plain:.2f}x: the price of privacy)"
        typer.echo(line)
    typer.echo(f"wrote {len(s['files'])} PNGs and summary.json to {out}/ ; the key was discarded")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
