"""The FastAPI app: POST /v1/segment (encrypted PNG or JPEG in, label map in encrypted geometry out),
GET /v1/info, GET /v1/refiner (the client's refiner's public weights, when one ships beside the model), GET /healthz, the browser client at /, OpenAPI at /docs. It never receives a key.

Every bad request is a 4xx with a JSON `{"detail": ...}` (503 + Retry-After when the service is
full); the access log is one JSON line per request with sizes and timings, never pixels, and no
client text beyond a clipped, escaped prefix. Work on a request body (multipart/JSON parsing,
base64, the PNG chunk walk, decoding, encoding the answer) runs on worker threads, never on the
event loop; inference runs on the batcher's one thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from encseg import __version__
from encseg.cipher import DEFAULT_SCHEME, PRESETS
from encseg.cipher.scheme import FORMAT_VERSION, FORMAT_VERSIONS, STEP_NAMES
from encseg.cipher.io import encode_png, metadata_text
from encseg.errors import UserError
from encseg.service.batching import MicroBatcher, QueueFull, QueueTimeout
from encseg.service.segmenter import Prediction, Segmenter
from encseg.service.server import SECURITY_HEADERS
from encseg.service.settings import Limits, ServiceConfig
from encseg.service.validation import (
    KEY_REFUSAL,
    ImageHeader,
    Refused,
    accepted_media_types,
    check_geometry,
    clean_text,
    decode_image,
    has_key_member,
    is_key_name,
    looks_like_key,
    parse_block_size,
    parse_int_field,
    parse_json,
    parse_original_size,
    read_image_header,
    resolve_scheme,
    scheme_from_chunk,
    scheme_from_field,
)

__all__ = ["create_app", "app_from_env", "ServiceConfig", "Limits"]

STATIC_DIR = Path(__file__).parent / "static"
access_log = logging.getLogger("encseg.service.access")
log = logging.getLogger("encseg.service")

FIELDS = ("image", "scheme", "block_size", "original_size", "topk", "format")
MAX_PARTS = 8
MAX_HEADER_BYTES = 16 * 1024  # all request headers together (uvicorn bounds only headers that arrive in pieces)
# The /docs page (Swagger UI) builds its styles at run time; everything else keeps the strict policy.
DOCS_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
            b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_DOCS_INIT_JS = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", layout: "BaseLayout",
  deepLinking: true, showExtensions: true, showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]});
"""


# -- response models (for OpenAPI) ----------------------------------------------------------------

class ModelDescription(BaseModel):
    name: str
    num_classes: int
    patch_size: int
    key_mode: str | None  # how its training images were keyed: per-image (the point), shared, none
    config: dict[str, Any]
    trained_on: dict[str, Any] = {}  # benchmark, val_miou_per_image_keys, ... as the checkpoint records them


class RefinerDescription(BaseModel):
    config: dict[str, Any] = Field(description="the refiner's RefinerConfig (num_classes, width, scale, dilations, grid_rows)")
    val_miou_refined: float | None = Field(description="validation mIoU after the refiner, on the benchmark the model reports")
    val_miou_server: float | None = Field(None, description="the same validation set from the server's labels alone")
    parameters: int


class Info(BaseModel):
    service: str
    format_version: int = Field(description="version of an encrypted file's metadata object (encryption-format "
                                            "section 8): 1, unchanged by format v2; kept for older clients")
    format_versions: list[int] = Field(description="cipher format versions this service accepts: the scheme "
                                                   "descriptor's `version` (1, and 2 for block-pixel-shuffle)")
    model: ModelDescription
    classes: list[str]
    palette: list[list[int]]
    block_size: int
    schemes: list[dict[str, Any]]
    scheme_names: list[str]
    default_scheme: str  # what a client offers first: the library default if trained for, else the first trained
    presets: dict[str, str]
    transports: list[str]  # how an encrypted image may travel: png, jpeg (encryption-format section 10)
    arrangements: list[str] = Field(description="pixel orders an encrypted image may arrive in: none, and sorted "
                                    "(format v3, encryption-format section 13) when the model is order-free inside "
                                    "its schemes' pixel groups")
    limits: dict[str, int]
    batching: dict[str, Any]
    queue: dict[str, Any]
    timeouts: dict[str, float]
    refiner: RefinerDescription | None = Field(None, description="the client's refiner shipped beside the model (its "
                                               "weights at GET /v1/refiner; it runs on the client, after decryption), or null")


