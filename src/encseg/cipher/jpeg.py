"""JPEG transport for ciphertexts (docs/encryption-format.md, section 10): encryption-then-compression.

A ciphertext with a block size that is a multiple of 8, coded as a baseline 4:4:4 JPEG, never has
pixels of two cipher blocks mixed by the codec (every 8x8 DCT block lies inside one cipher block, and
there is no chroma upsampling). The server's label map comes back as a PNG in encrypted geometry
and decrypts exactly; only the ciphertext's pixel values are lossy.

`read_jpeg_header` walks every marker segment of the file without decoding anything and refuses
(with a one-line reason and an HTTP-style status) whatever the format section does not allow:
progressive or arithmetic coding, chroma subsampling, other than three components, too many pixels,
malformed or truncated segments, Exif/ICC/thumbnail segments, comments other than the one `encseg`
COM segment, oversized metadata. `decode_jpeg` decodes only a file that passed it, and only its
canonical form (the checked coding segments, without APP0 or COM), as the service does for PNG.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from encseg.errors import UserError

DEFAULT_QUALITY = 90
COM_PREFIX = b"encseg\x00"  # the COM segment holding the metadata JSON starts with these 7 bytes
MAX_JSON_BYTES = 4096
MAX_SEGMENTS = 64  # marker segments in the whole file (RSTn not counted)
MAX_SCANS = 3  # baseline sequential: every component appears in exactly one scan
JPEG_MAGIC = b"\xff\xd8\xff"

# After SOS, entropy-coded data runs to the next marker that is not a stuffed 00 or an RSTn.
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_SOF_KINDS = {
    0xC1: "extended sequential (SOF1)", 0xC2: "progressive (SOF2)", 0xC3: "lossless (SOF3)",
    0xC5: "hierarchical (SOF5)", 0xC6: "hierarchical progressive (SOF6)", 0xC7: "hierarchical lossless (SOF7)",
    0xC9: "arithmetic-coded (SOF9)", 0xCA: "arithmetic-coded progressive (SOF10)",
    0xCB: "arithmetic-coded lossless (SOF11)", 0xCD: "arithmetic-coded hierarchical (SOF13)",
    0xCE: "arithmetic-coded hierarchical (SOF14)", 0xCF: "arithmetic-coded hierarchical (SOF15)",
}
_ONLY = "encrypted JPEGs are baseline (SOF0) 8-bit 4:4:4 YCbCr/RGB, or send PNG"


class JpegRefused(UserError):
    """A JPEG the transport does not accept; `status` is the HTTP status the service answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JpegHeader:
    """What the marker walk found, before any pixel was decoded."""

    width: int
    height: int
    component_ids: tuple[int, int, int]
    scans: int
    encseg_text: str | None  # the JSON of the `encseg` COM segment, if the file carries one
    payload: bytes = field(default=b"", repr=False)  # canonical file: SOI, DQT/DHT/DRI/SOF0/APP14, scans, EOI


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def check_block_size(block_size: int) -> None:
    """Condition 10.1.1: JPEG's 8x8 DCT grid must not cross a cipher block edge."""
    if block_size % 8:
        raise JpegRefused(
            422,
            f"JPEG transport needs a block size that is a multiple of 8: with block size {block_size} JPEG's "
            "8x8 DCT blocks would mix pixels of neighbouring cipher blocks; use PNG",
        )


def check_quality(quality: object) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= int(quality) <= 100:
        raise UserError(f"JPEG quality is an integer from 1 to 100 (got {quality!r})")
    return int(quality)


