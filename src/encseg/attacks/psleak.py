"""The pixel-shuffle leak: estimate a PS permutation from the statistics of its own ciphertext.

Format v1's PS draws one permutation per image and applies it to every block (`ps`), or to every
q x q sub-block of every block (`ps<q>`). Every (sub-)block is then a sample of one unknown
arrangement, and positions that are neighbours in the plain block stay alike in every sample:

    D[i, j] = sum over channels of the mean over samples of |x_i - x_j|

is blind to NP (|(255 - a) - (255 - b)| = |a - b|) and to CS (the channel sum), and small exactly
for plain neighbours. The q x q layout is recovered from D (Isomap: geodesic distances on the
k-nearest-neighbour graph, classical MDS to 2-D, the rotation that best fits a grid, a linear
assignment to grid cells, then descent on the layout's energy, the sum of D over grid edges) up to
the 8 symmetries of the square, which no within-(sub-)block statistic can resolve. For `ps<q>`
with q < p the symmetry is resolved by the seams between the sub-blocks of a block (the image must
be continuous across them); for full PS it is left to the jigsaw stage.

Format v2's block-pixel shuffle (`psb`, `psb<q>`) draws one permutation per block: pooled over the
image the statistic is flat. For `psb<q>` with q < p the sub-blocks of one block still share their
block's permutation, so the same estimate is made per block from its (p/q)^2 sub-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encseg.attacks.assignment import linear_assignment
from encseg.cipher import Scheme

PS, PSB = "pixel-shuffle", "block-pixel-shuffle"


@dataclass(frozen=True)
class Target:
    """What an attacker knows from the public scheme: the shuffle's step, block size p, the side q
    of the shuffled squares, and whether one permutation is shared by the whole image (ps) or by
    each block (psb)."""

    step: str
    p: int
    q: int

    @property
    def per_block(self) -> bool:
        """One estimate per block: psb with q < p, whose sub-blocks share their block's permutation.
        Full psb leaves one sample per block; the attacker then tries the image-wide statistic."""
        return self.step == PSB and self.q < self.p


def target_of(scheme: Scheme) -> Target | None:
    """The pixel-shuffle step of a scheme, or None when it has none."""
    for s in scheme.steps:
        if s.name in (PS, PSB):
            return Target(s.name, scheme.block_size, s.group or scheme.block_size)
    return None


# -- samples and the statistic -----------------------------------------------------------------------

def samples(enc: np.ndarray, t: Target) -> np.ndarray:
    """(G, S, q*q, 3) float32: G groups that share one permutation, S q x q squares in each.

    ps (and full psb): one group, every q x q square of the image. psb<q>: one group per block
    (row-major), its (p/q)^2 squares."""
    H, W = enc.shape[:2]
    p, q = t.p, t.q
    x = np.asarray(enc, np.float32)
    if not t.per_block:
        return x.reshape(H // q, q, W // q, q, 3).swapaxes(1, 2).reshape(1, -1, q * q, 3)
    m = p // q
    x = x.reshape(H // p, m, q, W // p, m, q, 3)  # block row, square row, r, block col, square col, c
    return x.transpose(0, 3, 1, 4, 2, 5, 6).reshape((H // p) * (W // p), m * m, q * q, 3)


def dissimilarity(x: np.ndarray) -> np.ndarray:
    """D (G, n, n) from samples (G, S, n, 3): sum over channels of the mean over samples of |x_i - x_j|."""
    G, S, n, _ = x.shape
    D = np.zeros((G, n, n), np.float64)
    if G == 1:  # one large group: row by row keeps memory at S x n
        for c in range(3):
            xc = x[0, :, :, c]
            for a in range(n):
                D[0, a] += np.abs(xc - xc[:, a : a + 1]).mean(axis=0)
        return D
    for c in range(3):
        xc = x[..., c]
        D += np.abs(xc[:, :, :, None] - xc[:, :, None, :]).mean(axis=1)
    return D


# -- the layout from D ---------------------------------------------------------------------------------

def _grid(q: int) -> np.ndarray:
    r, c = np.divmod(np.arange(q * q), q)
    return np.stack([r, c], 1).astype(np.float64)


def _cell_adjacency(q: int) -> np.ndarray:
    """(n, n) 0/1 matrix: cells k, l are 4-neighbours on the q x q grid."""
    r, c = np.divmod(np.arange(q * q), q)
    return ((np.abs(r[:, None] - r[None]) + np.abs(c[:, None] - c[None])) == 1).astype(np.float64)


def energy(cell_of: np.ndarray, D: np.ndarray, q: int) -> float:
    """Sum of D over the grid edges of a layout (`cell_of[i]`: the cell given to position i)."""
    at = np.argsort(cell_of).reshape(q, q)  # position at each cell
    return float(D[at[:, :-1], at[:, 1:]].sum() + D[at[:-1], at[1:]].sum())


def _geodesic(D: np.ndarray, k: int) -> np.ndarray:
    """Shortest-path distances on the symmetric k-nearest-neighbour graph weighted by D."""
    n = len(D)
    off = D + np.diag(np.full(n, np.inf))
    nn = np.argsort(off, axis=1, kind="stable")[:, :k]
    G = np.full((n, n), np.inf)
    rows = np.repeat(np.arange(n), k)
    G[rows, nn.ravel()] = D[rows, nn.ravel()]
    G = np.minimum(G, G.T)
    np.fill_diagonal(G, 0.0)
    for m in range(n):  # Floyd-Warshall, one pivot at a time
        np.minimum(G, G[:, m : m + 1] + G[m : m + 1, :], out=G)
    finite = np.isfinite(G)
    if not finite.all():  # a disconnected graph: unreachable pairs count as far apart
        G[~finite] = 1.5 * G[finite].max() if finite.any() else 1.0
    return G


def _mds2(G: np.ndarray) -> np.ndarray:
    """Classical MDS of a distance matrix to two dimensions."""
    n = len(G)
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (G**2) @ J
    w, v = np.linalg.eigh(B)
    return v[:, -2:] * np.sqrt(np.maximum(w[-2:], 0.0))


def _fit_grid(Y: np.ndarray, q: int) -> np.ndarray:
    """Cells for 2-D points: the rotation whose row-then-column sort fits the grid best, then a
    linear assignment to the grid's cells at that rotation."""
    grid = _grid(q) - (q - 1) / 2
    Y = Y - Y.mean(axis=0)
    best = None
    for deg in range(0, 90, 2 if q > 4 else 6):  # a 4 x 4 grid needs no finer search
        th = np.deg2rad(deg)
        Z = Y @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        Z = Z / np.maximum(Z.std(axis=0), 1e-12) * grid.std(axis=0)
        rows = np.argsort(Z[:, 0], kind="stable").reshape(q, q)  # q rows of q points
        order = np.take_along_axis(rows, np.argsort(Z[rows, 1], axis=1, kind="stable"), axis=1).ravel()
        cost = ((Z[order] - grid) ** 2).sum()
        if best is None or cost < best[0]:
            best = (cost, Z)
    Z = best[1]
    return linear_assignment(((Z[:, None, :] - grid[None]) ** 2).sum(-1))


