"""The browser client in a real browser: Debian's chromium, headless, driven by playwright-core under
node (tests/browser/). (a) The page's WebCrypto cipher reproduces every test vector byte for byte;
(b) end to end, the page's decrypted mask equals the Python client's for the same key, and no
request the page makes carries the key. A screenshot goes to test-artifacts/browser/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _service_support import scene, serve
from encseg.cipher import Key, Scheme
from encseg.service.client import HttpBackend, segment_image

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
VECTORS = ROOT / "tests" / "vectors"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ENCSEG_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def node_runner():
    """`node tests/browser/run.mjs ...`; installs playwright-core from package-lock.json if missing."""
    node = shutil.which("node")
    assert node, "node is required for the browser tests (Debian: apt-get install -y nodejs npm)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is required to install playwright-core for the browser tests"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=300)

    def run(*args: str, timeout: float = 120) -> dict:
        env = {**os.environ, "CHROMIUM": CHROMIUM}
        p = subprocess.run([node, str(BROWSER_DIR / "run.mjs"), *map(str, args)], cwd=BROWSER_DIR, env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"node run.mjs failed ({p.returncode}):\n{p.stderr[-3000:]}"
        return json.loads(p.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    from _service_support import stand_in_segmenter

    with serve(stand_in_segmenter(schemes=("bs-ps-np-cs",))) as srv:
        yield srv


def test_page_cipher_reproduces_every_test_vector_byte_for_byte(node_runner, server):
    files = sorted(VECTORS.glob("*.json"))
    assert len(files) >= 10
    report = node_runner("vectors", server.url, VECTORS)
    results = {r["file"]: r for r in report["vectors"]}
    assert sorted(results) == [f.name for f in files]
    failed = {name: [k for k, ok in r["checks"].items() if not ok] for name, r in results.items() if not r["ok"]}
    assert not failed, f"the page's cipher disagrees with the vectors: {failed}"
    # every vector checked its ciphertext, labels, decryption, and each step's sub-key, stream and draw
    for f in files:
        v = json.loads(f.read_text())
        checks = results[f.name]["checks"]
        assert {"ciphertext", "decrypt", "encrypted_labels", "decrypt_mask"} <= set(checks)
        assert all(f"draw:{s}" in checks for s in v["streams"])


def test_page_end_to_end_matches_the_python_client_for_the_same_key(node_runner, server, tmp_path):
    img = scene(70, 100, seed=11)  # not a multiple of 16: exercises padding and cropping in the page
    path = tmp_path / "street.png"
    Image.fromarray(img).save(path)
    out = node_runner("e2e", server.url, path, ARTIFACTS)
    assert out["state"] == "done", f"{out['status']} / console: {out['console']}"
    assert (ARTIFACTS / "browser-e2e.png").stat().st_size > 10_000
    res = out["result"]
    assert (res["height"], res["width"]) == (70, 100)
    page_mask = np.frombuffer(bytes.fromhex(res["mask"]), np.uint8).reshape(70, 100)
    scheme = Scheme.from_dict(res["scheme"])
    assert scheme == Scheme.parse("bs-ps-np-cs")  # the page defaults to the scheme the model was trained for

    key = Key.from_hex(res["key"])
    http = HttpBackend(server.url)
    py = segment_image(img, http, scheme, http.info()["palette"], key=key)
    assert bytes.fromhex(res["encrypted"]) == py.encrypted.data.tobytes()  # same key -> same ciphertext
    assert np.array_equal(page_mask, py.mask)
    assert len(out["legend"]) >= 1

    # the key never left the page: no URL or body of any request it made contains it
    segs = [r for r in out["requests"] if r["url"].endswith("/v1/segment")]
    assert len(segs) == 1 and segs[0]["method"] == "POST"
    assert all(res["key"] not in r["url"] + r["body"] and res["key"].upper() not in r["body"] for r in out["requests"])
    assert all(r["url"].startswith(server.url) for r in out["requests"])


def test_api_docs_render_offline_in_the_browser(node_runner, server):
    pytest.importorskip("fastapi_offline")
    out = node_runner("docs", server.url)
    assert "/v1/segment" in out["ops"] and "/v1/info" in out["ops"]
    assert out["external"] == []  # no CDN: everything came from the service
