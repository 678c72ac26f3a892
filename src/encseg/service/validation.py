"""What the server accepts, checked before a pixel is decoded.

- Images: each accepted format is an `ImageFormat`: a header reader that walks the whole file and
  returns an `ImageHeader` (size, mode, text metadata) without decoding pixels, and a decoder that
  runs only on a header that passed: PNG, and JPEG (the transport of docs/encryption-format.md
  section 10, walked by `encseg.cipher.jpeg`: baseline 4:4:4 only). The PNG walk checks every chunk (exactly one IHDR, first;
  chunk order per the PNG spec; CRCs; counts and sizes) and inflates the image data with a bound,
  so a decompression bomb -- a huge IHDR, a second IHDR, trailing data -- is refused before the
  decoder sees it, and the decoder is handed a canonical IHDR + IDAT + IEND file only.
- Fields: the scheme (a field or the image's `encseg` chunk), block size, top-k, original size,
  every one parsed with a bound (length, digits, depth) and refused with a 4xx.
- Keys: no request carries a key, by field name, header, query, text chunk, or a value that looks
  like one (64 hex characters, or 32 bytes in base64).
- Messages: what a refusal says is clipped and escaped (`clean_text`), so client text is never
  reflected in full, nor control characters, nor a run of hex long enough to be a key.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from encseg.cipher import Scheme
from encseg.cipher.io import metadata_arrangement
from encseg.cipher import jpeg as _jpeg
from encseg.errors import UserError
from encseg.service.settings import Limits

__all__ = ["Limits", "Refused", "ImageHeader", "PngHeader", "ImageFormat", "FORMATS", "read_image_header",
           "decode_image", "read_png_header", "decode_png", "parse_json", "clean_text", "KEY_REFUSAL"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK_TEXT_KEYWORD = "encseg"  # the text chunk the cipher CLI writes: {"version":1,"scheme":{...},"original_size":[H,W]}
KEY_REFUSAL = ("keys stay with the client: this service never accepts a key; remove the key field "
               "and send only the encrypted image")
MAX_MESSAGE = 300  # characters of any refusal message
MAX_JSON_DEPTH = 32

# Magic numbers of formats people send by mistake, so the refusal can name them.
_OTHER_FORMATS = {
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "RIFF/WebP",
}
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


class Refused(Exception):
    """A bad request: an HTTP status (4xx, or 503 when busy) and a message a person can act on.

    The message is cleaned on construction (clipped, escaped, key-like runs redacted): it may carry
    bits of client input, and it goes both to the client and into the access log."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        message = clean_text(message)
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# -- text that came from a client ----------------------------------------------------------------

_HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")
_B64_KEY = re.compile(r"^[A-Za-z0-9+/_-]{43}=?$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def clean_text(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` made safe to echo or log: runs of 32+ hex digits redacted (a key's text form is 64),
    anything outside printable ASCII escaped (so no ANSI escape or newline gets through), clipped."""
    s = str(text)[: limit * 4]
    s = _HEX_RUN.sub("<hex redacted>", s)
    s = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def looks_like_key(value: str) -> bool:
    """A key's text form (64 hex), any run of 32+ hex digits with letters and digits in it (a long
    decimal number is not a key), or 32 bytes in base64."""
    for m in _HEX_RUN.finditer(value):
        run = m.group()
        if any(c.isdigit() for c in run) and any(c.isalpha() for c in run):
            return True
    return bool(_B64_KEY.match(value.strip()))


_KEY_WORDS = ("key", "secret", "passw", "token", "auth")


def is_key_name(name: str) -> bool:
    """`key`, `Key`, `key_hex`, `secret`, `X-Api-Key`, `Authorization`, ...: a name that speaks of a key."""
    n = name.lower()
    return any(w in n for w in _KEY_WORDS)


def has_key_member(obj: object) -> bool:
    """Whether a decoded JSON value has a member named like a key, or a string that looks like one."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if any(isinstance(k, str) and (is_key_name(k) or looks_like_key(k)) for k in x):
                return True
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str) and looks_like_key(x):
            return True
    return False


# -- bounded JSON ------------------------------------------------------------------------------

