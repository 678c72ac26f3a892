"""JPEG transport for ciphertexts (docs/encryption-format.md section 10): the codec never mixes cipher
blocks, the label map decrypts exactly through JPEG, the marker walk refuses what the format does
not allow before anything is decoded, and every client and the service speak it."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from encseg.cipher import DEFAULT_SCHEME  # noqa: E402
from encseg.cipher import Key, Scheme, decrypt_mask, encrypt
from encseg.cipher import jpeg as J
from encseg.cipher.arrange import arrange, restore_labels
from encseg.cipher.io import METADATA_CHUNK, encode_encrypted, encrypted_metadata, metadata_text
from encseg.errors import UserError

warnings.filterwarnings("ignore", message=".*httpx2.*")
torch.set_num_threads(1)

# Grey levels whose class survives negative-positive (v -> 255 - v) and channel shuffle (grey is
# grey in any channel order): class k <-> min(v, 255 - v) nearest LEVELS[k].
LEVELS = np.array([5, 45, 85, 125])


def grey_block_image(h: int, w: int, seed: int, p: int = 16, halves: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An image of p x p grey blocks (each of one level, or top/bottom halves of two levels) and its labels."""
    rng = np.random.default_rng(seed)
    nh, nw = -(-h // p), -(-w // p)
    cls = np.repeat(np.repeat(rng.integers(0, len(LEVELS), (nh, nw)), p, 0), p, 1)
    if halves:
        other = np.repeat(np.repeat(rng.integers(0, len(LEVELS), (nh, nw)), p, 0), p, 1)
        top = (np.arange(nh * p) % p < p // 2)[:, None]
        cls = np.where(top, cls, other)
    cls = cls[:h, :w]
    img = np.repeat(LEVELS[cls].astype(np.uint8)[..., None], 3, axis=2)
    return img, cls.astype(np.uint8)


def classify(decoded: np.ndarray) -> np.ndarray:
    v = decoded.astype(np.int32).mean(axis=2)
    d = np.minimum(v, 255 - v)
    return np.abs(d[..., None] - LEVELS).argmin(-1).astype(np.uint8)


def server_side(data: bytes) -> np.ndarray:
    return J.decode_jpeg(data, J.read_jpeg_header(data, max_pixels=1 << 24))


# -- the codec keeps cipher blocks apart ------------------------------------------------------------

@pytest.mark.parametrize("p", [8, 16, 32])
def test_changing_one_block_changes_no_pixel_outside_it(p):
    rng = np.random.default_rng(p)
    a = rng.integers(0, 256, (4 * p, 6 * p, 3), dtype=np.uint8)
    b = a.copy()
    b[p : 2 * p, 2 * p : 3 * p] = 255 - b[p : 2 * p, 2 * p : 3 * p]
    da, db = server_side(J.encode_jpeg(a, 75)), server_side(J.encode_jpeg(b, 75))
    changed = (da != db).any(axis=2)
    inside = np.zeros(changed.shape, bool)
    inside[p : 2 * p, 2 * p : 3 * p] = True
    assert changed[inside].any() and not changed[~inside].any()


def test_the_same_check_catches_the_mixing_of_4_2_0_which_is_why_it_is_refused():
    # not a tuned number: 4:2:0 with 16-px blocks lets a block's change reach its neighbours
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[16:32, 16:32] = 255 - b[16:32, 16:32]

    def pillow_420(x):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=90, subsampling=2)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    changed = (pillow_420(a) != pillow_420(b)).any(axis=2)
    inside = np.zeros(changed.shape, bool)
    inside[16:32, 16:32] = True
    assert changed[~inside].any()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90, subsampling=2)
    with pytest.raises(J.JpegRefused, match="4:2:0") as exc:
        J.read_jpeg_header(buf.getvalue(), max_pixels=1 << 20)
    assert exc.value.status == 415


@pytest.mark.parametrize("scheme_name,quality,halves", [("bs-np-cs", 50, False), ("bs-ps-np-cs", 95, True),
                                                        ("bs-ps4-np-cs", 90, True)])
