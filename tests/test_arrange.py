"""Format v3, the sorted arrangement (docs/encryption-format.md section 13): vectors, the literal
reading of the spec, what the arranged image depends on, label maps, the models that may see it (with a
control that must not), metadata, the service and the clients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encseg.cipher import Key, Scheme, encrypt
from encseg.cipher import jpeg as J
from encseg.cipher.arrange import (
    arrange,
    arrange_labels,
    arrangement_group,
    check_arrangement,
    restore_labels,
    transport_arrangement,
)
from encseg.cipher.io import METADATA_CHUNK, encode_encrypted, encrypted_metadata, metadata_text, read_metadata
from encseg.cipher.reference import reference_arrange, reference_restore_labels
from encseg.errors import UserError
from encseg.models import normalize
from tests import _service_support as support
from tests.test_invariance import KEY_INVARIANT, _build, tiny, tie_image

VECTORS = sorted((Path(__file__).parent / "vectors" / "arranged").glob("*.json"))
LUMA = np.array([299, 587, 114])


def _load(v: dict) -> tuple[Scheme, np.ndarray, np.ndarray]:
    h, w = v["padded_height"], v["padded_width"]
    data = np.frombuffer(bytes.fromhex(v["ciphertext"]), np.uint8).reshape(h, w, 3)
    labels = np.frombuffer(bytes.fromhex(v["labels"]), np.uint8).reshape(h, w)
    return Scheme.from_dict(v["scheme"]), data, labels


def _shuffle_groups(data: np.ndarray, q: int, p: int, rng: np.random.Generator) -> np.ndarray:
    """`data` with the pixels of every q x q group permuted independently (what any key's shuffle can do)."""
    out = data.copy()
    for y in range(0, data.shape[0], q):
        for x in range(0, data.shape[1], q):
            g = out[y : y + q, x : x + q].reshape(q * q, 3)
            out[y : y + q, x : x + q] = g[rng.permutation(q * q)].reshape(q, q, 3)
    return out


# -- the contract -------------------------------------------------------------------------------

def test_there_are_vectors_for_whole_blocks_sub_block_groups_and_v1_pixel_shuffle():
    names = {json.loads(p.read_text())["scheme_name"] for p in VECTORS}
    assert {"bs-psb-np-cs", "bs-psb2-np-cs", "ps-np-cs"} <= names
    assert all(json.loads(p.read_text())["format_version"] == 3 for p in VECTORS)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_arrangement_and_label_restoration_reproduce_byte_for_byte(path):
    v = json.loads(path.read_text())
    scheme, data, labels = _load(v)
    assert arrange(data, scheme).tobytes().hex() == v["arranged"]
    assert restore_labels(labels, data, scheme).tobytes().hex() == v["restored_labels"]
    ref, _ = reference_arrange(data, scheme)
    assert ref.tobytes().hex() == v["arranged"]
    assert reference_restore_labels(labels, data, scheme).tobytes().hex() == v["restored_labels"]


@pytest.mark.parametrize("name,p", [("bs-psb-np-cs", 16), ("bs-psb4-np-cs", 16), ("ps-np-cs", 8), ("np-ps2-bs", 4)])
def test_fast_arrangement_is_the_literal_reading_of_the_spec_on_ciphertexts_with_ties(name, p):
    scheme = Scheme.parse(name, block_size=p)
    img = tie_image(3, 16)[:, : 6 * 16]
    enc = encrypt(img, Key.generate(), scheme)
    ref, _ = reference_arrange(enc.data, scheme)
    assert np.array_equal(arrange(enc.data, scheme), ref)
    labels = np.random.default_rng(0).integers(0, 19, enc.data.shape[:2], dtype=np.uint8)
    assert np.array_equal(restore_labels(labels, enc.data, scheme), reference_restore_labels(labels, enc.data, scheme))


# -- what the arranged image is -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["bs-psb-np-cs", "bs-psb4-np-cs"])
def test_the_arranged_image_depends_only_on_each_groups_pixel_multiset(name):
    scheme = Scheme.parse(name)
    q = arrangement_group(scheme)
    img = tie_image(5)
    rng = np.random.default_rng(1)
    enc = encrypt(img, Key.generate(), scheme)
    a = arrange(enc.data, scheme)
    assert np.array_equal(arrange(_shuffle_groups(enc.data, q, 16, rng), scheme), a)  # any order inside groups
    assert np.array_equal(arrange(a, scheme), a)  # sorted already
    # sorted: the key K never decreases along a group's row-major slots
    for y in range(0, a.shape[0], q):
        for x in range(0, a.shape[1], q):
            g = a[y : y + q, x : x + q].reshape(-1, 3).astype(np.int64)
            k = (g @ LUMA) * 2**24 + g[:, 0] * 2**16 + g[:, 1] * 2**8 + g[:, 2]
            assert (np.diff(k) >= 0).all()
    # and nothing moved between groups: each group holds the same multiset as before
    for y in range(0, a.shape[0], q):
        for x in range(0, a.shape[1], q):
            before = sorted(map(tuple, enc.data[y : y + q, x : x + q].reshape(-1, 3).tolist()))
            assert sorted(map(tuple, a[y : y + q, x : x + q].reshape(-1, 3).tolist())) == before


def test_two_keys_that_differ_only_in_their_pixel_shuffle_give_the_same_arranged_image():
    # bs-psb-np-cs vs its key's psb draw: same image under bs-np-cs followed by any per-block shuffle
    img = tie_image(7)
    scheme = Scheme.parse("psb")
    a = arrange(encrypt(img, Key.generate(), scheme).data, scheme)
    b = arrange(encrypt(img, Key.generate(), scheme).data, scheme)
    assert np.array_equal(a, b)  # the sort erased the key entirely
    assert not np.array_equal(encrypt(img, Key.generate(), scheme).data, encrypt(img, Key.generate(), scheme).data)


def test_label_maps_move_with_the_pixels_and_back():
    scheme = Scheme.parse("bs-psb-np-cs")
    img = tie_image(2)
    enc = encrypt(img, Key.generate(), scheme)
    labels = np.random.default_rng(4).integers(0, 19, enc.data.shape[:2], dtype=np.uint8)
    moved = arrange_labels(labels, enc.data, scheme)
    assert np.array_equal(restore_labels(moved, enc.data, scheme), labels)
    # any per-pixel function of the arranged image, restored, is that function of the ciphertext
    grey = lambda x: (x.astype(np.int32).sum(-1) // 40).astype(np.uint8)  # noqa: E731
    assert np.array_equal(restore_labels(grey(arrange(enc.data, scheme)), enc.data, scheme), grey(enc.data))
    # logits too ([H, W, C] maps)
    logits = np.random.default_rng(5).random((*enc.data.shape[:2], 3))
    assert np.array_equal(restore_labels(arrange_labels(logits, enc.data, scheme), enc.data, scheme), logits)


def test_schemes_without_pixel_shuffling_are_refused_in_one_line():
    for name in ("bs-np-cs", "np-cs", "plain"):
        scheme = Scheme.parse(name)
        assert arrangement_group(scheme) is None
        with pytest.raises(UserError, match="needs a scheme with pixel shuffling") as exc:
            arrange(np.zeros((16, 16, 3), np.uint8), scheme)
        assert "\n" not in str(exc.value)
        assert transport_arrangement(scheme, "jpeg") == "none"
    with pytest.raises(UserError, match="auto|none or sorted|none, sorted|none or sorted"):
        check_arrangement(Scheme.parse("bs-psb-np-cs"), "reversed")
    assert transport_arrangement(Scheme.parse("bs-psb-np-cs"), "png") == "none"  # PNG decrypts with the key alone
    assert transport_arrangement(Scheme.parse("bs-psb-np-cs"), "jpeg") == "sorted"


# -- models: only the order-free ones may see it ------------------------------------------------

def _model_logits(model, img: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(normalize(img))[0]


@pytest.mark.parametrize("cfg,order_free", [
    (tiny(**KEY_INVARIANT, pixel_group=16), True),
    (tiny(**KEY_INVARIANT, pixel_group=4), False),  # control: 4x4 groups are not the 16x16 the sort uses
    (tiny(**KEY_INVARIANT), False),  # control: a linear patch embedding sees the order
], ids=["sorted16", "sorted4 (control)", "token (control)"])
def test_an_order_free_model_answers_the_arranged_image_exactly_and_the_controls_do_not(cfg, order_free):
    scheme = Scheme.parse("bs-psb-np-cs")
    model = _build(cfg)
    assert (("psb" in cfg.invariances) and cfg.pixel_group == 16) == order_free
    for seed in range(3):
        enc = encrypt(tie_image(seed), Key.generate(), scheme)
        got = _model_logits(model, arrange(enc.data, scheme))  # [C, H, W] in arranged geometry
        back = restore_labels(got.permute(1, 2, 0).numpy(), enc.data, scheme)
        same = np.allclose(back, _model_logits(model, enc.data).permute(1, 2, 0).numpy(), atol=2e-4, rtol=1e-4)
        assert same == order_free


# -- metadata -----------------------------------------------------------------------------------

def test_arranged_metadata_is_version_3_with_the_documented_member_order():
    scheme = Scheme.parse("bs-psb-np-cs")
    text = metadata_text(scheme, (40, 56), "sorted")[METADATA_CHUNK]
    assert text.startswith('{"version":3,"scheme":{') and text.endswith('"original_size":[40,56],"arrangement":"sorted"}')
    assert read_metadata(text) == (scheme, (40, 56), "sorted")
    plain = metadata_text(scheme, (40, 56))[METADATA_CHUNK]
    assert plain.startswith('{"version":1,') and read_metadata(plain)[2] == "none"


@pytest.mark.parametrize("meta,words", [
    ({"version": 3}, "arrangement 'sorted'"),
    ({"version": 1, "arrangement": "sorted"}, "under version 1"),
    ({"version": 2}, "not supported"),
    ({"version": 3, "arrangement": "reversed"}, "arrangement 'sorted'"),
    ({"version": True}, "not supported"),
])
def test_metadata_readers_refuse_other_versions_and_arrangements(meta, words):
    base = {"scheme": Scheme.parse("bs-psb-np-cs").to_dict(), "original_size": [40, 56]}
    with pytest.raises(UserError, match=words):
        read_metadata(json.dumps(base | meta))


def test_an_arrangement_for_a_scheme_without_pixel_shuffling_is_refused_by_the_reader():
    text = json.dumps({"version": 3, "scheme": Scheme.parse("bs-np-cs").to_dict(), "original_size": [16, 16],
                       "arrangement": "sorted"})
    with pytest.raises(UserError, match="pixel shuffling"):
        read_metadata(text)


# -- service and clients ------------------------------------------------------------------------

def _order_free_stand_in(schemes=("bs-psb-np-cs",)):
    seg = support.stand_in_segmenter(schemes)  # a 1x1 convolution: per-pixel, so order-free
    seg.info.invariances = ("bs", "ps", "psb") + tuple(f"psb{d}" for d in (1, 2, 4, 8, 16))
    return seg


def test_service_segments_an_arranged_jpeg_and_lists_the_arrangement():
    import httpx

    scheme = Scheme.parse("bs-psb-np-cs")
    enc = encrypt(support.scene(48, 64, seed=1), Key.generate(), scheme)
    body = encode_encrypted(enc, "jpeg", 90)
    assert encrypted_metadata(body, arrangement=True)[2] == "sorted"
    with support.serve(_order_free_stand_in()) as srv:
        assert httpx.get(srv.url + "/v1/info").json()["arrangements"] == ["none", "sorted"]
        r = httpx.post(srv.url + "/v1/segment", files={"image": ("e.jpg", body, "image/jpeg")})
        assert r.status_code == 200, r.text
        from encseg.cipher.io import png_metadata, _png_text

        assert png_metadata(r.content) == (scheme, (48, 64))
        assert read_metadata(_png_text(r.content))[2] == "sorted"  # the answer says its geometry
    with support.serve(support.stand_in_segmenter(("bs-psb-np-cs",))) as srv:  # invariances not declared
        assert httpx.get(srv.url + "/v1/info").json()["arrangements"] == ["none"]
        r = httpx.post(srv.url + "/v1/segment", files={"image": ("e.jpg", body, "image/jpeg")})
        assert r.status_code == 422 and "order-free" in r.json()["detail"]


@pytest.mark.parametrize("meta,status", [
    ({"version": 3, "arrangement": "reversed"}, 422),
    ({"version": 1, "arrangement": "sorted"}, 422),
    ({"version": 4, "arrangement": "sorted"}, 422),
    ({"version": 3, "arrangement": "sorted", "scheme": Scheme.parse("bs-np-cs").to_dict()}, 422),
    ({"version": 3, "arrangement": "sorted", "key": "00" * 32}, 400),
])
def test_service_refuses_bad_arrangement_metadata_with_a_4xx(meta, status):
    import httpx

    scheme = Scheme.parse("bs-psb-np-cs")
    enc = encrypt(support.scene(32, 32, seed=2), Key.generate(), scheme)
    base = {"version": 3, "scheme": scheme.to_dict(), "original_size": [32, 32], "arrangement": "sorted"}
    body = J.encode_jpeg(arrange(enc.data, scheme), 90, json.dumps(base | meta, separators=(",", ":")))
    with support.serve(_order_free_stand_in(("bs-psb-np-cs", "bs-np-cs"))) as srv:
        r = httpx.post(srv.url + "/v1/segment", files={"image": ("e.jpg", body, "image/jpeg")})
    assert r.status_code == status, r.text
    assert "\n" not in r.json()["detail"]


def test_clients_send_sorted_and_get_the_mask_of_the_shuffled_order():
    from encseg.service.client import HttpBackend, LocalBackend, segment_image

    scheme = Scheme.parse("bs-psb-np-cs")
    img = support.scene(48, 64, seed=3)
    key = Key.generate()
    seg = _order_free_stand_in()
    sorted_local = segment_image(img, LocalBackend(seg, transport="jpeg"), scheme, [], key=key)
    plain_png = segment_image(img, LocalBackend(seg, transport="png"), scheme, [], key=key)
    assert LocalBackend(seg, transport="jpeg").arrangement_for(scheme) == "sorted"
    assert LocalBackend(support.stand_in_segmenter(("bs-psb-np-cs",)), transport="jpeg").arrangement_for(scheme) == "none"
    # lossless PNG, asked to travel sorted: a per-pixel model's mask is exactly the unarranged one
    sorted_png = segment_image(img, LocalBackend(seg, transport="png", arrangement="sorted"), scheme, [], key=key)
    assert np.array_equal(sorted_png.mask, plain_png.mask)
    assert np.array_equal(sorted_png.encrypted_labels, plain_png.encrypted_labels)  # back in encrypted geometry
    with support.serve(seg) as srv:
        backend = HttpBackend(srv.url, transport="jpeg")
        try:
            over_http = segment_image(img, backend, scheme, [], key=key)
            assert backend.arrangement_for(scheme) == "sorted"
        finally:
            backend.close()
    assert np.array_equal(over_http.mask, sorted_local.mask)  # the same bytes, the same model
    with support.serve(support.stand_in_segmenter(("bs-psb-np-cs",))) as srv:  # an older / order-aware server
        backend = HttpBackend(srv.url, transport="jpeg")
        try:
            assert backend.arrangement_for(scheme) == "none"  # auto falls back to the shuffled order
            with pytest.raises(UserError, match="arrangement none"):
                HttpBackend(srv.url, transport="jpeg", arrangement="sorted").arrangement_for(scheme)
        finally:
            backend.close()


def test_cli_jpeg_round_trip_through_a_per_pixel_server_decrypts_the_label_map_exactly(run_cli, tmp_path):
    from PIL import Image

    from tests.test_transport import classify, grey_block_image, server_side

    img, labels = grey_block_image(40, 56, seed=9, halves=True)
    Image.fromarray(img).save(tmp_path / "in.png")
    code, out, err = run_cli("encrypt", tmp_path / "in.png", "-o", tmp_path / "e.jpg", "--key-out", tmp_path / "k.key")
    assert code == 0 and "sorted" in out, err
    data = (tmp_path / "e.jpg").read_bytes()
    assert encrypted_metadata(data, arrangement=True)[2] == "sorted"
    answer = classify(server_side(data))  # the server labels what it received
    from encseg.cipher.io import encode_png

    (tmp_path / "m.png").write_bytes(encode_png(answer, metadata_text(Scheme.parse("bs-psb-np-cs"), (40, 56), "sorted")))
    code, out, err = run_cli("decrypt-mask", tmp_path / "m.png", "--key", tmp_path / "k.key", "--image",
                             tmp_path / "in.png", "-o", tmp_path / "dm.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dm.png")), labels)
    code, out, err = run_cli("decrypt", tmp_path / "e.jpg", "--key", tmp_path / "k.key", "-o", tmp_path / "d.png")
    assert code != 0 and len(err.strip().splitlines()) == 1
    # an arranged PNG (asked for) is refused by decrypt, in one line
    code, out, err = run_cli("encrypt", tmp_path / "in.png", "-o", tmp_path / "a.png", "--arrangement", "sorted",
                             "--key-out", tmp_path / "k2.key")
    assert code == 0, err
    code, out, err = run_cli("decrypt", tmp_path / "a.png", "--key", tmp_path / "k2.key", "-o", tmp_path / "d.png")
    assert code != 0 and "sorted arrangement" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("encrypt", tmp_path / "in.png", "-o", tmp_path / "b.jpg", "--scheme", "bs-np-cs",
                             "--arrangement", "sorted")
    assert code != 0 and "pixel shuffling" in err and not (tmp_path / "b.jpg").exists()


# -- training on what clients send ----------------------------------------------------------------

@pytest.mark.parametrize("geometry", [False, True], ids=["labels", "distillation index map"])
def test_jpeg_training_samples_are_arranged_and_their_labels_move_with_the_pixels(geometry):
    from encseg.cipher import CipherTransform
    from encseg.data.augment import AugmentConfig, TrainTransform

    from tests.test_transport import classify, grey_block_image

    img, labels = grey_block_image(48, 64, seed=11, halves=True)  # labels are a function of each pixel's grey
    cfg = AugmentConfig(crop=(48, 64), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    t = TrainTransform(cfg, CipherTransform(Scheme.parse("bs-psb-np-cs")), seed=1, jpeg_quality=(100, 100),
                       geometry=geometry)
    out = t(img, labels, (0, 0))
    x = out[0].permute(1, 2, 0).numpy()
    y = out[1].numpy()
    # arranged before JPEG: along each block's row-major slots the grey level only rises (up to JPEG's
    # rounding); the shuffled order of two-level blocks would fall at about half of the level changes
    blocks = x.reshape(3, 16, 4, 16, 3).transpose(0, 2, 1, 3, 4).reshape(12, 256, 3).astype(int).sum(-1)
    steps = np.diff(blocks, axis=1)
    assert (steps > 24).any() and not (steps < -24).any()
    assert np.array_equal(y, classify(x))  # every pixel still carries its own label
    if geometry:
        assert np.array_equal(labels.reshape(-1)[out[3].numpy()].reshape(48, 64), y)  # where[] is exact