class _BadJSON(ValueError):
    pass


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise _BadJSON("a number with more than 18 digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 40:
        raise _BadJSON("a number longer than 40 characters")
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON("a number out of range")
    return value


def _constant(text: str) -> Any:
    raise _BadJSON(f"{text} is not JSON")


MAX_JSON_MEMBERS = 256  # per object: a request has 6 fields, a scheme descriptor 3, a step 2


def _object(pairs: list[tuple[str, Any]]) -> dict:
    if len(pairs) > MAX_JSON_MEMBERS:
        raise _BadJSON(f"an object with more than {MAX_JSON_MEMBERS} members")
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _BadJSON("a member name appears twice")
    return d


def parse_json(text: str | bytes, what: str, max_bytes: int, status: int = 400) -> Any:
    """Parse client JSON with bounds: size, 18-digit integers, finite floats, no NaN, no duplicate
    names, nesting depth; every failure is `Refused(status)`, never an uncaught error."""
    if len(text) > max_bytes:
        raise Refused(413 if status == 400 else status, f"{what} is over the limit of {max_bytes} bytes")
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object)
    except _BadJSON as exc:
        raise Refused(status, f"{what} is refused: {exc}") from None
    except (ValueError, RecursionError, TypeError):  # JSONDecodeError, UnicodeDecodeError
        raise Refused(status, f"{what} is not valid JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise Refused(status, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return deepest


# -- images ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageHeader:
    """The facts read from an image file without decoding any pixel: what the decoder will produce,
    and the `encseg` text metadata if the file carries it. `payload` is what the decoder reads."""

    format: str
    width: int
    height: int
    bit_depth: int
    color_type: int
    encseg_text: str | None
    payload: bytes = field(default=b"", repr=False)


PngHeader = ImageHeader  # the name the service used when PNG was the only format


@dataclass(frozen=True)
class ImageFormat:
    """One accepted image format: how to recognise it, check it whole, and decode it."""

    name: str
    magic: tuple[bytes, ...]
    media_types: tuple[str, ...]
    read_header: Callable[[bytes, Limits], ImageHeader]
    decode: Callable[[bytes, ImageHeader], np.ndarray]


def accepted_media_types() -> tuple[str, ...]:
    return tuple(t for f in FORMATS for t in f.media_types)


def read_image_header(data: bytes, limits: Limits) -> ImageHeader:
    """Recognise the format by its magic number and run its header check; refuse any other file."""
    if not data:
        raise Refused(400, "the image is empty (0 bytes)")
    for fmt in FORMATS:
        if data.startswith(fmt.magic):
            return fmt.read_header(data, limits)
    names = "/".join(f.name.upper() for f in FORMATS)
    for magic, name in _OTHER_FORMATS.items():
        if data.startswith(magic):
            why = " (lossy compression would destroy the block structure the model reads)" if name == "JPEG" else ""
            raise Refused(415, f"{name} is refused{why}: send the encrypted image as {names}")
    raise Refused(415, f"the image is not a {names}: only {names} is accepted for encrypted images")


def decode_image(data: bytes, header: ImageHeader) -> np.ndarray:
    """Decode an image whose header passed `read_image_header`, with that format's decoder."""
    for fmt in FORMATS:
        if fmt.name == header.format:
            return fmt.decode(data, header)
    raise Refused(415, f"no decoder for {header.format}")


# -- PNG --------------------------------------------------------------------------------------

# Ancillary chunks with a place in the order (PNG spec, 3rd edition, table 7). Text, time and
# unknown ancillary chunks may appear anywhere between IHDR and IEND.
_BEFORE_PLTE = {b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI"}
_AFTER_PLTE = {b"bKGD", b"hIST", b"tRNS"}
_BEFORE_IDAT = _BEFORE_PLTE | _AFTER_PLTE | {b"pHYs", b"sPLT", b"eXIf"}
_MANY = {b"sPLT", b"tEXt", b"zTXt", b"iTXt"}
_TEXT = {b"tEXt", b"zTXt", b"iTXt"}
_APNG = {b"acTL", b"fcTL", b"fdAT"}


def _bad(message: str, status: int = 400) -> Refused:
    return Refused(status, "the PNG " + message)


def read_png_header(data: bytes, limits: Limits) -> ImageHeader:
    """Walk every chunk of a PNG and check it before decoding; returns the header with a canonical
    IHDR + IDAT + IEND file as payload. Refuses non-PNG bodies, odd modes, too many pixels, broken or
    misplaced chunks, limits exceeded, key-like text, and image data that inflates to more (or less)
    than the header says."""
    if not data:
        raise Refused(400, "the image is empty (0 bytes)")
    if not data.startswith(PNG_SIGNATURE):
        return read_image_header(data, limits)  # names the format, or refuses as not-a-PNG
    pos, n = len(PNG_SIGNATURE), len(data)
    ihdr: tuple | None = None
    seen: set[bytes] = set()
    idat: list[memoryview] = []
    idat_done = False
    texts: list[tuple[str, str]] = []
    text_budget = limits.max_text_bytes
    view = memoryview(data)
    count = 0
    while True:
        if pos == n:
            raise _bad("is truncated (no IEND chunk)")
        count += 1
        if count > limits.max_chunks:
            raise _bad(f"has more than {limits.max_chunks} chunks")
        if pos + 12 > n:
            raise _bad("is truncated (a chunk header is cut off)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if length > 2**31 - 1 or end > n:
            raise _bad("is truncated (a chunk runs past the end of the body)")
        if not all(65 <= c <= 90 or 97 <= c <= 122 for c in ctype):
            raise _bad("has a chunk with an invalid type (not four ASCII letters)")
        name = ctype.decode("ascii")
        body = view[pos + 8 : pos + 8 + length]
        if zlib.crc32(view[pos + 4 : pos + 8 + length]) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise _bad(f"chunk {name} is corrupt (CRC mismatch)")
        critical = ctype[0] < 97  # upper-case first letter
        if count == 1:
            if ctype != b"IHDR" or length != 13:
                raise _bad("does not start with a valid IHDR chunk")
            ihdr = struct.unpack(">IIBBBBB", body)
            _check_ihdr(ihdr, limits)
        elif ctype == b"IHDR":
            raise _bad("has a second IHDR chunk (one header per image)")
        elif ctype == b"IDAT":
            if idat_done:
                raise _bad("has IDAT chunks that are not consecutive")
            idat.append(body)
        elif ctype == b"IEND":
            if length:
                raise _bad("has a non-empty IEND chunk")
            if end != n:
                raise _bad(f"has {n - end} bytes after its IEND chunk")
            break
        else:
            if idat:
                idat_done = True
            if ctype in seen and ctype not in _MANY:
                raise _bad(f"has chunk {name} twice")
            if ctype == b"PLTE":
                if idat or ihdr[3] not in (2, 3, 6):  # type: ignore[index]
                    raise _bad("has a misplaced PLTE chunk")
                if seen & _AFTER_PLTE:
                    raise _bad("has bKGD, hIST or tRNS before PLTE")
            elif critical:
                raise _bad(f"has an unknown critical chunk {name}")
            elif ctype in _APNG:
                raise _bad("is animated (APNG); send a single still image", status=415)
            else:
                if length > limits.max_ancillary_bytes:
                    raise _bad(f"chunk {name} is {length} bytes, over the limit of {limits.max_ancillary_bytes}", 413)
                if ctype in _BEFORE_IDAT and idat:
                    raise _bad(f"has chunk {name} after the image data (it must come before IDAT)")
                if ctype in _BEFORE_PLTE and b"PLTE" in seen:
                    raise _bad(f"has chunk {name} after PLTE (it must come before)")
                if ctype == b"tRNS":
                    raise Refused(422, "the PNG has a transparency chunk (tRNS); encrypted images are opaque RGB")
                if ctype in (b"sRGB", b"iCCP") and ({b"sRGB", b"iCCP"} - {ctype}) & seen:
                    raise _bad("has both sRGB and iCCP chunks")
                if ctype in _TEXT:
                    keyword, text = _text_chunk(ctype, bytes(body), text_budget)
                    text_budget -= len(text)
                    texts.append((keyword, text))
            seen.add(ctype)
        pos = end
    if not idat:
        raise _bad("has no image data (no IDAT chunk)")
    width, height, depth, color_type, *_ = ihdr  # type: ignore[misc]
    _inflate_exactly(idat, _raw_size(width, height, depth, color_type, ihdr[6]))  # type: ignore[index]
    encseg = _encseg_text(texts)
    canonical = (PNG_SIGNATURE + data[8:33] + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b""))
    return ImageHeader("png", width, height, depth, color_type, encseg, canonical)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _check_ihdr(header: tuple, limits: Limits) -> None:
    width, height, depth, color_type, compression, filt, interlace = header
    if width == 0 or height == 0:
        raise Refused(400, f"the PNG is empty ({height}x{width} pixels)")
    if width > 2**31 - 1 or height > 2**31 - 1:
        raise Refused(400, "the PNG header is invalid (a side over 2^31 - 1)")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise Refused(
            413,
            f"the image is {height}x{width} = {width * height} pixels; this server accepts at most "
            f"{limits.max_pixels} pixels and {limits.max_side} per side (refused before decoding)",
        )
    if color_type not in _COLOR_TYPES or compression != 0 or filt != 0 or interlace > 1:
        raise Refused(400, "the PNG header is invalid (unknown colour type, compression, filter or interlace)")
    if depth not in {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8)}.get(color_type, (8, 16)):
        raise Refused(400, f"the PNG header is invalid (bit depth {depth} with colour type {color_type})")
    if depth != 8 or color_type not in (2, 6):
        desc = f"{depth}-bit {_COLOR_TYPES[color_type]}"
        raise Refused(415, f"the PNG is {desc}; encrypted images are 8-bit RGB (or opaque RGBA)")


def _raw_size(width: int, height: int, depth: int, color_type: int, interlace: int) -> int:
    """Bytes of filtered scanlines the IDAT stream must inflate to (PNG spec, sections 7-8)."""
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = lambda w: 0 if w == 0 else 1 + (w * bits + 7) // 8  # noqa: E731
    if not interlace:
        return height * row(width)
    total = 0
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * row(w)
    return total


def _inflate_exactly(parts: list[memoryview], expected: int) -> None:
    """Inflate the IDAT stream with a bound: it must give exactly `expected` bytes, then end."""
    d = zlib.decompressobj()
    got = 0
    try:
        for part in parts:
            data = bytes(part)
            while data:
                out = d.decompress(data, expected - got + 1)
                got += len(out)
                if got > expected:
                    raise _bad("image data inflates to more bytes than its header allows (refused before decoding)")
                data = d.unconsumed_tail
                if d.eof:
                    break
        got += len(d.flush(expected - got + 1))
    except zlib.error:
        raise _bad("image data is not a valid zlib stream") from None
    if got > expected:
        raise _bad("image data inflates to more bytes than its header allows (refused before decoding)")
    if not d.eof or got < expected:
        raise _bad("image data is truncated (fewer rows than its header says)")
    if d.unused_data:
        raise _bad("image data has bytes after the end of its zlib stream")


def _text_chunk(ctype: bytes, body: bytes, budget: int) -> tuple[str, str]:
    """(keyword, text) of a tEXt/zTXt/iTXt chunk, inflating with a bound; refuses key-like names/values."""
    keyword, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(keyword) <= 79:
        raise _bad("has a text chunk with an invalid keyword")
    name = keyword.decode("latin-1")
    if is_key_name(name):
        raise Refused(400, KEY_REFUSAL)
    try:
        if ctype == b"tEXt":
            text = rest.decode("latin-1")
        elif ctype == b"zTXt":
            if not rest or rest[0] != 0:
                raise _bad("has a zTXt chunk with an unknown compression method")
            text = _inflate_text(rest[1:], budget).decode("latin-1")
        else:  # iTXt: flag, method, language\0, translated keyword\0, text
            if len(rest) < 2 or rest[0] not in (0, 1) or rest[1] != 0:
                raise _bad("has an iTXt chunk with an invalid header")
            _, _, tail = rest[2:].partition(b"\x00")
            _, _, raw = tail.partition(b"\x00")
            text = (_inflate_text(raw, budget) if rest[0] else raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("has a text chunk that is not valid text") from None
    if len(text) > budget:
        raise _bad("text chunks are over the limit of text per image", 413)
    if looks_like_key(text):
        raise Refused(400, KEY_REFUSAL)
    return name, text


def _inflate_text(data: bytes, budget: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, budget + 1)
    except zlib.error:
        raise _bad("has a compressed text chunk that is not valid zlib") from None
    if len(out) > budget or d.unconsumed_tail:
        raise _bad("text chunks are over the limit of text per image", 413)
    return out


def _encseg_text(texts: list[tuple[str, str]]) -> str | None:
    found = [t for k, t in texts if k == CHUNK_TEXT_KEYWORD]
    if len(found) > 1:
        raise _bad("carries two encseg chunks")
    return found[0] if found else None


def decode_png(data: bytes, header: ImageHeader) -> np.ndarray:
    """Decode a PNG that passed `read_png_header` to uint8 HxWx3. Pillow reads only the canonical
    IHDR + IDAT + IEND file the header check built (not the client's chunks), whose image data was
    already inflated with a bound; anything it cannot read is the client's bad body, a 400."""
    payload = header.payload or data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload), formats=["PNG"]) as im:
                if im.size != (header.width, header.height) or im.mode not in ("RGB", "RGBA"):
                    raise Refused(415, f"the PNG decodes as {im.mode} {im.size}; expected 8-bit RGB")
                im.load()
                arr = np.asarray(im)
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is the client's bad body, not a 500
        raise Refused(400, f"the PNG could not be decoded ({type(exc).__name__})") from None
    if arr.shape[2] == 4:
        if (arr[..., 3] != 255).any():
            raise Refused(422, "the image has transparent pixels; encrypted images are opaque RGB")
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