def test_label_map_geometry_round_trips_exactly_through_jpeg(scheme_name, quality, halves):
    # a server that labels each pixel from the decoded JPEG answers in encrypted geometry (in the
    # sorted arrangement for the pixel-shuffled schemes); the key holder's restore_labels +
    # decrypt_mask must give back the plain label map exactly (70x100: padding is cropped)
    img, labels = grey_block_image(70, 100, seed=quality, halves=halves)
    scheme, key = Scheme.parse(scheme_name), Key.generate()
    enc = encrypt(img, key, scheme)
    data = encode_encrypted(enc, "jpeg", quality)
    arranged = encrypted_metadata(data, arrangement=True)[2] == "sorted"
    assert arranged == ("ps" in scheme_name)  # auto: a pixel-shuffled JPEG travels sorted
    decoded = server_side(data)
    assert decoded.shape == enc.data.shape
    answer = classify(decoded)
    assert np.array_equal(answer, classify(arrange(enc.data, scheme) if arranged else enc.data))  # JPEG moved no label
    if arranged:
        answer = restore_labels(answer, enc.data, scheme)
    assert np.array_equal(decrypt_mask(answer, key, scheme, enc.original_size), labels)
    assert not np.array_equal(answer[:70, :100], labels)  # it really was in encrypted geometry


def test_metadata_travels_in_the_encseg_com_segment_with_the_documented_bytes():
    img, _ = grey_block_image(40, 56, seed=0)
    scheme = Scheme.parse("bs-np-cs")
    enc = encrypt(img, Key.generate(), scheme)
    data = encode_encrypted(enc, "jpeg", 90)
    text = metadata_text(scheme, (40, 56))[METADATA_CHUNK]
    assert text.startswith('{"version":1,"scheme":{') and text.endswith('"original_size":[40,56]}')
    at = data.index(b"\xff\xfe")
    assert data[at + 4 : at + 11] == b"encseg\x00" and data[at + 11 : at + 11 + len(text)] == text.encode()
    assert struct.unpack(">H", data[at + 2 : at + 4])[0] == 2 + 7 + len(text)
    assert encrypted_metadata(data) == (scheme, (40, 56))
    assert J.read_jpeg_header(data, max_pixels=1 << 20).encseg_text is not None
    assert Key.generate().hex() not in data.decode("latin-1")


# -- the marker walk: refused before decoding, one line each ---------------------------------------

