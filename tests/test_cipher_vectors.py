"""The format v1 and v2 contract: test vectors, and the key stream checked against independent primitives."""

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from encseg.cipher import EncryptedImage, Key, Scheme, decrypt, encrypt, encrypt_mask, make_plan, step_stream
from encseg.cipher.reference import reference_decrypt, reference_encrypt

VECTORS = sorted((Path(__file__).parent / "vectors").glob("*.json"))

# The 11 format-v1 vectors as v1 shipped them (commit 5859289): a digest of each one's contract
# fields. Format v2 adds vectors; it must not change one byte of these.
V1_DIGESTS = {
    "01-bs-p4": "0b644be7e3ff1caee2222fbf5ba6391d",
    "02-bs-np-cs-p4": "f7e34c196796dbfc319cdd432f8d79f5",
    "03-bs-ps-np-cs-p4": "c0aa4f26b79349b746565b465fd82bf1",
    "04-ps-np-cs-pad": "89a0ea8bbe77994b641655aa700f2eaa",
    "05-bs-ps4-np-cs-p8": "67b8369a680a698eb81bf6a2472b1508",
    "06-ps4-np-cs-pad-p8": "5a996933ad5affca2c48cc3e000d950a",
    "07-plain-p4": "067011e69800c6681fcb75b348126370",
    "08-bs-np-cs-p16": "8adb97f621dc9844cac1ed2e701ba331",
    "09-cs-np-bs-p2": "af176487eaf670c9d572da223828849c",
    "10-np-ps2-bs-p4": "40cc388539ec610f49cf060ea7bd9c64",
    "11-bs-1x1": "ae099658d375a1864656f218c0c4d0d4",
}
CONTRACT_FIELDS = ("key", "scheme", "input", "streams", "draws", "ciphertext", "labels", "encrypted_labels")


def load(path):
    v = json.loads(path.read_text())
    img = np.frombuffer(bytes.fromhex(v["input"]), np.uint8).reshape(v["height"], v["width"], 3)
    return v, img, Key.from_hex(v["key"]), Scheme.from_dict(v["scheme"])


def test_there_are_enough_vectors_covering_every_preset():
    assert len(VECTORS) >= 8
    names = {json.loads(p.read_text())["scheme_name"] for p in VECTORS}
    assert {"bs", "bs-np-cs", "bs-ps-np-cs", "ps-np-cs", "bs-ps4-np-cs", "ps4-np-cs", "plain"} <= names
    assert {"bs-psb-np-cs", "bs-psb4-np-cs", "psb-np-cs", "np-psb2-bs"} <= names  # format v2


def test_v1_vectors_are_unchanged_and_still_say_version_1():
    vectors = {p.stem: json.loads(p.read_text()) for p in VECTORS}
    for name, digest in V1_DIGESTS.items():
        v = vectors[name]
        body = json.dumps({k: v[k] for k in CONTRACT_FIELDS}, sort_keys=True)
        assert hashlib.sha256(body.encode()).hexdigest()[:32] == digest, name
        assert v["format_version"] == 1 and v["scheme"]["version"] == 1
        assert Scheme.from_dict(v["scheme"]).to_dict() == v["scheme"]  # a v1 scheme still serialises as v1


