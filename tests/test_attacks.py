"""Attack suite: solver, metrics, statistics, learned inverse and the `encseg attack` command."""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from encseg.attacks import jigsaw, known_pair, metrics, stats
from encseg.attacks.inverse import InverseConfig, UNet, invert, train_inverse
from encseg.cipher import Key, Plan, Scheme, encrypt, make_plan
from encseg.cipher.keystream import expand_group_permutation
from encseg.cipher.transform import apply_plan_to_image


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
    negs = list(itertools.product([False, True], repeat=n)) if "negative-positive" in names else [None]
    orders = list(itertools.product(range(6), repeat=n)) if "channel-shuffle" in names else [None]
    for b, px, ng, od in itertools.product(perms_b, perms_p, negs, orders):
        yield Plan(p, (nh, nw), None if b is None else np.array(b), px,
                   None if ng is None else np.array(ng), None if od is None else np.array(od), {})


@pytest.mark.parametrize(
    "code,p,nh,nw",
    [("bs", 1, 2, 2), ("bs-np-cs", 2, 1, 2), ("ps-np-cs", 2, 1, 1), ("bs-ps2-np", 4, 1, 2), ("bs-ps-np-cs", 2, 1, 2)],
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


# -- learned inverse --------------------------------------------------------------------------------

def test_unet_keeps_the_image_size_and_invert_returns_an_image():
    torch.manual_seed(0)
    model = UNet(16, (3, 5), width=8, depth=3).eval()
    out = invert(model, np.zeros((48, 80, 3), np.uint8))
    assert out.shape == (48, 80, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        invert(model, np.zeros((48, 96, 3), np.uint8))  # another block grid than it was built for


def test_learned_inverse_learns_a_shared_key_but_not_per_image_keys():
    torch.set_num_threads(1)
    imgs = [smooth_image(32, 32, s) for s in range(8)]
    scheme = Scheme.parse("ps-np-cs", block_size=8)
    key = fixed_key(11)
    cfg = InverseConfig(width=16, depth=2, steps=300, batch=4, lr=3e-3)
    shared = train_inverse(imgs, scheme, "shared", cfg, shared_key=key)
    per_image = train_inverse(imgs, scheme, "per-image", cfg)
    enc = [encrypt(x, key, scheme).data for x in imgs]

    def err(model):
        return np.mean([np.abs(invert(model, e).astype(float) - x).mean() for e, x in zip(enc, imgs)])

    err_enc = np.mean([np.abs(e.astype(float) - x).mean() for e, x in zip(enc, imgs)])
    assert err(shared) < 0.4 * err_enc
    assert err(shared) < 0.6 * err(per_image)


@pytest.mark.parametrize("code", ["bs-np-cs", "bs-ps-np-cs", "bs-ps4-np-cs", "ps-np-cs"])
def test_one_known_pair_breaks_a_shared_key(code):
    rng = np.random.default_rng(3)
    scheme = Scheme.parse(code, block_size=8)
    key = fixed_key(12)
    known = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    victim = smooth_image(32, 48, 9)
    rk = known_pair.recover_key(known, encrypt(known, key, scheme).data, 8)
    assert np.array_equal(rk.decrypt(encrypt(victim, key, scheme).data), victim)
    # a fresh key for the victim defeats it
    assert not np.array_equal(rk.decrypt(encrypt(victim, fixed_key(13), scheme).data), victim)


# -- the command -------------------------------------------------------------------------------------

def test_attack_command_writes_report_and_grids(tmp_path):
    from typer.testing import CliRunner

    from encseg.cli import app

    out = tmp_path / "attack"
    res = CliRunner().invoke(app, [
        "attack", "--schemes", "bs,bs-np-cs", "--images", "2", "--out", str(out), "--size", "32x64",
        "--train-images", "2", "--inverse-steps", "2", "--inverse-width", "8", "--no-progress",
    ])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "| bs |" in report and "| bs-np-cs (default) |" in report
    assert "encseg attack --schemes bs,bs-np-cs" in report or "Command:" in report
    for name in ("bs", "bs-np-cs"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size == (64, 5 * (32 + 14))
    doc = json.loads((out / "results.json").read_text())
    assert [s["scheme"] for s in doc["schemes"]] == ["bs", "bs-np-cs"]
    for s in doc["schemes"]:
        assert len(s["per_image"]) == 2
        assert 0.0 <= s["jigsaw_direct"] <= 1.0 and 0.0 <= s["jigsaw_neighbour"] <= 1.0
        assert s["block_var_corr"] == pytest.approx(1.0)


def test_attack_command_refuses_bad_sizes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([str(Path(sys.executable).parent / "encseg"), "attack", "--out", str(tmp_path), "--size", "40x64"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "multiple of the block size" in proc.stderr