def pillow_jpeg(arr: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **save)
    return buf.getvalue()


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment before the first SOS, SOS included."""
    out, pos = [], 2
    while True:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            return out
        pos += 2 + length


VALID_ARR = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
VALID = J.encode_jpeg(VALID_ARR, 90, '{"version":1}')


def _patch_sof(data: bytes, offset: int, value: bytes) -> bytes:
    sof = next(s for m, s, _ in segments(data) if m == 0xC0)
    at = sof + 4 + offset
    return data[:at] + value + data[at + len(value) :]


def _insert_before_sos(data: bytes, segment: bytes) -> bytes:
    sos = next(s for m, s, _ in segments(data) if m == 0xDA)
    return data[:sos] + segment + data[sos:]


def _seg(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def bad_jpegs() -> dict[str, tuple[bytes, int, str]]:
    sof = next((s, e) for m, s, e in segments(VALID) if m == 0xC0)
    dqt = next((s, e) for m, s, e in segments(VALID) if m == 0xDB)
    cmyk = io.BytesIO()
    Image.fromarray(VALID_ARR).convert("CMYK").save(cmyk, "JPEG")
    return {
        "empty": (b"", 400, "empty"),
        "not a jpeg": (b"GIF89a" + b"\x00" * 20, 415, "not a JPEG"),
        "truncated in a segment": (VALID[:30], 400, "truncated"),
        "truncated in the scan": (VALID[: len(VALID) // 2], 400, "truncated"),
        "no EOI": (VALID[:-2], 400, "truncated"),
        "bytes after EOI": (VALID + b"\x00\x00", 400, "after its end"),
        "segment length 0": (VALID[:2] + b"\xff\xdb\x00\x00" + VALID[2:], 400, "length 0"),
        "segment past the end": (VALID[:2] + b"\xff\xdb\xff\xff", 400, "truncated"),
        "oversized": (_patch_sof(VALID, 1, struct.pack(">HH", 60000, 60000)), 413, "before decoding"),
        "height 0 (DNL)": (_patch_sof(VALID, 1, b"\x00\x00"), 400, "DNL"),
        "12-bit": (_patch_sof(VALID, 0, b"\x0c"), 415, "12-bit"),
        "4:2:0": (pillow_jpeg(VALID_ARR, subsampling=2), 415, "4:2:0"),
        "4:2:2": (pillow_jpeg(VALID_ARR, subsampling=1), 415, "4:2:2"),
        "progressive": (pillow_jpeg(VALID_ARR, subsampling=0, progressive=True), 415, "progressive"),
        "greyscale": (pillow_jpeg(VALID_ARR[..., 0]), 415, "greyscale"),
        "cmyk": (cmyk.getvalue(), 415, "CMYK"),
        "arithmetic": (VALID[: sof[0] + 1] + b"\xc9" + VALID[sof[0] + 2 :], 415, "arithmetic"),
        "two frames": (_insert_before_sos(VALID, VALID[sof[0] : sof[1]]), 400, "more than one frame"),
        "scan before frame": (VALID[:2] + VALID[next(s for m, s, _ in segments(VALID) if m == 0xDA):], 400, "before the frame"),
        "exif": (pillow_jpeg(VALID_ARR, subsampling=0, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"), 415, "APP1"),
        "other comment": (pillow_jpeg(VALID_ARR, subsampling=0, comment=b"hello"), 400, "not encseg metadata"),
        "two encseg comments": (_insert_before_sos(VALID, _seg(0xFE, b"encseg\x00{}")), 400, "two COM"),
        "metadata too long": (J.encode_jpeg(VALID_ARR, 90) [:2] + _seg(0xFE, b"encseg\x00" + b" " * 5000)
                              + J.encode_jpeg(VALID_ARR, 90)[2:], 400, "over the limit"),
        "too many segments": (_insert_before_sos(VALID, VALID[dqt[0] : dqt[1]] * 70), 400, "more than 64"),
        "bad utf-8 metadata": (_insert_before_sos(J.encode_jpeg(VALID_ARR, 90), _seg(0xFE, b"encseg\x00\xff\xfe")), 400, "UTF-8"),
    }


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if Pillow is asked to open anything while the walk runs."""
    opened = []
    monkeypatch.setattr(J.Image, "open", lambda *a, **k: opened.append(1) or (_ for _ in ()).throw(AssertionError("decoded")))
    return opened


@pytest.mark.parametrize("case", list(bad_jpegs()))
def test_bad_jpegs_are_refused_from_the_marker_walk_with_one_line(case, no_decoding):
    data, status, words = bad_jpegs()[case]
    with pytest.raises(J.JpegRefused) as exc:
        J.read_jpeg_header(data, max_pixels=4096 * 4096, max_side=8192)
    message = str(exc.value)
    assert exc.value.status == status and words in message, message
    assert "\n" not in message and len(message) < 300
    assert no_decoding == []


def test_a_valid_ciphertext_passes_and_decodes_only_its_canonical_form():
    h = J.read_jpeg_header(VALID, max_pixels=32 * 48)
    assert (h.width, h.height, h.scans, h.encseg_text) == (48, 32, 1, '{"version":1}')
    assert b"encseg" not in h.payload and b"JFIF" not in h.payload  # no COM, no APP0 reaches the decoder
    assert np.array_equal(J.decode_jpeg(VALID, h), np.asarray(Image.open(io.BytesIO(VALID))))
    with pytest.raises(J.JpegRefused, match="limit"):
        J.read_jpeg_header(VALID, max_pixels=32 * 48 - 1)


