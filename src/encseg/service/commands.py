"""CLI: `encseg serve` (the segmentation server) and `encseg segment` (the Python client)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from encseg.errors import UserError
from encseg.service.settings import LOG_LEVELS, Limits, ServiceConfig

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
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port"),
    workers: int = typer.Option(1, min=1, max=64, help="uvicorn worker processes (each loads the model)"),
    device: str = typer.Option("cpu", help="torch device for inference (cpu, cuda, cuda:N, mps)"),
    threads: int = typer.Option(0, min=0, max=1024, help="torch threads per worker (0: cores / workers)"),
    crop: int = typer.Option(0, min=0, help="sliding-window inference with this crop (a multiple of the patch size; 0: the checkpoint's setting)"),
    max_batch: int = typer.Option(8, min=1, max=256, help="largest micro-batch (1 turns batching off)"),
    max_wait_ms: float = typer.Option(5.0, min=0, max=10_000, help="how long a request waits for company"),
    max_body_mb: float = typer.Option(32, min=0.001, max=2047, help="largest request body, MiB"),
    max_pixels: int = typer.Option(Limits.max_pixels, min=1, help="largest image, in pixels (checked before decoding)"),
    max_side: int = typer.Option(Limits.max_side, min=1, help="largest image side, in pixels"),
    max_queue_pixels: int = typer.Option(ServiceConfig.max_queue_pixels, min=1,
                                         help="pixels that may wait for the model; beyond that 503 + Retry-After"),
    queue_timeout: float = typer.Option(ServiceConfig.queue_timeout_s, min=0.001, help="seconds a request may wait for the model (then 503)"),
    max_inflight: int = typer.Option(ServiceConfig.max_inflight, min=1, help="requests read, checked or run at once (then 503)"),
    max_connections: int = typer.Option(ServiceConfig.max_connections, min=1, help="open connections (more are answered 503)"),
    header_timeout: float = typer.Option(ServiceConfig.header_timeout_s, min=0.001, help="seconds for a request line + headers"),
    body_timeout: float = typer.Option(ServiceConfig.body_timeout_s, min=0.001, help="seconds for a whole request body"),
    log_level: str = typer.Option("info", help="one of " + ", ".join(LOG_LEVELS)),
) -> None:
    """Serve a checkpoint: POST /v1/segment, GET /v1/info, /healthz, the browser client at /, docs at /docs."""
    import uvicorn

    from encseg.service.server import guarded_protocol, uvicorn_options

    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist or is not a file")
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // workers)
    config = ServiceConfig(
        checkpoint=str(checkpoint.resolve()), device=device, threads=threads, crop=crop,
        limits=Limits(max_body_bytes=int(max_body_mb * 2**20), max_pixels=max_pixels, max_side=max_side),
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue_pixels=max_queue_pixels,
        queue_timeout_s=queue_timeout, max_inflight=max_inflight, max_connections=max_connections,
        header_timeout_s=header_timeout, body_timeout_s=body_timeout, log_level=log_level.lower(),
    )  # every value checked here: a bad option is refused before anything loads
    os.environ.update(config.to_env())
    options = dict(host=host, port=port, log_config=log_config(config.log_level), log_level=config.log_level,
                   **uvicorn_options(config))
    if workers == 1:
        from encseg.service.app import app_from_env

        app = app_from_env()  # load now, so a bad checkpoint or crop is a one-line error before binding
        _check_crop(app, crop)
        typer.echo(f"serving {checkpoint} on http://{host}:{port}/ (docs at /docs)", err=True)
        _run(uvicorn, app, http=guarded_protocol(config), **options)
    else:
        from encseg.service.segmenter import Segmenter
        from encseg.service.server import GuardedH11Protocol

        probe = Segmenter.from_checkpoint(checkpoint, device="cpu", crop=crop or None)  # refuse a bad one before forking
        if crop and crop % probe.info.patch_size:
            raise UserError(f"--crop {crop} is not a multiple of the model's patch size {probe.info.patch_size}")
        del probe
        typer.echo(f"serving {checkpoint} on http://{host}:{port}/ with {workers} workers", err=True)
        _run(uvicorn, "encseg.service.app:app_from_env", factory=True, workers=workers, http=GuardedH11Protocol, **options)


def _check_crop(app, crop: int) -> None:
    patch = app.state.segmenter.info.patch_size
    if crop and crop % patch:
        raise UserError(f"--crop {crop} is not a multiple of the model's patch size {patch}")


def _run(uvicorn, app, **options) -> None:
    """uvicorn.run, with a port that cannot be bound reported as one line."""
    try:
        uvicorn.run(app, **options)
    except OSError as exc:
        raise UserError(f"cannot serve on {options.get('host')}:{options.get('port')}: {exc.strerror or exc}") from None
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind (it has logged why)
        if exc.code not in (0, None):
            raise UserError(f"the server could not start on {options.get('host')}:{options.get('port')} (see above)") from None


def _out_names(images: list[Path]) -> list[str]:
    """Output stems, unique even on a case-insensitive file system: the input stem, numbered
    (`x`, `x-1`, `x-2`, ...) when two inputs share one, skipping numbers another input already owns."""
    taken = {p.stem.casefold() for p in images}
    used: set[str] = set()
    names = []
    for p in images:
        stem, n = p.stem, 0
        while stem.casefold() in used or (n and stem.casefold() in taken):  # leave other inputs their own names
            n += 1
            stem = f"{p.stem}-{n}"
        used.add(stem.casefold())
        names.append(stem)
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
    fmt: str = typer.Option("png", "--format", help="how the ciphertext travels: png (lossless) or jpeg (5.7-7x fewer "
                            "bytes than PNG at quality 90; block size a multiple of 8; the label map still "
                            "decrypts exactly)"),
    quality: Optional[int] = typer.Option(None, help="JPEG quality 1-100 for --format jpeg (default 90)"),
    arrangement: str = typer.Option("auto", help="pixel order the ciphertext travels in: auto (JPEG of a pixel-shuffled "
                                    "scheme: each block's pixels sorted, format v3, when the server accepts it), "
                                    "none or sorted"),
    retries: int = typer.Option(4, help="retries on connection errors (exponential backoff)"),
    refiner: Optional[Path] = typer.Option(None, help="the client's refiner (refiner.safetensors, e.g. the one shipped "
                                           "beside the demo model): run here on each decrypted label map"),
) -> None:
    """Segment images privately: fresh key per image, encrypt, send, decrypt the label map, drop the key."""
    from tqdm import tqdm

    from encseg.cipher import Scheme, save_key
    from encseg.cipher.io import check_transport, encode_png, read_image, save_encrypted as write_encrypted, write_atomic
    from encseg.cipher.jpeg import DEFAULT_QUALITY
    from encseg.service.client import HttpBackend, LocalBackend, _transport, default_scheme, palette_of, segment_image

    if (server is None) == (local is None):
        raise UserError("pass exactly one of --server URL or --local CHECKPOINT")
    fmt = _transport(fmt)
    if quality is not None and fmt != "jpeg":
        raise UserError("--quality applies to --format jpeg only (PNG is lossless)")
    quality = DEFAULT_QUALITY if quality is None else quality
    ref = None
    if refiner is not None:  # before any network or model work: a wrong path fails at once
        from encseg.models.refine import load_refiner

        ref = load_refiner(refiner)[0]
    if local is not None:
        from encseg.service.segmenter import Segmenter

        backend = LocalBackend(Segmenter.from_checkpoint(local), transport=fmt, quality=quality, arrangement=arrangement)
    else:
        backend = HttpBackend(server, retries=retries, transport=fmt, quality=quality, arrangement=arrangement)
    try:
        info = backend.info()
        s = default_scheme(info)
        if scheme is not None:
            s = Scheme.parse(scheme, block_size=block_size or s.block_size)
        check_transport(s, fmt)  # once, before any image: JPEG needs a block size that is a multiple of 8
        arranged = backend.arrangement_for(s)  # and the arrangement (a one-line refusal before any image)
        palette = palette_of(info)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        names = _out_names(images)
        if keep_key:
            existing = [out / f"{n}.key" for n in names if (out / f"{n}.key").exists()]
            if existing:
                raise UserError(f"{existing[0]} already exists; refusing to overwrite a key file (choose another --out)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create --out {out}: {exc.strerror}") from None
        failed = 0
        bar = tqdm(list(zip(images, names)), unit="img", disable=len(images) < 2, file=sys.stderr)
        for path, stem in bar:
            try:
                img = read_image(path)
                res = segment_image(img, backend, s, palette, refiner=ref)
            except UserError as exc:
                failed += 1
                tqdm.write(f"error: {path}: {exc}", file=sys.stderr)
                continue
            if keep_key:  # the key first, never over another: no mask whose key was not saved
                save_key(res.key, out / f"{stem}.key")
            write_atomic(out / f"{stem}_mask.png", encode_png(res.mask))
            write_atomic(out / f"{stem}_overlay.png", encode_png(res.overlay))
            if save_encrypted:
                ext = "jpg" if fmt == "jpeg" else "png"  # the same bytes the backend was sent
                write_encrypted(out / f"{stem}_encrypted.{ext}", res.encrypted, fmt, quality, arranged)
            del res  # the key goes with it
        done = len(images) - failed
        how = f", {fmt.upper()}" + (", pixels sorted inside each block (format v3)" if arranged == "sorted" else "")
        typer.echo(f"segmented {done}/{len(images)} image(s) with scheme {s.name}{how} -> {out}"
                   + ("" if keep_key else " (keys discarded)"), err=True)
        if failed:
            raise UserError(f"{failed} of {len(images)} image(s) failed (see above)")
    finally:
        backend.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("segment")(segment)
