"""Fuzzing POST /v1/segment: a corpus of bad bodies (truncated, oversized, wrong-mode, 16-bit,
zero-size, non-image, hostile chunks and JSON) plus hypothesis-generated bodies, fields and PNG
mutations. Every answer must be a 2xx or a 4xx with a JSON message, and the server keeps serving.
The number of requests tried is written to test-artifacts/service-fuzz.json and printed."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from _service_support import chunk, png_bytes, raw_png, scene, serve, stand_in_segmenter, zero_bomb
from encseg.cipher import Key, Scheme, encrypt
from encseg.cipher.io import encode_png, metadata_text
from encseg.service.app import ServiceConfig, create_app
from encseg.service.validation import Limits

warnings.filterwarnings("ignore", message=".*httpx2.*")
from fastapi.testclient import TestClient  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_body_bytes=256 * 1024, max_pixels=128 * 128)
EXAMPLES = int(os.environ.get("ENCSEG_FUZZ_EXAMPLES", 150))
TRIED = {"corpus": 0, "corpus_over_http": 0, "hypothesis": 0}

SCHEME = Scheme.parse("bs-np-cs")
_ENC = encrypt(scene(32, 48), Key.generate(), SCHEME)
VALID = encode_png(_ENC.data, metadata_text(SCHEME, _ENC.original_size))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(stand_in_segmenter(), ServiceConfig(limits=LIMITS)), raise_server_exceptions=False) as c:
        yield c
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "service-fuzz.json").write_text(json.dumps({**TRIED, "total": sum(TRIED.values())}) + "\n")
    print(f"\nservice fuzz: {sum(TRIED.values())} requests tried {TRIED}")


def check(r) -> None:
    """2xx, or 4xx with a JSON {"detail": ...}; never a 5xx."""
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert isinstance(r.json()["detail"], (str, list)) and r.json()["detail"]


# -- the corpus ---------------------------------------------------------------------------------

def _ihdr_png(width, height, depth, ctype, interlace=0, rows=None, extra=b""):
    """A PNG with a real image-data stream for the given header."""
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype] * depth // 8 or 1
    rows = rows if rows is not None else height
    raw = b"".join(b"\x00" + b"\x7f" * (width * bpp) for _ in range(rows))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, interlace)
    plte = chunk(b"PLTE", b"\x00\x00\x00" * 4) if ctype == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + plte + extra + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def corpus() -> list[tuple[str, dict]]:
    """(name, request kwargs) of bodies a careless or hostile client sends."""
    img = scene(32, 48)
    items: list[tuple[str, bytes]] = []
    for cut in (1, 8, 16, 29, 33, 60, len(VALID) // 2, len(VALID) - 13, len(VALID) - 1):
        items.append((f"truncated-{cut}", VALID[:cut]))
    items += [
        ("oversized-pixels", raw_png(4096, 4096)),
        ("bomb", zero_bomb(2048, 2048)),
        ("huge-header", raw_png(2**31 - 1, 1)),
        ("wide", raw_png(1_000_000, 1)),
        ("zero-width", raw_png(0, 32)),
        ("zero-height", raw_png(32, 0)),
        ("zero-both", raw_png(0, 0)),
        ("16bit-rgb", _ihdr_png(32, 32, 16, 2)),
        ("16bit-rgba", _ihdr_png(32, 32, 16, 6)),
        ("16bit-grey", png_bytes(img[..., 0].astype(np.uint16) * 257)),
        ("grey", png_bytes(img[..., 0])),
        ("grey-alpha", png_bytes(Image.fromarray(img).convert("LA"))),
        ("palette", png_bytes(Image.fromarray(img).convert("P"))),
        ("1bit", png_bytes(Image.fromarray(img).convert("1"))),
        ("rgba-transparent", png_bytes(np.dstack([img, np.zeros(img.shape[:2], np.uint8)]))),
        ("interlaced-rgb", _ihdr_png(32, 48, 8, 2, interlace=1)),
        ("bad-interlace", _ihdr_png(32, 32, 8, 2, interlace=7)),
        ("bad-depth", _ihdr_png(32, 32, 8, 2)[:24] + b"\x05" + _ihdr_png(32, 32, 8, 2)[25:]),
        ("short-idat", _ihdr_png(32, 32, 8, 2, rows=3)),
        ("not-a-multiple", png_bytes(scene(33, 47))),
        ("tiny", png_bytes(np.zeros((1, 1, 3), np.uint8))),
        ("crc-broken", VALID[:29] + b"\x00\x00\x00\x00" + VALID[33:]),
        ("length-ffff", VALID[:33] + b"\xff\xff\xff\xff" + VALID[37:]),
        ("no-iend", VALID[:-12]),
        ("two-ihdr", VALID[:33] + VALID[8:33] + VALID[33:]),
        ("empty", b""),
        ("text", b"please segment this"),
        ("json-text", b'{"image": "x"}'),
        ("html", b"<html><body>hi</body></html>"),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="1e9" height="1e9"/>'),
        ("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 64),
        ("zip", b"PK\x03\x04" + b"\x00" * 64),
        ("gzip", zlib.compress(b"\x00" * 100000)),
        ("jpeg", _jpeg(img)),
        ("gif", _pillow(img, "GIF")),
        ("bmp", _pillow(img, "BMP")),
        ("webp", _pillow(img, "WEBP")),
        ("tiff", _pillow(img, "TIFF")),
        ("signature-only", b"\x89PNG\r\n\x1a\n"),
        ("encseg-bad-json", raw_png(32, 48, extra_chunks=chunk(b"tEXt", b"encseg\x00{not json"))),
        ("encseg-deep-json", raw_png(32, 48, extra_chunks=chunk(b"tEXt", b"encseg\x00" + b"[" * 100000))),
        ("encseg-wrong-version", encode_png(_ENC.data, {"encseg": json.dumps({"version": 9, "scheme": {}})})),
        ("encseg-bad-size", encode_png(_ENC.data, {"encseg": json.dumps({"version": 1, "scheme": SCHEME.to_dict(), "original_size": [1, -4]})})),
        ("encseg-twice", raw_png(32, 48, extra_chunks=2 * chunk(b"tEXt", b"encseg\x00{}"))),
        ("many-chunks", raw_png(32, 48, extra_chunks=chunk(b"teSt", b"") * 20000)),
    ]
    requests = []
    for name, body in items:
        requests.append((f"multipart:{name}", {"files": {"image": ("x.png", body, "image/png")}, "data": {"scheme": "bs-np-cs"}}))
        requests.append((f"raw:{name}", {"content": body, "headers": {"content-type": "image/png"}}))
    b64 = base64.b64encode(VALID).decode()
    for name, fields in [
        ("scheme-unknown", {"scheme": "rot13"}), ("scheme-unicode-digit", {"scheme": "ps\u00b2"}),
        ("scheme-json-bad", {"scheme": "{"}), ("scheme-json-deep", {"scheme": "{" + '"a":' * 3000 + "1"}),
        ("scheme-group-zero", {"scheme": "bs-ps0"}), ("scheme-huge-group", {"scheme": "ps" + "9" * 400}),
        ("block-size-text", {"scheme": "bs", "block_size": "sixteen"}), ("block-size-huge", {"scheme": "bs", "block_size": "9" * 500}),
        ("block-size-zero", {"scheme": "bs", "block_size": "0"}), ("topk-negative", {"topk": "-1"}),
        ("topk-float", {"topk": "1.5"}), ("topk-huge", {"topk": "9" * 400}), ("format-odd", {"format": "gif"}),
        ("original-size-odd", {"original_size": "axb"}), ("original-size-wrong", {"original_size": "1x1"}),
        ("key-field", {"key": "00" * 32}), ("unknown-field", {"colour": "blue"}),
    ]:
        requests.append((f"fields:{name}", {"files": {"image": ("x.png", VALID, "image/png")}, "data": fields}))
    for name, body in [
        ("json-array", b"[1,2,3]"), ("json-null", b"null"), ("json-deep", b"[" * 100000 + b"]" * 100000),
        ("json-nan-topk", ('{"image":"%s","topk":NaN}' % b64).encode()),
        ("json-inf-topk", ('{"image":"%s","topk":Infinity}' % b64).encode()),
        ("json-inf-block", ('{"image":"%s","scheme":"bs","block_size":-Infinity}' % b64).encode()),
        ("json-image-int", b'{"image": 5}'), ("json-image-bad-b64", b'{"image": "%%%"}'),
        ("json-scheme-list", ('{"image":"%s","scheme":[1,2]}' % b64).encode()),
        ("json-scheme-steps-odd", ('{"image":"%s","scheme":{"steps":[{"name":{"a":1}},{"name":[]}]}}' % b64).encode()),
        ("json-scheme-group-float", ('{"image":"%s","scheme":{"steps":[{"name":"pixel-shuffle","group":2.5}]}}' % b64).encode()),
        ("json-scheme-bool-bs", ('{"image":"%s","scheme":{"block_size":true,"steps":[]}}' % b64).encode()),
        ("json-original-size-bools", ('{"image":"%s","original_size":[true,false]}' % b64).encode()),
        ("json-nested-key", ('{"image":"%s","scheme":{"steps":[{"name":"x","secret_key":1}]}}' % b64).encode()),
        ("json-bad-utf8", b'{"image": "\xff\xfe"}'),
    ]:
        requests.append((name, {"content": body, "headers": {"content-type": "application/json"}}))
    for name, kwargs in [
        ("ctype-none", {"content": VALID}),
        ("ctype-jpeg", {"content": VALID, "headers": {"content-type": "image/jpeg"}}),
        ("ctype-form-urlencoded", {"content": b"image=abc", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        ("multipart-no-boundary", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}),
        ("multipart-garbage", {"content": b"\x00" * 500, "headers": {"content-type": "multipart/form-data; boundary=zz"}}),
        ("multipart-two-images", {"files": [("image", ("a.png", VALID, "image/png")), ("image", ("b.png", VALID, "image/png"))]}),
        ("multipart-scheme-file", {"files": {"image": ("a.png", VALID, "image/png"), "scheme": ("s", b"bs", "text/plain")}}),
        ("multipart-image-text", {"data": {"image": "not a file"}}),
        ("multipart-too-many-fields", {"files": {"image": ("a.png", VALID, "image/png")}, "data": {f"f{i}": "x" for i in range(40)}}),
        ("body-over-limit", {"content": b"\x00" * (LIMITS.max_body_bytes + 1), "headers": {"content-type": "image/png"}}),
        ("multipart-over-limit", {"files": {"image": ("a.png", b"\x00" * (LIMITS.max_body_bytes + 1), "image/png")}}),
    ]:
        requests.append((name, kwargs))
    return requests


def _pillow(img, fmt):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _jpeg(img):
    return _pillow(img, "JPEG")


CORPUS = corpus()


def test_corpus_of_bad_bodies_gets_only_4xx_or_2xx(client):
    statuses = {}
    for name, kwargs in CORPUS:
        r = client.post("/v1/segment", **kwargs)
        check(r)
        statuses[name] = r.status_code
        TRIED["corpus"] += 1
    # spot checks that the corpus really reaches the refusals it aims at
    assert statuses["raw:bomb"] == 413 and statuses["raw:oversized-pixels"] == 413
    assert statuses["raw:16bit-rgb"] == 415 and statuses["raw:jpeg"] == 415 and statuses["raw:zero-width"] == 400
    assert statuses["fields:key-field"] == 400 and statuses["body-over-limit"] == 413
    assert statuses["multipart:not-a-multiple"] == 422 and statuses["raw:encseg-deep-json"] in (413, 422)
    assert statuses["json-inf-topk"] == 400 and statuses["fields:scheme-unicode-digit"] == 422
    assert sum(s >= 400 for s in statuses.values()) >= len(statuses) - 5
    r = client.post("/v1/segment", files={"image": ("x.png", VALID, "image/png")})
    assert r.status_code == 200 and client.get("/healthz").status_code == 200


def test_corpus_over_a_real_loopback_server_keeps_it_serving():
    import httpx

    with serve(stand_in_segmenter(), ServiceConfig(limits=LIMITS)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for name, kwargs in CORPUS:
            check(c.post("/v1/segment", **kwargs))
            TRIED["corpus_over_http"] += 1
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/segment", files={"image": ("x.png", VALID, "image/png")}).status_code == 200


# -- hypothesis -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(body=st.binary(max_size=2048), ctype=st.sampled_from(["image/png", "application/json", "multipart/form-data",
                                                               "multipart/form-data; boundary=b", "text/plain", ""]))
def test_arbitrary_bodies(client, body, ctype):
    TRIED["hypothesis"] += 1
    check(client.post("/v1/segment", content=body, headers={"content-type": ctype} if ctype else {}))


@st.composite
def mutated_png(draw):
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut" and data:
            i = draw(st.integers(0, len(data)))
            data = data[:i] + data[i + draw(st.integers(1, 64)):]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
        else:  # rewrite IHDR fields with a valid CRC, so the parser gets past the checksum
            w, h = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
            depth, ctype, inter = draw(st.sampled_from([1, 2, 4, 8, 16, 3])), draw(st.sampled_from([0, 2, 3, 4, 6, 7])), draw(st.integers(0, 2))
            ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, inter)
            data = bytearray(VALID[:8] + chunk(b"IHDR", ihdr) + VALID[33:])
    return bytes(data)


@FUZZ
@given(data=mutated_png(), as_json=st.booleans())
def test_mutated_pngs(client, data, as_json):
    TRIED["hypothesis"] += 1
    if as_json:
        r = client.post("/v1/segment", json={"image": base64.b64encode(data).decode(), "scheme": "bs-np-cs"})
    else:
        r = client.post("/v1/segment", files={"image": ("x.png", data, "image/png")})
    check(r)


field_names = st.sampled_from(["scheme", "block_size", "original_size", "topk", "format", "key", "Key", "x", "image2"]) | st.text(max_size=12)
field_values = st.sampled_from(["bs-np-cs", "bs-ps4-np-cs", "plain", "16", "0", "-1", "3", "json", "png", "32x48", "1e9",
                                '{"version":1,"block_size":16,"steps":[]}', '{"steps":[{"name":"pixel-shuffle","group":3}]}']) | st.text(max_size=40)


@FUZZ
@given(fields=st.dictionaries(field_names, field_values, max_size=5))
def test_arbitrary_form_fields(client, fields):
    TRIED["hypothesis"] += 1
    fields = {k: v for k, v in fields.items() if k != "image"}
    r = client.post("/v1/segment", files={"image": ("x.png", VALID, "image/png")}, data=fields)
    check(r)
    if any("key" in k.lower() for k in fields):
        assert r.status_code == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["scheme", "block_size", "original_size", "topk", "format"]) | st.text(max_size=8),
                            json_values, max_size=5), image=st.sampled_from(["valid", "garbage", "missing"]))
def test_arbitrary_json_members(client, body, image):
    TRIED["hypothesis"] += 1
    if image == "valid":
        body["image"] = base64.b64encode(VALID).decode()
    elif image == "garbage":
        body["image"] = base64.b64encode(b"garbage").decode()
    check(client.post("/v1/segment", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}))


def test_the_fuzzed_server_still_serves(client):
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/segment", files={"image": ("x.png", VALID, "image/png")})
    assert r.status_code == 200
    assert sum(TRIED.values()) >= len(CORPUS) * 2
