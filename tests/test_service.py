"""The segmentation service: contract (info, segment, limits, refusals), micro-batching, the Python
client and the CLI. A 1x1-conv stand-in model keeps it fast; one test serves a real SETR checkpoint."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from _service_support import (
    NUM_CLASSES,
    chunk,
    png_bytes,
    raw_png,
    scene,
    serve,
    stand_in_model,
    stand_in_segmenter,
    zero_bomb,
)
from encseg.cipher import Key, Scheme, decrypt_mask, encrypt
from encseg.cipher.io import encode_png, metadata_text, png_metadata
from encseg.errors import UserError
from encseg.service.app import ServiceConfig, create_app
from encseg.service.batching import MicroBatcher
from encseg.service.client import HttpBackend, LocalBackend, colour_overlay, segment_image
from encseg.service.validation import KEY_REFUSAL, Limits

warnings.filterwarnings("ignore", message=".*httpx2.*")
from fastapi.testclient import TestClient  # noqa: E402

torch.set_num_threads(1)
SCHEME = Scheme.parse("bs-np-cs")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(stand_in_segmenter()), raise_server_exceptions=False) as c:
        yield c


def encrypted_png(img=None, scheme=SCHEME, chunk_meta=True, key=None):
    img = scene() if img is None else img
    key = key or Key.generate()
    enc = encrypt(img, key, scheme)
    return encode_png(enc.data, metadata_text(scheme, enc.original_size) if chunk_meta else None), enc, key


def post(client, data: bytes, **fields):
    return client.post("/v1/segment", files={"image": ("x.png", data, "image/png")}, data=fields)


def label_png(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as im:
        assert im.mode == "L"
        return np.asarray(im).copy()


def per_pixel_reference(img: np.ndarray) -> np.ndarray:
    """What the 1x1 stand-in predicts on the plain image (pixel-wise, so it ignores block geometry)."""
    from encseg.models import normalize

    with torch.inference_mode():
        return stand_in_model()(normalize(img)).argmax(1)[0].numpy().astype(np.uint8)


# -- the contract ------------------------------------------------------------------------------

def test_info_reports_model_classes_palette_block_size_and_schemes(client):
    info = client.get("/v1/info").json()
    assert info["model"]["name"] == "stand-in-1x1" and info["model"]["num_classes"] == NUM_CLASSES
    assert len(info["classes"]) == len(info["palette"]) == NUM_CLASSES and info["classes"][0] == "road"
    assert info["block_size"] == 16 and info["scheme_names"] == ["bs-np-cs"]
    assert Scheme.from_dict(info["schemes"][0]) == SCHEME
    assert info["limits"]["max_pixels"] == Limits().max_pixels and "bs-ps-np-cs" in info["presets"]
    # the cipher versions it accepts (v2: block-pixel-shuffle); format_version stays the metadata object's 1
    assert info["format_versions"] == [1, 2] and info["format_version"] == 1
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert "/v1/segment" in spec["paths"] and client.get("/docs").status_code == 200


def test_docs_page_uses_local_swagger_assets_not_a_cdn(client):
    pytest.importorskip("fastapi_offline")
    html = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn." not in html
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_segment_answers_label_map_in_encrypted_geometry_that_the_key_undoes(client):
    # bs-ps moves every pixel; a per-pixel model commutes with it, so after decrypt_mask the answer
    # must equal the model on the plain image: this pins that the server keeps encrypted geometry
    # and that the label map survives the PNG round trip exactly.
    img = scene(40, 56, seed=3)
    scheme = Scheme.parse("bs-ps")
    data, enc, key = encrypted_png(img, scheme)
    r = post(client, data)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-encseg-scheme"] == "bs-ps" and r.headers["x-encseg-trained-for-scheme"] == "false"
    labels = label_png(r.content)
    assert labels.shape == enc.data.shape[:2]
    mask = decrypt_mask(labels, key, scheme, enc.original_size)
    assert np.array_equal(mask, per_pixel_reference(img))
    assert not np.array_equal(labels[:40, :56], mask)  # it really was in encrypted geometry
    # the label PNG carries the scheme and original size (never a key), so `encseg decrypt-mask` needs only the key
    meta = png_metadata(r.content)
    assert meta == (scheme, (40, 56))


def test_cipher_cli_png_is_accepted_as_is_and_its_answer_decrypts_with_the_cli(client, run_cli, tmp_path):
    # encseg encrypt -> POST the PNG alone (scheme from its encseg chunk) -> encseg decrypt-mask
    img = scene(40, 56, seed=9)
    Image.fromarray(img).save(tmp_path / "plain.png")
    code, _, err = run_cli("encrypt", tmp_path / "plain.png", "-o", tmp_path / "enc.png", "--scheme", "bs-ps-np-cs",
                           "--key-out", tmp_path / "k.key")
    assert code == 0, err
    r = client.post("/v1/segment", content=(tmp_path / "enc.png").read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["x-encseg-scheme"] == "bs-ps-np-cs"
    (tmp_path / "labels.png").write_bytes(r.content)
    code, _, err = run_cli("decrypt-mask", tmp_path / "labels.png", "--key", tmp_path / "k.key", "-o", tmp_path / "mask.png")
    assert code == 0, err
    from encseg.cipher import load_key

    key = load_key(tmp_path / "k.key")
    expected = segment_image(img, LocalBackend(stand_in_segmenter()), Scheme.parse("bs-ps-np-cs"), [], key=key).mask
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")), expected)


def test_the_three_body_forms_give_the_same_answer(client):
    data, enc, key = encrypted_png(chunk_meta=False)
    a = post(client, data, scheme="bs-np-cs").content
    b = client.post("/v1/segment?scheme=bs-np-cs", content=data, headers={"content-type": "image/png"}).content
    c = client.post("/v1/segment", json={"image": base64.b64encode(data).decode(), "scheme": SCHEME.to_dict()})
    assert np.array_equal(label_png(a), label_png(b)) and np.array_equal(label_png(a), label_png(c.content))


def test_topk_returns_sorted_probabilities_whose_first_class_is_the_label(client):
    data, enc, key = encrypted_png()
    r = post(client, data, topk="3")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    H, W = body["height"], body["width"]
    labels = label_png(base64.b64decode(body["labels_png"]))
    k = body["topk"]["k"]
    classes = np.frombuffer(base64.b64decode(body["topk"]["classes"]), np.uint8).reshape(k, H, W)
    probs = np.frombuffer(base64.b64decode(body["topk"]["probs"]), "<f4").reshape(k, H, W)
    assert k == 3 and np.array_equal(classes[0], labels)
    assert (np.diff(probs, axis=0) <= 0).all() and (probs.sum(0) <= 1 + 1e-5).all() and (probs > 0).all()
    # probabilities follow the same geometry: the key puts them back like the labels
    assert np.array_equal(decrypt_mask(classes, key, SCHEME, enc.original_size)[0],
                          decrypt_mask(labels, key, SCHEME, enc.original_size))


# -- keys never travel ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["form", "form-upper", "form-suffix", "json", "json-nested", "query", "chunk"])
def test_a_request_that_carries_a_key_is_refused_and_the_key_is_not_echoed(client, caplog, how):
    data, enc, key = encrypted_png()
    secret = key.hex()
    b64 = base64.b64encode(data).decode()
    caplog.set_level(logging.INFO, logger="encseg.service")
    if how == "form":
        r = post(client, data, key=secret)
    elif how == "form-upper":
        r = post(client, data, Key=secret)
    elif how == "form-suffix":
        r = post(client, data, key_hex=secret)
    elif how == "json":
        r = client.post("/v1/segment", json={"image": b64, "scheme": "bs-np-cs", "key": secret})
    elif how == "json-nested":
        r = client.post("/v1/segment", json={"image": b64, "scheme": {**SCHEME.to_dict(), "key": secret}})
    elif how == "query":
        r = client.post(f"/v1/segment?key={secret}", content=data, headers={"content-type": "image/png"})
    else:
        meta = json.dumps({"version": 1, "scheme": SCHEME.to_dict(), "original_size": [40, 56], "key": secret})
        png = encode_png(enc.data, {"encseg": meta})
        r = client.post("/v1/segment", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 400 and r.json()["detail"] == KEY_REFUSAL
    assert "keys stay with the client" in r.json()["detail"]
    assert secret not in r.text and secret not in caplog.text


# -- refusals: every bad request is a 4xx with a JSON message ------------------------------------

def test_jpeg_is_refused_with_the_reason(client):
    buf = io.BytesIO()
    Image.fromarray(scene(32, 32)).save(buf, format="JPEG")
    r = post(client, buf.getvalue(), scheme="bs-np-cs")
    assert r.status_code == 415 and "JPEG" in r.json()["detail"] and "PNG" in r.json()["detail"]
    r = client.post("/v1/segment", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and "PNG" in r.json()["detail"]


def test_decompression_bomb_is_refused_from_its_header_before_decoding(monkeypatch):
    import encseg.service.app as app_module

    decoded = []
    monkeypatch.setattr(app_module, "decode_image", lambda *a: decoded.append(1))
    app = create_app(stand_in_segmenter(), ServiceConfig(limits=Limits(max_pixels=512 * 512)))
    bomb = zero_bomb(4096, 4096)  # 48 MiB of pixels in a ~50 KB body
    assert len(bomb) < 100_000
    with TestClient(app, raise_server_exceptions=False) as c:
        t0 = time.perf_counter()
        r = post(c, bomb, scheme="bs-np-cs")
        assert r.status_code == 413 and "before decoding" in r.json()["detail"]
        # a header that claims 2^31 x 2^31 with a 20-byte body
        r2 = post(c, raw_png(2**31 - 1, 2**31 - 1), scheme="bs-np-cs")
        assert r2.status_code == 413
        assert time.perf_counter() - t0 < 2.0
    assert decoded == []


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"", 400, "empty"),
        (b"hello, not an image", 415, "not a PNG"),
        (b"GIF89a" + b"\x00" * 20, 415, "GIF"),
        (raw_png(32, 32, depth=16), 415, "16-bit"),
        (raw_png(32, 32, color_type=0), 415, "greyscale"),
        (raw_png(32, 32, color_type=3), 415, "palette"),
        (raw_png(0, 32), 400, "empty"),
        (raw_png(32, 32, idat=b"not zlib at all"), 400, "zlib"),
        (raw_png(32, 32)[:-20], 400, "truncated"),
        (b"\x89PNG\r\n\x1a\n" + chunk(b"IDAT", b""), 400, "IHDR"),
    ],
    ids=["empty", "text", "gif", "16bit", "grey", "palette", "zero-size", "bad-zlib", "truncated", "no-ihdr"],
)
def test_malformed_images_get_4xx_with_a_message(client, body, status, words):
    r = post(client, body, scheme="bs-np-cs")
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_real_16bit_grey_and_transparent_pngs_are_refused_but_opaque_rgba_is_accepted(client):
    img = scene(32, 32)
    r = post(client, png_bytes(img[..., 0].astype(np.uint16) * 257), scheme="bs-np-cs")  # Pillow writes 16-bit grey
    assert r.status_code == 415 and "16-bit" in r.json()["detail"]
    r = post(client, png_bytes(img[..., 0]), scheme="bs-np-cs")
    assert r.status_code == 415
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    assert post(client, png_bytes(rgba), scheme="bs-np-cs").status_code == 200
    rgba[0, 0, 3] = 0
    r = post(client, png_bytes(rgba), scheme="bs-np-cs")
    assert r.status_code == 422 and "transparent" in r.json()["detail"]


def test_sizes_must_fit_the_block_size(client):
    r = post(client, png_bytes(scene(40, 56)), scheme="bs-np-cs")
    assert r.status_code == 422 and "block size 16" in r.json()["detail"]
    # block size 8 fits 40x56 but the model's patch size 16 does not
    r = post(client, png_bytes(scene(40, 56)), scheme="bs-np-cs", block_size="8")
    assert r.status_code == 422 and "multiples of 16" in r.json()["detail"]


def test_unknown_scheme_is_refused_with_the_known_names(client):
    data, _, _ = encrypted_png(chunk_meta=False)
    r = post(client, data, scheme="rot13")
    assert r.status_code == 422
    for name in ("plain", "bs-np-cs", "bs-ps4-np-cs"):
        assert name in r.json()["detail"]
    r = post(client, data, scheme='{"version":1,"block_size":16,"steps":[{"name":"xor"}]}')
    assert r.status_code == 422 and "block-scramble" in r.json()["detail"]


def test_scheme_must_be_given_once_or_agree(client):
    data, _, _ = encrypted_png(chunk_meta=False)
    r = post(client, data)
    assert r.status_code == 422 and "no scheme" in r.json()["detail"]
    data, _, _ = encrypted_png(chunk_meta=True)
    r = post(client, data, scheme="bs-ps-np-cs")
    assert r.status_code == 422 and "disagrees" in r.json()["detail"]
    assert post(client, data, scheme="bs-np-cs").status_code == 200  # agreeing is fine


def test_unknown_fields_and_content_types_are_refused(client):
    data, _, _ = encrypted_png()
    r = post(client, data, colour="blue")
    assert r.status_code == 400 and "colour" in r.json()["detail"]
    r = client.post("/v1/segment", content=b"image=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = client.post("/v1/segment", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/v1/segment", json={"image": "!!!not base64"})
    assert r.status_code == 400
    r = post(client, data, topk="99")
    assert r.status_code == 422
    assert client.get("/v1/segment").status_code == 405
    assert client.get("/nope").json()["detail"]


def test_body_over_the_limit_is_refused_by_length_and_while_streaming():
    app = create_app(stand_in_segmenter(), ServiceConfig(limits=Limits(max_body_bytes=10_000)))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/segment", content=b"\x00" * 20_000, headers={"content-type": "image/png"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit must hold while reading
            for _ in range(20):
                yield b"\x00" * 1000

        r = c.post("/v1/segment", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413
        r = c.post("/v1/segment", files={"image": ("x.png", b"\x00" * 20_000, "image/png")})
        assert r.status_code == 413
        assert c.get("/healthz").status_code == 200


def test_access_log_is_one_json_line_per_request_without_pixels(client, caplog):
    caplog.set_level(logging.INFO, logger="encseg.service.access")
    data, _, _ = encrypted_png()
    post(client, data)
    post(client, b"junk", scheme="bs-np-cs")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "encseg.service.access"]
    ok, bad = lines[-2], lines[-1]
    assert ok["status"] == 200 and ok["path"] == "/v1/segment" and ok["bytes_in"] > len(data)
    assert ok["height"] == 48 and ok["width"] == 64 and ok["scheme"] == "bs-np-cs" and ok["infer_ms"] >= 0
    assert bad["status"] == 415 and "PNG" in bad["error"]
    assert all(len(r.getMessage()) < 600 for r in caplog.records)  # no image bytes, base64 or otherwise


# -- micro-batching ------------------------------------------------------------------------------

def test_batcher_groups_concurrent_same_size_requests_and_keeps_sizes_apart():
    seen = []

    def fn(group, items):
        seen.append((group, list(items)))
        time.sleep(0.01)
        return [(group, i * 10) for i in items]

    async def main():
        b = MicroBatcher(fn, max_batch=4, max_wait_ms=50)
        jobs = [b.submit("A" if i % 2 else "B", i) for i in range(10)]
        out = await asyncio.gather(*jobs)
        await b.close()
        return out, b.stats

    out, stats = asyncio.run(main())
    assert out == [("A" if i % 2 else "B", i * 10) for i in range(10)]  # every caller gets its own answer
    assert all(all((i % 2 == 1) == (g == "A") for i in items) for g, items in seen)  # never mixes groups
    assert max(len(items) for _, items in seen) == 4 and stats.items == 10 and stats.batches < 10


def test_batcher_waits_only_for_announced_company():
    seen = []

    def fn(group, items):
        seen.append(list(items))
        return items

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=2000)
        t0 = time.perf_counter()
        assert await b.submit(0, "alone") == "alone"
        alone_s = time.perf_counter() - t0  # nobody announced: no waiting for company

        async def late():
            with b.expecting():
                await asyncio.sleep(0.05)  # still reading its body
            return await b.submit(0, "late")

        res = await asyncio.gather(b.submit(0, "early"), late())
        await b.close()
        return alone_s, res

    alone_s, res = asyncio.run(main())
    assert alone_s < 0.5 and res == ["early", "late"]
    assert seen == [["alone"], ["early", "late"]]  # the announced request joined the waiting one


def test_batcher_off_runs_one_at_a_time_and_failures_reach_only_their_batch():
    sizes = []

    def fn(group, items):
        sizes.append(len(items))
        if "bad" in items:
            raise RuntimeError("boom")
        return items

    async def main():
        b = MicroBatcher(fn, max_batch=1, max_wait_ms=5)
        res = await asyncio.gather(*(b.submit(0, x) for x in ["a", "bad", "c"]), return_exceptions=True)
        await b.close()
        return res

    res = asyncio.run(main())
    assert sizes == [1, 1, 1] and res[0] == "a" and res[2] == "c" and isinstance(res[1], RuntimeError)


def test_concurrent_requests_are_batched_and_answers_match_unbatched():
    seg = stand_in_segmenter()
    batch_sizes = []
    orig = seg.predict

    def spy(images, topk=0):
        batch_sizes.append(len(images))
        time.sleep(0.05)  # a slow model, so requests pile up
        return orig(images, topk)

    seg.predict = spy
    imgs = [scene(32, 48, seed=s) for s in range(6)]
    payloads = [encrypted_png(im, Scheme.parse("bs-ps")) for im in imgs]
    with serve(seg, ServiceConfig(max_batch=8, max_wait_ms=20)) as srv:
        async def fire():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v1/segment", files={"image": ("e.png", d, "image/png")})
                                              for d, _, _ in payloads))

        responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert max(batch_sizes) > 1 and sum(batch_sizes) == 6
    for r, (d, enc, key), im in zip(responses, payloads, imgs):
        mask = decrypt_mask(label_png(r.content), key, Scheme.parse("bs-ps"), enc.original_size)
        assert np.array_equal(mask, per_pixel_reference(im))


# -- the Python client ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with serve() as srv:
        yield srv


def test_http_and_local_backends_give_the_same_mask_for_the_same_key(server):
    img = scene(45, 70, seed=5)
    key = Key.generate()
    http = HttpBackend(server.url)
    palette = http.info()["palette"]
    a = segment_image(img, http, SCHEME, palette, key=key)
    b = segment_image(img, LocalBackend(stand_in_segmenter()), SCHEME, palette, key=key)
    assert a.mask.shape == (45, 70) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.encrypted.data, b.encrypted.data)
    assert "secret" in repr(a) and key.hex() not in repr(a)
    # the overlay blends the palette colour of each label over the image
    ov = colour_overlay(img, a.mask, palette)
    y, x = 10, 20
    expected = np.round(0.5 * img[y, x] + 0.5 * np.array(palette[a.mask[y, x]]))
    assert np.abs(ov[y, x].astype(int) - expected).max() <= 1 and np.array_equal(ov, a.overlay)


def test_client_retries_connection_errors_with_backoff_then_gives_up():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"schemes": []})

    b = HttpBackend("http://127.0.0.1:9", retries=4, backoff=0.01)
    b.client = httpx.Client(transport=httpx.MockTransport(handler))
    assert b.info() == {"schemes": []} and len(calls) == 3
    assert calls[1] - calls[0] >= 0.01 and calls[2] - calls[1] >= 0.02  # the backoff doubles

    dead = HttpBackend("http://127.0.0.1:9", retries=2, backoff=0.01)
    with pytest.raises(UserError, match="cannot reach .* after 3 tries"):
        dead.info()


def test_cli_segment_writes_masks_overlays_and_keys_only_when_asked(server, run_cli, tmp_path):
    paths = []
    for i, (h, w) in enumerate([(40, 56), (33, 47)]):
        p = tmp_path / f"street{i}.png"
        Image.fromarray(scene(h, w, seed=i)).save(p)
        paths.append(p)
    code, out, err = run_cli("segment", *paths, "--server", server.url, "--out", tmp_path / "a")
    assert code == 0, err
    for i, (h, w) in enumerate([(40, 56), (33, 47)]):
        mask = np.asarray(Image.open(tmp_path / "a" / f"street{i}_mask.png"))
        assert mask.shape == (h, w) and mask.max() < NUM_CLASSES
        assert np.asarray(Image.open(tmp_path / "a" / f"street{i}_overlay.png")).shape == (h, w, 3)
    assert not list((tmp_path / "a").glob("*.key")) and "keys discarded" in err

    code, out, err = run_cli("segment", paths[0], "--server", server.url, "--out", tmp_path / "b", "--keep-key",
                             "--save-encrypted", "--scheme", "bs-ps")
    assert code == 0, err
    keyfile = tmp_path / "b" / "street0.key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    key = Key.from_hex(keyfile.read_text())
    # with the kept key, the mask is the per-pixel model on the plain image (bs-ps commutes with 1x1)
    mask = np.asarray(Image.open(tmp_path / "b" / "street0_mask.png"))
    assert np.array_equal(mask, per_pixel_reference(scene(40, 56, seed=0)))
    enc_meta = png_metadata((tmp_path / "b" / "street0_encrypted.png").read_bytes())
    assert enc_meta == (Scheme.parse("bs-ps"), (40, 56)) and key.hex() not in err + out


def test_cli_segment_reports_4xx_answers_clearly(run_cli, tmp_path):
    img = tmp_path / "big.png"
    Image.fromarray(scene(64, 64)).save(img)
    app_cfg = ServiceConfig(limits=Limits(max_pixels=32 * 32))
    with serve(stand_in_segmenter(), app_cfg) as srv:
        code, out, err = run_cli("segment", img, "--server", srv.url, "--out", tmp_path / "o")
    assert code == 2
    assert "HTTP 413" in err and "pixels" in err and "Traceback" not in err
    code, out, err = run_cli("segment", img)
    assert code == 2 and "exactly one of --server" in err


def test_local_backend_and_cli_serve_run_a_real_setr_checkpoint(run_cli, tmp_path):
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny", decoder="naive", num_classes=NUM_CLASSES, img_size=(32, 64), aux=False)
    extra = {"train_config": {"encryption": {"mode": "per-image", "scheme": "bs-np-cs", "key_file": None}}}
    ckpt = save_checkpoint(tmp_path / "m.safetensors", build_setr(cfg).eval(), cfg, extra)
    img_path = tmp_path / "s.png"
    Image.fromarray(scene(36, 60, seed=1)).save(img_path)
    code, out, err = run_cli("segment", img_path, "--local", ckpt, "--out", tmp_path / "local", "--keep-key")
    assert code == 0, err
    local_mask = np.asarray(Image.open(tmp_path / "local" / "s_mask.png"))
    key = Key.from_hex((tmp_path / "local" / "s.key").read_text())

    # `encseg serve --checkpoint` in a subprocess, on a loopback port
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "encseg"), "serve", "--checkpoint", str(ckpt), "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        info = httpx.get(url + "/v1/info").json()
        assert info["model"]["name"] == "setr-naive-vit-tiny" and info["scheme_names"] == ["bs-np-cs"]
        assert info["model"]["key_mode"] == "per-image"
        res = segment_image(np.asarray(Image.open(img_path)), HttpBackend(url), SCHEME, info["palette"], key=key)
        assert np.array_equal(res.mask, local_mask)  # same key, same model: server and in-process agree
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(r["path"] == "/v1/segment" and r["status"] == 200 for r in logs)


@pytest.mark.parametrize("extra,names", [
    ({"train_config": {"encryption": {"mode": "per-image", "scheme": "bs-ps4-np-cs"}}}, ["bs-ps4-np-cs"]),
    ({"train_config": {"encryption": {"mode": "none", "scheme": "bs-np-cs"}}}, ["plain"]),
    ({"schemes": ["bs", {"version": 1, "block_size": 16, "steps": [{"name": "channel-shuffle"}]}]}, ["bs", "cs"]),
    ({}, ["bs-psb-np-cs"]),  # nothing recorded: DEFAULT_SCHEME
])
def test_checkpoint_metadata_names_the_schemes_the_model_was_trained_for(extra, names):
    from encseg.service.segmenter import schemes_from_extra

    schemes = schemes_from_extra(extra, 16)
    assert [s.name for s in schemes] == names and all(s.block_size == 16 for s in schemes)


# -- the client's refiner, for the browser page ---------------------------------------------------------

def _refiner_beside(folder: Path, num_classes: int = NUM_CLASSES, **config):
    """A checkpoint's JSON naming a refiner beside it (the model file itself is not read here)."""
    from encseg.models.refine import ClientRefiner, RefinerConfig, save_refiner

    torch.manual_seed(0)
    refiner = ClientRefiner(RefinerConfig(num_classes=num_classes, **config))
    save_refiner(folder / "refiner.safetensors", refiner, {"val_miou_refined": 40.0, "val_miou_server": 30.0})
    (folder / "m.json").write_text(json.dumps({"extra": {"refiner": {"file": "refiner.safetensors", "val_miou_refined": 45.8}}}))
    return folder / "m.safetensors", refiner