class RefinerTensor(BaseModel):
    shape: list[int]
    data: str = Field(description="base64 of little-endian float32, row-major")


class RefinerWeights(BaseModel):
    format: str = Field(description="encseg-refiner/1")
    config: dict[str, Any]
    dtype: str = Field(description="float32-le")
    tensors: dict[str, RefinerTensor] = Field(description="ClientRefiner's state_dict: label_gain, context.N.weight/bias, "
                                                          "fuse.weight/bias")


class TopK(BaseModel):
    k: int = Field(description="the k this request asked for (at most the number of classes)")
    classes: str = Field(description="base64 of uint8 [k, H, W], most likely class first")
    probs: str = Field(description="base64 of little-endian float32 [k, H, W]")


class SegmentJSON(BaseModel):
    height: int
    width: int
    num_classes: int
    scheme: dict[str, Any]
    trained_for_scheme: bool
    labels_png: str = Field(description="base64 PNG, 8-bit label map in encrypted geometry")
    topk: TopK | None = None


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, for a person; clipped, never echoes a key")


class Health(BaseModel):
    status: str


_STEP = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {"name": {"type": "string", "enum": list(STEP_NAMES)},
                   "group": {"type": "integer", "minimum": 1, "maximum": 256}},
}
_DESCRIPTOR = {
    "type": "object", "additionalProperties": False,
    "description": "a scheme descriptor (docs/encryption-format.md); each step at most once",
    "properties": {"version": {"type": "integer", "enum": list(FORMAT_VERSIONS)},
                   "block_size": {"type": "integer", "minimum": 1, "maximum": 256},
                   "steps": {"type": "array", "items": _STEP, "maxItems": len(STEP_NAMES)}},
}
_SCHEME_NAME = {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$",
                "description": "preset or code name, e.g. bs-np-cs (see GET /v1/info `presets`)"}


def _segment_body(limits: Limits) -> dict:
    text_fields = {
        "scheme": {"type": "string", "maxLength": 4096,
                   "description": "preset/code name (e.g. bs-np-cs) or a JSON scheme descriptor"},
        "block_size": {"type": "integer", "minimum": 1, "maximum": 256},
        "original_size": {"type": "string", "pattern": "^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$",
                          "description": "HxW before padding (echoed into the label PNG)"},
        "topk": {"type": "integer", "minimum": 0, "maximum": limits.max_topk},
        "format": {"type": "string", "enum": ["png", "json"]},
    }
    return {
        "description": (
            "An encrypted image (8-bit RGB or opaque RGBA PNG, or a baseline 4:4:4 JPEG for a block size that is a "
            "multiple of 8: docs/encryption-format.md section 10; sides multiples of the block size and of "
            f"the model's patch size, at most {limits.max_pixels} pixels and {limits.max_side} per side) and "
            "its scheme. Never a key: a field, member, query parameter, header or PNG text chunk named like a "
            "key (key, secret, token, password, auth), or any value that looks like one (64 hex digits, "
            "32 bytes in base64), is refused with 400. Send multipart/form-data, application/json (image as "
            "base64), or a raw image/png body (fields in the query or the PNG's encseg chunk). The same fields "
            "may come in the query instead (the way to send them with a raw image/png body; not declared as parameters, "
            "since OpenAPI cannot tie them to one body type), but not twice. What JSON Schema cannot say about the "
            "image (a PNG whose chunks pass the checks) is refused with 400/413/415/422 as documented."
        ),
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"], "additionalProperties": False,
                "properties": {"image": {"type": "string", "format": "binary"}, **text_fields},
            }},
            "application/json": {"schema": {
                "type": "object", "required": ["image"], "additionalProperties": False,
                "properties": {
                    "image": {"type": "string", "format": "byte", "description": "the PNG, base64"},
                    "scheme": {"oneOf": [_SCHEME_NAME, _DESCRIPTOR]},
                    "block_size": text_fields["block_size"],
                    "original_size": {"type": "array", "minItems": 2, "maxItems": 2,
                                      "items": {"type": "integer", "minimum": 1, "maximum": 999999}},
                    "topk": text_fields["topk"],
                    "format": text_fields["format"],
                },
            }},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def _errors(*codes: int) -> dict[int, dict]:
    what = {
        400: "malformed request or image, or a request that carries a key or key-like value",
        404: "not here: this model ships no client refiner",
        408: "the request body did not arrive in time",
        413: "body, image (pixels or side) or a chunk over the limit",
        431: "the request headers are over 16 KiB",
        415: "not a PNG or JPEG, not 8-bit RGB / opaque RGBA, a progressive or subsampled JPEG, or an unsupported content type",
        422: "unknown scheme, a field out of range, or sizes that do not fit the block size",
        503: "the service is full (queue, requests in flight or connections); retry after Retry-After seconds",
    }
    out: dict[int, dict] = {}
    for c in codes:
        out[c] = {"model": ErrorBody, "description": what[c]}
        if c == 503:
            out[c]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return out


