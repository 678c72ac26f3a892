"""The format-v1 contract: test vectors, and the key stream checked against independent primitives."""

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


def load(path):
    v = json.loads(path.read_text())
    img = np.frombuffer(bytes.fromhex(v["input"]), np.uint8).reshape(v["height"], v["width"], 3)
    return v, img, Key.from_hex(v["key"]), Scheme.from_dict(v["scheme"])


def test_there_are_enough_vectors_covering_every_preset():
    assert len(VECTORS) >= 8
    names = {json.loads(p.read_text())["scheme_name"] for p in VECTORS}
    assert {"bs", "bs-np-cs", "bs-ps-np-cs", "ps-np-cs", "bs-ps4-np-cs", "ps4-np-cs", "plain"} <= names


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_ciphertext_reproduces_byte_for_byte(path):
    v, img, key, scheme = load(path)
    enc = encrypt(img, key, scheme)
    assert enc.data.shape == (v["padded_height"], v["padded_width"], 3)
    assert enc.data.tobytes().hex() == v["ciphertext"]
    assert np.array_equal(decrypt(enc, key), img)


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
    assert {k: [int(x) for x in d] for k, d in plan.draws.items()} == v["draws"]
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


@pytest.mark.parametrize("step", ["block-scramble", "pixel-shuffle", "negative-positive", "channel-shuffle"])
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
