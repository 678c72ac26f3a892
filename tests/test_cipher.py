"""Cipher behaviour: exact inverses, label-map correspondence, key handling, schemes, uniformity."""

import hashlib
import os
import pickle
import re
import stat

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from encseg.cipher import (
    PRESETS, CipherTransform, Key, Scheme, apply_geometry, decrypt, decrypt_mask, encrypt, encrypt_mask,
    load_key, make_plan, save_key,
)
from encseg.cipher.reference import reference_encrypt
from encseg.errors import UserError

PRESET_NAMES = list(PRESETS)
V2_PRESETS = [n for n in PRESET_NAMES if Scheme.parse(n).version == 2]


def scheme_strategy():
    @st.composite
    def build(draw):
        name = draw(st.sampled_from(PRESET_NAMES + ["cs-np-bs", "np-ps2-bs", "ps2-cs", "np-psb2-bs", "cs-psb-bs-np"]))
        groups = [int(g) for g in re.findall(r"[0-9]+", name)]
        sizes = [p for p in (1, 2, 4, 8, 16) if all(p % g == 0 for g in groups)]
        return Scheme.parse(name, block_size=draw(st.sampled_from(sizes)))

    return build()


@settings(max_examples=150, deadline=None)
@given(scheme=scheme_strategy(), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_decrypt_inverts_encrypt_for_any_shape_scheme_and_key(scheme, h, w, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    key = Key(hashlib.sha256(seed.to_bytes(8, "little")).digest())
    enc = encrypt(img, key, scheme)
    p = scheme.block_size
    assert enc.data.shape == (h + (-h % p), w + (-w % p), 3) and enc.original_size == (h, w)
    assert np.array_equal(decrypt(enc, key), img)


@settings(max_examples=40, deadline=None)
@given(scheme=scheme_strategy(), h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 2**32 - 1))
def test_fused_implementation_equals_the_block_loop_reference(scheme, h, w, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    key = Key(hashlib.sha256(b"ref" + seed.to_bytes(8, "little")).digest())
    assert np.array_equal(encrypt(img, key, scheme).data, reference_encrypt(img, key, scheme))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_label_map_follows_every_encrypted_pixel_back_to_where_it_came_from(name):
    # 8x16 grey image whose pixel values 0..127 are unique ids; NP maps v -> 255 - v (>= 128) and CS
    # permutes equal channels, so an encrypted pixel still names its source pixel.
    scheme = Scheme.parse(name, block_size=4)
    ids = np.arange(128, dtype=np.uint8).reshape(8, 16)
    img = np.repeat(ids[:, :, None], 3, axis=2)
    key = Key.generate()
    enc = encrypt(img, key, scheme).data
    assert (enc == enc[:, :, :1]).all()
    source_of_each_encrypted_pixel = np.minimum(enc[:, :, 0], 255 - enc[:, :, 0])
    assert np.array_equal(source_of_each_encrypted_pixel, encrypt_mask(ids, key, scheme))
    labels = (ids * 7 % 19).astype(np.uint8)  # a label map of the same scene
    assert np.array_equal(decrypt_mask(encrypt_mask(labels, key, scheme), key, scheme, (8, 16)), labels)


@pytest.mark.parametrize("name", ["bs-ps-np-cs", "bs-psb-np-cs", "bs-psb2-np-cs", "psb-bs"])
def test_decrypt_mask_handles_logits_in_numpy_and_torch_and_crops_padding(name):
    scheme, key = Scheme.parse(name, block_size=4), Key.generate()
    labels = np.random.default_rng(1).integers(0, 5, (10, 13)).astype(np.uint8)
    enc_labels = encrypt_mask(labels, key, scheme)
    assert enc_labels.shape == (12, 16)
    logits = np.eye(5, dtype=np.float32)[np.where(enc_labels == 255, 0, enc_labels)].transpose(2, 0, 1)
    back = decrypt_mask(logits, key, scheme, (10, 13))
    assert back.shape == (5, 10, 13) and np.array_equal(back.argmax(0), labels)
    back_t = decrypt_mask(torch.from_numpy(logits)[None], key, scheme, (10, 13))
    assert isinstance(back_t, torch.Tensor) and back_t.shape == (1, 5, 10, 13)
    assert np.array_equal(back_t[0].argmax(0).numpy(), labels)
    assert np.array_equal(apply_geometry(apply_geometry(logits, key, scheme), key, scheme, inverse=True), logits)


@pytest.mark.parametrize("name", ["bs-ps-np-cs", "bs-psb-np-cs"])
def test_same_key_same_output_and_different_keys_different_permutations(name):
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    scheme = Scheme.parse(name)
    k1, k2 = Key.generate(), Key.generate()
    assert np.array_equal(encrypt(img, k1, scheme).data, encrypt(img, Key(k1.to_bytes()), scheme).data)
    p1, p2 = make_plan(k1, scheme, 4, 4), make_plan(k2, scheme, 4, 4)
    assert not np.array_equal(p1.block_src, p2.block_src)
    pixels = "pixel_src" if scheme.version == 1 else "block_pixel_src"
    assert not np.array_equal(getattr(p1, pixels), getattr(p2, pixels))
    assert not np.array_equal(encrypt(img, k1, scheme).data, encrypt(img, k2, scheme).data)


# -- format v2: block-pixel-shuffle, one pixel permutation per block -------------------------------

@pytest.mark.parametrize("name,q", [("bs-psb-np-cs", 16), ("bs-psb4-np-cs", 4), ("psb2", 2)])
def test_every_block_gets_its_own_pixel_permutation(name, q):
    p, (nh, nw) = 16, (4, 8)
    plan = make_plan(Key.generate(), Scheme.parse(name, block_size=p), nh, nw)
    assert plan.pixel_src is None and plan.block_pixel_src.shape == (nh * nw, p * p)
    rows = plan.block_pixel_src
    assert all(np.array_equal(np.sort(r), np.arange(p * p)) for r in rows)  # each row is a permutation
    r, c = np.divmod(np.arange(p * p), p)
    sr, sc = np.divmod(rows, p)
    assert (sr // q == r // q).all() and (sc // q == c // q).all()  # pixels stay in their q x q sub-block
    # 32 draws from (q^2)! permutations: for q >= 4 (2.1e13 of them) two blocks sharing one is a 1e-11
    # event; for q = 2 (24 of them) all 32 blocks sharing one (the v1 behaviour) is a 24^-31 event
    distinct = len({tuple(row) for row in plan.draws["block-pixel-shuffle"].tolist()})
    assert distinct == nh * nw if q >= 4 else distinct > 1


@pytest.mark.parametrize("name", ["ps", "psb"])
def test_a_tiled_image_shows_the_shared_permutation_of_v1_and_not_that_of_v2(name):
    # every block of the plain image is the same 8x8 random tile: v1 pixel-shuffle maps it to one
    # encrypted tile repeated (the leak v2 removes); block-pixel-shuffle gives every block another one
    tile = np.random.default_rng(9).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = np.tile(tile, (4, 4, 1))
    enc = encrypt(img, Key.generate(), Scheme.parse(name, block_size=8)).data
    blocks = {enc[y:y + 8, x:x + 8].tobytes() for y in range(0, 32, 8) for x in range(0, 32, 8)}
    assert len(blocks) == (1 if name == "ps" else 16)
    # a pixel permutation moves pixels, never changes their values: every block keeps the tile's pixels
    for y in range(0, 32, 8):
        for x in range(0, 32, 8):
            got = enc[y:y + 8, x:x + 8].reshape(-1, 3)
            assert sorted(map(tuple, got)) == sorted(map(tuple, tile.reshape(-1, 3)))


def test_block_constant_blocks_stay_constant_under_block_pixel_shuffle():
    # each block one colour: no pixel permutation can change it, whatever the key
    colours = np.random.default_rng(10).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(colours, 4, axis=0), 4, axis=1)
    assert np.array_equal(encrypt(img, Key.generate(), Scheme.parse("psb", block_size=4)).data, img)


def test_block_pixel_permutations_are_indexed_by_position_when_the_step_runs():
    key, (nh, nw), p = Key.generate(), (3, 4), 4
    before = make_plan(key, Scheme.parse("psb-bs", block_size=p), nh, nw)
    after = make_plan(key, Scheme.parse("bs-psb", block_size=p), nh, nw)
    perms = before.draws["block-pixel-shuffle"]  # same key, same step: the same n draws
    assert np.array_equal(perms, after.draws["block-pixel-shuffle"])
    assert np.array_equal(before.block_src, after.block_src)
    # psb then bs: the block now at b was shuffled at its old position block_src[b]; bs then psb: at b
    assert np.array_equal(before.block_pixel_src, perms[before.block_src])
    assert np.array_equal(after.block_pixel_src, perms)


def test_each_block_permutation_is_uniform_over_blocks():
    # p = 2: 24 permutations of 4 positions; 4800 blocks of one key, chi-square with df = 23
    plan = make_plan(Key(hashlib.sha256(b"psb-uniform").digest()), Scheme.parse("psb", block_size=2), 60, 80)
    codes = plan.block_pixel_src @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert counts.size == 24
    expected = plan.block_pixel_src.shape[0] / 24
    assert ((counts - expected) ** 2 / expected).sum() < 49.7  # 0.1% critical value, df = 23


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_v1_presets_serialise_as_version_1_and_v2_presets_as_version_2(name):
    d = Scheme.parse(name).to_dict()
    assert d["version"] == (2 if name in V2_PRESETS else 1)
    assert ("psb" in name) == (name in V2_PRESETS)


def test_descriptor_versions_1_and_2_are_read_and_a_v2_step_needs_version_2():
    psb = {"block_size": 8, "steps": [{"name": "block-pixel-shuffle", "group": 4}]}
    assert Scheme.from_dict({**psb, "version": 2}) == Scheme.from_dict(psb) == Scheme.parse("psb4", block_size=8)
    assert Scheme.from_dict({"version": 2, "block_size": 4, "steps": [{"name": "block-scramble"}]}).to_dict()["version"] == 1
    with pytest.raises(UserError, match="needs scheme format version 2; the descriptor says 1"):
        Scheme.from_dict({**psb, "version": 1})


def test_block_positions_after_scrambling_are_uniform_over_keys():
    # where does each of 9 blocks land, over 900 fixed keys? chi-square over the 9x9 table (df = 64)
    n, trials = 9, 900
    counts = np.zeros((n, n))
    scheme = Scheme.parse("bs", block_size=1)
    for i in range(trials):
        src = make_plan(Key(hashlib.sha256(b"chi%d" % i).digest()), scheme, 3, 3).block_src
        counts[src, np.arange(n)] += 1  # original block src[b] landed at position b
    expected = trials / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 106.0  # the 0.1% critical value of chi-square with 64 degrees of freedom is ~104.7..106


def test_negate_bits_and_channel_orders_are_balanced_over_blocks():
    plan = make_plan(Key(hashlib.sha256(b"balance").digest()), Scheme.parse("bs-np-cs"), 64, 128)
    assert abs(plan.negate.mean() - 0.5) < 0.03
    freq = np.bincount(plan.orders, minlength=6) / plan.orders.size
    assert np.all(np.abs(freq - 1 / 6) < 0.02)


# -- keys ------------------------------------------------------------------------------------------

def test_key_never_shows_its_bytes():
    key = Key.generate()
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr(CipherTransform(Scheme.parse("bs"), "shared", key))):
        assert key.hex() not in text and key.hex()[:16] not in text
    with pytest.raises(TypeError):
        hash(key)


def test_key_errors_never_echo_the_material():
    secret = "ab" * 31 + "zz"
    with pytest.raises(UserError) as e:
        Key.from_hex(secret)
    assert secret not in str(e.value)
    with pytest.raises(UserError) as e:
        Key(b"\x01" * 31)
    assert "31" in str(e.value)


def test_key_equality_and_hex_round_trip():
    key = Key.generate()
    assert Key.from_hex(key.hex()) == key and Key.from_hex(key.hex().upper()) == key
    assert Key.generate() != key


def test_key_file_is_created_owner_only_and_loads_back(tmp_path):
    key = Key.generate()
    path = save_key(key, tmp_path / "k.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key
    with pytest.raises(UserError, match="already exists"):
        save_key(Key.generate(), path)


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = save_key(Key.generate(), tmp_path / "k.key")
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="other users"):
        load_key(path)


# -- schemes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_round_trip_through_json_and_name(name):
    s = Scheme.parse(name)
    assert Scheme.from_json(s.to_json()) == s
    assert Scheme.parse(s.name) == s and s.name == name


@pytest.mark.parametrize("text,message", [
    ("bs-xx", "unknown scheme"),
    ("bs-bs", "appears twice"),
    ("bs-ps5", "must divide the block size"),
    ('{"version": 3, "steps": []}', "version"),
    ('{"version": true, "steps": []}', "version"),
    ("bs-ps-psb-np", "not both"),
    ("psb-ps4", "not both"),
    ("bs-psb5", "must divide the block size"),
    ("bs-psbx", "unknown scheme"),
    ("bs-np2", "unknown scheme"),
    ('{"block_size": 16, "steps": [{"name": "rotate"}]}', "unknown step"),
    ('{"block_size": 16, "steps": [{"name": "negative-positive", "group": 2}]}', "only pixel-shuffle"),
    ('{"block_size": 0, "steps": []}', "block size"),
    ('{"block_size": 16, "steps": [], "key": "00"}', "unknown scheme fields"),
    ("{not json", "not valid JSON"),
])
def test_invalid_schemes_get_clear_errors(text, message):
    with pytest.raises(UserError, match=message):
        Scheme.parse(text)


def test_decrypting_an_image_whose_sides_do_not_fit_the_block_size_is_refused():
    from encseg.cipher import EncryptedImage

    with pytest.raises(UserError, match="multiples of the block size"):
        decrypt(EncryptedImage(np.zeros((20, 32, 3), np.uint8), (20, 32), Scheme.parse("bs")), Key.generate())


def test_non_rgb_arrays_are_refused():
    with pytest.raises(UserError, match="uint8"):
        encrypt(np.zeros((4, 4), np.uint8), Key.generate(), Scheme.parse("bs"))
    with pytest.raises(UserError, match="uint8"):
        encrypt(np.zeros((4, 4, 3), np.float32), Key.generate(), Scheme.parse("bs"))


# -- the loader transform --------------------------------------------------------------------------

def test_cipher_transform_uses_a_fresh_key_per_call_and_survives_pickling():
    t = pickle.loads(pickle.dumps(CipherTransform(Scheme.parse("bs-np-cs", block_size=4), "per-image")))
    img = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.random.default_rng(4).integers(0, 19, (16, 16)).astype(np.uint8)
    (a, ma), (b, mb) = t(img, mask), t(img, mask)
    assert not np.array_equal(a, b) and not np.array_equal(ma, mb)
    assert not any(isinstance(v, Key) for v in vars(t).values() if v is not None)


def test_shared_key_transform_is_deterministic_and_none_is_identity():
    key = Key.generate()
    img = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    t = CipherTransform(Scheme.parse("bs-np-cs", block_size=4), "shared", key)
    assert np.array_equal(t(img)[0], t(img)[0])
    assert CipherTransform(Scheme.parse("bs"), "none")(img)[0] is img


@settings(max_examples=60, deadline=None)
@given(scheme=scheme_strategy(), h=st.integers(1, 48), w=st.integers(1, 48), seed=st.integers(0, 2**32 - 1))
def test_c_kernel_and_numpy_paths_give_identical_bytes(scheme, h, w, seed):
    from encseg.cipher import transform

    if not transform.kernel_available():
        pytest.skip("the optional C kernel was not built (no compiler); the numpy path is tested everywhere else")
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    key = Key(hashlib.sha256(b"kernel" + seed.to_bytes(8, "little")).digest())
    with_kernel = encrypt(img, key, scheme)
    kernel, transform._kernel = transform._kernel, None
    try:
        without = encrypt(img, key, scheme)
        assert np.array_equal(decrypt(with_kernel, key), img)
    finally:
        transform._kernel = kernel
    assert np.array_equal(with_kernel.data, without.data)
    assert np.array_equal(decrypt(without, key), img)


def test_a_kernel_built_before_v2_leaves_block_pixel_shuffle_to_numpy_with_the_same_bytes(monkeypatch):
    from encseg.cipher import keystream, transform

    img = np.random.default_rng(11).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    key, scheme = Key.generate(), Scheme.parse("bs-psb2-np-cs", block_size=4)
    expected = reference_encrypt(img, key, scheme)
    monkeypatch.setattr(transform, "KERNEL_HAS_V2", False)
    monkeypatch.setattr(keystream, "KERNEL_HAS_V2", False)
    enc = encrypt(img, key, scheme)
    assert np.array_equal(enc.data, expected) and np.array_equal(decrypt(enc, key), img)


def test_c_kernel_rejects_buffers_that_do_not_match_the_grid():
    from encseg.cipher import transform

    if not transform.kernel_available():
        pytest.skip("the optional C kernel was not built")
    x = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        transform._kernel.apply(x, np.empty((8, 4, 3), np.uint8), 2, 2, 4, None, None, None, None, False)
    with pytest.raises(ValueError, match="out of range"):
        transform._kernel.apply(x, np.empty_like(x), 2, 2, 4, np.array([0, 1, 2, 9], np.int64), None, None, None, False)


def test_c_kernel_rejects_per_block_permutations_that_do_not_fit_the_group():
    from encseg.cipher import transform

    if not transform.kernel_available():
        pytest.skip("the optional C kernel was not built")
    x = np.zeros((8, 8, 3), np.uint8)
    apply = transform._kernel.apply
    rows = np.tile(np.arange(4, dtype=np.int64), (4, 1))  # 2 x 2 blocks of p = 4, group 2: 4 rows of 4
    apply(x, np.empty_like(x), 2, 2, 4, None, rows, None, None, False, 2)
    rows[3, 1] = 4
    with pytest.raises(ValueError, match="out of range"):
        apply(x, np.empty_like(x), 2, 2, 4, None, rows, None, None, False, 2)
    with pytest.raises(ValueError):  # 3 rows for 4 blocks
        apply(x, np.empty_like(x), 2, 2, 4, None, np.zeros((3, 4), np.int64), None, None, False, 2)
    with pytest.raises(ValueError, match="group"):
        apply(x, np.empty_like(x), 2, 2, 4, None, np.zeros((4, 9), np.int64), None, None, False, 3)


@pytest.mark.parametrize("m", [1, 3, 16, 33, 256, 1024])
def test_c_row_argsort_equals_numpy_stable_argsort_per_row(m):
    from encseg.cipher import keystream

    if keystream._kernel is None:
        pytest.skip("the optional C kernel was not built")
    rng = np.random.default_rng(m)
    words = rng.integers(0, 2**63, (40, m), dtype=np.uint64) * 2
    words[:5] = rng.integers(0, 3, (5, m)).astype(np.uint64) << np.uint64(60)  # ties, in the top bits only
    words[5:8] = rng.integers(0, 3, (3, m)).astype(np.uint64)  # ties, in the low bits only (one bucket)
    out = np.empty(words.shape, np.int64)
    keystream._kernel.argsort_rows_u64(words.astype("<u8").tobytes(), out, m)
    assert np.array_equal(out, np.argsort(words, axis=1, kind="stable"))


@pytest.mark.parametrize("words", [
    np.array([5, 3, 5, 0, 2**64 - 1, 3, 2**63, 5], dtype="<u8"),  # ties keep index order
    np.random.default_rng(7).integers(0, 2**63, 5000, dtype=np.uint64) * 2,
    np.random.default_rng(8).integers(0, 4, 3000).astype("<u8") << np.uint64(56),  # ties in the top byte only
    np.array([], dtype="<u8"),
])
def test_c_radix_argsort_equals_numpy_stable_argsort(words):
    from encseg.cipher import keystream

    if keystream._kernel is None:
        pytest.skip("the optional C kernel was not built")
    out = np.empty(len(words), np.int64)
    keystream._kernel.stable_argsort_u64(words.astype("<u8").tobytes(), out)
    assert np.array_equal(out, np.argsort(words, kind="stable"))