def test_refiner_endpoint_serves_the_weights_shipped_beside_the_model_and_info_names_it(tmp_path):
    from encseg.service.segmenter import PageRefiner

    ckpt, refiner = _refiner_beside(tmp_path, width=8, dilations=(1, 2), grid_rows=8)
    seg = stand_in_segmenter()
    seg.refiner = PageRefiner.beside(ckpt, NUM_CLASSES)
    with TestClient(create_app(seg), raise_server_exceptions=False) as c:
        info = c.get("/v1/info").json()["refiner"]
        assert info["val_miou_refined"] == 45.8 and info["val_miou_server"] == 30.0  # the checkpoint's figure first
        assert info["config"] == refiner.config.to_dict()
        r = c.get("/v1/refiner")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["format"] == "encseg-refiner/1" and body["config"] == info["config"] and body["dtype"] == "float32-le"
        state = refiner.state_dict()
        assert sorted(body["tensors"]) == sorted(state)
        for name, t in state.items():
            got = np.frombuffer(base64.b64decode(body["tensors"][name]["data"]), "<f4")
            assert body["tensors"][name]["shape"] == list(t.shape)
            assert np.array_equal(got, t.numpy().ravel())
        assert sum(t.numel() for t in state.values()) == info["parameters"]
        spec = c.get("/openapi.json").json()
        assert "/v1/refiner" in spec["paths"] and "404" in spec["paths"]["/v1/refiner"]["get"]["responses"]
        assert "RefinerWeights" in spec["components"]["schemas"] and "refiner" in spec["components"]["schemas"]["Info"]["properties"]


def test_refiner_endpoint_is_a_one_line_404_without_a_refiner(client, tmp_path):
    from encseg.service.segmenter import PageRefiner

    assert client.get("/v1/info").json()["refiner"] is None
    r = client.get("/v1/refiner")
    assert r.status_code == 404 and r.json() == {"detail": "this model ships no client refiner"}
    (tmp_path / "m.json").write_text(json.dumps({"extra": {"refiner": {"file": "gone.safetensors"}}}))
    assert PageRefiner.beside(tmp_path / "m.safetensors", NUM_CLASSES) is None  # named but absent: no refiner


def test_a_refiner_for_other_classes_or_a_broken_file_is_a_one_line_error_at_start(tmp_path):
    from encseg.service.segmenter import PageRefiner

    ckpt, _ = _refiner_beside(tmp_path, num_classes=5, width=4, dilations=(1,))
    with pytest.raises(UserError, match="for 5 classes, the model has 19"):
        PageRefiner.beside(ckpt, NUM_CLASSES)
    (tmp_path / "refiner.safetensors").write_bytes(b"not a refiner")
    with pytest.raises(UserError, match="cannot read the refiner"):
        PageRefiner.beside(ckpt, 5)