def test_random_damage_is_refused_or_decoded_never_a_crash():
    rng = np.random.default_rng(5)
    outcomes = {"refused": 0, "decoded": 0}
    for _ in range(300):
        data = bytearray(VALID)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        try:
            h = J.read_jpeg_header(bytes(data), max_pixels=1 << 20)
            arr = J.decode_jpeg(bytes(data), h)
            assert arr.shape == (h.height, h.width, 3)
            outcomes["decoded"] += 1
        except J.JpegRefused as exc:
            assert "\n" not in str(exc) and 400 <= exc.status < 500
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0


def test_encoder_refuses_what_the_transport_cannot_carry():
    with pytest.raises(J.JpegRefused, match="multiple of 8"):
        J.check_block_size(12)
    with pytest.raises(UserError, match="1 to 100"):
        J.encode_jpeg(VALID_ARR, 0)
    with pytest.raises(UserError, match="multiples of 8"):
        J.encode_jpeg(VALID_ARR[:30], 90)
    enc = encrypt(VALID_ARR, Key.generate(), Scheme.parse("bs-np-cs", block_size=12))
    with pytest.raises(UserError, match="multiple of 8"):
        encode_encrypted(enc, "jpeg", 90)
    assert encode_encrypted(enc, "png")[:4] == b"\x89PNG"


# -- training and evaluation ---------------------------------------------------------------------

def test_train_transform_compresses_the_encrypted_sample_and_keeps_its_labels():
    from encseg.cipher import CipherTransform
    from encseg.data.augment import AugmentConfig, TrainTransform

    img, labels = grey_block_image(64, 96, seed=2)
    aug = AugmentConfig(crop=(64, 96), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    cipher = CipherTransform(Scheme.parse("bs-np-cs"), "per-image")
    plain_t = TrainTransform(aug, cipher, seed=0)
    jpeg_t = TrainTransform(aug, cipher, seed=0, jpeg_quality=(40, 60))
    x0, y0 = plain_t(img, labels, (0, 0))
    x1, y1 = jpeg_t(img, labels, (0, 0))
    # the per-image key differs between calls, so compare what the key does not change
    assert x1.shape == x0.shape and y1.shape == y0.shape
    assert np.array_equal(classify(x1.numpy().transpose(1, 2, 0)), y1.numpy())  # labels still fit the pixels
    noisy = TrainTransform(aug, None, seed=0, jpeg_quality=(10, 10))(
        np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8), labels, (0, 0))[0]
    clean = TrainTransform(aug, None, seed=0)(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8),
                                              labels, (0, 0))[0]
    assert not torch.equal(noisy, clean)


def test_config_field_is_validated():
    from encseg.engine.config import load_config

    cfg = load_config(None, "smoke", ["encryption.jpeg_quality=[50, 95]"])
    assert cfg.encryption.jpeg_quality == (50, 95)
    for bad in ("[95, 50]", "[0, 90]", "[50]", "[50, 101]"):
        with pytest.raises(UserError, match="jpeg_quality"):
            load_config(None, "smoke", [f"encryption.jpeg_quality={bad}"])


# -- the service and the clients -----------------------------------------------------------------

class GreyLevels(torch.nn.Module):
    """A per-pixel 'model' that labels the grey levels above (ImageNet normalisation undone)."""

    def forward(self, x):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        v = ((x * std + mean) * 255).mean(1, keepdim=True)
        d = torch.minimum(v, 255 - v)
        levels = torch.tensor(LEVELS, dtype=x.dtype).view(1, -1, 1, 1)
        scores = -(d - levels).abs()
        return torch.cat([scores, torch.full_like(scores[:, :1], -1e9).expand(-1, 15, -1, -1)], 1)