PNG = ImageFormat("png", (PNG_SIGNATURE,), ("image/png",), read_png_header, decode_png)


# -- JPEG (docs/encryption-format.md section 10: baseline, 4:4:4, block size a multiple of 8) ------

def read_jpeg_header(data: bytes, limits: Limits) -> ImageHeader:
    """Walk every marker segment of a JPEG ciphertext (`encseg.cipher.jpeg`) with the server's pixel
    limits, before decoding; the payload is the canonical file rebuilt from the checked segments."""
    try:
        h = _jpeg.read_jpeg_header(data, max_pixels=limits.max_pixels, max_side=limits.max_side)
    except _jpeg.JpegRefused as exc:
        raise Refused(exc.status, str(exc)) from None
    if h.encseg_text is not None and looks_like_key(h.encseg_text):
        raise Refused(400, KEY_REFUSAL)
    return ImageHeader("jpeg", h.width, h.height, 8, 2, h.encseg_text, h.payload)


def decode_jpeg(data: bytes, header: ImageHeader) -> np.ndarray:
    """Decode the canonical JPEG `read_jpeg_header` built to uint8 HxWx3."""
    try:
        return _jpeg.decode_jpeg(data, header)  # reads header.payload, checks header.width/height
    except _jpeg.JpegRefused as exc:
        raise Refused(exc.status, str(exc)) from None


