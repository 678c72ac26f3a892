"""CLI: `encseg train`, `encseg evaluate`, `encseg experiment`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from encseg.errors import UserError


def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file ([model] [data] [encryption] [optim] [run])"),
    preset: Optional[str] = typer.Option(None, help="named preset: cityscapes-pup-large, streets-cpu, smoke"),
    set_: List[str] = typer.Option([], "--set", help="override one setting, e.g. --set run.steps=500 (repeatable)"),
    resume: bool = typer.Option(False, help="continue from OUT/latest.json (same steps, same data order)"),
    stop_after: Optional[int] = typer.Option(None, help="stop (with a checkpoint) after this many steps of this invocation"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train SETR on plain, shared-key or per-image-key encrypted images (DDP under torchrun)."""
    from encseg.engine.config import load_config
    from encseg.engine.train import train

    if config is None and preset is None:
        raise UserError("give --config FILE.toml or --preset NAME")
    cfg = load_config(config, preset, set_)
    final = train(cfg, resume=resume, progress=progress, stop_after=stop_after)
    if final.exists() and os.environ.get("RANK", "0") == "0":
        typer.echo(f"model: {final}")


def _window(text: str | None, option: str) -> tuple[int, int] | None:
    """'N' or 'HxW' -> (H, W); None stays None."""
    if text is None:
        return None
    from encseg.cipher.commands import parse_size

    if text.strip().isdigit():
        text = f"{text}x{text}"
    try:
        return parse_size(text)
    except UserError as e:
        raise UserError(f"{option}: {e}") from None


def evaluate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.safetensors (its .json beside it)"),
    data: Path = typer.Option(..., "--data", help="dataset folder in the Cityscapes layout"),
    split: str = typer.Option("val", help="split to score"),
    encryption: str = typer.Option("none", help="none | per-image (a fresh key per test image) | shared"),
    scheme: Optional[str] = typer.Option(None, help="cipher scheme (default: the one the model was trained with)"),
    key: Optional[Path] = typer.Option(None, help="shared mode: the key file"),
    crop: Optional[str] = typer.Option(None, help="sliding-window crop, N or HxW pixels (multiples of the patch size); default whole image"),
    stride: Optional[str] = typer.Option(None, help="sliding-window stride, N or HxW (default: the crop)"),
    batch_size: int = typer.Option(4, help="images per forward pass"),
    limit: Optional[int] = typer.Option(None, help="score only the first N images"),
    save_png: Optional[Path] = typer.Option(None, help="write colourised predictions here"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    jpeg_quality: Optional[int] = typer.Option(None, help="send each ciphertext through the JPEG transport at this quality (1-100)"),
    arrangement: str = typer.Option("auto", help="auto (sorted for JPEG when the scheme shuffles pixels), none or "
                                    "sorted: the pixel order ciphertexts travel in (docs/encryption-format.md section 13)"),
    refiner: Optional[Path] = typer.Option(None, help="the client's refiner (refiner.safetensors): applied to every "
                                           "decrypted label map before scoring (encseg train-refiner)"),
) -> None:
    """mIoU (Cityscapes protocol) of a checkpoint, on plain or encrypted test images."""
    from encseg.cipher import Scheme, load_key
    from encseg.data.cityscapes import CityscapesDataset
    from encseg.engine.distributed import pick_device
    from encseg.engine.evaluate import evaluate, write_result
    from encseg.models import load_checkpoint

    dev = pick_device(device)
    model, config, extra = load_checkpoint(checkpoint, dev)
    ref = None
    if refiner is not None:
        from encseg.models.refine import load_refiner

        ref = load_refiner(refiner)[0]
    trained = (extra.get("train_config") or {}).get("encryption", {})
    s = None
    if encryption != "none":
        s = Scheme.parse(scheme or trained.get("scheme") or "bs-np-cs", block_size=config.block)
    shared = load_key(key) if key is not None else None
    ds = CityscapesDataset(data, split)
    crop_hw, stride_hw = (_window(v, name) for v, name in ((crop, "--crop"), (stride, "--stride")))
    if jpeg_quality is not None:
        from encseg.cipher.jpeg import check_quality

        check_quality(jpeg_quality)
    result = evaluate(model, ds, dev, encryption, s, shared, crop_hw, stride_hw, batch_size, save_png, limit, progress=True,
                      jpeg_quality=jpeg_quality, arrangement=arrangement, refiner=ref)
    typer.echo(result.table())
    mode = "plain test images" if encryption == "none" else f"{encryption} keys, scheme {s.name}"
    arranged = "none"
    if s is not None:
        from encseg.cipher.arrange import transport_arrangement

        arranged = transport_arrangement(s, "jpeg" if jpeg_quality is not None else "png", arrangement)
    if jpeg_quality is not None:
        mode += f", JPEG transport quality {jpeg_quality}"
    if arranged != "none":
        mode += f", {arranged} arrangement"
    if ref is not None:
        mode += ", the client's refiner after decryption"
    typer.echo(f"mIoU {result.miou:.2f} over {result.images} images ({mode}); pixel accuracy {result.pixel_accuracy:.2f}")
    if json_out is not None:
        write_result(result, json_out, {"checkpoint": str(checkpoint), "data": str(data), "split": split,
                                        "jpeg_quality": jpeg_quality, "arrangement": arranged})