# -- middleware --------------------------------------------------------------------------------

class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


def _client_headers_refusal(scope) -> str | None:
    """Why the request's headers or query must be refused (they carry key material), or None."""
    for name, value in scope.get("headers", []):
        n = name.decode("latin-1")
        if is_key_name(n) or (n.startswith("x-") and looks_like_key(value.decode("latin-1"))):
            return KEY_REFUSAL
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True, max_num_fields=64)
    except ValueError:
        return "the query has too many parameters"
    for k, v in pairs:
        if is_key_name(k) or looks_like_key(v) or looks_like_key(k):
            return KEY_REFUSAL
    return None


class GuardMiddleware:
    """ASGI middleware around the whole app:
    - refuses requests whose headers or query carry key material (400), before reading anything;
    - refuses bodies over the limit (by Content-Length, or while streaming) with 413, and bodies
      that stall (`idle_timeout_s`) or take too long (`body_timeout_s`) with 408; both close the
      connection, so an unread body is never waited for;
    - treats a client that disconnects as gone (logged as status 499, no traceback);
    - adds the security headers to every response (CSP, nosniff, no-referrer) and an X-Request-Id;
    - writes one JSON access-log line per request (method, path prefix, status, bytes, ms; no query,
      no pixels, client text only clipped and escaped)."""

    def __init__(self, app, config: ServiceConfig) -> None:
        self.app, self.config = app, config
        self.max_body = config.limits.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        rid = uuid.uuid4().hex[:12]
        state["request_id"] = rid
        rec: dict[str, Any] = {"status": 500, "bytes_in": 0, "bytes_out": 0, "started": False, "body_done": False}
        csp = DOCS_CSP if scope.get("path") == "/docs" else None
        cfg = self.config
        deadline = time.monotonic() + cfg.body_timeout_s

        async def guarded_receive():
            if rec["body_done"]:
                return await receive()
            timeout = min(cfg.idle_timeout_s, deadline - time.monotonic())
            try:
                msg = await asyncio.wait_for(receive(), timeout=max(timeout, 0.001))
            except asyncio.TimeoutError:
                raise _BodyTimeout() from None
            if msg["type"] == "http.request":
                rec["bytes_in"] += len(msg.get("body", b""))
                if rec["bytes_in"] > self.max_body:
                    raise _BodyTooLarge()
                if not msg.get("more_body", False):
                    rec["body_done"] = True
            elif msg["type"] == "http.disconnect":
                rec["body_done"] = True
            return msg

        async def guarded_send(msg):
            if msg["type"] == "http.response.start":
                rec["status"], rec["started"] = msg["status"], True
                headers = [(k, v) for k, v in msg.get("headers", []) if k.lower() not in _OURS]
                ours = [(k, csp) if csp is not None and k == b"content-security-policy" else (k, v) for k, v in SECURITY_HEADERS]
                headers += ours + [(b"x-request-id", rid.encode())]
                if not rec["body_done"]:
                    headers.append((b"connection", b"close"))  # an unread body is never waited for
                msg = {**msg, "headers": headers}
            elif msg["type"] == "http.response.body":
                rec["bytes_out"] += len(msg.get("body", b""))
            await send(msg)

        async def refuse(status: int, message: str) -> None:
            if not rec["started"]:
                await _send_json(guarded_send, status, message)

        try:
            length = _content_length(scope)
            if scope.get("method") in ("GET", "HEAD") and not length:
                rec["body_done"] = True
            why = _client_headers_refusal(scope)
            header_bytes = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if header_bytes > MAX_HEADER_BYTES:
                await refuse(431, f"the request headers are over the limit of {MAX_HEADER_BYTES} bytes")
            elif why is not None:
                state.setdefault("log", {})["error"] = "key material in headers or query"
                await refuse(400, why)
            elif length == -1:
                await refuse(400, "the Content-Length header is invalid")
            elif length is not None and length > self.max_body:
                await refuse(413, _too_large(self.max_body))
            else:
                try:
                    await self.app(scope, guarded_receive, guarded_send)
                except _BodyTooLarge:
                    await refuse(413, _too_large(self.max_body))
                except _BodyTimeout:
                    state.setdefault("log", {})["error"] = "body timeout"
                    await refuse(408, f"the request body did not arrive within the time allowed "
                                      f"({cfg.idle_timeout_s:g} s without data, {cfg.body_timeout_s:g} s in all)")
                except ClientDisconnect:
                    rec["status"] = 499  # nginx's name for it: the client closed the connection first
        finally:
            line = {
                "event": "access", "request_id": rid, "client": (scope.get("client") or ("?",))[0],
                "method": clean_text(scope.get("method"), 16), "path": clean_text(scope.get("path"), 120),
                "status": rec["status"], "bytes_in": rec["bytes_in"], "bytes_out": rec["bytes_out"],
                "ms": round((time.perf_counter() - t0) * 1000, 2),
            }
            line.update(state.get("log", {}))
            access_log.info(json.dumps(line, separators=(",", ":")))


