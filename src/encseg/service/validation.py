"""What the server accepts, checked before a pixel is decoded: PNG structure and size limits (so a
decompression bomb is refused from its 33-byte header), the scheme (from a field or the image's
`encseg` chunk), and the rule that no request carries a key."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from encseg.cipher import Scheme
from encseg.cipher.jpeg import JpegHeader, JpegRefused, check_block_size, decode_jpeg, is_jpeg, read_jpeg_header
from encseg.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK_TEXT_KEYWORD = "encseg"  # the tEXt chunk the cipher CLI writes: {"version":1,"scheme":{...},"original_size":[H,W]}
MAX_CHUNKS = 65536  # libpng writes 8 KiB IDATs: 32 MiB of them is 4096 chunks
KEY_REFUSAL = "keys stay with the client: this service never accepts a key; remove the key field and send only the encrypted image"

# Magic numbers of formats people send by mistake, so the refusal can name them.
_OTHER_FORMATS = {
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


class Refused(Exception):
    """A bad request: an HTTP status (4xx) and a message a person can act on. Never holds image bytes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """Request limits; all of them are part of the API contract (GET /v1/info reports them)."""

    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 2048 * 2048
    max_side: int = 8192
    max_topk: int = 5


@dataclass(frozen=True)
class PngHeader:
    """The facts read from a PNG's chunks without decompressing any pixel data."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    encseg_text: str | None  # the `encseg` tEXt chunk, if the image carries one


def _describe_mode(bit_depth: int, color_type: int) -> str:
    return f"{bit_depth}-bit {_COLOR_TYPES.get(color_type, f'colour type {color_type}')}"


def read_png_header(data: bytes, limits: Limits) -> PngHeader:
    """Check signature, IHDR and chunk framing; refuse non-PNG, odd modes and too many pixels."""
    if not data:
        raise Refused(400, "the image is empty (0 bytes)")
    if not data.startswith(PNG_SIGNATURE):
        for magic, name in _OTHER_FORMATS.items():
            if data.startswith(magic):
                why = " (lossy compression would destroy the block structure the model reads)" if name == "JPEG" else ""
                raise Refused(415, f"{name} is refused{why}: send the encrypted image as PNG")
        raise Refused(415, "the image is not a PNG: only PNG is accepted for encrypted images")
    pos, n = len(PNG_SIGNATURE), len(data)
    header: tuple | None = None
    text: str | None = None
    seen_idat = seen_iend = False
    for count in range(MAX_CHUNKS + 1):
        if pos == n:
            break
        if count == MAX_CHUNKS:
            raise Refused(400, f"the PNG has more than {MAX_CHUNKS} chunks")
        if pos + 8 > n:
            raise Refused(400, "the PNG is truncated (a chunk header is cut off)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if length > 2**31 - 1 or end > n:
            raise Refused(400, "the PNG is truncated (a chunk runs past the end of the body)")
        body = data[pos + 8 : pos + 8 + length]
        if count == 0:
            if ctype != b"IHDR" or length != 13:
                raise Refused(400, "the PNG does not start with a valid IHDR chunk")
            if zlib.crc32(ctype + body) != struct.unpack(">I", data[end - 4 : end])[0]:
                raise Refused(400, "the PNG header chunk is corrupt (CRC mismatch)")
            header = struct.unpack(">IIBBBBB", body)
            _check_ihdr(header, limits)
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"IEND":
            seen_iend = True
            break
        elif ctype == b"tEXt" and body.startswith(CHUNK_TEXT_KEYWORD.encode() + b"\x00"):
            if text is not None:
                raise Refused(400, "the PNG carries two encseg chunks")
            if zlib.crc32(ctype + body) != struct.unpack(">I", data[end - 4 : end])[0]:
                raise Refused(400, "the PNG's encseg chunk is corrupt (CRC mismatch)")
            text = body[len(CHUNK_TEXT_KEYWORD) + 1 :].decode("latin-1")
        pos = end
    if header is None:
        raise Refused(400, "the PNG has no header chunk")
    if not seen_idat:
        raise Refused(400, "the PNG has no image data (no IDAT chunk)")
    if not seen_iend:
        raise Refused(400, "the PNG is truncated (no IEND chunk)")
    width, height, depth, ctype_, *_ = header
    return PngHeader(width, height, depth, ctype_, text)


def _check_ihdr(header: tuple, limits: Limits) -> None:
    width, height, depth, color_type, compression, filt, interlace = header
    if width == 0 or height == 0:
        raise Refused(400, f"the PNG is empty ({height}x{width} pixels)")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise Refused(
            413,
            f"the image is {height}x{width} = {width * height} pixels; this server accepts at most "
            f"{limits.max_pixels} pixels and {limits.max_side} per side (refused before decoding)",
        )
    if color_type not in _COLOR_TYPES or compression != 0 or filt != 0 or interlace > 1:
        raise Refused(400, "the PNG header is invalid (unknown colour type, compression, filter or interlace)")
    if depth != 8 or color_type not in (2, 6):
        raise Refused(
            415,
            f"the PNG is {_describe_mode(depth, color_type)}; encrypted images are 8-bit RGB (or opaque RGBA)",
        )


def decode_png(data: bytes, header: PngHeader) -> np.ndarray:
    """Decode a PNG that passed `read_png_header` to uint8 HxWx3; refuse anything Pillow cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                im.load()
                if im.mode not in ("RGB", "RGBA") or im.size != (header.width, header.height):
                    raise Refused(415, f"the PNG decodes as {im.mode} {im.size}; expected 8-bit RGB")
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