@pytest.fixture(scope="module")
def grey_service():
    from fastapi.testclient import TestClient

    from encseg.service.app import create_app
    from encseg.service.segmenter import ModelInfo, Segmenter

    info = ModelInfo("grey-levels", 19, 16, schemes=[Scheme.parse("bs-np-cs")])
    with TestClient(create_app(Segmenter(GreyLevels(), info)), raise_server_exceptions=False) as c:
        yield c


def test_service_accepts_a_jpeg_ciphertext_and_its_label_map_decrypts_exactly(grey_service):
    img, labels = grey_block_image(70, 100, seed=7)
    scheme, key = Scheme.parse("bs-np-cs"), Key.generate()
    enc = encrypt(img, key, scheme)
    data = encode_encrypted(enc, "jpeg", 75)
    for kwargs in ({"files": {"image": ("e.jpg", data, "image/jpeg")}},
                   {"content": data, "headers": {"content-type": "image/jpeg"}}):
        r = grey_service.post("/v1/segment", **kwargs)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        answer = np.asarray(Image.open(io.BytesIO(r.content)))
        assert answer.shape == enc.data.shape[:2]
        assert np.array_equal(decrypt_mask(answer, key, scheme, enc.original_size), labels)


@pytest.mark.parametrize("case", ["4:2:0", "progressive", "oversized", "truncated in the scan", "exif"])
def test_service_refuses_a_bad_jpeg_with_4xx_before_decoding(grey_service, monkeypatch, case):
    data, status, words = bad_jpegs()[case]
    decoded = []
    monkeypatch.setattr(J, "decode_jpeg", lambda *a, **k: decoded.append(1))
    r = grey_service.post("/v1/segment", content=data, headers={"content-type": "image/jpeg"},
                          params={"scheme": "bs-np-cs"})
    assert r.status_code == status and words in r.json()["detail"]
    assert decoded == []


def test_service_refuses_jpeg_with_a_block_size_that_is_not_a_multiple_of_8(grey_service):
    scheme = Scheme.parse("bs-np-cs", block_size=12)
    enc = encrypt(grey_block_image(96, 96, seed=1)[0], Key.generate(), scheme)
    data = J.encode_jpeg(enc.data, 90)  # 96x96: whole 12-px blocks and 16-px patches
    r = grey_service.post("/v1/segment", content=data, headers={"content-type": "image/jpeg"},
                          params={"scheme": "bs-np-cs", "block_size": "12"})
    assert r.status_code == 422 and "multiple of 8" in r.json()["detail"]


