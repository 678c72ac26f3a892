"""Attack suite: solver, metrics, statistics, PS leak, model probe, learned inverse, leakage and `encseg attack`."""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from encseg.attacks import jigsaw, known_pair, leakage, metrics, probe, psleak, stats
from encseg.attacks.assignment import linear_assignment
from encseg.attacks.canonical import canonical_blocks, canonicalise
from encseg.attacks.inverse import InverseConfig, UNet, invert, train_inverse
from encseg.cipher import Key, Plan, Scheme, encrypt, make_plan
from encseg.cipher.keystream import expand_group_permutation
from encseg.cipher.transform import apply_plan_to_image


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Small numpy products and eigen-decompositions run fastest on one OpenBLAS thread here."""
    from encseg.attacks._blas import set_blas_threads

    set_blas_threads(1)
    yield


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic image: a few low-frequency sinusoids per channel, full 0..255 range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 3, 2)
            img[..., c] += np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.round().astype(np.uint8)


def textured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Isotropic texture: white noise box-blurred three times (neighbours alike in every direction)."""
    x = np.random.default_rng(seed).normal(size=(h, w, 3))
    for _ in range(3):
        q = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="wrap")
        x = sum(q[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.round().astype(np.uint8)


def mixed_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth at the scale of blocks (the jigsaw solver's seams) with texture inside them (the PS leak)."""
    return (0.7 * smooth_image(h, w, seed) + 0.3 * textured_image(h, w, seed)).round().astype(np.uint8)


def fixed_key(i: int) -> Key:
    return Key.from_hex(hashlib.sha256(f"attack-test-{i}".encode()).hexdigest())


# -- the jigsaw solver -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_recovers_block_scrambled_smooth_image_exactly(seed):
    img = smooth_image(64, 96, seed)
    scheme = Scheme.parse("bs", block_size=8)
    key = fixed_key(seed)
    enc = encrypt(img, key, scheme).data
    assert not np.array_equal(enc, img)
    sol = jigsaw.solve(jigsaw.split_blocks(enc, 8), (8, 12))
    src = make_plan(key, scheme, 8, 12).block_src[sol.placement]
    assert metrics.direct_comparison(src) == 1.0
    assert metrics.neighbour_comparison(src) == 1.0
    assert np.array_equal(sol.render(jigsaw.split_blocks(enc, 8)), img)


def _equal_up_to_global_colour(a: np.ndarray, b: np.ndarray) -> bool:
    blocks = a[None, None]  # one "block" the size of the image
    return any(np.array_equal(jigsaw.apply_transform(blocks, g)[0, 0], b) for g in range(12))


def test_extended_solver_recovers_bs_np_cs_up_to_one_global_colour_transform():
    img = smooth_image(48, 64, 3)
    scheme = Scheme.parse("bs-np-cs", block_size=8)
    enc = encrypt(img, fixed_key(7), scheme).data
    blocks = jigsaw.split_blocks(enc, 8)
    sol = jigsaw.solve(blocks, (6, 8), extended=True)
    assert _equal_up_to_global_colour(sol.render(blocks), img)


def test_fixed_position_solver_recovers_colour_states_when_blocks_stay_put():
    img = smooth_image(48, 64, 4)
    scheme = Scheme.parse("np-cs", block_size=8)
    enc = encrypt(img, fixed_key(8), scheme).data
    blocks = jigsaw.split_blocks(enc, 8)
    sol = jigsaw.solve(blocks, (6, 8), extended=True, fixed_positions=True)
    assert np.array_equal(sol.placement.ravel(), np.arange(48))
    assert _equal_up_to_global_colour(sol.render(blocks), img)


def test_colour_transforms_match_the_cipher():
    """transform 6 * negate + order is exactly what NP and CS do to a block."""
    img = smooth_image(32, 48, 5)
    scheme = Scheme.parse("np-cs", block_size=8)
    key = fixed_key(9)
    plan = make_plan(key, scheme, 4, 6)
    t = 6 * plan.negate.astype(int) + plan.orders
    expect = jigsaw.join_blocks(jigsaw.apply_transform(jigsaw.split_blocks(img, 8), t), (4, 6))
    assert np.array_equal(expect, encrypt(img, key, scheme).data)
    for t in range(12):
        one = jigsaw.split_blocks(img, 8)[:1]
        assert np.array_equal(jigsaw.apply_transform(jigsaw.apply_transform(one, t), jigsaw.inverse_transform(t)), one)


def _mgc_reference(xi: np.ndarray, xj: np.ndarray) -> float:
    """Gallagher's MGC for xi left of xj, written out row by row."""
    xi, xj = xi.astype(float), xj.astype(float)

    def model(g):
        allg = np.concatenate([g, jigsaw._DUMMY])
        return g.mean(0), np.linalg.inv(np.cov(allg.T))

    mu_i, q_i = model(xi[:, -1] - xi[:, -2])
    mu_j, q_j = model(xj[:, 0] - xj[:, 1])
    d = 0.0
    for r in range(xi.shape[0]):
        g = xj[r, 0] - xi[r, -1]
        d += (g - mu_i) @ q_i @ (g - mu_i) + (-g - mu_j) @ q_j @ (-g - mu_j)
    return d


def test_vectorised_compatibility_matches_the_formula_and_is_colour_invariant():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    f = jigsaw.compute_features(blocks, extended=True)
    d_lr = f.lr[0][0] @ f.lr[1][0].T
    d_tb = f.tb[0][0] @ f.tb[1][0].T
    for i, j in itertools.product(range(5), range(5)):
        assert d_lr[i, j] == pytest.approx(_mgc_reference(blocks[i], blocks[j]), rel=1e-7)
        assert d_tb[i, j] == pytest.approx(_mgc_reference(blocks[i].swapaxes(0, 1), blocks[j].swapaxes(0, 1)), rel=1e-7)
    for t in range(12):  # the same transform on both pieces leaves MGC unchanged
        assert np.allclose(f.lr[0][t] @ f.lr[1][t].T, d_lr, rtol=1e-7)
    D_lr, _, H_lr, _ = jigsaw.pairwise(f)
    assert np.all(D_lr <= np.where(np.eye(5, dtype=bool), np.inf, d_lr) + 1e-6)


def test_solver_rejects_a_grid_that_does_not_fit():
    with pytest.raises(ValueError):
        jigsaw.solve(np.zeros((6, 4, 4, 3), np.uint8), (2, 2))


# -- metrics --------------------------------------------------------------------------------------

def test_direct_and_neighbour_comparison_hand_computed():
    ident = np.arange(6).reshape(2, 3)
    assert metrics.direct_comparison(ident) == 1.0
    assert metrics.neighbour_comparison(ident) == 1.0
    # every row rotated by one column: no block in place; 2 of 4 left-right pairs and 3 of 3
    # top-bottom pairs are still true neighbours
    rolled = np.array([[2, 0, 1], [5, 3, 4]])
    assert metrics.direct_comparison(rolled) == 0.0
    assert metrics.neighbour_comparison(rolled) == pytest.approx(5 / 7)
    # blocks 0 and 4 swapped: 4 of 6 in place
    swapped = np.array([[4, 1, 2], [3, 0, 5]])
    # left-right pairs: (4,1) no, (1,2) yes, (3,0) no, (0,5) no; top-bottom: (4,3) no, (1,0) no, (2,5) yes
    assert metrics.direct_comparison(swapped) == pytest.approx(4 / 6)
    assert metrics.neighbour_comparison(swapped) == pytest.approx(2 / 7)
    # consecutive indices across a row break (1 ends row 0, 2 starts row 1) are not neighbours
    assert metrics.neighbour_comparison(np.array([[1, 2], [0, 3]])) == 0.0


C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def test_ssim_known_values():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (24, 30, 3)).astype(np.uint8)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    # constant images a and b: only the luminance term is left
    a = np.full((16, 16), 100.0)
    b = np.full((16, 16), 140.0)
    assert metrics.ssim(a, b) == pytest.approx((2 * 100 * 140 + C1) / (100**2 + 140**2 + C1))
    # a constant shift keeps contrast and structure: SSIM is the luminance term of each window
    y = np.clip(x.astype(float) + 20, 0, 255)
    s = metrics.ssim(x, y)
    assert 0.5 < s < 1.0
    assert metrics.ssim(x, y) == pytest.approx(metrics.ssim(y, x))


def test_ssim_hand_computed_2x2_window():
    # one uniform 2x2 window: mu_x 25, mu_y 30, var_x 125, var_y 350, cov 200 (population moments)
    x = np.array([[10.0, 20.0], [30.0, 40.0]])
    y = np.array([[10.0, 20.0], [30.0, 60.0]])
    expect = (2 * 25 * 30 + C1) * (2 * 200 + C2) / ((25**2 + 30**2 + C1) * (125 + 350 + C2))
    assert metrics.ssim(x, y, win_size=2, gaussian=False) == pytest.approx(expect, rel=1e-12)
    assert expect == pytest.approx(0.8454, abs=1e-4)


def test_ssim_refuses_images_smaller_than_the_window_and_mismatched_shapes():
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((16, 16)), np.zeros((16, 17)))


def test_psnr_hand_computed():
    x = np.zeros((4, 4, 3), np.uint8)
    assert metrics.psnr(x, x) == math.inf
    assert metrics.psnr(x, x + 1) == pytest.approx(20 * math.log10(255))
    y = x.copy()
    y[0, 0, 0] = 48  # MSE = 48^2 / 48 = 48
    assert metrics.psnr(x, y) == pytest.approx(10 * math.log10(255**2 / 48))


# -- statistics and key space -----------------------------------------------------------------------

def _all_plans(scheme: Scheme, nh: int, nw: int):
    """Every plan the scheme can produce for nh x nw blocks (its every draw of every step)."""
    p, n = scheme.block_size, nh * nw
    names = {s.name: s for s in scheme.steps}
    perms_b = list(itertools.permutations(range(n))) if "block-scramble" in names else [None]
    if "pixel-shuffle" in names:
        q = names["pixel-shuffle"].group or p
        perms_p = [expand_group_permutation(np.array(s), p, q) for s in itertools.permutations(range(q * q))]
    else:
        perms_p = [None]
    if "block-pixel-shuffle" in names:  # one permutation of q*q positions per block
        q = names["block-pixel-shuffle"].group or p
        group, per_block = q, list(itertools.product(itertools.permutations(range(q * q)), repeat=n))
    else:
        group, per_block = None, [None]
    negs = list(itertools.product([False, True], repeat=n)) if "negative-positive" in names else [None]
    orders = list(itertools.product(range(6), repeat=n)) if "channel-shuffle" in names else [None]
    for b, px, bp, ng, od in itertools.product(perms_b, perms_p, per_block, negs, orders):
        yield Plan(p, (nh, nw), None if b is None else np.array(b), px,
                   None if ng is None else np.array(ng), None if od is None else np.array(od), {},
                   None if bp is None else np.array(bp), group)


@pytest.mark.parametrize(
    "code,p,nh,nw",
    [("bs", 1, 2, 2), ("bs-np-cs", 2, 1, 2), ("ps-np-cs", 2, 1, 1), ("bs-ps2-np", 4, 1, 2), ("bs-ps-np-cs", 2, 1, 2),
     ("bs-psb-np", 2, 1, 2), ("psb2-cs", 4, 1, 1)],
)
def test_keyspace_formula_matches_enumeration_of_every_ciphertext(code, p, nh, nw):
    scheme = Scheme.parse(code, block_size=p)
    rng = np.random.default_rng(0)
    size = nh * p * nw * p * 3
    img = rng.permutation(256)[:size].astype(np.uint8).reshape(nh * p, nw * p, 3)  # distinct values
    seen = {apply_plan_to_image(img, plan).tobytes() for plan in _all_plans(scheme, nh, nw)}
    bits, capped = stats.keyspace_bits(scheme, nh * p, nw * p)
    assert len(seen) == round(2**bits)
    assert capped == bits


def test_keyspace_formula_matches_ciphertexts_reached_by_real_keys():
    # 2 blocks of one pixel under bs-np-cs: 2! * 2^2 * 6^2 = 288 ciphertexts; 4000 keys reach them all
    scheme = Scheme.parse("bs-np-cs", block_size=1)
    img = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    seen = {encrypt(img, fixed_key(i), scheme).data.tobytes() for i in range(4000)}
    assert len(seen) == round(2 ** stats.keyspace_bits(scheme, 1, 2)[0]) == 288


def test_keyspace_is_capped_by_the_key():
    bits, capped = stats.keyspace_bits(Scheme.parse("bs-np-cs"), 256, 512)
    n = 16 * 32
    assert bits == pytest.approx(math.log2(math.factorial(n)) + n + n * math.log2(6))
    assert capped == 256


def test_block_statistics_survive_scrambling_and_histograms_survive_bs():
    img = smooth_image(64, 64, 6)
    key = fixed_key(10)
    for code in ("bs", "bs-ps-np-cs"):
        scheme = Scheme.parse(code, block_size=8)
        enc = encrypt(img, key, scheme).data
        leak = stats.block_leakage(img, enc, make_plan(key, scheme, 8, 8).block_src, 8)
        assert leak["var"] == pytest.approx(1.0)
        assert leak["abs_mean"] == pytest.approx(1.0)
    enc_bs = encrypt(img, key, Scheme.parse("bs", block_size=8)).data
    assert stats.histogram_distance(img, enc_bs) == 0.0
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert stats.histogram_distance(black, white) == 1.0


def test_pixel_shuffle_adjacency_leaks_from_one_textured_ciphertext_but_not_from_noise():
    key = fixed_key(14)
    for code in ("bs-ps-np-cs", "ps4-np-cs"):
        scheme = Scheme.parse(code, block_size=8)
        pixel_src = make_plan(key, scheme, 8, 8).pixel_src
        smooth = encrypt(textured_image(64, 64, 2), key, scheme).data
        assert stats.pixel_adjacency_leak(smooth, 8, pixel_src) == 1.0
        noise = encrypt(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), key, scheme).data
        assert stats.pixel_adjacency_leak(noise, 8, pixel_src) < 0.5
    assert math.isnan(stats.pixel_adjacency_leak(smooth, 8, None))