_OURS = {k for k, _ in SECURITY_HEADERS} | {b"x-request-id"}


def _content_length(scope) -> int | None:
    """The Content-Length, None if absent, -1 if malformed or given twice with different values."""
    values = {v.strip() for k, v in scope.get("headers", []) if k == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        return -1
    v = values.pop()
    return int(v) if v.isdigit() and len(v) <= 18 else -1


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


async def _send_json(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + extra})
    await send({"type": "http.response.body", "body": body})


# -- request parsing (on a worker thread) ---------------------------------------------------------

@dataclass
class SegmentRequest:
    data: bytes
    scheme_field: Any = None
    block_size: Any = None
    original_size: Any = None
    topk: Any = None
    format: Any = None


def parse_body(raw: bytes, content_type: str, query: list[tuple[str, str]], limits: Limits) -> SegmentRequest:
    """Read a multipart, JSON or raw-PNG body (and the query) into one shape; refuse keys, unknown
    fields, fields given twice, and oversized fields. Runs on a worker thread."""
    ctype = content_type.split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    for name, value in query:
        _check_field(name, value, limits, fields)
    if ctype == "multipart/form-data":
        data, form = _parse_multipart(raw, content_type, limits)
        for name, value in form:
            _check_field(name, value, limits, fields)
    elif ctype == "application/json":
        body = parse_json(raw, "the JSON body", limits.max_body_bytes)
        if not isinstance(body, dict):
            raise Refused(400, "the JSON body is an object with an `image` member")
        if any(is_key_name(k) for k in body) or has_key_member({k: v for k, v in body.items() if k != "image"}):
            raise Refused(400, KEY_REFUSAL)
        image = body.pop("image", None)
        for name, value in body.items():
            _check_field(name, value, limits, fields)
        if not isinstance(image, str):
            raise Refused(400, "`image` is the PNG as a base64 string")
        try:
            data = base64.b64decode(image, validate=True)
            # canonical form only: b64decode ignores padding after a complete quantum ("...AAAA====")
            # and non-zero tail bits, so the image must be exactly what encoding its bytes gives
            canonical = base64.b64encode(data).decode("ascii") == image
        except (binascii.Error, ValueError):
            canonical = False
        if not canonical:
            raise Refused(400, "`image` is not valid base64 (standard alphabet, canonical padding)")
    elif ctype in accepted_media_types() or ctype == "application/octet-stream":
        data = raw
    elif ctype.startswith("image/"):
        raise Refused(415, f"{ctype[:40]} is refused: only PNG and JPEG are accepted for encrypted images")
    else:
        raise Refused(415, "send multipart/form-data, application/json or an image/png or image/jpeg body")
    if "image" in fields:
        raise Refused(400, "`image` is the body (or its `image` part), not a query parameter")
    return SegmentRequest(data, fields.get("scheme"), fields.get("block_size"), fields.get("original_size"),
                          fields.get("topk"), fields.get("format"))