def test_service_refuses_a_key_in_the_jpeg_metadata(grey_service):
    text = '{"version":1,"scheme":{"version":1,"block_size":16,"steps":[]},"key":"%s"}' % Key.generate().hex()
    data = J.encode_jpeg(grey_block_image(32, 32, seed=0)[0], 90, text)
    r = grey_service.post("/v1/segment", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "keys stay with the client" in r.json()["detail"]


def test_python_clients_speak_jpeg(grey_service):
    from encseg.service.client import LocalBackend, segment_image
    from encseg.service.segmenter import ModelInfo, Segmenter

    img, labels = grey_block_image(70, 100, seed=11)
    scheme = Scheme.parse("bs-np-cs")
    local = LocalBackend(Segmenter(GreyLevels(), ModelInfo("grey", 19, 16, schemes=[scheme])), transport="jpeg", quality=60)
    res = segment_image(img, local, scheme, palette=[[0, 0, 0]] * 19)
    assert np.array_equal(res.mask, labels)
    with pytest.raises(UserError, match="multiple of 8"):
        segment_image(np.zeros((96, 96, 3), np.uint8), local, Scheme.parse("bs-np-cs", block_size=12), palette=[])
    with pytest.raises(UserError, match="png or jpeg"):
        LocalBackend(local.segmenter, transport="webp")


def test_http_client_sends_jpeg(monkeypatch):
    from encseg.service.client import HttpBackend, segment_image
    from encseg.service.segmenter import ModelInfo, Segmenter

    import _service_support as support

    scheme = Scheme.parse("bs-np-cs")
    img, labels = grey_block_image(70, 100, seed=12)
    with support.serve(Segmenter(GreyLevels(), ModelInfo("grey", 19, 16, schemes=[scheme]))) as srv:
        backend = HttpBackend(srv.url, transport="jpeg", quality=80)
        sent = []
        original = backend.client.request
        monkeypatch.setattr(backend.client, "request", lambda *a, **k: sent.append(k.get("files")) or original(*a, **k))
        try:
            res = segment_image(img, backend, scheme, palette=[[0, 0, 0]] * 19)
        finally:
            backend.close()
    assert np.array_equal(res.mask, labels)
    name, body, mime = sent[-1]["image"]
    assert mime == "image/jpeg" and J.is_jpeg(body)


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_encrypt_format_jpeg_and_its_refusals(run_cli, tmp_path):
    img, _ = grey_block_image(40, 56, seed=3)
    Image.fromarray(img).save(tmp_path / "in.png")
    code, out, err = run_cli("encrypt", tmp_path / "in.png", "-o", tmp_path / "e.jpg", "--format", "jpeg",
                             "--quality", "80", "--key-out", tmp_path / "k.key")
    assert code == 0, err
    data = (tmp_path / "e.jpg").read_bytes()
    assert J.is_jpeg(data) and encrypted_metadata(data) == (Scheme.parse(DEFAULT_SCHEME), (40, 56))
    h = J.read_jpeg_header(data, max_pixels=1 << 20)
    assert (h.height, h.width) == (48, 64)
    cases = {
        "block size 12": (["--block-size", "12", "-o", tmp_path / "b.jpg"], "multiple of 8"),
        "png suffix": (["--format", "jpeg", "-o", tmp_path / "b.png"], ".jpg"),
        "quality with png": (["--quality", "80", "-o", tmp_path / "b.png"], "--format jpeg only"),
        "quality 0": (["--quality", "0", "-o", tmp_path / "b.jpg"], "1 to 100"),
        "unknown format": (["--format", "webp", "-o", tmp_path / "b.webp"], "png or jpeg"),
    }
    for name, (args, words) in cases.items():
        code, out, err = run_cli("encrypt", tmp_path / "in.png", "--key-out", tmp_path / f"{name}.key", *args)
        assert code != 0 and words in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (tmp_path / f"{name}.key").exists()  # refused before any key was written
    assert not any(tmp_path.glob("b.*"))
    code, out, err = run_cli("decrypt", tmp_path / "e.jpg", "--key", tmp_path / "k.key", "-o", tmp_path / "d.png")
    assert code != 0 and "JPEG ciphertext" in err and "--format png" in err
    # the label map of a JPEG ciphertext decrypts with --like pointing at the JPEG; the default scheme's
    # JPEG is in the sorted arrangement, so the plain image is needed to rebuild the pixel order
    labels = np.zeros((48, 64), np.uint8)
    Image.fromarray(labels).save(tmp_path / "m.png")
    code, out, err = run_cli("decrypt-mask", tmp_path / "m.png", "--key", tmp_path / "k.key", "--like",
                             tmp_path / "e.jpg", "-o", tmp_path / "dm.png")
    assert code != 0 and "--image" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("decrypt-mask", tmp_path / "m.png", "--key", tmp_path / "k.key", "--like",
                             tmp_path / "e.jpg", "--image", tmp_path / "in.png", "-o", tmp_path / "dm.png")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "dm.png")).shape == (40, 56)


def test_cli_segment_format_jpeg_refuses_a_bad_block_size_once(run_cli, tmp_path):
    img, _ = grey_block_image(32, 32, seed=3)
    Image.fromarray(img).save(tmp_path / "in.png")
    code, out, err = run_cli("segment", tmp_path / "in.png", "--local", "src/encseg/assets/demo.safetensors",
                             "--format", "jpeg", "--scheme", "bs-np-cs", "--block-size", "12", "-o", tmp_path / "o")
    assert code != 0 and "multiple of 8" in err and len(err.strip().splitlines()) == 1