def test_v2_vectors_say_version_2_and_shuffle_each_block_with_its_own_permutation():
    v2 = [json.loads(p.read_text()) for p in VECTORS if p.stem not in V1_DIGESTS]
    assert len(v2) >= 3
    for v in v2:
        assert v["format_version"] == 2 and v["scheme"]["version"] == 2
        step = next(s for s in v["scheme"]["steps"] if s["name"] == "block-pixel-shuffle")
        q = step.get("group") or v["scheme"]["block_size"]
        n = (v["padded_height"] // v["scheme"]["block_size"]) * (v["padded_width"] // v["scheme"]["block_size"])
        perms = np.array(v["draws"]["block-pixel-shuffle"]).reshape(n, q * q)
        assert all(sorted(row) == list(range(q * q)) for row in perms.tolist())
        assert len({tuple(row) for row in perms.tolist()}) > 1  # not one permutation for all blocks
    assert any(s["group"] for v in v2 for s in v["scheme"]["steps"] if s.get("group"))
    assert any(v["height"] % v["scheme"]["block_size"] for v in v2)  # padding


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_ciphertext_reproduces_byte_for_byte(path):
    v, img, key, scheme = load(path)
    enc = encrypt(img, key, scheme)
    assert enc.data.shape == (v["padded_height"], v["padded_width"], 3)
    assert enc.data.tobytes().hex() == v["ciphertext"]
    assert np.array_equal(decrypt(enc, key), img)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_on_the_numpy_path_without_the_c_kernel(path, monkeypatch):
    from encseg.cipher import keystream, transform

    monkeypatch.setattr(transform, "_kernel", None)
    monkeypatch.setattr(keystream, "_kernel", None)
    v, img, key, scheme = load(path)
    enc = encrypt(img, key, scheme)
    assert enc.data.tobytes().hex() == v["ciphertext"]
    assert np.array_equal(decrypt(enc, key), img)
    p = scheme.block_size
    plan = make_plan(key, scheme, v["padded_height"] // p, v["padded_width"] // p)
    assert {k: [int(x) for x in np.ravel(d)] for k, d in plan.draws.items()} == v["draws"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_matches_the_literal_block_loop_reading_of_the_spec(path):
    v, img, key, scheme = load(path)
    ref = reference_encrypt(img, key, scheme)
    assert ref.tobytes().hex() == v["ciphertext"]
    assert np.array_equal(reference_decrypt(ref, key, scheme, img.shape[:2]), img)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_draws_streams_and_label_geometry(path):
    v, img, key, scheme = load(path)
    p = scheme.block_size
    plan = make_plan(key, scheme, v["padded_height"] // p, v["padded_width"] // p)
    assert {k: [int(x) for x in np.ravel(d)] for k, d in plan.draws.items()} == v["draws"]
    for name, s in v["streams"].items():
        assert step_stream(key, name, 32).hex() == s["first_32_bytes"]
    labels = np.frombuffer(bytes.fromhex(v["labels"]), np.uint8).reshape(v["height"], v["width"])
    assert encrypt_mask(labels, key, scheme).tobytes().hex() == v["encrypted_labels"]


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 from the standard library's HMAC, independent of the `cryptography` HKDF."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]


@pytest.mark.parametrize("step", ["block-scramble", "pixel-shuffle", "block-pixel-shuffle", "negative-positive",
                                  "channel-shuffle"])
def test_stream_is_hkdf_subkey_then_aes_ctr_with_a_128_bit_counter(step):
    key = Key(bytes(range(32)))
    sub = _hkdf_sha256(key.to_bytes(), b"encseg/v1", step.encode(), 32)
    ecb = Cipher(algorithms.AES(sub), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(5))
    assert step_stream(key, step, 80) == blocks
    for path in VECTORS:  # and the vectors' recorded subkeys agree with RFC 5869
        v = json.loads(path.read_text())
        for name, s in v["streams"].items():
            assert _hkdf_sha256(bytes.fromhex(v["key"]), b"encseg/v1", name.encode(), 32).hex() == s["subkey"]


def test_channel_shuffle_drops_words_at_or_above_the_rejection_limit(monkeypatch):
    from encseg.cipher import keystream

    words = np.array([4294967295, 7, 4294967292, 4294967291, 12, 5] + [0] * 20, dtype="<u4")
    monkeypatch.setattr(keystream, "step_stream", lambda key, name, nbytes: words.tobytes()[:nbytes].ljust(nbytes, b"\0"))
    orders = keystream.draw_channel_orders(Key(bytes(32)), 4)
    assert orders.tolist() == [7 % 6, 4294967291 % 6, 12 % 6, 5 % 6]


def test_encrypted_image_repr_shows_no_pixels_or_key():
    key = Key.generate()
    enc = encrypt(np.zeros((4, 4, 3), np.uint8), key, Scheme.parse("bs", block_size=2))
    assert isinstance(enc, EncryptedImage)
    assert key.hex() not in repr(enc) and "array" not in repr(enc)


@pytest.mark.parametrize("nbytes,chunk", [(0, 16), (1, 16), (17, 16), (1000, 24), (2048, 2048), (5000, 1 << 18),
                                          (3 * (1 << 18) + 40, 1 << 18), (1 << 19, 1 << 20)])
def test_the_stream_read_chunk_by_chunk_equals_the_step_stream(nbytes, chunk):
    from encseg.cipher.keystream import _stream_chunks

    key = Key(hashlib.sha256(b"long").digest())
    chunks = [bytes(c) for c in _stream_chunks(key, "block-pixel-shuffle", nbytes, chunk)]
    assert all(len(c) == chunk for c in chunks[:-1])
    assert b"".join(chunks) == step_stream(key, "block-pixel-shuffle", nbytes)