def _neighbours(q: int) -> np.ndarray:
    """(n, 4) the 4-neighbour cells of every cell of the q x q grid, n (a dummy cell) where missing."""
    n = q * q
    r, c = np.divmod(np.arange(n), q)
    out = np.full((n, 4), n)
    for k, (dr, dc) in enumerate(((0, 1), (0, -1), (1, 0), (-1, 0))):
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < q) & (cc >= 0) & (cc < q)
        out[ok, k] = rr[ok] * q + cc[ok]
    return out


def _descend(cell_of: np.ndarray, D: np.ndarray, q: int, A: np.ndarray, max_swaps: int | None = None) -> np.ndarray:
    """Lower the energy: the best single swap of two positions while one helps, then a re-assignment
    of all positions at once against their current neighbours (a linear assignment on the
    linearised cost); repeat until neither helps (or the swap budget, 4n, is spent)."""
    n = q * q
    nbr = _neighbours(q)
    max_swaps = 4 * n if max_swaps is None else max_swaps
    cell = cell_of.copy()
    Dz = np.concatenate([D, np.zeros((n, 1))], axis=1)  # column n: the dummy neighbour

    def costs(at: np.ndarray) -> np.ndarray:  # M[i, k]: position i at cell k against k's neighbours
        return Dz[:, np.append(at, n)[nbr]].sum(axis=2)

    swaps = 0
    e = energy(cell, D, q)
    while True:
        while swaps < max_swaps:
            at = np.argsort(cell)
            Q = costs(at)[at]  # Q[x, y]: the occupant of cell x moved to cell y
            dq = np.diag(Q)
            delta = Q + Q.T - dq[:, None] - dq[None, :] + 2 * D[at[:, None], at[None, :]] * A
            np.fill_diagonal(delta, 0.0)
            x, y = np.unravel_index(np.argmin(delta), delta.shape)
            if delta[x, y] >= -1e-9:
                break
            a, b = at[x], at[y]
            cell[a], cell[b] = y, x
            swaps += 1
        e = energy(cell, D, q)
        new = linear_assignment(costs(np.argsort(cell)))
        e_new = energy(new, D, q)
        if e_new >= e - 1e-9 or swaps >= max_swaps:
            return new if e_new < e else cell
        cell, e = new, e_new