def test_one_permutation_per_block_leaks_only_what_each_block_says_of_itself():
    # psb: positions do not correspond across blocks, so the score is each block's own (a block of a
    # smooth image still says something of its own arrangement; noise says nothing)
    key = fixed_key(14)
    scheme = Scheme.parse("bs-psb-np-cs", block_size=8)
    plan = make_plan(key, scheme, 8, 8)
    assert plan.pixel_src is None and plan.block_pixel_src is not None
    smooth = encrypt(textured_image(64, 64, 2), key, scheme).data
    noise = encrypt(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), key, scheme).data
    own = stats.pixel_adjacency_leak(smooth, 8, None, plan.block_pixel_src)
    assert 0.3 < own <= 1.0
    assert stats.pixel_adjacency_leak(noise, 8, None, plan.block_pixel_src) < 0.3
    # the same ciphertext scored as if its blocks shared one permutation finds far less
    shared_guess = stats.pixel_adjacency_leak(smooth, 8, plan.block_pixel_src[0])
    assert shared_guess < own


# -- canonical blocks and the assignment solver -------------------------------------------------------

def test_canonical_blocks_are_the_same_for_all_12_np_cs_variants_ties_included():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    ties = np.zeros((4, 4, 4, 3), np.uint8)
    ties[0] = 127
    ties[0, :2] = 128  # mean exactly 127.5: NP cannot be undone by the mean
    ties[1] = 10  # flat grey: every channel order is the same block
    ties[2] = rng.integers(0, 256, (4, 4, 3))
    ties[2, ..., 1] = ties[2, ..., 0][::-1]  # two channels with equal sums but different values
    ties[3, :2], ties[3, 2:] = 0, 255
    blocks = np.concatenate([blocks, ties])
    ref = canonical_blocks(blocks)
    for g in range(12):
        assert np.array_equal(canonical_blocks(jigsaw.apply_transform(blocks, g)), ref), g
    img = smooth_image(32, 48, 1)
    assert not np.array_equal(canonicalise(img, 8), img)  # it does change blocks (negation, channel order)


