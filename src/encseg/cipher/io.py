"""Reading and writing images safely: size limits before decoding, clear refusals of modes the cipher
cannot carry, and encrypted images that carry their scheme and original size (never a key): PNG (the
default, lossless) or JPEG (the EtC transport for segmentation, `encseg.cipher.jpeg`)."""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from encseg.cipher.arrange import SORTED, arrange, check_arrangement, transport_arrangement
from encseg.cipher.jpeg import DEFAULT_QUALITY, check_block_size, encode_jpeg, is_jpeg, read_jpeg_header
from encseg.cipher.scheme import FORMAT_VERSION, Scheme
from encseg.cipher.transform import EncryptedImage
from encseg.errors import UserError

DEFAULT_MAX_PIXELS = int(os.environ.get("ENCSEG_MAX_PIXELS", 64 * 1024 * 1024))
METADATA_CHUNK = "encseg"  # PNG tEXt keyword holding {"version", "scheme", "original_size"[, "arrangement"]}
ARRANGED_METADATA_VERSION = 3  # the metadata object of a sorted-arrangement file (format v3, section 13.4)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRANSPORT_FORMATS = ("png", "jpeg")  # how a ciphertext travels (docs/encryption-format.md sections 8 and 10)
_SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, colour_type) from a PNG's IHDR without decoding, or None if not PNG."""
    if len(data) < 29 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, ctype


def _describe_refusal(mode: str) -> str | None:
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return f"images with an alpha channel ({mode}) are refused: flatten them onto a background first"
    if mode.startswith("I") or mode == "F":
        return f"{mode} images (16-bit or more per channel) are refused: the cipher works on 8-bit RGB"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return f"{mode} images are refused: convert to 8-bit RGB first"
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image",
                 exif_orientation: bool = False) -> np.ndarray:
    """Decode image bytes into uint8 HxWx3 RGB, checking the pixel count before any decoding.

    With `exif_orientation` (plain images a person picked: read_image), the EXIF orientation is
    applied, as the browser page does; the rules are docs/encryption-format.md section 11."""
    if not data:
        raise UserError(f"{what} is empty")
    hdr = png_header(data)
    if hdr is not None:
        w, h, depth, ctype = hdr
        if depth == 16:
            raise UserError(f"{what} is a 16-bit PNG: the cipher works on 8-bit RGB; convert it first")
        if ctype in (4, 6):
            raise UserError(f"{what} has an alpha channel: flatten it onto a background first")
        if w * h > max_pixels:
            raise UserError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UserError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if w == 0 or h == 0:
                raise UserError(f"{what} has zero width or height")
            reason = _describe_refusal(im.mode)
            if reason:
                raise UserError(f"{what}: {reason}")
            if "transparency" in im.info:  # a transparent palette entry or colour (PNG tRNS, GIF)
                raise UserError(f"{what} has a transparent colour (alpha): flatten it onto a background first")
            im.load()
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            return np.asarray(rgb, dtype=np.uint8).copy()
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"{what} is too large to decode safely (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{what} is not a readable image ({type(exc).__name__})") from None


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB with the checks of decode_image."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not an image") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return decode_image(data, max_pixels=max_pixels, what=str(path), exif_orientation=True)


def require_png_path(path: str | os.PathLike) -> Path:
    """Label maps and decrypted images are stored losslessly: refuse any other extension."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(
            f"{path}: label maps and decrypted images are written as PNG only (lossless); a lossy format "
            "would change labels and pixel values"
        )
    return path


def transport_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format of an encrypted image to write: `fmt` (png or jpeg; it must agree with the file's
    suffix) or, without it, the suffix (.png, .jpg, .jpeg)."""
    path = Path(path)
    by_suffix = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        if by_suffix is None:
            raise UserError(f"{path}: encrypted images are written as .png (lossless) or .jpg (JPEG transport)")
        return by_suffix
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    if fmt not in TRANSPORT_FORMATS:
        raise UserError(f"the transport format is png or jpeg (got {fmt!r})")
    if by_suffix != fmt:
        raise UserError(f"{path}: format {fmt} is written to a {'.png' if fmt == 'png' else '.jpg'} file")
    return fmt


