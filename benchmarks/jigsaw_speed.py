"""Jigsaw solver speed: the issue's budget is a 512x1024 image with 16-px blocks (2048 pieces) in
under 60 s on one core. Run with one BLAS thread:

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/jigsaw_speed.py

Prints the time of the vectorised pairwise compatibility against a row-by-row reference measured in
the same run (ratio), then the full solve (BS, and BS-NP-CS with the 12-state extended solver) with
its direct / neighbour comparison on one procedural street scene (not Cityscapes).
"""

from __future__ import annotations

import time

import numpy as np

from encseg.attacks import jigsaw, metrics
from encseg.cipher import Key, Scheme, encrypt, make_plan
from encseg.data.streets import render_scene, scene_seed


def reference_row(blocks: np.ndarray, i: int) -> np.ndarray:
    """MGC of piece i (left) against every piece, written per pair like the paper (one row)."""
    x = blocks.astype(np.float64) - 127.5
    xi = x[i]
    g = xi[:, -1] - xi[:, -2]
    allg = np.concatenate([g, jigsaw._DUMMY])
    mu_i, q_i = g.mean(0), np.linalg.inv(np.cov(allg.T))
    out = np.empty(len(x))
    for j in range(len(x)):
        xj = x[j]
        h = xj[:, 0] - xj[:, 1]
        allh = np.concatenate([h, jigsaw._DUMMY])
        mu_j, q_j = h.mean(0), np.linalg.inv(np.cov(allh.T))
        d1 = xj[:, 0] - xi[:, -1] - mu_i
        d2 = xi[:, -1] - xj[:, 0] - mu_j
        out[j] = np.einsum("pk,kl,pl->", d1, q_i, d1) + np.einsum("pk,kl,pl->", d2, q_j, d2)
    return out


def main() -> None:
    img, _ = render_scene(scene_seed(0, "test", 0), (512, 1024))
    p, grid = 16, (32, 64)
    blocks = jigsaw.split_blocks(img, p)
    n = len(blocks)

    rows = 8
    t = time.process_time()
    ref = np.stack([reference_row(blocks, i) for i in range(rows)])
    t_ref = (time.process_time() - t) / rows * n  # extrapolated to all N rows
    t = time.process_time()
    f = jigsaw.compute_features(blocks, extended=False)
    d = f.lr[0][0] @ f.lr[1][0].T
    t_vec = time.process_time() - t
    assert np.allclose(d[:rows], ref, rtol=1e-6)
    print(f"pairwise MGC, {n} pieces, one relation: reference {t_ref:.1f} s (extrapolated), "
          f"vectorised {t_vec:.2f} s, ratio {t_ref / t_vec:.0f}x")

    for code in ("bs", "bs-np-cs"):
        scheme = Scheme.parse(code, block_size=p)
        key = Key.generate()
        enc = encrypt(img, key, scheme).data
        src = make_plan(key, scheme, *grid).block_src
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        sol = jigsaw.solve(jigsaw.split_blocks(enc, p), grid, extended=code != "bs")
        t_wall, t_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        placed = src[sol.placement]
        print(f"solve {code:9s} 512x1024, {n} pieces: cpu {t_cpu:.1f} s, wall {t_wall:.1f} s "
              f"(budget 60 s), direct {metrics.direct_comparison(placed):.3f}, "
              f"neighbour {metrics.neighbour_comparison(placed):.3f}")


if __name__ == "__main__":
    main()