def _check_field(name: str, value: Any, limits: Limits, fields: dict[str, Any]) -> None:
    if is_key_name(name) or (isinstance(value, str) and looks_like_key(value)):
        raise Refused(400, KEY_REFUSAL)
    if isinstance(value, (dict, list)) and has_key_member(value):
        raise Refused(400, KEY_REFUSAL)
    if name not in FIELDS:
        raise Refused(400, f"unknown field {name[:40]!r}; accepted: {', '.join(FIELDS)}")
    if name in fields:
        raise Refused(400, f"the field `{name}` is given twice")
    if isinstance(value, str) and len(value) > limits.max_field_bytes:
        raise Refused(413, f"the field `{name}` is over the limit of {limits.max_field_bytes} bytes")
    fields[name] = value


def _parse_multipart(raw: bytes, content_type: str, limits: Limits) -> tuple[bytes, list[tuple[str, str]]]:
    """(image bytes, [(name, text value)]) of a multipart body, with bounds on parts and headers."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise Refused(400, "the multipart body has no (or an over-long) boundary")
    if b"--" + boundary + b"--" not in raw:
        raise Refused(400, "the multipart body is not terminated (no closing boundary)")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    header_field, header_value = bytearray(), bytearray()

    def begin():
        nonlocal cur
        if len(parts) >= MAX_PARTS:
            raise Refused(400, f"the multipart body has more than {MAX_PARTS} parts")
        cur = {"headers": {}, "data": bytearray()}
        parts.append(cur)

    def on_header_field(d, s, e):
        header_field.extend(d[s:e])

    def on_header_value(d, s, e):
        header_value.extend(d[s:e])

    def on_header_end():
        cur["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(d, s, e):
        cur["data"].extend(d[s:e])

    callbacks = {"on_part_begin": begin, "on_part_data": on_part_data, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end}
    try:
        parser = MultipartParser(boundary, callbacks, max_size=max(len(raw), 1))
        parser.write(raw)
        parser.finalize()
    except Refused:
        raise
    except Exception:  # noqa: BLE001 - python-multipart's errors: the client's bad body
        raise Refused(400, "the multipart body is malformed") from None
    image: bytes | None = None
    form: list[tuple[str, str]] = []
    for part in parts:
        disp, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        if disp != b"form-data" or name is None:
            raise Refused(400, "a multipart part has no form-data name")
        name = name.decode("utf-8", "replace")
        if name == "image":
            if image is not None:
                raise Refused(400, "send exactly one `image` part")
            image = bytes(part["data"])
            continue
        if b"filename" in opts:
            raise Refused(400, "only `image` may be a file part")
        try:
            form.append((name, part["data"].decode("utf-8")))
        except UnicodeDecodeError:
            raise Refused(400, f"the field {name[:40]!r} is not UTF-8 text") from None
    if image is None:
        if any(is_key_name(n) for n, _ in form):
            raise Refused(400, KEY_REFUSAL)
        raise Refused(400, "send exactly one `image` part")
    return image, form


@dataclass
class Checked:
    """A request that passed every check, with its decoded image."""

    header: ImageHeader
    image: np.ndarray
    scheme: Any
    original_size: tuple[int, int] | None
    topk: int
    fmt: str
    arrangement: str = "none"


def check_request(req: SegmentRequest, limits: Limits, block_size_default: int, patch_size: int,
                  order_free=lambda scheme: False) -> Checked:
    """Every check of a parsed request, then the bounded decode. Runs on a worker thread."""
    topk = parse_int_field(req.topk, "topk", 0, limits.max_topk, default=0)
    assert topk is not None
    fmt = req.format if req.format not in (None, "") else "png"
    if not isinstance(fmt, str) or fmt.lower() not in ("png", "json"):
        raise Refused(422, "format is png or json")
    fmt = "json" if topk else fmt.lower()  # probabilities do not fit in a label PNG
    block_size = parse_block_size(req.block_size)
    original = parse_original_size(req.original_size)
    header = read_image_header(req.data, limits)
    field = scheme_from_field(req.scheme_field, block_size, default_block_size=block_size_default,
                              max_bytes=limits.max_field_bytes)
    chunk, chunk_size, arrangement = (scheme_from_chunk(header.encseg_text, limits.max_text_bytes)
                                      if header.encseg_text is not None else (None, None, "none"))
    scheme = resolve_scheme(field, chunk, block_size)
    original = original or chunk_size
    check_geometry(scheme, header, original, patch_size)
    if arrangement != "none" and not order_free(scheme):
        raise Refused(422, f"this model is not order-free inside the pixel groups of {scheme.name}, so it cannot "
                           "segment the sorted arrangement; send the ciphertext unarranged (metadata version 1)")
    return Checked(header, decode_image(req.data, header), scheme, original, topk, fmt, arrangement)


# -- the app -----------------------------------------------------------------------------------

def create_app(segmenter: Segmenter, config: ServiceConfig = ServiceConfig()) -> FastAPI:
    """Build the app around a loaded model. The batcher is created here and closed at shutdown."""
    limits = config.limits
    info = segmenter.info
    trained = {s for s in info.schemes}

    def run_batch(group, items: list[tuple[np.ndarray, int]]) -> list[Prediction]:
        """One forward pass for the batch; each item gets exactly the top-k it asked for."""
        k = max(t for _, t in items)
        preds = segmenter.predict(np.stack([img for img, _ in items]), topk=k)
        out = []
        for p, (_, t) in zip(preds, items):
            if t and p.topk_classes is not None:
                out.append(Prediction(p.labels, p.topk_classes[:t], p.topk_probs[:t]))
            else:
                out.append(Prediction(p.labels))
        return out

    batcher = MicroBatcher(run_batch, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                           max_queue_cost=config.max_queue_pixels, max_batch_cost=max(limits.max_pixels, 1),
                           queue_timeout_s=config.queue_timeout_s)
    inflight = {"n": 0}
    busy = {"Retry-After": str(config.retry_after_s)}

    @contextmanager
    def admitted() -> Iterator[None]:
        if inflight["n"] >= config.max_inflight:
            raise Refused(503, f"the service is busy ({config.max_inflight} requests in flight); retry shortly", busy)
        inflight["n"] += 1
        try:
            yield
        finally:
            inflight["n"] -= 1

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    docs_assets = _offline_docs_assets()
    app = FastAPI(
        title="encseg segmentation service",
        version=__version__,
        description=(
            "Segments images encrypted with a per-image key the client keeps. No endpoint takes a key: a "
            "request that carries one -- in a field, a JSON member, a query parameter, a header "
            "(Authorization, X-Key, anything named like a key), a PNG text chunk, or as a value that looks "
            "like one -- is refused with 400 and the value is never echoed or logged. Errors are JSON "
            "`{\"detail\": ...}`; 503 answers carry Retry-After."
        ),
        lifespan=lifespan,
        docs_url=None if docs_assets else "/docs",
        redoc_url=None,
    )
    if docs_assets:  # Swagger UI from local files: the service needs no network, and neither do its docs
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Response:
            html = ('<!doctype html><html><head><meta charset="utf-8"><title>encseg service - API</title>'
                    '<link rel="stylesheet" href="/docs-assets/swagger-ui.css">'
                    '<link rel="icon" href="/docs-assets/favicon.png"></head><body><div id="swagger-ui"></div>'
                    '<script src="/docs-assets/swagger-ui-bundle.js"></script>'
                    '<script src="/docs/init.js"></script></body></html>')
            return Response(html, media_type="text/html")

        @app.get("/docs/init.js", include_in_schema=False)
        async def docs_init() -> Response:
            return Response(_DOCS_INIT_JS, media_type="text/javascript")

    app.state.batcher = batcher
    app.state.segmenter = segmenter
    refiner = getattr(segmenter, "refiner", None)  # PageRefiner: checked and encoded once, at start-up

    def _log_error(request: Request, message: str) -> None:
        request.scope.setdefault("state", {}).setdefault("log", {})["error"] = clean_text(message, 200)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        _log_error(request, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        message = clean_text(exc)
        _log_error(request, message)
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": clean_text(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error in %s %s", request.method, clean_text(request.url.path, 120))
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    @app.get("/healthz", tags=["service"], response_model=Health, responses=_errors(400, 431))
    async def healthz() -> Health:
        """Liveness: the process serves and the model is loaded."""
        return Health(status="ok")

    @app.get("/v1/info", response_model=Info, tags=["service"], responses=_errors(400, 431))
    async def get_info() -> Info:
        """The model, its classes and palette, the block size, the schemes it was trained for, and the
        service's limits, queue and timeouts."""
        return Info(
            service="encseg",
            format_version=FORMAT_VERSION,
            format_versions=list(FORMAT_VERSIONS),
            model=ModelDescription(name=info.name, num_classes=info.num_classes, patch_size=info.patch_size,
                                   key_mode=info.key_mode, config=info.config, trained_on=info.trained_on),
            classes=info.class_names,
            palette=info.palette,
            block_size=info.block_size,
            schemes=[s.to_dict() for s in info.schemes],
            scheme_names=[s.name for s in info.schemes],
            default_scheme=_default_scheme([s.name for s in info.schemes]),
            presets=PRESETS,
            transports=["png", "jpeg"],
            arrangements=["none", "sorted"] if any(info.order_free(s) for s in info.schemes) else ["none"],
            limits={"max_body_bytes": limits.max_body_bytes, "max_pixels": limits.max_pixels,
                    "max_side": limits.max_side, "max_topk": limits.max_topk, "max_chunks": limits.max_chunks,
                    "max_ancillary_bytes": limits.max_ancillary_bytes, "max_text_bytes": limits.max_text_bytes,
                    "max_field_bytes": limits.max_field_bytes},
            batching={"enabled": batcher.enabled, "max_batch": batcher.max_batch, "max_wait_ms": config.max_wait_ms,
                      "batches": batcher.stats.batches, "items": batcher.stats.items},
            queue={"max_queue_pixels": config.max_queue_pixels, "queue_timeout_s": config.queue_timeout_s,
                   "max_inflight": config.max_inflight, "max_connections": config.max_connections,
                   "retry_after_s": config.retry_after_s, "refused_full": batcher.stats.refused_full,
                   "timed_out": batcher.stats.timed_out},
            timeouts={"header_s": config.header_timeout_s, "body_s": config.body_timeout_s,
                      "idle_s": config.idle_timeout_s, "keepalive_s": config.keepalive_s},
            refiner=None if refiner is None else RefinerDescription(**refiner.summary),
        )

    @app.get("/v1/refiner", tags=["service"], response_model=RefinerWeights,
             responses={200: {"description": "the refiner's config and weights"}, **_errors(400, 404, 431)})
    async def get_refiner() -> Response:
        """The client's refiner shipped beside the model (encseg.models.refine.ClientRefiner): its config
        and weights, for a client that refines the decrypted label map itself (the browser page does).
        Public, like the model; it says nothing about any client."""
        if refiner is None:
            raise Refused(404, "this model ships no client refiner")
        return Response(refiner.body, media_type="application/json")

    @app.post(
        "/v1/segment",
        tags=["segment"],
        openapi_extra={"requestBody": _segment_body(limits)},
        responses={
            200: {"model": SegmentJSON,
                  "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "label map in encrypted geometry (PNG), or JSON with it and top-k probabilities",
                  "headers": {"X-Encseg-Scheme": {"schema": {"type": "string"}},
                              "X-Encseg-Trained-For-Scheme": {"schema": {"type": "string", "enum": ["true", "false"]}},
                              "X-Encseg-Classes": {"schema": {"type": "integer"}}}},
            **_errors(400, 408, 413, 415, 422, 431, 503),
        },
    )
    async def segment(request: Request) -> Response:
        """Segment one encrypted image. The answer stays in encrypted geometry: only the key holder
        can put it back (`decrypt_mask`)."""
        with admitted():
            with batcher.expecting():  # company for the batch that is on its way
                raw = await request.body()
                query = list(request.query_params.multi_items())
                req = await run_in_threadpool(parse_body, raw, request.headers.get("content-type", ""), query, limits)
                del raw
                checked = await run_in_threadpool(check_request, req, limits, info.block_size, info.patch_size,
                                                  info.order_free)
                del req
            header = checked.header
            logrec = request.scope["state"].setdefault("log", {})
            logrec.update(height=header.height, width=header.width, scheme=checked.scheme.name, topk=checked.topk,
                          transport=header.format)
            t0 = time.perf_counter()
            try:
                pred: Prediction = await batcher.submit((header.height, header.width), (checked.image, checked.topk),
                                                        cost=header.height * header.width)
            except QueueFull:
                raise Refused(503, "the inference queue is full; retry shortly", busy) from None
            except QueueTimeout:
                raise Refused(503, f"the request waited {config.queue_timeout_s:g} s for the model; retry shortly",
                              busy) from None
            logrec["infer_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            return await run_in_threadpool(_answer, checked, pred, info.num_classes, checked.scheme in trained)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(GuardMiddleware, config=config)
    return app


def _answer(checked: Checked, pred: Prediction, num_classes: int, trained: bool) -> Response:
    """The response: the label PNG (with the encseg chunk when the size is known), or JSON with top-k."""
    scheme, header = checked.scheme, checked.header
    text = metadata_text(scheme, checked.original_size, checked.arrangement) if checked.original_size else None
    png = encode_png(pred.labels, text)
    headers = {"X-Encseg-Scheme": scheme.name, "X-Encseg-Trained-For-Scheme": str(trained).lower(),
               "X-Encseg-Classes": str(num_classes)}
    if checked.fmt == "png":
        return Response(png, media_type="image/png", headers=headers)
    body = SegmentJSON(
        height=header.height, width=header.width, num_classes=num_classes, scheme=scheme.to_dict(),
        trained_for_scheme=trained, labels_png=base64.b64encode(png).decode(),
        topk=None if pred.topk_classes is None else TopK(
            k=int(pred.topk_classes.shape[0]),
            classes=base64.b64encode(pred.topk_classes.tobytes()).decode(),
            probs=base64.b64encode(pred.topk_probs.astype("<f4").tobytes()).decode(),
        ),
    )
    return JSONResponse(body.model_dump(), headers=headers)


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
    config = ServiceConfig.from_env()
    if not config.checkpoint:
        raise UserError("ENCSEG_SERVE_CHECKPOINT is not set")
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    segmenter = Segmenter.from_checkpoint(config.checkpoint, device=config.device, crop=config.crop or None)
    return create_app(segmenter, config)