def test_linear_assignment_matches_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(1, 7))
        c = rng.normal(size=(n, n)) if trial % 2 else rng.integers(0, 3, (n, n)).astype(float)  # ties too
        best = min(sum(c[i, q[i]] for i in range(n)) for q in itertools.permutations(range(n)))
        cols = linear_assignment(c)
        assert sorted(cols.tolist()) == list(range(n))
        assert c[np.arange(n), cols].sum() == pytest.approx(best)


# -- the pixel-shuffle leak ----------------------------------------------------------------------------

def test_ps_leak_recovers_the_full_permutation_of_a_smooth_image_up_to_the_square_symmetry():
    scheme = Scheme.parse("bs-ps-np-cs", block_size=8)
    key = fixed_key(20)
    img = textured_image(96, 128, 3)
    enc = encrypt(img, key, scheme).data
    t = psleak.target_of(scheme)
    est = psleak.estimate(enc, t)
    truth = psleak.true_permutations(make_plan(key, scheme, 12, 16), t)
    assert psleak.adjacency_recovered(est, truth, 8) == 1.0
    assert psleak.exact_recovered(est, truth, 8) == 1.0
    # a wrong layout scores low: the measure is not trivially 1
    assert psleak.adjacency_recovered(np.random.default_rng(0).permutation(64), truth, 8) < 0.3