def experiment_cmd(
    budget: str = typer.Option("cpu-frontier", help="cpu-frontier (the privacy-accuracy frontier, CPU), cpu-small (the paper's table, CPU) or gpu-small"),
    out: Path = typer.Option(Path("runs/experiment"), help="working folder (runs are skipped when already done)"),
    data: Optional[Path] = typer.Option(None, help="benchmark folder (default: data/streets-<budget>)"),
    results: Path = typer.Option(Path("docs/results.md"), help="Markdown report to write"),
    chart: Path = typer.Option(Path("docs/results.png"), help="bar chart to write"),
    demo_out: Optional[Path] = typer.Option(None, help="also write the best per-image-key model here (fp16) as the demo model"),
    only: Optional[str] = typer.Option(None, help="comma-separated run names: redo these from scratch and run no others"),
    privacy: Path = typer.Option(Path("docs/attack-record/results.json"), help="frontier: the `encseg attack` results.json to read privacy figures from"),
    rescore: Optional[Path] = typer.Option(None, help="frontier: rebuild the report from an earlier invocation's frontier.json against --privacy, training nothing"),
    parallel: Optional[int] = typer.Option(None, help="training processes at a time (default: the budget's, 2 on the CPU budgets); results do not depend on it"),
    refine_steps: Optional[int] = typer.Option(None, help="frontier: steps of the client's refiner fitted on each run (default: the budget's, 800; 0: none)"),
) -> None:
    """The frontier (per scheme: per-image-key mIoU against the attacks' figures) or the paper's table, on the street benchmark."""
    from encseg.engine.experiment import run_experiment

    run_experiment(budget, out, data, results, chart, demo_out, only.split(",") if only else None, privacy, rescore,
                   parallel, refine_steps)