JPEG = ImageFormat("jpeg", (_jpeg.JPEG_MAGIC,), ("image/jpeg",), read_jpeg_header, decode_jpeg)
FORMATS: list[ImageFormat] = [PNG, JPEG]


# -- fields -------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,6}")
_SIZE = re.compile(r"([0-9]{1,6})[xX]([0-9]{1,6})")
_SCHEME_NAME = re.compile(r"[A-Za-z0-9-]{0,64}")


def parse_int_field(value: Any, name: str, low: int, high: int, default: int | None = None) -> int | None:
    """An integer field: a JSON integer, or ASCII digits in a form/query field; refused otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise Refused(422, f"{name} must be an integer between {low} and {high}")
    if not low <= number <= high:
        raise Refused(422, f"{name} must be between {low} and {high}")
    return number


def parse_original_size(value: Any) -> tuple[int, int] | None:
    """HxW (a string) or [H, W] (JSON integers), both positive."""
    if value is None or value == "":
        return None
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m:
        h, w = int(m.group(1)), int(m.group(2))
    elif (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**6 for v in value)):
        h, w = value
    else:
        raise Refused(422, "original_size is HxW (e.g. 1024x2048) or [H, W]")
    if h <= 0 or w <= 0:
        raise Refused(422, "original_size must be positive")
    return h, w


def _user_error(exc: UserError) -> Refused:
    return Refused(422, str(exc))


def parse_block_size(value: object) -> int | None:
    """block_size, validated whether or not a scheme field comes with it."""
    return parse_int_field(value, "block_size", 1, 256)


def scheme_from_field(value: object, block_size: int | None = None, default_block_size: int = 16,
                      max_bytes: int = 4096) -> Scheme | None:
    """A scheme given as a preset/code name (with optional block_size) or as a JSON descriptor."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = parse_json(value, "the scheme descriptor", max_bytes, status=422)
        if isinstance(value, dict):
            scheme = Scheme.from_dict(value)
        elif isinstance(value, str):
            if not _SCHEME_NAME.fullmatch(value):  # no surrounding whitespace or control characters
                raise Refused(422, "the scheme field is not a scheme name (letters, digits and '-') or a JSON descriptor")
            scheme = Scheme.parse(value, block_size=block_size or default_block_size)
        else:
            raise Refused(422, "scheme is a name such as 'bs-np-cs' or a JSON descriptor object")
    except UserError as exc:
        raise _user_error(exc) from None
    except Refused:
        raise
    except Exception:  # noqa: BLE001 - odd values (unicode digits, wrong types) are still the client's
        raise Refused(422, "the scheme field is not a valid scheme name or descriptor") from None
    if block_size is not None and scheme.block_size != block_size:
        raise Refused(422, f"block_size {block_size} disagrees with the scheme descriptor's block size {scheme.block_size}")
    return scheme


