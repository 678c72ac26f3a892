"""A hostile corpus against the service (issue 13): malformed PNG chunk streams, decompression bombs,
hostile field values and encodings, key material in every place a request can carry it, sizes,
concurrency (every response exactly what its own request asked), and -- on a real uvicorn on
127.0.0.1 -- framing and slow clients. Every answer must be 2xx or a 4xx with a JSON message, or a
503 with Retry-After where the service is full; never another 5xx, never a hang, security headers
on every response, no key and no long client text echoed, and /healthz still answers afterwards.

The in-process cases use the ASGI app directly (fast); only framing and slow clients need sockets.
The number of requests is written to test-artifacts/hostile-service.json (docs/security.md cites it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import struct
import time
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from _service_support import ServerThread, chunk, scene, stand_in_segmenter
from encseg.cipher import Key, Scheme, encrypt
from encseg.cipher.io import encode_png, metadata_text
from encseg.service.app import create_app
from encseg.service.server import guarded_protocol
from encseg.service.settings import Limits, ServiceConfig
from encseg.service.validation import KEY_REFUSAL

warnings.filterwarnings("ignore", message=".*httpx2.*")
from fastapi.testclient import TestClient  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_body_bytes=512 * 1024, max_pixels=256 * 256, max_side=1024, max_chunks=256,
                max_ancillary_bytes=8 * 1024, max_text_bytes=16 * 1024, max_field_bytes=4096)
CONFIG = ServiceConfig(limits=LIMITS, max_queue_pixels=8 * 256 * 256, header_timeout_s=0.6, idle_timeout_s=0.6,
                       body_timeout_s=2.0, keepalive_s=1.0, max_connections=24, max_inflight=32)
COUNT = {"in_process": 0, "concurrent": 0, "sockets": 0}
SECRET = Key.generate().hex()
SCHEME = Scheme.parse("bs-np-cs")
_ENC = encrypt(scene(32, 48), Key.generate(), SCHEME)
VALID = encode_png(_ENC.data, metadata_text(SCHEME, _ENC.original_size))
SIG = b"\x89PNG\r\n\x1a\n"


def _valid_png(mod3: int) -> bytes:
    """A valid ciphertext PNG whose length is mod3 (mod 3): its base64 has no padding when 0 (the
    PNG's length varies with the key, so draw keys until it fits; each draw fits about 1 in 3)."""
    for _ in range(200):
        enc = encrypt(scene(32, 48), Key.generate(), SCHEME)
        png = encode_png(enc.data, metadata_text(SCHEME, enc.original_size))
        if len(png) % 3 == mod3:
            return png
    raise AssertionError("no PNG of that length")


B64_FULL = base64.b64encode(_valid_png(0)).decode()  # no padding
B64_PAD = base64.b64encode(_valid_png(1)).decode()  # "==" padding


def _nonzero_tail_bits(b64: str) -> str:
    """The same bytes written non-canonically: the unused low bits of the last character before "=="
    set (decoders that ignore them would accept two spellings of one image)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert b64.endswith("==")
    return b64[:-3] + alphabet[alphabet.index(b64[-3]) | 1] + "=="
CSP = "default-src 'self'; script-src 'self'"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(stand_in_segmenter(), CONFIG), raise_server_exceptions=False) as c:
        yield c
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    total = sum(COUNT.values())
    (out / "hostile-service.json").write_text(json.dumps({**COUNT, "total": total}) + "\n")
    print(f"\nhostile service corpus: {total} requests {COUNT}")


def check(r, allow_503: bool = False) -> None:
    """The rules every answer follows, whatever was sent."""
    status = r.status_code
    assert status < 500 or (allow_503 and status == 503), f"{status}: {r.text[:300]}"
    assert r.headers.get("content-security-policy", "").startswith(CSP)
    assert r.headers.get("x-content-type-options") == "nosniff" and r.headers.get("referrer-policy") == "no-referrer"
    if status >= 400:
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and len(detail) <= 300
        assert all(32 <= ord(c) < 127 for c in detail), detail
        assert SECRET not in r.text and SECRET.upper() not in r.text
        if status == 503:
            assert int(r.headers["retry-after"]) >= 1


# -- PNG chunk streams ------------------------------------------------------------------------------

def ihdr(w=32, h=48, depth=8, ctype=2, interlace=0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))


def idat_for(w=32, h=48, fill=b"\x7f", extra_rows=0, level=6) -> bytes:
    raw = b"".join(b"\x00" + fill * (3 * w) for _ in range(h + extra_rows))
    return zlib.compress(raw, level)


def png(*chunks: bytes) -> bytes:
    return SIG + b"".join(chunks)


IEND = chunk(b"IEND", b"")
GOOD_IDAT = chunk(b"IDAT", idat_for())


def zero_rows(w: int, h: int) -> bytes:
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * w)
    return b"".join(comp.compress(row) for _ in range(h)) + comp.flush()


def chunk_corpus() -> list[tuple[str, bytes, int | tuple[int, ...]]]:
    """(name, PNG bytes, expected status or statuses)."""
    bad_crc = lambda c: c[:-4] + bytes([c[-4] ^ 1]) + c[-3:]  # noqa: E731
    text = lambda k, v: chunk(b"tEXt", k + b"\x00" + v)  # noqa: E731
    meta = metadata_text(SCHEME, (48, 32))["encseg"].encode()
    items: list[tuple[str, bytes, int | tuple[int, ...]]] = [
        ("good", png(ihdr(), GOOD_IDAT, IEND), 200),
        ("good-with-meta", png(ihdr(), text(b"encseg", meta), GOOD_IDAT, IEND), 200),
        # a second header: the bomb of the review (IHDR 512x256 then 9000x9000 and zeros)
        ("second-ihdr-bomb", png(ihdr(256, 128), ihdr(9000, 9000), chunk(b"IDAT", zero_rows(9000, 64)), IEND), 400),
        ("second-ihdr-same", png(ihdr(), ihdr(), GOOD_IDAT, IEND), 400),
        ("ihdr-after-idat", png(ihdr(), GOOD_IDAT, ihdr(), IEND), 400),
        ("ihdr-not-first", png(text(b"a", b"b"), ihdr(), GOOD_IDAT, IEND), 400),
        ("ihdr-short", png(chunk(b"IHDR", b"\x00" * 12), GOOD_IDAT, IEND), 400),
        ("ihdr-long", png(chunk(b"IHDR", b"\x00" * 14), GOOD_IDAT, IEND), 400),
        # image data that does not match its header
        ("idat-inflates-bigger", png(ihdr(), chunk(b"IDAT", zero_rows(4096, 4096)), IEND), 400),
        ("idat-extra-rows", png(ihdr(), chunk(b"IDAT", idat_for(extra_rows=1)), IEND), 400),
        ("idat-short", png(ihdr(), chunk(b"IDAT", idat_for()[:-40]), IEND), 400),
        ("idat-trailing-zlib", png(ihdr(), chunk(b"IDAT", idat_for() + b"junk"), IEND), 400),
        ("idat-not-zlib", png(ihdr(), chunk(b"IDAT", b"\x00" * 64), IEND), 400),
        ("idat-bad-filter", png(ihdr(), chunk(b"IDAT", zlib.compress(b"\x09" + b"\x00" * 96 + b"".join(b"\x00" + b"\x00" * 96 for _ in range(47)))), IEND), 400),
        ("idat-split", png(ihdr(), *(chunk(b"IDAT", idat_for()[i : i + 40]) for i in range(0, len(idat_for()), 40)), IEND), 200),
        ("idat-not-consecutive", png(ihdr(), chunk(b"IDAT", idat_for()[:20]), text(b"a", b"b"), chunk(b"IDAT", idat_for()[20:]), IEND), 400),
        ("no-idat", png(ihdr(), IEND), 400),
        ("empty-idat", png(ihdr(), chunk(b"IDAT", b""), IEND), 400),
        # order and placement rules
        ("plte-after-idat", png(ihdr(), GOOD_IDAT, chunk(b"PLTE", b"\x00" * 3), IEND), 400),
        ("gama-after-idat", png(ihdr(), GOOD_IDAT, chunk(b"gAMA", b"\x00\x00\xb1\x8f"), IEND), 400),
        ("phys-after-idat", png(ihdr(), GOOD_IDAT, chunk(b"pHYs", b"\x00" * 9), IEND), 400),
        ("gama-twice", png(ihdr(), chunk(b"gAMA", b"\x00\x00\xb1\x8f"), chunk(b"gAMA", b"\x00\x00\xb1\x8f"), GOOD_IDAT, IEND), 400),
        ("gama-ok", png(ihdr(), chunk(b"gAMA", b"\x00\x00\xb1\x8f"), GOOD_IDAT, IEND), 200),
        ("srgb-and-iccp", png(ihdr(), chunk(b"sRGB", b"\x00"), chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"x")), GOOD_IDAT, IEND), 400),
        ("trns-rgb", png(ihdr(), chunk(b"tRNS", b"\x00" * 6), GOOD_IDAT, IEND), 422),
        ("actl-apng", png(ihdr(), chunk(b"acTL", b"\x00" * 8), GOOD_IDAT, IEND), 415),
        ("unknown-critical", png(ihdr(), chunk(b"ABCD", b"x"), GOOD_IDAT, IEND), 400),
        ("unknown-ancillary-ok", png(ihdr(), chunk(b"prVt", b"x" * 100), GOOD_IDAT, IEND), 200),
        ("ancillary-too-big", png(ihdr(), chunk(b"prVt", b"x" * (LIMITS.max_ancillary_bytes + 1)), GOOD_IDAT, IEND), 413),
        ("bad-type-bytes", png(ihdr(), chunk(b"a\x00c!", b""), GOOD_IDAT, IEND), 400),
        ("too-many-chunks", png(ihdr(), *([chunk(b"prVt", b"")] * (LIMITS.max_chunks + 1)), GOOD_IDAT, IEND), 400),
        ("iend-not-empty", png(ihdr(), GOOD_IDAT, chunk(b"IEND", b"x")), 400),
        ("data-after-iend", png(ihdr(), GOOD_IDAT, IEND, b"trailing"), 400),
        ("chunk-after-iend", png(ihdr(), GOOD_IDAT, IEND, text(b"a", b"b")), 400),
        ("no-iend", png(ihdr(), GOOD_IDAT), 400),
        ("length-ffffffff", png(ihdr(), b"\xff\xff\xff\xffIDAT" + b"\x00" * 16), 400),
        ("length-past-end", png(ihdr(), struct.pack(">I", 10**6) + b"IDAT" + b"\x00" * 16), 400),
        ("crc-ihdr", png(bad_crc(ihdr()), GOOD_IDAT, IEND), 400),
        ("crc-idat", png(ihdr(), bad_crc(GOOD_IDAT), IEND), 400),
        ("crc-text", png(ihdr(), bad_crc(text(b"a", b"b")), GOOD_IDAT, IEND), 400),
        ("crc-iend", png(ihdr(), GOOD_IDAT, bad_crc(IEND)), 400),
        # headers the server refuses from the IHDR alone
        ("huge-header", png(ihdr(2**31 - 1, 2**31 - 1), GOOD_IDAT, IEND), (400, 413)),
        ("sides-over", png(ihdr(2000, 16), GOOD_IDAT, IEND), 413),
        ("pixels-over", png(ihdr(512, 512), GOOD_IDAT, IEND), 413),
        ("depth-7", png(ihdr(depth=7), GOOD_IDAT, IEND), 400),
        ("grey-16", png(ihdr(ctype=0, depth=16), GOOD_IDAT, IEND), 415),
        ("palette", png(ihdr(ctype=3), chunk(b"PLTE", b"\x00" * 3), GOOD_IDAT, IEND), 415),
        ("interlace-2", png(ihdr(interlace=2), GOOD_IDAT, IEND), 400),
        ("zero-width", png(ihdr(0, 48), GOOD_IDAT, IEND), 400),
        # text chunks
        ("text-named-key", png(ihdr(), text(b"key", SECRET.encode()), GOOD_IDAT, IEND), 400),
        ("text-named-Secret", png(ihdr(), text(b"Secret", b"x"), GOOD_IDAT, IEND), 400),
        ("text-hex-value", png(ihdr(), text(b"Comment", SECRET.encode()), GOOD_IDAT, IEND), 400),
        ("ztxt-key", png(ihdr(), chunk(b"zTXt", b"key\x00\x00" + zlib.compress(SECRET.encode())), GOOD_IDAT, IEND), 400),
        ("ztxt-bomb", png(ihdr(), chunk(b"zTXt", b"c\x00\x00" + zlib.compress(b"a" * 10**6, 9)), GOOD_IDAT, IEND), 413),
        ("ztxt-bad-method", png(ihdr(), chunk(b"zTXt", b"c\x00\x05xx"), GOOD_IDAT, IEND), 400),
        ("itxt-bomb", png(ihdr(), chunk(b"iTXt", b"c\x00\x01\x00\x00\x00" + zlib.compress(b"a" * 10**6, 9)), GOOD_IDAT, IEND), 413),
        ("itxt-hex", png(ihdr(), chunk(b"iTXt", b"c\x00\x00\x00\x00\x00" + SECRET.encode()), GOOD_IDAT, IEND), 400),
        ("itxt-bad-utf8", png(ihdr(), chunk(b"iTXt", b"c\x00\x00\x00\x00\x00\xff\xfe"), GOOD_IDAT, IEND), 400),
        ("text-no-keyword", png(ihdr(), chunk(b"tEXt", b"\x00abc"), GOOD_IDAT, IEND), 400),
        ("text-too-much", png(ihdr(), *([text(b"c", b"x" * 8000)] * 3), GOOD_IDAT, IEND), 413),
        ("encseg-twice", png(ihdr(), text(b"encseg", meta), text(b"encseg", meta), GOOD_IDAT, IEND), 400),
        ("encseg-in-ztxt", png(ihdr(), chunk(b"zTXt", b"encseg\x00\x00" + zlib.compress(meta)), GOOD_IDAT, IEND), 200),
    ]
    for name, body in [
        ("digits-5000", b'{"version":1,"scheme":{"block_size":' + b"9" * 5000 + b',"steps":[]}}'),
        ("digits-30", b'{"version":1,"scheme":{"block_size":' + b"9" * 30 + b',"steps":[]}}'),
        ("float-huge", b'{"version":1,"scheme":{"block_size":1e999,"steps":[]}}'),
        ("nan", b'{"version":1,"scheme":{"block_size":NaN,"steps":[]}}'),
        ("deep", b"[" * 5000 + b"]" * 5000),
        ("deep-object", b'{"version":1,"scheme":' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}"),
        ("dup-names", b'{"version":1,"version":1,"scheme":{"steps":[]}}'),
        ("many-fields", b'{"version":1,"scheme":{' + b",".join(b'"f%d":1' % i for i in range(1000)) + b"}}"),
        ("nested-key", b'{"version":1,"scheme":{"steps":[{"name":"block-scramble","key":"x"}]}}'),
        ("version-bool", b'{"version":true,"scheme":{"steps":[]}}'),
        ("size-bools", b'{"version":1,"scheme":{"steps":[]},"original_size":[true,false]}'),
        ("size-wrong", b'{"version":1,"scheme":{"block_size":16,"steps":[]},"original_size":[1,1]}'),
        ("extra-member", b'{"version":1,"scheme":{"steps":[]},"comment":"x"}'),
        ("not-object", b"[1,2,3]"),
        ("latin1", b'{"version":1,"scheme":{"steps":[{"name":"\xe9"}]}}'),
    ]:
        items.append((f"encseg-{name}", png(ihdr(), text(b"encseg", body), GOOD_IDAT, IEND), (400, 413, 422)))
    return items


def mutated_streams(n: int, seed: int = 13) -> list[bytes]:
    """Random recombinations of chunks (seeded): reordered, duplicated, dropped, corrupted."""
    rng = random.Random(seed)
    pool = [ihdr(), ihdr(9000, 9000), GOOD_IDAT, chunk(b"IDAT", idat_for()[:30]), IEND, chunk(b"PLTE", b"\x00" * 3),
            chunk(b"gAMA", b"\x00\x00\xb1\x8f"), chunk(b"tEXt", b"encseg\x00" + VALID[:20]), chunk(b"prVt", b"x" * 9000),
            chunk(b"tRNS", b"\x00" * 6), chunk(b"acTL", b"\x00" * 8), chunk(b"zTXt", b"z\x00\x00" + zlib.compress(b"b" * 50000))]
    out = []
    for _ in range(n):
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 7))]
        if rng.random() < 0.7:
            parts.insert(0, ihdr())
        data = bytearray(SIG + b"".join(parts))
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
        out.append(bytes(data))
    return out


def test_png_chunk_streams_are_checked_whole_before_decoding(client, monkeypatch):
    import encseg.service.validation as v

    import dataclasses

    decoded = []
    real = v.PNG.decode
    spy = dataclasses.replace(v.PNG, decode=lambda data, header: (decoded.append(header.width), real(data, header))[1])
    monkeypatch.setattr(v, "FORMATS", [spy if f.name == "png" else f for f in v.FORMATS])
    statuses = {}
    for name, body, want in chunk_corpus():
        for how in ("raw", "multipart"):
            t0 = time.perf_counter()
            if how == "raw":
                r = client.post("/v1/segment?scheme=bs-np-cs" if "meta" not in name and "encseg" not in name else "/v1/segment",
                                content=body, headers={"content-type": "image/png"})
            else:
                r = client.post("/v1/segment", files={"image": ("x.png", body, "image/png")},
                                data={} if "encseg" in name or "meta" in name else {"scheme": "bs-np-cs"})
            COUNT["in_process"] += 1
            check(r)
            assert time.perf_counter() - t0 < 3.0, name
            statuses[(name, how)] = r.status_code
            wanted = want if isinstance(want, tuple) else (want,)
            assert r.status_code in wanted, (name, how, r.status_code, r.text[:200])
    # nothing but well-formed files reached the decoder: never the 9000x9000 header, never a bomb
    assert decoded and max(decoded) <= 32


def test_random_chunk_recombinations_never_fail_the_server(client):
    for body in mutated_streams(800):
        r = client.post("/v1/segment?scheme=bs-np-cs", content=body, headers={"content-type": "image/png"})
        COUNT["in_process"] += 1
        check(r)


# -- fields, encodings, keys ------------------------------------------------------------------------

def field_cases() -> list[tuple[str, dict, tuple[int, ...]]]:
    b64 = base64.b64encode(VALID).decode()
    files = {"image": ("x.png", VALID, "image/png")}
    cases: list[tuple[str, dict, tuple[int, ...]]] = []
    for bs in ["garbage", "-16", "true", "1e3", "16.0", "\u0663", "0", "257", "9" * 5000, " 16 ", "0x10", "8"]:
        cases.append((f"block_size-alone:{bs[:8]}", {"files": files, "data": {"block_size": bs}}, (413, 422) if len(bs) > 4096 else (200,) if bs == " 16 " else (422,)))
    for bs in [True, -16, 16.5, "16", None, [16], {"a": 1}, 10**30]:
        want = (200,) if bs in ("16", None) else (422, 400)
        cases.append((f"json-block_size:{str(bs)[:8]}", {"json": {"image": b64, "block_size": bs}}, want))
    for k in ["-1", "6", "1.5", "\u0661", "9" * 400, "true", ""]:
        cases.append((f"topk:{k[:6]}", {"files": files, "data": {"topk": k}}, (200,) if k == "" else (422,)))
    for s in ["axb", "1x1", "0x0", "48x32x1", "\u0664\u0668x32", "9" * 40 + "x1", "32X48"]:
        cases.append((f"size:{s[:8]}", {"files": files, "data": {"original_size": s}}, (200,) if s == "32X48" else (422,)))
    for f in ["gif", "PNG", "", "json\x00"]:
        cases.append((f"format:{f!r}", {"files": files, "data": {"format": f}}, (200,) if f in ("PNG", "") else (422,)))
    for s in [SECRET, SECRET.upper(), "bs-" + "9" * 5000, "\x1b[31mred", "{" * 3000, '{"steps":[' + ",".join(['{"name":"x"}'] * 5000) + "]}",
              "bs;rm -rf", "ps\u00b2", "<script>alert(1)</script>", "bs-np-cs\n", "A" * 43 + "="]:
        want = (400,) if s in (SECRET, SECRET.upper(), "A" * 43 + "=") else (400, 413, 422)  # whitespace too: 422
        cases.append((f"scheme:{s[:10]!r}", {"files": files, "data": {"scheme": s}}, want))
    hundred_k = '{"version":1,' + ",".join(f'"f{i}":1' for i in range(100_000)) + "}"
    cases.append(("scheme-100k-fields", {"content": json.dumps({"image": b64, "scheme": json.loads(hundred_k)}),
                                         "headers": {"content-type": "application/json"}}, (400, 413, 422)))
    # key material in every place
    for name, kw in [
        ("header-authorization", {"headers": {"authorization": f"Bearer {SECRET}"}}),
        ("header-proxy-authorization", {"headers": {"proxy-authorization": "Basic eA=="}}),
        ("header-x-key", {"headers": {"x-key": SECRET}}),
        ("header-x-api-key", {"headers": {"x-api-key": "abc"}}),
        ("header-x-encseg-secret", {"headers": {"x-encseg-secret": "1"}}),
        ("header-x-any-hex", {"headers": {"x-trace": SECRET}}),
        ("query-secret", {"params": {"secret": SECRET}}),
        ("query-token", {"params": {"token": "x"}}),
        ("query-hex-value", {"params": {"note": SECRET}}),
        ("query-b64-value", {"params": {"scheme": base64.b64encode(b"k" * 32).decode()}}),
        ("form-key", {"data": {"key": SECRET}}),
        ("form-KEY_HEX", {"data": {"KEY_HEX": "x"}}),
        ("form-password", {"data": {"password": "x"}}),
        ("form-hex-topk", {"data": {"topk": SECRET}}),
    ]:
        kw = {**kw, "files": files}
        cases.append((name, kw, (400,)))
    for name, body in [
        ("json-key", {"image": b64, "key": SECRET}), ("json-Key-nested", {"image": b64, "scheme": {"steps": [], "Key": 1}}),
        ("json-hex-deep", {"image": b64, "scheme": {"steps": [{"name": SECRET}]}}),
        ("json-secret", {"image": b64, "client_secret": "x"}),
    ]:
        cases.append((name, {"json": body}, (400,)))
    # GET routes refuse key headers too: the promise holds for the whole service
    cases.append(("get-info-x-key", {"method": "GET", "url": "/v1/info", "headers": {"x-key": SECRET}}, (400,)))
    cases.append(("get-healthz-auth", {"method": "GET", "url": "/healthz", "headers": {"authorization": "x"}}, (400,)))
    # encodings
    for name, content, ctype, want in [
        ("json-bom", b"\xef\xbb\xbf" + json.dumps({"image": b64}).encode(), "application/json", (200, 400)),
        ("json-utf16", json.dumps({"image": b64}).encode("utf-16"), "application/json", (200, 400)),
        ("json-bad-utf8", b'{"image":"\xff"}', "application/json", (400,)),
        ("json-dup-image", ('{"image":"%s","image":"%s"}' % (b64, b64)).encode(), "application/json", (400,)),
        ("json-digits", ('{"image":"%s","topk":%s}' % (b64, "9" * 5000)).encode(), "application/json", (400,)),
        ("json-deep", b"[" * 100000, "application/json", (400,)),
        ("json-nan", ('{"image":"%s","topk":NaN}' % b64).encode(), "application/json", (400,)),
        ("json-image-whitespace", json.dumps({"image": b64[:40] + "\n" + b64[40:]}).encode(), "application/json", (400,)),
        ("json-image-urlsafe", json.dumps({"image": base64.urlsafe_b64encode(VALID).decode()}).encode(), "application/json", (200, 400)),
        ("json-image-padding", json.dumps({"image": b64 + "===="}).encode(), "application/json", (400,)),
        # padding after a complete quantum, which b64decode(validate=True) alone ignores
        ("json-image-padding-full-quantum", json.dumps({"image": B64_FULL + "="}).encode(), "application/json", (400,)),
        ("json-image-padding-full-quantum-4", json.dumps({"image": B64_FULL + "===="}).encode(), "application/json", (400,)),
        ("json-image-full-quantum", json.dumps({"image": B64_FULL}).encode(), "application/json", (200,)),
        ("json-image-nonzero-tail-bits", json.dumps({"image": _nonzero_tail_bits(B64_PAD)}).encode(), "application/json", (400,)),
        ("json-upper-ctype", json.dumps({"image": b64}).encode(), "APPLICATION/JSON; charset=utf-8", (200,)),
        ("json-string", b'"just a string"', "application/json", (400,)),
        ("json-empty", b"", "application/json", (400,)),
        ("multipart-no-boundary", b"--x\r\n", "multipart/form-data", (400,)),
        ("multipart-long-boundary", b"--x\r\n", "multipart/form-data; boundary=" + "b" * 500, (400,)),
        ("multipart-garbage", b"\x00" * 500, "multipart/form-data; boundary=zz", (400,)),
        ("multipart-no-name", b'--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n', "multipart/form-data; boundary=zz", (400,)),
        ("multipart-header-flood", b"--zz\r\n" + b"X-A: b\r\n" * 200 + b"\r\nx\r\n--zz--\r\n", "multipart/form-data; boundary=zz", (400,)),
        ("multipart-bad-utf8-field", b'--zz\r\nContent-Disposition: form-data; name="scheme"\r\n\r\n\xff\xfe\r\n--zz\r\n'
         b'Content-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n' + VALID + b"\r\n--zz--\r\n",
         "multipart/form-data; boundary=zz", (400,)),
        ("multipart-unterminated", b'--zz\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + VALID, "multipart/form-data; boundary=zz", (400,)),
        ("form-urlencoded", b"image=abc", "application/x-www-form-urlencoded", (415,)),
        ("text-plain", VALID, "text/plain", (415,)),
        ("image-gif", VALID, "image/gif", (415,)),
        ("octet-stream", VALID, "application/octet-stream", (200,)),
        ("no-ctype", VALID, "", (415,)),
    ]:
        cases.append((name, {"content": content, "headers": {"content-type": ctype} if ctype else {}}, want))
    many = {"files": [("image", ("a.png", VALID, "image/png"))] + [(f"f{i}", (None, "x")) for i in range(20)]}
    cases += [
        ("multipart-too-many-parts", many, (400,)),
        ("multipart-two-images", {"files": [("image", ("a.png", VALID, "image/png")), ("image", ("b.png", VALID, "image/png"))]}, (400,)),
        ("multipart-scheme-file", {"files": {"image": ("a.png", VALID, "image/png"), "scheme": ("s.txt", b"bs", "text/plain")}}, (400,)),
        ("multipart-no-image", {"files": {"scheme": (None, "bs")}}, (400,)),
        ("field-over-limit", {"files": files, "data": {"scheme": "b" * (LIMITS.max_field_bytes + 1)}}, (413,)),
        ("field-twice-query-and-form", {"files": files, "data": {"topk": "1"}, "params": {"topk": "1"}}, (400,)),
        ("image-in-query", {"content": VALID, "headers": {"content-type": "image/png"}, "params": {"image": "x"}}, (400,)),
        ("body-over-limit", {"content": b"\x00" * (LIMITS.max_body_bytes + 1), "headers": {"content-type": "image/png"}}, (413,)),
        ("content-length-garbage", {"content": VALID, "headers": {"content-type": "image/png", "content-length": "12abc"}}, (400,)),
        ("long-path", {"method": "GET", "url": "/" + "a" * 5000}, (404,)),
        ("path-ansi", {"method": "GET", "url": "/%1b[31mx"}, (404,)),
        ("put-segment", {"method": "PUT", "url": "/v1/segment"}, (405,)),
        ("delete-healthz", {"method": "DELETE", "url": "/healthz"}, (405,)),
        ("static-traversal", {"method": "GET", "url": "/static/../app.py"}, (404,)),
        ("docs-assets-traversal", {"method": "GET", "url": "/docs-assets/%2e%2e/__init__.py"}, (404,)),
    ]
    return cases


def test_hostile_fields_encodings_and_key_material_get_clear_4xx(client, caplog):
    caplog.set_level(logging.INFO, logger="encseg.service")
    for name, kw, want in field_cases():
        kw = dict(kw)
        method, url = kw.pop("method", "POST"), kw.pop("url", "/v1/segment")
        if "data" in kw and "files" not in kw:
            kw["files"] = {"image": ("x.png", VALID, "image/png")}
        r = client.request(method, url, **kw)
        COUNT["in_process"] += 1
        check(r)
        assert r.status_code in want, (name, r.status_code, r.text[:200])
        if r.status_code == 400 and want == (400,) and ("key" in name or "secret" in name or "hex" in name or "auth" in name):
            assert r.json()["detail"] == KEY_REFUSAL, name
    records = [rec.getMessage() for rec in caplog.records]
    assert records and all(len(m) < 1000 for m in records)  # no client text in full, no 789 KB error
    assert not any(SECRET in m or SECRET.upper() in m for m in records)
    assert not any("\x1b" in m for m in records)


def test_a_second_ihdr_bomb_costs_the_server_nothing(client):
    import resource

    bomb = png(ihdr(256, 128), ihdr(9000, 9000), chunk(b"IDAT", zero_rows(9000, 9000)), IEND)
    assert len(bomb) < LIMITS.max_body_bytes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(6):
        r = client.post("/v1/segment?scheme=bs-np-cs", content=bomb, headers={"content-type": "image/png"})
        COUNT["in_process"] += 1
        check(r)
        assert r.status_code == 400 and "second IHDR" in r.json()["detail"]
    assert time.perf_counter() - t0 < 3.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: no 243 MB decode


# -- concurrency ----------------------------------------------------------------------------------

def test_every_batched_response_is_what_its_own_request_asked():
    seg = stand_in_segmenter()
    orig = seg.predict
    sizes = []

    def slow(images, topk=0):
        sizes.append(len(images))
        time.sleep(0.03)
        return orig(images, topk)

    seg.predict = slow
    app = create_app(seg, ServiceConfig(limits=LIMITS, max_batch=8, max_wait_ms=30))
    imgs = [(scene(32, 48, seed=s), k) for s, k in zip(range(40), [0, 1, 5, 2, 0, 3, 1, 4] * 5)]
    payloads = [(encode_png(encrypt(im, Key.generate(), SCHEME).data), k) for im, k in imgs]

    async def fire():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/v1/segment", files={"image": ("e.png", d, "image/png")},
                                                 data={"scheme": "bs-np-cs", "topk": str(k), "format": "json"})
                                          for d, k in payloads))

    responses = asyncio.run(fire())
    COUNT["concurrent"] += len(responses)
    assert max(sizes) > 1  # they really were batched
    for r, (d, k) in zip(responses, payloads):
        check(r)
        body = r.json()
        if k == 0:
            assert body["topk"] is None
        else:
            assert body["topk"]["k"] == k
            n = 48 * 32
            assert len(base64.b64decode(body["topk"]["classes"])) == k * n
            assert len(base64.b64decode(body["topk"]["probs"])) == 4 * k * n
        alone = seg.predict(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(__import__("io").BytesIO(d)))[None], k)[0]
        labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(__import__("io").BytesIO(base64.b64decode(body["labels_png"]))))
        assert np.array_equal(labels, alone.labels)


def test_a_full_queue_answers_503_with_retry_after_and_recovers():
    seg = stand_in_segmenter()
    orig = seg.predict

    def slow(images, topk=0):
        time.sleep(0.15)
        return orig(images, topk)

    seg.predict = slow
    cfg = ServiceConfig(limits=LIMITS, max_batch=1, max_queue_pixels=3 * 48 * 32 if 3 * 48 * 32 >= LIMITS.max_pixels
                        else LIMITS.max_pixels, queue_timeout_s=0.5, retry_after_s=3)
    app = create_app(seg, cfg)

    async def fire():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/v1/segment?scheme=bs-np-cs", content=VALID,
                                               headers={"content-type": "image/png"}) for _ in range(60)))
            after = await c.post("/v1/segment?scheme=bs-np-cs", content=VALID, headers={"content-type": "image/png"})
            health = await c.get("/healthz")
            return rs, after, health

    rs, after, health = asyncio.run(fire())
    COUNT["concurrent"] += len(rs) + 2
    codes = [r.status_code for r in rs]
    for r in rs:
        check(r, allow_503=True)
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    assert all(r.headers["retry-after"] == "3" for r in rs if r.status_code == 503)
    assert after.status_code == 200 and health.status_code == 200


# -- framing and slow clients, on a real uvicorn --------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    app = create_app(stand_in_segmenter(), CONFIG)
    srv = ServerThread(app)
    srv.server.config.http = guarded_protocol(CONFIG)
    for k, v in {"timeout_keep_alive": CONFIG.keepalive_s, "h11_max_incomplete_event_size": 16 * 1024}.items():
        setattr(srv.server.config, k, v)
    with srv:
        yield srv


def raw_exchange(port: int, data: bytes, *, wait: float = 3.0, trickle: float = 0.0, close_write: bool = False) -> bytes:
    """Send `data` (optionally one byte per `trickle` seconds) and read until the server closes or `wait` ends."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            if trickle:
                for b in data:
                    s.sendall(bytes([b]))
                    time.sleep(trickle)
            else:
                s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first: that is an answer too
        out = b""
        deadline = time.monotonic() + wait
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not part:
                break
            out += part
        return out


def statuses_of(reply: bytes) -> list[int]:
    return [int(line.split()[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def head(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_framing_cases_on_a_real_server(server):
    port = server.port
    multipart = (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
                 + VALID + b"\r\n--zz--\r\n")
    cases = [
        ("ok", head("POST", "/v1/segment?scheme=bs-np-cs", {"Content-Type": "image/png", "Content-Length": str(len(VALID)),
                                                          "Connection": "close"}, VALID), {200}),
        ("content-length-over-body", head("POST", "/v1/segment", {"Content-Type": "image/png", "Content-Length": "100000"},
                                          VALID[:100]), {408}),
        ("two-content-lengths", head("POST", "/v1/segment", {"Content-Type": "image/png", "Content-Length": "5",
                                                             "content-length": "6"}, b"12345"), {400}),
        ("chunked-ok", head("POST", "/v1/segment?scheme=bs-np-cs", {"Content-Type": "image/png", "Transfer-Encoding": "chunked",
                                                                   "Connection": "close"},
                            b"%x\r\n" % len(VALID) + VALID + b"\r\n0\r\n\r\n"), {200}),
        ("chunked-bad-size", head("POST", "/v1/segment", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                                  b"zz\r\nabc\r\n0\r\n\r\n"), {400}),
        ("chunked-never-ends", head("POST", "/v1/segment", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                                    b"10\r\n" + b"a" * 16 + b"\r\n"), {408}),
        ("chunked-over-limit", head("POST", "/v1/segment", {"Content-Type": "image/png", "Transfer-Encoding": "chunked"},
                                    b"".join(b"10000\r\n" + b"a" * 65536 + b"\r\n" for _ in range(10))), {413}),
        ("cl-and-chunked", head("POST", "/v1/segment", {"Content-Type": "image/png", "Content-Length": "4",
                                                        "Transfer-Encoding": "chunked"}, b"0\r\n\r\n"), {400, 415}),
        ("garbage-request-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50, {400}),
        ("bad-method-chars", b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
        ("header-too-large", head("GET", "/healthz", {"X-Big": "a" * 40000}), {400, 431}),
        ("header-no-colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", {400}),
        ("nul-in-header", b"GET /healthz HTTP/1.1\r\nHost: \x00\r\n\r\n", {400}),
        ("http10", b"GET /healthz HTTP/1.0\r\n\r\n", {200}),
        ("pipelined", head("GET", "/healthz", {}) + head("GET", "/v1/info", {}) + head("GET", "/nope", {"Connection": "close"}),
         {200, 404}),
        ("absolute-uri", b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", {200, 404}),
        ("expect-100", head("POST", "/v1/segment?scheme=bs-np-cs", {"Content-Type": "image/png", "Expect": "100-continue",
                                                                   "Content-Length": str(len(VALID)), "Connection": "close"}, VALID),
         {100, 200}),
        ("multipart-framed", head("POST", "/v1/segment?scheme=bs-np-cs", {"Content-Type": "multipart/form-data; boundary=zz",
                                                                         "Content-Length": str(len(multipart)), "Connection": "close"},
                                  multipart), {200}),
        ("key-header-raw", head("GET", "/healthz", {"X-Key": SECRET, "Connection": "close"}), {400}),
        ("upgrade-websocket", head("GET", "/healthz", {"Upgrade": "websocket", "Connection": "Upgrade, close"}), {200, 400, 404}),
    ]
    for name, data, allowed in cases:
        t0 = time.perf_counter()
        reply = raw_exchange(port, data, wait=4.0)
        COUNT["sockets"] += 1
        codes = statuses_of(reply)
        assert codes, (name, reply[:200])
        assert set(codes) <= allowed | {100}, (name, codes, reply[:300])
        assert all(c < 500 for c in codes), (name, reply[:300])
        assert time.perf_counter() - t0 < 4.5, name
        if codes[-1] >= 400:
            assert b"content-security-policy" in reply.lower(), name
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_slow_clients_are_cut_off_and_honest_ones_still_served(server):
    port = server.port
    t0 = time.perf_counter()
    # slowloris: headers one byte at a time, forever -> 408 and close at the header deadline
    reply = raw_exchange(port, head("GET", "/healthz", {"X-A": "b" * 200}), trickle=0.01, wait=3.0)
    COUNT["sockets"] += 1
    assert time.perf_counter() - t0 < 3.0 and (statuses_of(reply) in ([408], []))
    # a silent connection is closed too
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(3)
        t1 = time.perf_counter()
        assert s.recv(100) == b"" and time.perf_counter() - t1 < 2.0
    COUNT["sockets"] += 1
    # a body trickled slower than the idle timeout -> 408
    data = head("POST", "/v1/segment", {"Content-Type": "image/png", "Content-Length": str(len(VALID))})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.sendall(VALID[:10])
        time.sleep(1.0)
        try:
            s.sendall(VALID[10:20])
        except OSError:
            pass
        s.settimeout(3)
        reply = b""
        try:
            while part := s.recv(65536):
                reply += part
        except OSError:
            pass
    COUNT["sockets"] += 1
    assert statuses_of(reply) == [408]
    # many slow connections at once: the cap answers the excess with 503, honest requests still pass
    held = []
    try:
        for _ in range(CONFIG.max_connections + 10):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finishes its headers
            held.append(s)
        COUNT["sockets"] += len(held)
        time.sleep(0.1)
        refused = 0
        for s in held[-10:]:
            s.settimeout(1)
            try:
                refused += b" 503 " in s.recv(4096)
            except OSError:
                pass
        assert refused >= 5
        time.sleep(CONFIG.header_timeout_s + 0.4)  # the header deadline frees the held ones
        r = httpx.get(server.url + "/healthz", timeout=5)
        COUNT["sockets"] += 1
        assert r.status_code == 200
    finally:
        for s in held:
            s.close()


def test_a_client_that_disconnects_mid_upload_is_not_a_500(server, caplog):
    caplog.set_level(logging.INFO, logger="encseg.service")
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(head("POST", "/v1/segment", {"Content-Type": "image/png", "Content-Length": "200000"}, b"\x89PNG" + b"\x00" * 5000))
        COUNT["sockets"] += 1
    time.sleep(0.5)
    text = caplog.text
    assert "Traceback" not in text and "internal error" not in text
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "encseg.service.access"]
    assert not any(a["status"] >= 500 for a in access)
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_the_server_still_answers_after_the_corpus(client, server):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/healthz").status_code == 200
    r = client.post("/v1/segment", files={"image": ("x.png", VALID, "image/png")})
    assert r.status_code == 200
    assert sum(COUNT.values()) >= 1000, COUNT
