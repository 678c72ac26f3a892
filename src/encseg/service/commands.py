"""CLI: `encseg serve` (the segmentation server) and `encseg segment` (the Python client)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from encseg.errors import UserError

ENV_PREFIX = "ENCSEG_SERVE_"


def config_from_env():
    """(checkpoint, device, crop, ServiceConfig) from the environment `serve` sets for its uvicorn workers."""
    from encseg.service.app import ServiceConfig
    from encseg.service.validation import Limits

    env = os.environ
    ckpt = env.get(ENV_PREFIX + "CHECKPOINT")
    if not ckpt:
        raise UserError(f"{ENV_PREFIX}CHECKPOINT is not set")
    threads = int(env.get(ENV_PREFIX + "THREADS", "0"))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    limits = Limits(max_body_bytes=int(env.get(ENV_PREFIX + "MAX_BODY_BYTES", Limits.max_body_bytes)),
                    max_pixels=int(env.get(ENV_PREFIX + "MAX_PIXELS", Limits.max_pixels)))
    cfg = ServiceConfig(limits=limits, max_batch=int(env.get(ENV_PREFIX + "MAX_BATCH", 8)),
                        max_wait_ms=float(env.get(ENV_PREFIX + "MAX_WAIT_MS", 5.0)))
    crop = int(env.get(ENV_PREFIX + "CROP", "0")) or None
    return ckpt, env.get(ENV_PREFIX + "DEVICE", "cpu"), crop, cfg


def log_config(level: str = "info") -> dict:
    """uvicorn's logging plus our JSON access log on stderr (uvicorn's own access log is off)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["plain"] = {"format": "%(message)s"}
    cfg["handlers"]["encseg"] = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    cfg["loggers"]["encseg.service"] = {"handlers": ["encseg"], "level": level.upper(), "propagate": False}
    return cfg


def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="model checkpoint (.safetensors + .json beside it)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes (each loads the model)"),
    device: str = typer.Option("cpu", help="torch device for inference"),
    threads: int = typer.Option(0, help="torch threads per worker (0: cores / workers)"),
    crop: int = typer.Option(0, help="sliding-window inference with this crop (a multiple of the patch size; 0: whole image)"),
    max_batch: int = typer.Option(8, min=1, help="largest micro-batch (1 turns batching off)"),
    max_wait_ms: float = typer.Option(5.0, min=0, help="how long a request waits for company"),
    max_body_mb: float = typer.Option(32, help="largest request body, MiB"),
    max_pixels: int = typer.Option(2048 * 2048, help="largest image, in pixels (checked before decoding)"),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve a checkpoint: POST /v1/segment, GET /v1/info, /healthz, the browser client at /, docs at /docs."""
    import uvicorn

    if not checkpoint.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ.update({
        ENV_PREFIX + "CHECKPOINT": str(checkpoint.resolve()), ENV_PREFIX + "DEVICE": device,
        ENV_PREFIX + "THREADS": str(threads), ENV_PREFIX + "MAX_BATCH": str(max_batch),
        ENV_PREFIX + "MAX_WAIT_MS": str(max_wait_ms), ENV_PREFIX + "MAX_BODY_BYTES": str(int(max_body_mb * 2**20)),
        ENV_PREFIX + "MAX_PIXELS": str(max_pixels), ENV_PREFIX + "CROP": str(crop),
    })
    if workers == 1:
        from encseg.service.app import app_from_env

        app = app_from_env()  # load now, so a bad checkpoint is a one-line error before binding
        typer.echo(f"serving {checkpoint} on http://{host}:{port}/ (docs at /docs)", err=True)
        uvicorn.run(app, host=host, port=port, access_log=False, log_config=log_config(log_level), log_level=log_level)
    else:
        typer.echo(f"serving {checkpoint} on http://{host}:{port}/ with {workers} workers", err=True)
        uvicorn.run("encseg.service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    access_log=False, log_config=log_config(log_level), log_level=log_level)


def _out_names(images: list[Path]) -> list[str]:
    """Output stems: the input stem, numbered when two inputs share one."""
    seen: dict[str, int] = {}
    names = []
    for p in images:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}-{n}")
    return names


def segment(
    images: list[Path] = typer.Argument(..., help="plain images (PNG, JPEG, ...) to segment"),
    server: Optional[str] = typer.Option(None, help="server URL, e.g. http://127.0.0.1:8000"),
    local: Optional[Path] = typer.Option(None, help="checkpoint to run in this process instead of a server"),
    scheme: Optional[str] = typer.Option(None, help="cipher scheme (default: the one the model was trained for)"),
    block_size: Optional[int] = typer.Option(None, help="block size for --scheme (default: the model's)"),
    out: Path = typer.Option(Path("segment-out"), "--out", "-o", help="folder for masks and overlays"),
    keep_key: bool = typer.Option(False, "--keep-key", help="write each image's key next to its outputs (0600)"),
    save_encrypted: bool = typer.Option(False, "--save-encrypted", help="also write what the server saw"),
    retries: int = typer.Option(4, help="retries on connection errors (exponential backoff)"),
) -> None:
    """Segment images privately: fresh key per image, encrypt, send, decrypt the label map, drop the key."""
    from tqdm import tqdm

    from encseg.cipher import Scheme, save_key
    from encseg.cipher.io import encode_png, read_image, save_encrypted as write_encrypted, write_atomic
    from encseg.service.client import HttpBackend, LocalBackend, default_scheme, segment_image

    if (server is None) == (local is None):
        raise UserError("pass exactly one of --server URL or --local CHECKPOINT")
    if local is not None:
        from encseg.service.segmenter import Segmenter

        backend = LocalBackend(Segmenter.from_checkpoint(local))
    else:
        backend = HttpBackend(server, retries=retries)
    try:
        info = backend.info()
        s = default_scheme(info)
        if scheme is not None:
            s = Scheme.parse(scheme, block_size=block_size or s.block_size)
        palette = info.get("palette") or []
        out.mkdir(parents=True, exist_ok=True)
        failed = 0
        bar = tqdm(list(zip(images, _out_names(images))), unit="img", disable=len(images) < 2, file=sys.stderr)
        for path, stem in bar:
            try:
                img = read_image(path)
                res = segment_image(img, backend, s, palette)
            except UserError as exc:
                failed += 1
                tqdm.write(f"error: {path}: {exc}", file=sys.stderr)
                continue
            write_atomic(out / f"{stem}_mask.png", encode_png(res.mask))
            write_atomic(out / f"{stem}_overlay.png", encode_png(res.overlay))
            if save_encrypted:
                write_encrypted(out / f"{stem}_encrypted.png", res.encrypted)
            if keep_key:
                save_key(res.key, out / f"{stem}.key", overwrite=True)
            del res  # the key goes with it
        done = len(images) - failed
        typer.echo(f"segmented {done}/{len(images)} image(s) with scheme {s.name} -> {out}"
                   + ("" if keep_key else " (keys discarded)"), err=True)
        if failed:
            raise UserError(f"{failed} of {len(images)} image(s) failed (see above)")
    finally:
        backend.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("segment")(segment)