def recover_layout(D: np.ndarray, q: int, ks: tuple[int, ...] | None = None) -> np.ndarray:
    """Estimate the q x q layout from one D (n x n): `cell_of[i]` is the cell of position i, right
    up to the 8 symmetries of the square. Several neighbourhood sizes k are tried and the layout of
    least energy kept (a choice made from the ciphertext alone)."""
    n = q * q
    if D.shape != (n, n):
        raise ValueError(f"D is {D.shape}, expected {(n, n)}")
    if n == 1:
        return np.zeros(1, np.int64)
    if ks is None:
        ks = (4, 6, 8, 12) if q > 4 else (3, 4, 6)
    A = _cell_adjacency(q)
    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    best = None
    for k in sorted({min(max(k, 2), n - 1) for k in ks}):
        cell = _descend(_fit_grid(_mds2(_geodesic(D, k)), q), D, q, A)
        e = energy(cell, D, q)
        if best is None or e < best[0] - 1e-9:
            best = (e, cell)
    return best[1]


# -- symmetries, scoring, undoing ----------------------------------------------------------------------

def symmetries(q: int) -> np.ndarray:
    """(8, n): the 8 symmetries of the q x q square as maps of cell indices (identity first;
    entries 4..7 transpose the square)."""
    r, c = np.divmod(np.arange(q * q), q)
    out = []
    for transpose in (False, True):
        rr, cc = (c, r) if transpose else (r, c)
        for flip_r, flip_c in ((False, False), (False, True), (True, False), (True, True)):
            out.append(((q - 1 - rr) if flip_r else rr) * q + ((q - 1 - cc) if flip_c else cc))
    return np.array(out)


def _rows(cell_of: np.ndarray, true_perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.atleast_2d(cell_of), np.atleast_2d(true_perm)
    if len(a) == 1 and len(b) > 1:
        a = np.repeat(a, len(b), axis=0)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} estimates for {len(b)} permutations")
    return a, b


def adjacency_recovered(cell_of: np.ndarray, true_perm: np.ndarray, q: int) -> float:
    """Fraction of the plain layout's adjacent pairs that the estimate also puts side by side.
    `true_perm[i]`: the plain position at ciphertext position i (the cipher's gather). Blind to the
    8 symmetries; 1.0 means the layout is right up to one of them. Rows are groups (averaged; one
    estimate row is scored against every truth row)."""
    cell_of, true_perm = _rows(cell_of, true_perm)
    A = _cell_adjacency(q)
    vals = []
    for est, true in zip(cell_of, true_perm):
        inv = np.argsort(true)  # plain position -> ciphertext position
        pairs = np.argwhere(np.triu(A) > 0)  # adjacent plain cells (k, l)
        a, b = inv[pairs[:, 0]], inv[pairs[:, 1]]
        vals.append(float(A[est[a], est[b]].mean()))
    return float(np.mean(vals))


