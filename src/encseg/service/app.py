"""The FastAPI app: POST /v1/segment (encrypted PNG or JPEG in, label map in encrypted geometry out),
GET /v1/info, GET /healthz, the browser client at /, OpenAPI at /docs. It never receives a key.

Every bad request is a 4xx with a JSON `{"detail": ...}`; the access log is one JSON line per
request with sizes and timings, never pixels.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from encseg import __version__
from encseg.cipher import DEFAULT_SCHEME, PRESETS
from encseg.cipher.io import encode_png, metadata_text
from encseg.cipher.jpeg import JpegHeader
from encseg.errors import UserError
from encseg.service.batching import MicroBatcher
from encseg.service.segmenter import Prediction, Segmenter
from encseg.service.validation import (
    KEY_REFUSAL,
    Limits,
    Refused,
    check_geometry,
    PngHeader,
    check_transport,
    decode_jpeg_ciphertext,
    decode_png,
    has_key_member,
    is_key_name,
    read_image_header,
    resolve_scheme,
    scheme_from_chunk,
    scheme_from_field,
)

STATIC_DIR = Path(__file__).parent / "static"
access_log = logging.getLogger("encseg.service.access")
log = logging.getLogger("encseg.service")

FIELDS = ("image", "scheme", "block_size", "original_size", "topk", "format")


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and batching; `max_batch=1` turns micro-batching off."""

    limits: Limits = Limits()
    max_batch: int = 8
    max_wait_ms: float = 5.0


# -- response models (for OpenAPI) ----------------------------------------------------------------

class ModelDescription(BaseModel):
    name: str
    num_classes: int
    patch_size: int
    key_mode: str | None  # how its training images were keyed: per-image (the point), shared, none
    config: dict[str, Any]
    trained_on: dict[str, Any] = {}  # benchmark, val_miou_per_image_keys, ... as the checkpoint records them


class Info(BaseModel):
    service: str
    format_version: int
    model: ModelDescription
    classes: list[str]
    palette: list[list[int]]
    block_size: int
    schemes: list[dict[str, Any]]
    scheme_names: list[str]
    default_scheme: str  # what a client should offer first: the library default if trained for, else the first trained
    presets: dict[str, str]
    limits: dict[str, int]
    batching: dict[str, Any]


class TopK(BaseModel):
    k: int
    classes: str  # base64 of uint8 [k, H, W]
    probs: str  # base64 of little-endian float32 [k, H, W]


class SegmentJSON(BaseModel):
    height: int
    width: int
    num_classes: int
    scheme: dict[str, Any]
    trained_for_scheme: bool
    labels_png: str  # base64 PNG, 8-bit label map in encrypted geometry
    topk: TopK | None = None


_SEGMENT_BODY = {
    "description": (
        "An encrypted image (PNG, sides multiples of the block size) and its scheme. Never a key: "
        "a `key` field or member is refused with 400. Send multipart/form-data, application/json "
        "(image as base64), or a raw image/png or image/jpeg body (scheme in the query or the image's encseg "
        "metadata). JPEG (for segmentation only): baseline, 4:4:4, block size a multiple of 8 "
        "(docs/encryption-format.md section 10)."
    ),
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "scheme": {"type": "string", "description": "preset/code name (e.g. bs-np-cs) or JSON descriptor"},
                    "block_size": {"type": "integer"},
                    "original_size": {"type": "string", "description": "HxW before padding (echoed into the label PNG)"},
                    "topk": {"type": "integer", "minimum": 0},
                    "format": {"type": "string", "enum": ["png", "json"]},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "byte"},
                    "scheme": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                    "block_size": {"type": "integer"},
                    "original_size": {"type": "array", "items": {"type": "integer"}},
                    "topk": {"type": "integer", "minimum": 0},
                    "format": {"type": "string", "enum": ["png", "json"]},
                },
            }
        },
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    },
}


# -- middleware --------------------------------------------------------------------------------