def scheme_from_chunk(text: str, max_bytes: int = 64 * 1024) -> tuple[Scheme, tuple[int, int] | None, str]:
    """The scheme, original size and arrangement (none, or sorted: format v3) from an `encseg` text
    chunk, parsed with bounds."""
    meta = parse_json(text, "the PNG's encseg chunk", max_bytes, status=422)
    if not isinstance(meta, dict) or "scheme" not in meta:
        raise Refused(422, 'the PNG\'s encseg chunk is not {"version": 1, "scheme": {...}, "original_size": [H, W]}')
    if has_key_member(meta):
        raise Refused(400, KEY_REFUSAL)
    if set(meta) - {"version", "scheme", "original_size", "arrangement"}:
        raise Refused(422, "the PNG's encseg chunk has members other than version, scheme, original_size and arrangement")
    try:
        scheme = Scheme.from_dict(meta["scheme"])
    except UserError as exc:
        raise _user_error(exc) from None
    except Exception:  # noqa: BLE001
        raise Refused(422, "the scheme in the PNG's encseg chunk is not a valid descriptor") from None
    try:
        arrangement = metadata_arrangement(meta, scheme)  # the reader's own rules (section 13.4)
    except UserError as exc:
        raise _user_error(exc) from None
    size = meta.get("original_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise Refused(422, "original_size in the PNG's encseg chunk is not [H, W] of positive integers")
        size = (size[0], size[1])
    return scheme, size, arrangement


def resolve_scheme(field: Scheme | None, chunk: Scheme | None, block_size: int | None = None) -> Scheme:
    """The field and the chunk must agree when both are present; one of them must be; a block_size
    given on its own must agree with the scheme it goes with."""
    if field is None and chunk is None:
        raise Refused(422, "no scheme: send a `scheme` field (e.g. 'bs-np-cs') or a PNG carrying the encseg chunk")
    if field is not None and chunk is not None and field != chunk:
        raise Refused(422, f"the scheme field ({field.name}) disagrees with the PNG's encseg chunk ({chunk.name})")
    scheme = field or chunk
    assert scheme is not None
    if block_size is not None and scheme.block_size != block_size:
        raise Refused(422, f"block_size {block_size} disagrees with the scheme's block size {scheme.block_size}")
    return scheme


def check_geometry(scheme: Scheme, header: ImageHeader, original_size: tuple[int, int] | None, patch_size: int) -> None:
    """Sides must be multiples of the scheme's block size (the client pads) and of the model's patch size."""
    h, w = header.height, header.width
    p = scheme.block_size
    if h % p or w % p:
        raise Refused(
            422,
            f"the image is {h}x{w}, not a multiple of the scheme's block size {p}: "
            "pad (edge replicate) to whole blocks before encrypting",
        )
    if h % patch_size or w % patch_size:
        raise Refused(422, f"the image is {h}x{w}; this model needs sides that are multiples of {patch_size}")
    if header.format == "jpeg":
        try:
            _jpeg.check_block_size(p)  # JPEG's 8x8 DCT grid must not cross a cipher block edge
        except _jpeg.JpegRefused as exc:
            raise Refused(exc.status, str(exc)) from None
    if original_size is not None:
        oh, ow = original_size
        if not (oh <= h < oh + p and ow <= w < ow + p):
            raise Refused(422, f"original_size {oh}x{ow} does not fit the {h}x{w} image")