def _be16(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


def _sampling_name(factors: list[tuple[int, int]]) -> str:
    (yh, yv), rest = factors[0], factors[1:]
    if all(f == (1, 1) for f in rest):
        named = {(2, 2): "4:2:0", (2, 1): "4:2:2", (1, 2): "4:4:0", (4, 1): "4:1:1"}
        if (yh, yv) in named:
            return named[(yh, yv)]
    return "sampling " + ", ".join(f"{h}x{v}" for h, v in factors)


def _parse_sof(body: bytes, max_pixels: int, max_side: int | None, what: str) -> tuple[int, int, tuple[int, int, int]]:
    if len(body) < 6:
        raise JpegRefused(400, f"{what} is malformed: its frame header (SOF0) is too short")
    precision, height, width, nf = body[0], _be16(body, 1), _be16(body, 3), body[5]
    if len(body) != 6 + 3 * nf:
        raise JpegRefused(400, f"{what} is malformed: its frame header length does not match {nf} components")
    if precision != 8:
        raise JpegRefused(415, f"{what} has {precision}-bit samples; {_ONLY}")
    if height == 0:
        raise JpegRefused(400, f"{what} has height 0 (defined later by a DNL marker), which is refused")
    if width == 0:
        raise JpegRefused(400, f"{what} has width 0")
    if width * height > max_pixels or (max_side is not None and max(width, height) > max_side):
        side = f" and {max_side} per side" if max_side is not None else ""
        raise JpegRefused(
            413,
            f"{what} is {height}x{width} = {width * height} pixels; the limit is {max_pixels} pixels{side} "
            "(refused before decoding)",
        )
    if nf != 3:
        kind = {1: "greyscale (1 component)", 4: "CMYK or YCCK (4 components)"}.get(nf, f"made of {nf} components")
        raise JpegRefused(415, f"{what} is {kind}; {_ONLY}")
    ids, factors = [], []
    for i in range(3):
        cid, hv, tq = body[6 + 3 * i : 9 + 3 * i]
        h, v = hv >> 4, hv & 15
        if not (1 <= h <= 4 and 1 <= v <= 4) or tq > 3:
            raise JpegRefused(400, f"{what} is malformed: component {cid} has invalid sampling factors or table")
        ids.append(cid)
        factors.append((h, v))
    if len(set(ids)) != 3:
        raise JpegRefused(400, f"{what} is malformed: two components share an id")
    if any(f != (1, 1) for f in factors):
        raise JpegRefused(
            415,
            f"{what} is chroma-subsampled ({_sampling_name(factors)}): the decoder's chroma upsampling mixes "
            "pixels of neighbouring blocks; encode with 4:4:4 sampling (Pillow: subsampling=0), or send PNG",
        )
    return width, height, (ids[0], ids[1], ids[2])


def _parse_sos(body: bytes, frame_ids: tuple[int, ...], scanned: set[int], what: str) -> None:
    ns = body[0] if body else 0
    if not 1 <= ns <= 3 or len(body) != 1 + 2 * ns + 3:
        raise JpegRefused(400, f"{what} is malformed: a scan header (SOS) has a bad length or component count")
    for sel in body[1 : 1 + 2 * ns : 2]:
        if sel not in frame_ids:
            raise JpegRefused(400, f"{what} is malformed: a scan names component {sel}, which the frame lacks")
        if sel in scanned:
            raise JpegRefused(400, f"{what} is malformed: component {sel} appears in two scans")
        scanned.add(sel)
    ss, se, ahal = body[-3], body[-2], body[-1]
    if ss != 0 or se != 63 or ahal != 0:
        raise JpegRefused(415, f"{what} has a spectral-selection or successive-approximation scan; {_ONLY}")


def _metadata_text(body: bytes, what: str) -> str:
    payload = body[len(COM_PREFIX) :]
    if len(payload) > MAX_JSON_BYTES:
        raise JpegRefused(400, f"{what}'s encseg metadata is {len(payload)} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise JpegRefused(400, f"{what}'s encseg metadata is not UTF-8 text") from None


def read_jpeg_header(data: bytes, *, max_pixels: int, max_side: int | None = None, what: str = "the JPEG") -> JpegHeader:
    """Walk every marker segment of `data` (nothing is decoded) and return what a decoder would
    need to know, or raise JpegRefused with a one-line reason. The loop is bounded by the file's
    length (every step consumes bytes) and by MAX_SEGMENTS."""
    n = len(data)
    if n == 0:
        raise JpegRefused(400, f"{what} is empty (0 bytes)")
    if data[:2] != b"\xff\xd8":
        raise JpegRefused(415, f"{what} is not a JPEG (it does not start with the SOI marker)")
    pos = 2
    frame: tuple[int, int, tuple[int, int, int]] | None = None
    text: str | None = None
    scans = segments = 0
    seen_meta: set[int] = set()
    scanned: set[int] = set()
    kept: list[bytes] = [b"\xff\xd8"]  # the canonical file the decoder will read
    while True:
        if pos >= n:
            raise JpegRefused(400, f"{what} is truncated (no EOI marker at its end)")
        if data[pos] != 0xFF:
            raise JpegRefused(400, f"{what} is malformed: expected a marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            raise JpegRefused(400, f"{what} is truncated (it ends inside a marker)")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if frame is None or scans == 0:
                raise JpegRefused(400, f"{what} has no {'frame header (SOF)' if frame is None else 'scan (SOS)'}")
            if len(scanned) != 3:
                raise JpegRefused(400, f"{what} is incomplete: its scans do not cover all three components")
            if pos != n:
                raise JpegRefused(400, f"{what} has {n - pos} bytes after its end (EOI marker)")
            kept.append(b"\xff\xd9")
            break
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            raise JpegRefused(400, f"{what} is malformed: unexpected marker FF{marker:02X} at byte {pos - 2}")
        if pos + 2 > n:
            raise JpegRefused(400, f"{what} is truncated (a segment length is cut off)")
        length = _be16(data, pos)
        end = pos + length
        if length < 2:
            raise JpegRefused(400, f"{what} is malformed: segment FF{marker:02X} has length {length}")
        if end > n:
            raise JpegRefused(400, f"{what} is truncated (segment FF{marker:02X} runs past the end of the file)")
        segments += 1
        if segments > MAX_SEGMENTS:
            raise JpegRefused(400, f"{what} has more than {MAX_SEGMENTS} marker segments")
        body = data[pos + 2 : end]
        keep = True
        if marker == 0xC0:
            if frame is not None:
                raise JpegRefused(400, f"{what} has more than one frame header (SOF)")
            frame = _parse_sof(body, max_pixels, max_side, what)
        elif marker in _SOF_KINDS:
            raise JpegRefused(415, f"{what} is {_SOF_KINDS[marker]}; {_ONLY}")
        elif marker in (0xC4, 0xDB):  # DHT, DQT: their content is the decoder's to check
            pass
        elif marker == 0xDD:  # DRI
            if length != 4:
                raise JpegRefused(400, f"{what} is malformed: its restart interval (DRI) segment has length {length}")
        elif marker == 0xDA:  # SOS, then entropy-coded data up to the next real marker
            if frame is None:
                raise JpegRefused(400, f"{what} is malformed: a scan (SOS) comes before the frame header (SOF)")
            scans += 1
            if scans > MAX_SCANS:
                raise JpegRefused(400, f"{what} has more than {MAX_SCANS} scans")
            _parse_sos(body, frame[2], scanned, what)
            found = _ENTROPY_END.search(data, end)
            if found is None:
                raise JpegRefused(400, f"{what} is truncated (its entropy-coded data has no end marker)")
            kept.append(b"\xff\xda" + data[pos:found.start()])
            pos = found.start()
            continue
        elif marker in (0xE0, 0xEE, 0xFE):  # APP0 (JFIF), APP14 (Adobe), COM (encseg): one each, before the scans
            name = {0xE0: "APP0", 0xEE: "APP14", 0xFE: "COM"}[marker]
            if marker in seen_meta:
                raise JpegRefused(400, f"{what} has two {name} segments (an encrypted JPEG has at most one of each)")
            if scans:
                raise JpegRefused(400, f"{what} has a {name} segment after its first scan")
            seen_meta.add(marker)
            keep = marker == 0xEE  # the Adobe segment says whether the samples are RGB or YCbCr
            if marker == 0xE0:
                _check_jfif(body, what)
            elif marker == 0xEE:
                _check_adobe(body, what)
            else:
                if not body.startswith(COM_PREFIX):
                    raise JpegRefused(400, f"{what} has a comment (COM) that is not encseg metadata; an encrypted "
                                           "JPEG carries no other text")
                text = _metadata_text(body, what)
        elif 0xE1 <= marker <= 0xEF:
            raise JpegRefused(
                415,
                f"{what} carries an APP{marker - 0xE0} segment (Exif, XMP, ICC profile or a thumbnail); an encrypted "
                "JPEG carries only APP0, APP14 and COM segments (a thumbnail would show the plain image)",
            )
        elif marker == 0xCC:
            raise JpegRefused(415, f"{what} uses arithmetic coding (DAC); {_ONLY}")
        elif marker == 0xDC:
            raise JpegRefused(400, f"{what} has a DNL marker (height defined after the scan), which is refused")
        elif marker in (0xDE, 0xDF):
            raise JpegRefused(415, f"{what} is hierarchical (DHP/EXP); {_ONLY}")
        else:
            raise JpegRefused(400, f"{what} has a reserved or unknown marker FF{marker:02X}")
        if keep:
            kept.append(bytes((0xFF, marker)) + data[pos:end])
        pos = end
    width, height, ids = frame
    return JpegHeader(width, height, ids, scans, text, b"".join(kept))


def _check_jfif(body: bytes, what: str) -> None:
    """APP0 is a JFIF header (version, density) without a thumbnail."""
    if not body.startswith(b"JFIF\x00") or len(body) < 14:
        raise JpegRefused(400, f"{what} has an APP0 segment that is not a JFIF header (JFXX thumbnails are refused)")
    if body[12] or body[13] or len(body) != 14:
        raise JpegRefused(400, f"{what}'s JFIF header carries a thumbnail; an encrypted JPEG carries none")


def _check_adobe(body: bytes, what: str) -> None:
    """APP14 is Adobe's 12-byte colour-transform segment (transform 0: RGB, 1: YCbCr)."""
    if not body.startswith(b"Adobe") or len(body) != 12 or body[11] > 1:
        raise JpegRefused(400, f"{what} has an APP14 segment that is not an Adobe RGB/YCbCr marker")


def decode_jpeg(data: bytes, header: JpegHeader, what: str = "the JPEG") -> np.ndarray:
    """Decode a JPEG that passed `read_jpeg_header` to uint8 HxWx3 RGB (Pillow, default settings:
    for a baseline 4:4:4 file that is an 8x8 IDCT per block and a per-pixel colour conversion).
    Reads `header.payload` (the canonical file) and checks `header.width`/`height`; any header
    object with those three fields will do (the service passes its own)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(header.payload or data), formats=["JPEG"]) as im:
                im.load()
                if im.mode != "RGB" or im.size != (header.width, header.height):
                    raise JpegRefused(415, f"{what} decodes as {im.mode} {im.size}; expected 8-bit RGB")
                return np.asarray(im, dtype=np.uint8).copy()
    except JpegRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the sender's bad file
        raise JpegRefused(400, f"{what} could not be decoded ({type(exc).__name__})") from None


def com_payload(text: str) -> bytes:
    """The COM segment payload for the metadata JSON: b"encseg\\0" + the JSON as UTF-8."""
    raw = text.encode("utf-8")
    if len(raw) > MAX_JSON_BYTES:
        raise UserError(f"the encseg metadata is {len(raw)} bytes, over the JPEG limit of {MAX_JSON_BYTES}")
    return COM_PREFIX + raw


def encode_jpeg(array: np.ndarray, quality: int = DEFAULT_QUALITY, text: str | None = None) -> bytes:
    """Baseline 4:4:4 JPEG bytes of a uint8 HxWx3 ciphertext whose sides are multiples of 8, with
    the metadata JSON `text` (if any) in the `encseg` COM segment right after APP0."""
    q = check_quality(quality)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise UserError(f"JPEG transport takes uint8 HxWx3 images (got {array.dtype} {array.shape})")
    h, w = array.shape[:2]
    if h % 8 or w % 8:
        raise JpegRefused(422, f"JPEG transport needs sides that are multiples of 8 (got {h}x{w}); use PNG")
    buf = io.BytesIO()
    opts = {"comment": com_payload(text)} if text is not None else {}
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="JPEG", quality=q, subsampling=0,
                                                      progressive=False, optimize=False, **opts)
    return buf.getvalue()


def jpeg_roundtrip(array: np.ndarray, quality: int = DEFAULT_QUALITY) -> np.ndarray:
    """What a server receives from a JPEG client: encode at `quality`, check, decode (training and
    evaluation on JPEG ciphertexts)."""
    data = encode_jpeg(array, quality)
    h, w = array.shape[:2]
    return decode_jpeg(data, read_jpeg_header(data, max_pixels=h * w))


def jpeg_metadata_text(data: bytes, *, max_pixels: int, what: str = "the JPEG") -> str | None:
    """The encseg metadata JSON of a JPEG ciphertext (checked as read_jpeg_header does), or None."""
    return read_jpeg_header(data, max_pixels=max_pixels, what=what).encseg_text