class _BodyTooLarge(Exception):
    pass


class LimitsAndAccessLog:
    """ASGI middleware: refuses bodies over the limit (by Content-Length, or while streaming) and
    writes one JSON access-log line per request (method, path, status, bytes, ms; no query, no pixels)."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        rid = uuid.uuid4().hex[:12]
        state["request_id"] = rid
        rec = {"status": 500, "bytes_in": 0, "bytes_out": 0, "started": False}

        async def counted_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                rec["bytes_in"] += len(msg.get("body", b""))
                if rec["bytes_in"] > self.max_body:
                    raise _BodyTooLarge()
            return msg

        async def counted_send(msg):
            if msg["type"] == "http.response.start":
                rec["status"], rec["started"] = msg["status"], True
                msg.setdefault("headers", [])
                msg["headers"] = list(msg["headers"]) + [(b"x-request-id", rid.encode())]
            elif msg["type"] == "http.response.body":
                rec["bytes_out"] += len(msg.get("body", b""))
            await send(msg)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                await _send_json(counted_send, 413, _too_large(self.max_body))
            else:
                try:
                    await self.app(scope, counted_receive, counted_send)
                except _BodyTooLarge:
                    if not rec["started"]:
                        await _send_json(counted_send, 413, _too_large(self.max_body))
        finally:
            line = {
                "event": "access", "request_id": rid, "client": (scope.get("client") or ("?",))[0],
                "method": scope.get("method"), "path": scope.get("path"), "status": rec["status"],
                "bytes_in": rec["bytes_in"], "bytes_out": rec["bytes_out"],
                "ms": round((time.perf_counter() - t0) * 1000, 2),
            }
            line.update(state.get("log", {}))
            access_log.info(json.dumps(line, separators=(",", ":")))


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- request parsing ---------------------------------------------------------------------------

@dataclass
class SegmentRequest:
    data: bytes
    scheme_field: Any = None
    block_size: Any = None
    original_size: Any = None
    topk: Any = 0
    format: str = "png"


async def parse_request(request: Request, limits: Limits) -> SegmentRequest:
    """Read a multipart, JSON or raw-PNG request into one shape; refuse keys and unknown fields."""
    for name in request.query_params:
        if is_key_name(name):
            raise Refused(400, KEY_REFUSAL)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=16, max_part_size=limits.max_body_bytes)
        try:
            names = list(form.keys())
            if any(is_key_name(n) for n in names):
                raise Refused(400, KEY_REFUSAL)
            _check_fields(names)
            if len(form.getlist("image")) != 1:
                raise Refused(400, "send exactly one `image` part")
            image = form["image"]
            data = await image.read() if isinstance(image, UploadFile) else image.encode("latin-1", "replace")
            values = {n: form[n] for n in names if n != "image"}
            if any(not isinstance(v, str) for v in values.values()):
                raise Refused(400, "only `image` may be a file part")
        finally:
            await form.close()
        return SegmentRequest(data, values.get("scheme"), values.get("block_size"), values.get("original_size"),
                              values.get("topk", 0), values.get("format", "png"))
    if ctype == "application/json":
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise Refused(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the JSON body is an object with an `image` member")
        if has_key_member(body):
            raise Refused(400, KEY_REFUSAL)
        _check_fields(list(body))
        image = body.get("image")
        if not isinstance(image, str):
            raise Refused(400, "`image` is the PNG as a base64 string")
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, "`image` is not valid base64") from None
        return SegmentRequest(data, body.get("scheme"), body.get("block_size"), body.get("original_size"),
                              body.get("topk", 0), body.get("format", "png"))
    if ctype in ("image/png", "image/jpeg", "application/octet-stream"):
        q = request.query_params
        _check_fields(list(q))
        return SegmentRequest(await request.body(), q.get("scheme"), q.get("block_size"), q.get("original_size"),
                              q.get("topk", 0), q.get("format", "png"))
    if ctype.startswith("image/"):
        raise Refused(415, f"{ctype} is refused: only PNG and JPEG are accepted for encrypted images")
    raise Refused(415, "send multipart/form-data, application/json or an image/png or image/jpeg body")


def _check_fields(names: list[str]) -> None:
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise Refused(400, f"unknown field(s) {shown}; accepted: {', '.join(FIELDS)}")


def _parse_topk(value: Any, limits: Limits) -> int:
    if isinstance(value, bool):
        raise Refused(422, "topk must be an integer")
    try:
        k = int(value) if value not in (None, "") else 0
    except (TypeError, ValueError, OverflowError):
        raise Refused(422, "topk must be an integer") from None
    if not 0 <= k <= limits.max_topk:
        raise Refused(422, f"topk must be between 0 and {limits.max_topk}")
    return k


def _parse_original_size(value: Any) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, str):
            h, w = (int(v) for v in value.lower().split("x"))
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            h, w = value
        else:
            raise ValueError
    except ValueError:
        raise Refused(422, "original_size is HxW (e.g. 1024x2048) or [H, W]") from None
    if h <= 0 or w <= 0:
        raise Refused(422, "original_size must be positive")
    return h, w


# -- the app -----------------------------------------------------------------------------------

def create_app(segmenter: Segmenter, config: ServiceConfig = ServiceConfig()) -> FastAPI:
    """Build the app around a loaded model. The batcher is created here and closed at shutdown."""
    limits = config.limits
    info = segmenter.info
    trained = {s for s in info.schemes}

    def run_batch(group, items: list[tuple[np.ndarray, int]]) -> list[Prediction]:
        k = max(t for _, t in items)
        return segmenter.predict(np.stack([img for img, _ in items]), topk=k)

    batcher = MicroBatcher(run_batch, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    docs_assets = _offline_docs_assets()
    app = FastAPI(
        title="encseg segmentation service",
        version=__version__,
        description="Segments images encrypted with a per-image key the client keeps. No endpoint takes a key.",
        lifespan=lifespan,
        docs_url=None if docs_assets else "/docs",
        redoc_url=None,
    )
    if docs_assets:  # Swagger UI from local files: the service needs no network, and neither do its docs
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Response:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="encseg service - API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon.png")

    app.state.batcher = batcher
    app.state.segmenter = segmenter

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        request.scope.setdefault("state", {}).setdefault("log", {})["error"] = exc.message[:200]
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        request.scope.setdefault("state", {}).setdefault("log", {})["error"] = str(exc)[:200]
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": "invalid request", "errors": json.loads(json.dumps(exc.errors(), default=str))}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves and the model is loaded."""
        return {"status": "ok"}

    @app.get("/v1/info", response_model=Info, tags=["service"])
    async def get_info() -> Info:
        """The model, its classes and palette, the block size and the schemes it was trained for."""
        return Info(
            service="encseg",
            format_version=1,
            model=ModelDescription(name=info.name, num_classes=info.num_classes, patch_size=info.patch_size,
                                   key_mode=info.key_mode, config=info.config, trained_on=info.trained_on),
            classes=info.class_names,
            palette=info.palette,
            block_size=info.block_size,
            schemes=[s.to_dict() for s in info.schemes],
            scheme_names=[s.name for s in info.schemes],
            default_scheme=_default_scheme([s.name for s in info.schemes]),
            presets=PRESETS,
            limits={"max_body_bytes": limits.max_body_bytes, "max_pixels": limits.max_pixels,
                    "max_side": limits.max_side, "max_topk": limits.max_topk},
            batching={"enabled": batcher.enabled, "max_batch": batcher.max_batch, "max_wait_ms": config.max_wait_ms,
                      "batches": batcher.stats.batches, "items": batcher.stats.items},
        )

    @app.post(
        "/v1/segment",
        tags=["segment"],
        openapi_extra={"requestBody": _SEGMENT_BODY},
        responses={
            200: {"content": {"image/png": {}, "application/json": {"schema": SegmentJSON.model_json_schema()}},
                  "description": "label map in encrypted geometry (PNG), or JSON with it and top-k probabilities"},
            400: {"description": "malformed request, or a request that carries a key"},
            413: {"description": "body or pixel count over the limit"},
            415: {"description": "not a PNG or JPEG, not 8-bit RGB, or a JPEG that is progressive or chroma-subsampled"},
            422: {"description": "unknown scheme, or sizes that do not fit the block size"},
        },
    )
    async def segment(request: Request) -> Response:
        """Segment one encrypted image. The answer stays in encrypted geometry: only the key holder
        can put it back (`decrypt_mask`)."""
        with batcher.expecting():  # company for the batch that is on its way
            req = await parse_request(request, limits)
            topk = _parse_topk(req.topk, limits)
            fmt = str(req.format or "png").lower()
            if fmt not in ("png", "json"):
                raise Refused(422, "format is png or json")
            if topk and fmt != "json":
                fmt = "json"  # probabilities do not fit in a label PNG
            header = read_image_header(req.data, limits)
            field = scheme_from_field(req.scheme_field, req.block_size, default_block_size=info.block_size)
            chunk, chunk_size = scheme_from_chunk(header.encseg_text) if header.encseg_text is not None else (None, None)
            scheme = resolve_scheme(field, chunk)
            original_size = _parse_original_size(req.original_size) or chunk_size
            check_geometry(scheme, header, original_size, info.patch_size)
            check_transport(scheme, header)
            logrec = request.scope["state"].setdefault("log", {})
            logrec.update(height=header.height, width=header.width, scheme=scheme.name, topk=topk,
                          transport="jpeg" if isinstance(header, JpegHeader) else "png")
            decode = decode_png if isinstance(header, PngHeader) else decode_jpeg_ciphertext
            img = await run_in_threadpool(decode, req.data, header)
        t0 = time.perf_counter()
        pred: Prediction = await batcher.submit((header.height, header.width), (img, topk))
        logrec["infer_ms"] = round((time.perf_counter() - t0) * 1000, 2)

        text = metadata_text(scheme, original_size) if original_size else None
        png = await run_in_threadpool(encode_png, pred.labels, text)
        headers = {"X-Encseg-Scheme": scheme.name, "X-Encseg-Trained-For-Scheme": str(scheme in trained).lower(),
                   "X-Encseg-Classes": str(info.num_classes)}
        if fmt == "png":
            return Response(png, media_type="image/png", headers=headers)
        body = SegmentJSON(
            height=header.height, width=header.width, num_classes=info.num_classes, scheme=scheme.to_dict(),
            trained_for_scheme=scheme in trained, labels_png=base64.b64encode(png).decode(),
            topk=None if not topk else TopK(
                k=int(pred.topk_classes.shape[0]),
                classes=base64.b64encode(pred.topk_classes.tobytes()).decode(),
                probs=base64.b64encode(pred.topk_probs.astype("<f4").tobytes()).decode(),
            ),
        )
        return JSONResponse(body.model_dump(), headers=headers)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(LimitsAndAccessLog, max_body_bytes=limits.max_body_bytes)
    return app


def _default_scheme(trained: list[str]) -> str:
    """The scheme a client offers first: the library default when the model was trained for it."""
    return DEFAULT_SCHEME if DEFAULT_SCHEME in trained or not trained else trained[0]


def _offline_docs_assets() -> Path | None:
    """Swagger UI's files from the `fastapi-offline` package, if installed (else FastAPI's CDN page)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: every worker loads the checkpoint named in the environment."""
    from encseg.service.commands import config_from_env

    ckpt, device, crop, cfg = config_from_env()
    return create_app(Segmenter.from_checkpoint(ckpt, device=device, crop=crop), cfg)