def test_ps_leak_on_4x4_sub_blocks_recovers_the_exact_permutation_and_undoes_it():
    scheme = Scheme.parse("bs-ps4-np-cs", block_size=8)
    key = fixed_key(21)
    img = textured_image(64, 96, 4)
    enc = encrypt(img, key, scheme).data
    t = psleak.target_of(scheme)
    est = psleak.estimate(enc, t)  # the symmetry is resolved by the seams between sub-blocks
    truth = psleak.true_permutations(make_plan(key, scheme, 8, 12), t)
    assert np.array_equal(est, truth)
    # undoing it leaves exactly the bs-np-cs ciphertext under the same key
    assert np.array_equal(psleak.unshuffle(enc, t, est), encrypt(img, key, Scheme.parse("bs-np-cs", block_size=8)).data)


def test_one_permutation_per_block_removes_the_pooled_statistic():
    key = fixed_key(22)
    img = textured_image(96, 128, 5)
    for code in ("bs-ps-np-cs", "bs-psb-np-cs"):
        scheme = Scheme.parse(code, block_size=8)
        t = psleak.target_of(scheme)
        enc = encrypt(img, key, scheme).data
        truth = psleak.true_permutations(make_plan(key, scheme, 12, 16), t)
        adj = psleak.adjacency_recovered(psleak.estimate(enc, t), truth, 8)  # psb: against every block's own
        assert adj == 1.0 if code == "bs-ps-np-cs" else adj < 0.3