def export_demo_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a per-image-key model (model.safetensors)"),
    out: Path = typer.Option(Path("src/encseg/assets"), help="folder for demo.safetensors + demo.json"),
    data: Path = typer.Option(..., "--data", help="the street benchmark it was trained on (its val split is scored)"),
    command: str = typer.Option("", help="the command that reproduces the checkpoint (stored in the JSON)"),
    crop: Optional[str] = typer.Option(None, help="sliding-window crop N or HxW (default: the model's training size when scenes are larger)"),
    stride: Optional[str] = typer.Option(None, help="sliding-window stride N or HxW (default: 3/4 of the crop, on the patch grid)"),
    plain: Optional[Path] = typer.Option(None, help="plain SETR trained at the same budget on the same data: its val "
                                         "mIoU on plain images is stored, for the demo's price-of-privacy line"),
    plain_command: str = typer.Option("", help="the command that reproduces --plain (stored in the JSON)"),
    refiner: Optional[Path] = typer.Option(None, help="the client's refiner for this model (encseg train-refiner): "
                                           "scored, then shipped beside it as refiner.safetensors"),
    refiner_command: str = typer.Option("", help="the command that reproduces --refiner (stored in the JSON)"),
) -> None:
    """Store a trained per-image-key model as the demo model (fp16, no auxiliary heads), with its val mIoU.

    The sliding-window setting it was scored with is stored too, and the demo and the service use it."""
    from encseg.cipher import Scheme
    from encseg.data.cityscapes import CityscapesDataset
    from encseg.engine.evaluate import evaluate
    from encseg.engine.experiment import write_demo_asset
    from encseg.models import load_checkpoint

    model, config, extra = load_checkpoint(checkpoint)
    enc = (extra.get("train_config") or {}).get("encryption", {})
    if enc.get("mode") != "per-image":
        raise UserError(f"{checkpoint} was not trained with per-image keys (encryption {enc.get('mode')!r})")
    scheme = Scheme.parse(enc["scheme"], block_size=config.block)
    val = CityscapesDataset(data, "val")
    size = list(val.load(0)[0].shape[:2])
    crop_hw, stride_hw = _window(crop, "--crop"), _window(stride, "--stride")
    if crop_hw is None and (size[0] > config.img_size[0] or size[1] > config.img_size[1]):
        crop_hw = tuple(config.img_size)
    if crop_hw is not None and stride_hw is None:
        p = config.block
        stride_hw = tuple(max(p, (3 * c // 4) // p * p) for c in crop_hw)
    more = {}
    if plain is not None:
        plain_model, _, plain_extra = load_checkpoint(plain)
        if (plain_extra.get("train_config") or {}).get("encryption", {}).get("mode") not in (None, "none"):
            raise UserError(f"--plain {plain} was trained on encrypted images; the reference is plain SETR on plain images")
        ref = evaluate(plain_model, val, "cpu", "none", crop=crop_hw, stride=stride_hw, batch_size=8)
        more = {"plain_val_miou": round(ref.miou, 2), "plain_command": plain_command}
    result = evaluate(model, val, "cpu", "per-image", scheme, crop=crop_hw, stride=stride_hw, batch_size=8)
    if refiner is not None:
        from encseg.models.refine import load_refiner, save_refiner

        ref, ref_extra = load_refiner(refiner)
        refined = evaluate(model, val, "cpu", "per-image", scheme, crop=crop_hw, stride=stride_hw, batch_size=8, refiner=ref)
        save_refiner(out / "refiner.safetensors", ref, ref_extra | {"val_miou_refined": round(refined.miou, 2),
                                                                    "command": refiner_command})  # fmt: skip
        more["refiner"] = {"file": "refiner.safetensors", "val_miou_refined": round(refined.miou, 2),
                           "command": refiner_command}  # fmt: skip
    path = write_demo_asset(checkpoint, out, name=f"streets-{config.decoder}-{config.encoder}-per-image-{scheme.name}",
                            scheme=scheme.name, scene_size=size, val_miou=round(result.miou, 2), command=command,
                            data_root=data, crop=crop_hw, stride=stride_hw, **more)  # fmt: skip
    line = f"val mIoU with per-image keys {result.miou:.2f}"
    if "refiner" in more:
        line += f", with the client's refiner {more['refiner']['val_miou_refined']:.2f}"
    if "plain_val_miou" in more:
        line += f", plain SETR at the same budget {more['plain_val_miou']:.2f} ({result.miou / more['plain_val_miou']:.2f}x)"
    typer.echo(f"wrote {path} ({line}, scenes {size[0]}x{size[1]})")


def train_refiner_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the server's model (model.safetensors or the demo asset)"),
    data: Path = typer.Option(..., "--data", help="dataset folder in the Cityscapes layout (train split to learn, val to score)"),
    out: Path = typer.Option(Path("runs/refiner"), "--out", "-o", help="folder for refiner.safetensors + refiner.json"),
    minutes: float = typer.Option(4.0, help="wall-clock budget of the training loop"),
    steps: Optional[int] = typer.Option(None, min=1, help="train exactly this many steps instead of --minutes"),
    width: int = typer.Option(32, min=1, max=1024, help="channels of the refiner's context path"),
    seed: int = typer.Option(0, help="seed of the refiner's weights and batches"),
    threads: int = typer.Option(1, min=0, help="torch threads (0: torch's default)"),
    limit: Optional[int] = typer.Option(None, min=1, help="use only the first N training scenes"),
) -> None:
    """Train the client's refiner: after decryption, it puts back the block positions the server never saw."""
    from encseg.engine.refine import train_refiner

    s = train_refiner(checkpoint, data, out, minutes, steps, width=width, seed=seed, threads=threads, limit=limit)
    typer.echo(f"val mIoU ({s['val_images']} scenes, a fresh key per image, scheme {s['scheme']}): server alone "
               f"{s['val_miou_server']:.2f}, with the refiner {s['val_miou_refined']:.2f} ({s['steps']} steps, "
               f"{s['train_seconds']:.0f} s) -> {out / 'refiner.safetensors'}")


def register(app: typer.Typer) -> None:
    app.command("train-refiner")(train_refiner_cmd)
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("experiment")(experiment_cmd)
    app.command("export-demo")(export_demo_cmd)
