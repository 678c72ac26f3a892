"""The Python client: for each image a fresh key, encrypt, ask a backend (a server over HTTP, or a
model in this process) for the label map in encrypted geometry, undo the geometry, drop the key.
The ciphertext travels as PNG (lossless) or JPEG (`transport="jpeg"`: the label map still decrypts
exactly, docs/encryption-format.md section 10). A JPEG of a pixel-shuffled scheme travels in the
sorted arrangement (section 13: each block's pixels sorted, a fraction of the bytes, docs/benchmarks.md);
the label map comes back in that arrangement and is moved to encrypted geometry here, from the
ciphertext the client still holds, before the key undoes the rest."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Protocol

import httpx
import numpy as np
from PIL import Image

from encseg.cipher import DEFAULT_SCHEME, EncryptedImage, Key, Scheme, decrypt_mask, encrypt
from encseg.cipher.arrange import ARRANGEMENTS, SORTED, arrange, restore_labels, transport_arrangement
from encseg.cipher.io import check_transport, encode_encrypted
from encseg.cipher.jpeg import DEFAULT_QUALITY, check_quality, jpeg_roundtrip
from encseg.errors import UserError
from encseg.service.segmenter import Segmenter

RETRY_STATUS = (502, 503, 504)


class Backend(Protocol):
    """Something that segments an encrypted image and never sees its key."""

    def info(self) -> dict: ...

    def segment(self, enc: EncryptedImage) -> np.ndarray: ...

    def arrangement_for(self, scheme: Scheme) -> str: ...


@dataclass
class SegmentResult:
    """One image's outcome. `key` is the per-image key: the caller drops it (or saves it 0600)."""

    mask: np.ndarray  # uint8 HxW labels in the image's own geometry
    overlay: np.ndarray  # uint8 HxWx3
    encrypted: EncryptedImage  # what the server saw
    key: Key
    encrypted_labels: np.ndarray  # uint8 labels in encrypted geometry (the server's answer, its arrangement undone)
    server_mask: np.ndarray | None = None  # with a refiner: the decrypted server answer before it (mask is after)

    def __repr__(self) -> str:
        return f"SegmentResult(mask={self.mask.shape}, encrypted={self.encrypted!r}, key=<secret>)"


def default_scheme(info: dict) -> Scheme:
    """The first scheme the model was trained for (the default preset if the server names none)."""
    try:
        schemes = info.get("schemes") or []
        if isinstance(schemes, list) and schemes:
            return Scheme.from_dict(schemes[0])
        return Scheme.parse(DEFAULT_SCHEME, int(info.get("block_size", 16)))
    except UserError as exc:
        raise UserError(f"the server describes its scheme in a way this client cannot read: {printable(exc)}") from None
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise UserError("the server's /v1/info does not describe a scheme this client can read") from None


def palette_of(info: dict) -> list:
    """The palette from /v1/info, or [] (masks then stay uncoloured) if it is not a list of RGB triples."""
    pal = info.get("palette")
    ok = (isinstance(pal, list) and len(pal) <= 256
          and all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in pal))
    return pal if ok else []