@pytest.mark.parametrize("seed", [6, 7])
def test_ps_leak_then_jigsaw_reassembles_a_bs_ps_np_cs_ciphertext(seed):
    from encseg.attacks.suite import ps_leak_attack

    scheme = Scheme.parse("bs-ps-np-cs", block_size=8)
    key = fixed_key(23)
    img = mixed_image(64, 96, seed)
    enc = encrypt(img, key, scheme).data
    out = ps_leak_attack(enc, scheme, img, make_plan(key, scheme, 8, 12))
    assert out["adjacency"] == 1.0
    assert out["neighbour"] == 1.0 and out["direct"] == 1.0
    assert np.array_equal(out["recon"], img)


# -- the model as attacker ------------------------------------------------------------------------------

def _probe_data(rng, grid, images, informative, noise=0.3):
    R, C = grid
    n = R * C
    code = np.concatenate([np.eye(R)[np.arange(n) // C], np.eye(C)[np.arange(n) % C]], 1)  # (n, R + C)
    feats, srcs = [], []
    for _ in range(images):
        src = rng.permutation(n)  # encrypted block b came from src[b]
        f = (code[src] if informative else code[rng.permutation(n)]) + noise * rng.normal(size=(n, R + C))
        feats.append(np.concatenate([f, rng.normal(size=(n, 4))], 1))
        srcs.append(src)
    return np.stack(feats), np.stack(srcs)


def test_position_probe_finds_positions_the_features_carry_and_stays_at_chance_when_they_do_not(one_thread):
    rng = np.random.default_rng(0)
    grid = (4, 8)
    for informative in (True, False):
        f, s = _probe_data(rng, grid, 30, informative)
        ft, st = _probe_data(rng, grid, 10, informative)
        pr = probe.train_probe(f.reshape(-1, f.shape[-1]), s.ravel(), grid, steps=200)
        acc = probe.probe_accuracy(pr, ft.reshape(-1, ft.shape[-1]), st.ravel())
        if informative:
            assert acc["exact"] > 0.9
            placed = probe.probe_placement(pr, ft[0])
            assert metrics.direct_comparison(st[0][placed]) == 1.0
        else:
            assert acc["exact"] < 3 * acc["chance_exact"] and acc["row"] < 0.45 and acc["col"] < 0.25


def test_learned_compatibility_drives_the_jigsaw_solver(one_thread):
    rng = np.random.default_rng(1)
    grid = (4, 6)
    f, s = _probe_data(rng, grid, 30, True, noise=0.1)
    compat = probe.train_compatibility(f, s, grid, steps=150, lr=0.05)
    ft, st = _probe_data(rng, grid, 1, True, noise=0.1)
    blocks = np.zeros((24, 2, 2, 3), np.uint8)
    sol = probe.solve_with(compat, ft[0], blocks, grid)
    assert metrics.neighbour_comparison(st[0][sol.placement]) > 0.75
    untrained = probe.train_compatibility(f, s, grid, steps=0)
    sol = probe.solve_with(untrained, ft[0], blocks, grid)
    assert metrics.neighbour_comparison(st[0][sol.placement]) < 0.4


def test_dense_compatibility_reproduces_a_given_matrix_in_the_solver():
    grid = (3, 5)
    n = 15
    r, c = np.divmod(np.arange(n), 5)
    d_lr = np.where((r[:, None] == r[None]) & (c[None] == c[:, None] + 1), 0.1, 1.0)
    d_tb = np.where((c[:, None] == c[None]) & (r[None] == r[:, None] + 1), 0.1, 1.0)
    perm = np.random.default_rng(2).permutation(n)  # scrambled pieces: piece k is original perm[k]
    feats = jigsaw.dense_features(d_lr[np.ix_(perm, perm)], d_tb[np.ix_(perm, perm)])
    sol = jigsaw.solve(np.zeros((n, 2, 2, 3), np.uint8), grid, features=feats)
    assert metrics.direct_comparison(perm[sol.placement]) == 1.0
    assert jigsaw.seam_cost(sol, feats) == pytest.approx(0.1)


# -- semantic leakage and SSIM on luminance -----------------------------------------------------------------

def test_leakage_is_zero_for_the_baseline_and_one_for_the_plain_images_by_construction():
    imgs = [smooth_image(32, 48, s) for s in range(3)]
    labels = [(x[..., 0] > 128).astype(np.uint8) + 2 * (x[..., 1] > 128) for x in imgs]
    baseline = np.mean(imgs, axis=0).round().astype(np.uint8)

    def segment(x):  # a toy segmenter: colour thresholds give the label map exactly on plain images
        return ((x[..., 0] > 128).astype(np.uint8) + 2 * (x[..., 1] > 128)).astype(np.uint8)

    m_plain = leakage.miou(segment, imgs, labels)
    m_base = leakage.miou(segment, [baseline] * 3, labels)
    assert m_plain == 1.0 and m_base < 0.9
    assert leakage.leakage(m_base, m_base, m_plain) == 0.0
    assert leakage.leakage(m_plain, m_base, m_plain) == 1.0
    half = [np.where(np.arange(48)[None, :, None] < 24, x, baseline) for x in imgs]
    assert 0.0 < leakage.leakage(leakage.miou(segment, half, labels), m_base, m_plain) < 1.0
    assert leakage.leakage(0.3, 0.3, 0.3) is None  # nothing to normalise by


def test_segmenter_runs_a_checkpoint_at_its_own_resolution(tmp_path, one_thread):
    path = _tiny_checkpoint(tmp_path / "seg.safetensors", plain=True)
    seg = leakage.Segmenter(path)
    out = seg(smooth_image(64, 128, 0))
    assert out.shape == (32, 64) and out.dtype == np.uint8
    assert seg.labels(np.zeros((64, 128), np.uint8)).shape == (32, 64)


def test_luminance_ssim_is_ssim_of_the_bt601_luma():
    x, y = smooth_image(32, 32, 1), smooth_image(32, 32, 2)
    assert metrics.ssim_luminance(x, x) == pytest.approx(1.0)
    grey = np.repeat(x[..., :1], 3, axis=2)
    assert metrics.ssim_luminance(grey, y) == pytest.approx(metrics.ssim(metrics.luminance(grey), metrics.luminance(y)))
    assert metrics.luminance(grey)[0, 0] == pytest.approx(float(x[0, 0, 0]))


# -- learned inverse --------------------------------------------------------------------------------

def test_unet_keeps_the_image_size_and_invert_returns_an_image():
    torch.manual_seed(0)
    model = UNet(16, (3, 5), width=8, depth=3).eval()
    out = invert(model, np.zeros((48, 80, 3), np.uint8))
    assert out.shape == (48, 80, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        invert(model, np.zeros((48, 96, 3), np.uint8))  # another block grid than it was built for


def test_learned_inverse_learns_a_shared_key_but_not_per_image_keys(one_thread):
    imgs = [smooth_image(32, 32, s) for s in range(8)]
    scheme = Scheme.parse("ps-np-cs", block_size=8)
    key = fixed_key(11)
    cfg = InverseConfig(width=16, depth=2, batch=4, lr=3e-3, minutes=60, max_steps=300, pool=8, curve_points=3,
                        canonical=False)
    source = lambda i: imgs[i % len(imgs)]  # noqa: E731
    shared = train_inverse(source, scheme, "shared", cfg, imgs[:2], shared_key=key)
    per_image = train_inverse(source, scheme, "per-image", cfg, imgs[:2])
    assert shared.steps == 300 and shared.pairs == 1200 and len(shared.curve) >= 2
    assert shared.curve[-1]["val_l1"] < shared.curve[0]["val_l1"]
    enc = [encrypt(x, key, scheme).data for x in imgs]

    def err(res):
        return np.mean([np.abs(invert(res.model, e).astype(float) - x).mean() for e, x in zip(enc, imgs)])

    err_enc = np.mean([np.abs(e.astype(float) - x).mean() for e, x in zip(enc, imgs)])
    assert err(shared) < 0.4 * err_enc
    assert err(shared) < 0.6 * err(per_image)


def test_inverse_stops_at_its_time_budget(one_thread):
    imgs = [smooth_image(32, 32, s) for s in range(2)]
    cfg = InverseConfig(width=8, depth=2, batch=2, minutes=0.02, pool=2, curve_points=2)
    res = train_inverse(lambda i: imgs[i % 2], Scheme.parse("bs-np-cs", block_size=8), "per-image", cfg, imgs[:1])
    assert res.seconds < 0.02 * 60 + 5 and res.steps > 0
    assert res.model.canonical  # NP/CS schemes get the canonicalised ciphertext as well
    assert all(r["seconds"] <= res.seconds + 1e-6 for r in res.curve)


@pytest.mark.parametrize("code", ["bs-np-cs", "bs-ps-np-cs", "bs-ps4-np-cs", "ps-np-cs", "bs-psb-np-cs", "bs-psb4-np-cs"])
def test_known_pairs_break_a_shared_key(code):
    rng = np.random.default_rng(3)
    scheme = Scheme.parse(code, block_size=8)
    key = fixed_key(12)
    known = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2)]
    victim = smooth_image(32, 48, 9)
    rk = known_pair.recover_key(known, [encrypt(k, key, scheme).data for k in known], 8, per_block="psb" in code)
    assert np.array_equal(rk.decrypt(encrypt(victim, key, scheme).data), victim)
    # a fresh key for the victim defeats it
    assert not np.array_equal(rk.decrypt(encrypt(victim, fixed_key(13), scheme).data), victim)


# -- the command -------------------------------------------------------------------------------------

def _tiny_checkpoint(path, plain: bool):
    from encseg.models import SETRConfig, build_setr, save_checkpoint

    torch.manual_seed(0)
    if plain:
        cfg = SETRConfig(encoder="vit-tiny-6", decoder="naive", img_size=(32, 64), channels=8, aux=False)
        extra = {"encryption": {"mode": "none"}}
    else:
        cfg = SETRConfig(encoder="vit-tiny-6", decoder="token", position_embedding=False, canonical=True,
                         img_size=(32, 64), channels=8, aux=False)
        extra = {"encryption": {"mode": "per-image", "scheme": "bs-np-cs"}}
    save_checkpoint(path, build_setr(cfg).eval(), cfg, extra)
    return path


def test_attack_command_quick_writes_report_json_and_pngs(tmp_path, one_thread):
    from typer.testing import CliRunner

    from encseg.cli import app

    model = _tiny_checkpoint(tmp_path / "inv.safetensors", plain=False)
    seg = _tiny_checkpoint(tmp_path / "seg.safetensors", plain=True)
    out = tmp_path / "attack"
    res = CliRunner().invoke(app, [
        "attack", "--quick", "--schemes", "plain,bs-np-cs,bs-ps4-np-cs", "--images", "2", "--out", str(out),
        "--size", "32x64", "--inverse-width", "8", "--model", str(model), "--segmenter", str(seg), "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "| bs-np-cs |" in report and "The pixel-shuffle leak" in report and "model as attacker" in report
    for name in ("plain", "bs-np-cs", "bs-ps4-np-cs"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] == 32  # half-size grid
    with Image.open(out / "inverse_curves.png") as im:
        assert im.size == (960, 420)
    doc = json.loads((out / "results.json").read_text())
    by = {s["scheme"]: s for s in doc["schemes"]}
    assert list(by) == ["plain", "bs-np-cs", "bs-ps4-np-cs"]
    for s in by.values():
        assert len(s["per_image"]) == 2
        f = s["frontier"]
        assert set(f["goals"]) == {"direct<=2x_chance", "neighbour<=0.10", "leakage<=0.10", "shared_key_broken"}
        assert s["stats"]["block_var_corr"] == pytest.approx(1.0)
    assert by["bs-np-cs"]["probe"]["accuracy"]["chance_exact"] == pytest.approx(1 / 8)
    assert by["bs-np-cs"]["frontier"]["position_probe_x_chance"] is not None
    assert by["bs-np-cs"]["probe"]["label_accuracy"]["chance_row"] == pytest.approx(1 / 2)
    assert by["bs-ps4-np-cs"]["ps_leak"]["adjacency"] is not None
    assert by["bs-np-cs"]["frontier"]["shared_key_broken"]  # the known pair decrypts other images exactly
    assert by["plain"]["attacks"]["ciphertext"]["ssim"] == pytest.approx(1.0)
    assert by["plain"]["attacks"]["ciphertext"]["leakage"] in (1.0, None)  # plain images leak all (or no signal)


def test_attack_command_refuses_bad_input_with_one_line(tmp_path, run_cli):
    for args, words in (
        (["--size", "40x64"], "multiple of the block size"),
        (["--segmenter", tmp_path / "nope.safetensors"], "not found"),
        (["--schemes", "bs-np-cs", "--model", f"bs-ps-np-cs={tmp_path / 'nope.safetensors'}"], "not found"),
        (["--schemes", "bs-np-cs/x"], "integer"),
    ):
        code, _, err = run_cli("attack", "--out", tmp_path / "o", *args)
        assert code == 2, (args, err)
        assert err.startswith("error:") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # nothing was written