def exact_recovered(cell_of: np.ndarray, true_perm: np.ndarray, q: int) -> float:
    """Fraction of positions put at their exact cell, under the best of the 8 symmetries per group."""
    cell_of, true_perm = _rows(cell_of, true_perm)
    sym = symmetries(q)
    return float(np.mean([max(np.mean(s[e] == t) for s in sym) for e, t in zip(cell_of, true_perm)]))


def true_permutations(plan, t: Target) -> np.ndarray:
    """(G, q*q) ground truth from a cipher plan, for scoring only: row g is the q*q gather of group g."""
    q, p = t.q, t.p
    first = (np.arange(q * q) // q) * p + np.arange(q * q) % q  # the first square's pixels in the block
    if t.step == PSB:
        g = np.asarray(plan.block_pixel_src)[:, first]
    else:
        g = np.asarray(plan.pixel_src)[None, first]
    r, c = np.divmod(g, p)
    return r * q + c


def unshuffle(enc: np.ndarray, t: Target, cell_of: np.ndarray) -> np.ndarray:
    """Put every ciphertext pixel at its estimated cell (cell_of (G, q*q); G = 1 or one per block)."""
    H, W = enc.shape[:2]
    p, q = t.p, t.q
    cell_of = np.atleast_2d(cell_of)
    at = np.argsort(cell_of, axis=1)  # (G, n): position to read for each cell
    x = np.asarray(enc)
    if not t.per_block:
        sq = x.reshape(H // q, q, W // q, q, 3).swapaxes(1, 2).reshape(-1, q * q, 3)
        sq = sq[:, at[0]]
        return sq.reshape(H // q, W // q, q, q, 3).swapaxes(1, 2).reshape(H, W, 3)
    m = p // q
    v = x.reshape(H // p, m, q, W // p, m, q, 3).transpose(0, 3, 1, 4, 2, 5, 6)
    v = v.reshape((H // p) * (W // p), m * m, q * q, 3)
    v = np.take_along_axis(v, at[:, None, :, None], axis=2)
    v = v.reshape(H // p, W // p, m, m, q, q, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    return np.ascontiguousarray(v).reshape(H, W, 3)


def _inner_seam_cost(img: np.ndarray, p: int, q: int) -> np.ndarray:
    """Per block (row-major), mean |difference| across the seams between its q x q squares."""
    H, W = img.shape[:2]
    b = np.asarray(img, np.float32).reshape(H // p, p, W // p, p, 3).swapaxes(1, 2).reshape(-1, p, p, 3)
    cuts = np.arange(q, p, q)
    v = np.abs(b[:, :, cuts] - b[:, :, cuts - 1]).mean(axis=(1, 2, 3))
    h = np.abs(b[:, cuts] - b[:, cuts - 1]).mean(axis=(1, 2, 3))
    return v + h


def resolve_symmetry(enc: np.ndarray, t: Target, cell_of: np.ndarray) -> np.ndarray:
    """For q < p: the symmetry of each group's estimate under which its blocks are smoothest across
    the seams between their squares (one choice per image for ps, per block for psb). Full PS
    (q = p) has no such seams; the estimate is returned as it is."""
    if t.q >= t.p:
        return np.atleast_2d(cell_of)
    cell_of = np.atleast_2d(cell_of)
    sym = symmetries(t.q)
    costs = np.stack([_inner_seam_cost(unshuffle(enc, t, s[cell_of]), t.p, t.q) for s in sym])  # (8, blocks)
    if t.per_block:
        choice = costs.argmin(axis=0)  # per block
        return sym[choice[:, None], cell_of]
    return sym[int(costs.sum(axis=1).argmin())][cell_of]


def estimate(enc: np.ndarray, t: Target) -> np.ndarray:
    """The whole estimate from one ciphertext: (G, q*q) cells, symmetry resolved where it can be."""
    D = dissimilarity(samples(enc, t))
    cells = np.stack([recover_layout(d, t.q) for d in D])
    return resolve_symmetry(enc, t, cells)