def check_transport(scheme: Scheme, fmt: str) -> None:
    """Refuse, with a one-line reason, a scheme the format would damage (JPEG: block size not a multiple of 8)."""
    if fmt not in TRANSPORT_FORMATS:
        raise UserError(f"the transport format is png or jpeg (got {fmt!r})")
    if fmt == "jpeg":
        check_block_size(scheme.block_size)


def encode_png(array: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of a uint8 HxW or HxWx3 array, with optional tEXt chunks."""
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[Path], object]) -> Path:
    """Write `data` via a temporary file in the same folder and a rename: readers never see half a file.
    `data` is the bytes, or a callable that writes the temporary file given its path (a library's
    `save(path)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files (keys use save_key)
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            os.chmod(tmp, 0o666 & ~umask)  # the writer may have replaced the file, with mkstemp's 0600 or its own
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def metadata_text(scheme: Scheme, original_size: tuple[int, int], arrangement: str = "none") -> dict[str, str]:
    """The `encseg` metadata object: version 1, or version 3 with `"arrangement": "sorted"` (section 13.4)."""
    meta = {"version": FORMAT_VERSION, "scheme": scheme.to_dict(), "original_size": list(original_size)}
    if check_arrangement(scheme, arrangement) != "none":
        meta = {"version": ARRANGED_METADATA_VERSION, "scheme": scheme.to_dict(), "original_size": list(original_size),
                "arrangement": arrangement}
    return {METADATA_CHUNK: json.dumps(meta, separators=(",", ":"))}


def metadata_arrangement(meta: dict, scheme: Scheme) -> str:
    """The arrangement a metadata object declares (section 13.4): none under version 1, sorted under
    version 3; any other version or arrangement, an arrangement under version 1, or the sorted
    arrangement for a scheme without pixel shuffling is refused."""
    version = meta.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or version not in (FORMAT_VERSION, ARRANGED_METADATA_VERSION):
        raise UserError(f"encseg metadata version {version!r} is not supported (this reads versions 1 and 3)")
    if version == FORMAT_VERSION:
        if "arrangement" in meta:
            raise UserError("the encseg metadata names an arrangement under version 1 (arrangements are version 3)")
        return "none"
    if meta.get("arrangement") != SORTED:
        raise UserError(f"encseg metadata version 3 has the arrangement {SORTED!r} (got {meta.get('arrangement')!r})")
    return check_arrangement(scheme, SORTED)


def read_metadata(text: str) -> tuple[Scheme, tuple[int, int], str]:
    """(scheme, original size, arrangement) of an `encseg` metadata object, versions 1 and 3."""
    try:
        meta = json.loads(text)
        scheme = Scheme.from_dict(meta["scheme"])
        h, w = (int(v) for v in meta["original_size"])
    except UserError:
        raise
    except (ValueError, KeyError, TypeError):
        raise UserError("the encseg metadata chunk is malformed") from None
    return scheme, (h, w), metadata_arrangement(meta, scheme)


def parse_metadata(text: str) -> tuple[Scheme, tuple[int, int]]:
    return read_metadata(text)[:2]


def _png_text(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.text.get(METADATA_CHUNK) if hasattr(im, "text") else None
    except Exception:
        return None


def png_metadata(data: bytes) -> tuple[Scheme, tuple[int, int]] | None:
    """The scheme and original size recorded in an encrypted PNG, or None if it has no encseg chunk."""
    text = _png_text(data)
    return parse_metadata(text) if text else None


def encode_encrypted(enc: EncryptedImage, fmt: str = "png", quality: int = DEFAULT_QUALITY,
                     arrangement: str = "auto") -> bytes:
    """An encrypted image's bytes: PNG with the `encseg` tEXt chunk, or baseline 4:4:4 JPEG at
    `quality` with the same JSON in the `encseg` COM segment; in the `arrangement` of
    `transport_arrangement` (auto: a JPEG of a pixel-shuffled scheme travels sorted, section 13)."""
    check_transport(enc.scheme, fmt)
    arrangement = transport_arrangement(enc.scheme, fmt, arrangement)
    data = arrange(enc.data, enc.scheme) if arrangement == SORTED else enc.data
    text = metadata_text(enc.scheme, enc.original_size, arrangement)
    if fmt == "png":
        return encode_png(data, text)
    return encode_jpeg(data, quality, text[METADATA_CHUNK])


def save_encrypted(path: str | os.PathLike, enc: EncryptedImage, fmt: str | None = None,
                   quality: int = DEFAULT_QUALITY, arrangement: str = "auto") -> Path:
    """Write an encrypted image (format from `fmt` or the suffix) with its scheme and original size."""
    return write_atomic(path, encode_encrypted(enc, transport_format(path, fmt), quality, arrangement))


def encrypted_metadata(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image",
                       arrangement: bool = False):
    """The scheme and original size an encrypted PNG or JPEG records (and, with `arrangement`, its
    arrangement: none or sorted), or None if it records none."""
    if is_jpeg(data):
        text = read_jpeg_header(data, max_pixels=max_pixels, what=what).encseg_text
    else:
        text = _png_text(data)
    if not text:
        return None
    meta = read_metadata(text)
    return meta if arrangement else meta[:2]


def load_encrypted(path: str | os.PathLike, scheme: Scheme | None = None,
                   original_size: tuple[int, int] | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncryptedImage:
    """Read an encrypted PNG; scheme and size come from its metadata unless given explicitly."""
    path = Path(path)
    data = Path(path).read_bytes() if path.is_file() else None
    if data is None:
        raise UserError(f"{path} does not exist or is not a file")
    if is_jpeg(data):
        raise UserError(
            f"{path} is a JPEG ciphertext: JPEG transport is for segmentation (the label map decrypts exactly, "
            "the image does not); encrypt with --format png to decrypt the image itself"
        )
    if png_header(data) is None:
        raise UserError(f"{path} is not a PNG; encrypted images that are decrypted are PNG")
    arr = decode_image(data, max_pixels=max_pixels, what=str(path))
    text = _png_text(data)
    if text and read_metadata(text)[2] != "none":
        raise UserError(
            f"{path} is in the sorted arrangement (format v3): it is for segmentation only, its pixel order "
            "is not in the key; encrypt with --arrangement none to decrypt the image itself"
        )
    meta = parse_metadata(text) if text else None
    if scheme is None:
        if meta is None:
            raise UserError(f"{path} carries no encseg metadata; pass --scheme (and --size) explicitly")
        scheme = meta[0]
    if original_size is None:
        original_size = meta[1] if meta else tuple(arr.shape[:2])
    scheme.check_size(*arr.shape[:2])
    return EncryptedImage(arr, tuple(original_size), scheme)


def read_label_png(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label map PNG (mode L or P, 8-bit) as uint8 HxW."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    return decode_label_png(path.read_bytes(), max_pixels=max_pixels, what=str(path))


def decode_label_png(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "label map") -> np.ndarray:
    """Decode label-map PNG bytes as uint8 HxW, checking format and size from the header first."""
    hdr = png_header(data)
    if hdr is None:
        raise UserError(f"{what} is not a PNG; label maps are PNG")
    w, h, depth, ctype = hdr
    if w * h > max_pixels:
        raise UserError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    if depth > 8 or ctype not in (0, 3):
        raise UserError(f"{what} is not an 8-bit single-channel label map (PNG colour type {ctype}, depth {depth})")
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im, dtype=np.uint8).copy()