# -- JPEG ciphertexts (docs/encryption-format.md section 10) -----------------------------------------

def read_image_header(data: bytes, limits: Limits) -> PngHeader | JpegHeader:
    """A PNG's chunks or a JPEG's marker segments (told apart by the signature), checked and bounded
    before any pixel is decoded."""
    if is_jpeg(data):
        try:
            return read_jpeg_header(data, max_pixels=limits.max_pixels, max_side=limits.max_side)
        except JpegRefused as exc:
            raise Refused(exc.status, str(exc)) from None
    return read_png_header(data, limits)


def decode_ciphertext(data: bytes, header: PngHeader | JpegHeader) -> np.ndarray:
    """Decode an image that passed `read_image_header` to uint8 HxWx3."""
    if isinstance(header, JpegHeader):
        try:
            return decode_jpeg(data, header)
        except JpegRefused as exc:
            raise Refused(exc.status, str(exc)) from None
    return decode_png(data, header)


def check_transport(scheme: Scheme, header: PngHeader | JpegHeader) -> None:
    """A JPEG ciphertext needs a block size that is a multiple of 8 (JPEG's DCT grid)."""
    if isinstance(header, JpegHeader):
        try:
            check_block_size(scheme.block_size)
        except JpegRefused as exc:
            raise Refused(exc.status, str(exc)) from None


# -- schemes ---------------------------------------------------------------------------------------

def _user_error(exc: UserError) -> Refused:
    return Refused(422, str(exc))


def _parse_block_size(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Refused(422, "block_size must be an integer")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise Refused(422, f"block_size must be an integer (got {str(value)[:40]!r})") from None


def scheme_from_field(value: object, block_size: object = None, default_block_size: int = 16) -> Scheme | None:
    """A scheme given as a preset/code name (with optional block_size) or as a JSON descriptor."""
    if value is None or value == "":
        return None
    bs = _parse_block_size(block_size)
    try:
        if isinstance(value, dict):
            scheme = Scheme.from_dict(value)
        elif isinstance(value, str):
            if len(value) > 4096:
                raise Refused(422, "the scheme field is too long")
            scheme = Scheme.parse(value, block_size=bs or default_block_size)
        else:
            raise Refused(422, "scheme is a name such as 'bs-np-cs' or a JSON descriptor object")
    except UserError as exc:
        raise _user_error(exc) from None
    except Refused:
        raise
    except Exception:  # noqa: BLE001 - odd values (unicode digits, deep JSON) are still the client's
        raise Refused(422, "the scheme field is not a valid scheme name or descriptor") from None
    if bs is not None and scheme.block_size != bs:
        raise Refused(422, f"block_size {bs} disagrees with the scheme descriptor's block size {scheme.block_size}")
    return scheme


def scheme_from_chunk(text: str) -> tuple[Scheme, tuple[int, int] | None]:
    """The scheme (and original size) from an `encseg` tEXt chunk."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise Refused(422, "the PNG's encseg chunk is not valid JSON") from None
    if not isinstance(meta, dict) or "scheme" not in meta:
        raise Refused(422, 'the PNG\'s encseg chunk is not {"version": 1, "scheme": {...}, "original_size": [H, W]}')
    if has_key_member(meta):
        raise Refused(400, KEY_REFUSAL)
    if meta.get("version", 1) != 1:
        raise Refused(422, f"the PNG's encseg chunk has version {meta.get('version')!r}; this server reads version 1")
    try:
        scheme = Scheme.from_dict(meta["scheme"])
    except UserError as exc:
        raise _user_error(exc) from None
    except Exception:  # noqa: BLE001
        raise Refused(422, "the scheme in the PNG's encseg chunk is not a valid descriptor") from None
    size = meta.get("original_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise Refused(422, "original_size in the PNG's encseg chunk is not [H, W] of positive integers")
        size = (size[0], size[1])
    return scheme, size


def resolve_scheme(field: Scheme | None, chunk: Scheme | None) -> Scheme:
    """The field and the chunk must agree when both are present; one of them must be."""
    if field is None and chunk is None:
        raise Refused(422, "no scheme: send a `scheme` field (e.g. 'bs-np-cs') or a PNG carrying the encseg chunk")
    if field is not None and chunk is not None and field != chunk:
        raise Refused(422, f"the scheme field ({field.name}) disagrees with the PNG's encseg chunk ({chunk.name})")
    return field or chunk  # type: ignore[return-value]


def check_geometry(scheme: Scheme, header: PngHeader, original_size: tuple[int, int] | None, patch_size: int) -> None:
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
    if original_size is not None:
        oh, ow = original_size
        if not (oh <= h < oh + p and ow <= w < ow + p):
            raise Refused(422, f"original_size {oh}x{ow} in the encseg chunk does not fit the {h}x{w} image")


# -- keys ------------------------------------------------------------------------------------------

def is_key_name(name: str) -> bool:
    """`key`, `Key`, `key_hex`, `secret-key`, ...: any field whose name speaks of a key."""
    return "key" in name.lower()


def has_key_member(obj: object) -> bool:
    """Whether a decoded JSON value has a member named like a key, at any depth."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if any(isinstance(k, str) and is_key_name(k) for k in x):
                return True
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False