def colour_overlay(img: np.ndarray, mask: np.ndarray, palette: list | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colour of each label over the image; labels outside the palette stay uncoloured."""
    lut = np.zeros((256, 3), np.float32)
    pal = np.asarray(palette, np.float32).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    known = (mask < len(pal))[..., None]
    mixed = (1 - alpha) * img.astype(np.float32) + alpha * lut[mask]
    return np.where(known, mixed, img).round().clip(0, 255).astype(np.uint8)


def segment_image(img: np.ndarray, backend: Backend, scheme: Scheme, palette, key: Key | None = None,
                  refiner=None) -> SegmentResult:  # fmt: skip
    """Encrypt `img` under a fresh key (or the given one), segment it remotely, decrypt the label map;
    with `refiner` (encseg.models.refine), refine the decrypted map here on the client."""
    key = key or Key.generate()
    enc = encrypt(img, key, scheme)
    labels = backend.segment(enc)
    if labels.shape != enc.data.shape[:2]:
        raise UserError(f"the backend answered a {labels.shape} label map for a {enc.data.shape[:2]} image")
    mask = np.ascontiguousarray(decrypt_mask(labels, key, scheme, enc.original_size))
    server_mask = None
    if refiner is not None:
        server_mask, mask = mask, refiner.refine(mask)
    return SegmentResult(mask, colour_overlay(img, mask, palette), enc, key, labels, server_mask)


class HttpBackend:
    """POSTs encrypted images (PNG, or JPEG at `quality` with transport="jpeg") to a server; retries
    connection errors and 502/503/504 with backoff."""

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 4, backoff: float = 0.5,
                 transport: str = "png", quality: int = DEFAULT_QUALITY, arrangement: str = "auto") -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self.transport, self.quality = _transport(transport), check_quality(quality)
        self.arrangement = _arrangement(arrangement)
        self.client = httpx.Client(timeout=timeout)
        self._server_arrangements: list | None = None  # from /v1/info

    def arrangement_for(self, scheme: Scheme) -> str:
        """How `scheme`'s ciphertexts travel to this server: `auto` sorts a pixel-shuffled JPEG only
        when the server lists the sorted arrangement (older servers get the shuffled order)."""
        chosen = transport_arrangement(scheme, self.transport, self.arrangement)
        if chosen == "none":  # nothing to ask the server
            return chosen
        if self._server_arrangements is None:
            self.info()
        offered = self._server_arrangements or ["none"]
        if self.arrangement == "auto":
            return chosen if chosen in offered else "none"
        if chosen not in offered:
            raise UserError(f"the server does not accept the {chosen} arrangement for its model; use --arrangement none")
        return chosen

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, self.url + path, **kw)
            except (httpx.TransportError,) as exc:
                if attempt == self.retries:
                    raise UserError(f"cannot reach {self.url} after {attempt + 1} tries ({type(exc).__name__})") from None
            else:
                if r.status_code not in RETRY_STATUS or attempt == self.retries:
                    return r
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _refusal(r: httpx.Response) -> UserError:
        """One line, whatever the server sent: its `detail` if the body is a JSON object with one,
        else a clipped prefix of the text; control characters (ANSI escapes) never reach the terminal."""
        detail: object = None
        try:
            body = r.json()
            if isinstance(body, dict):
                detail = body.get("detail")
        except (ValueError, UnicodeDecodeError):
            pass
        if not isinstance(detail, str) or not detail:
            detail = r.content[:200].decode("utf-8", "replace") or "(no message)"
        return UserError(f"the server refused the request (HTTP {r.status_code}): {printable(detail)}")

    def info(self) -> dict:
        r = self._request("GET", "/v1/info")
        if r.status_code != 200:
            raise self._refusal(r)
        try:
            body = r.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise UserError(f"{self.url} is not an encseg server (GET /v1/info did not answer a JSON object)")
        offered = body.get("arrangements")
        self._server_arrangements = [a for a in offered if a in ARRANGEMENTS] if isinstance(offered, list) else ["none"]
        return body

    def segment(self, enc: EncryptedImage) -> np.ndarray:
        arrangement = self.arrangement_for(enc.scheme)
        body = encode_encrypted(enc, self.transport, self.quality, arrangement)
        name, mime = ("encrypted.jpg", "image/jpeg") if self.transport == "jpeg" else ("encrypted.png", "image/png")
        r = self._request("POST", "/v1/segment", files={"image": (name, body, mime)},
                          data={"scheme": enc.scheme.to_json()})
        if r.status_code != 200:
            raise self._refusal(r)
        labels = read_label_answer(r.content, enc.data.shape[:2])
        return restore_labels(labels, enc.data, enc.scheme) if arrangement == SORTED else labels

    def close(self) -> None:
        self.client.close()


def printable(text: object, limit: int = 300) -> str:
    """Server text made safe for a terminal: one line, printable characters only, clipped."""
    s = "".join(c if c.isprintable() else " " for c in str(text)[: limit * 2])
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def read_label_answer(content: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The label map of a 200 answer: an 8-bit single-channel PNG of the image's size, or a UserError."""
    if not content.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UserError("the server answered 200 but not with a PNG label map")
    try:
        with Image.open(io.BytesIO(content), formats=["PNG"]) as im:
            if im.mode not in ("L", "P") or im.size[0] * im.size[1] > shape[0] * shape[1] * 4:
                raise UserError(f"the server answered a {im.mode} {im.size[0]}x{im.size[1]} image, not a label map")
            labels = np.asarray(im, dtype=np.uint8).copy()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken answer is the server's fault, said in one line
        raise UserError(f"the server's label map PNG is unreadable ({type(exc).__name__})") from None
    if labels.shape != tuple(shape):
        raise UserError(f"the server answered a {labels.shape[0]}x{labels.shape[1]} label map for a "
                        f"{shape[0]}x{shape[1]} image")
    return labels


class LocalBackend:
    """The same round trip with the model in this process (no server, no network); with
    transport="jpeg" the model sees what a server would decode from the JPEG."""

    def __init__(self, segmenter: Segmenter, transport: str = "png", quality: int = DEFAULT_QUALITY,
                 arrangement: str = "auto") -> None:
        self.segmenter = segmenter
        self.transport, self.quality = _transport(transport), check_quality(quality)
        self.arrangement = _arrangement(arrangement)

    def arrangement_for(self, scheme: Scheme) -> str:
        """As `HttpBackend.arrangement_for`, with the model's own invariances in place of /v1/info."""
        chosen = transport_arrangement(scheme, self.transport, self.arrangement)
        if chosen == SORTED and not self.segmenter.info.order_free(scheme):
            if self.arrangement == "auto":
                return "none"
            raise UserError(f"this model is not order-free inside {scheme.name}'s pixel groups; use --arrangement none")
        return chosen

    def info(self) -> dict:
        i = self.segmenter.info
        return {"schemes": [s.to_dict() for s in i.schemes], "classes": i.class_names, "palette": i.palette,
                "block_size": i.block_size}

    def segment(self, enc: EncryptedImage) -> np.ndarray:
        h, w = enc.data.shape[:2]
        p = self.segmenter.info.patch_size
        if h % p or w % p:
            raise UserError(f"the encrypted image is {h}x{w}; this model needs multiples of {p} (use block size {p})")
        check_transport(enc.scheme, self.transport)
        arrangement = self.arrangement_for(enc.scheme)
        data = arrange(enc.data, enc.scheme) if arrangement == SORTED else enc.data
        data = jpeg_roundtrip(data, self.quality) if self.transport == "jpeg" else data
        labels = self.segmenter.predict(data[None])[0].labels
        return restore_labels(labels, enc.data, enc.scheme) if arrangement == SORTED else labels

    def close(self) -> None:
        pass


def _arrangement(name: str) -> str:
    if name not in ("auto",) + ARRANGEMENTS:
        raise UserError(f"the arrangement is auto, none or sorted (got {name!r})")
    return name


def _transport(name: str) -> str:
    fmt = {"jpg": "jpeg"}.get(str(name).lower(), str(name).lower())
    if fmt not in ("png", "jpeg"):
        raise UserError(f"the transport format is png or jpeg (got {name!r})")
    return fmt
