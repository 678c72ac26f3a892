"""Jigsaw-puzzle-solver attack on block-scrambled ciphertexts.

Pairwise compatibility is Gallagher's Mahalanobis Gradient Compatibility (MGC, CVPR 2012): the
gradient across a seam, scored against the distribution of gradients just inside each piece. The
placer is greedy, best buddies first (after Paikin & Tal, CVPR 2015), on a grid of known size,
with a trim-and-fill pass against a wrongly anchored frame (after Gallagher). The
extended solver (as in Chuman & Kiya's attacks on EtC images) also searches, per block, the 12
colour transforms that negative-positive (2 states) and channel shuffling (6 orders) can produce.

MGC is invariant to any affine colour map applied to both pieces (negation and channel permutation
included, the dummy gradients being closed under both), so D(T_a x, T_b y) = D(x, T_a^-1 T_b y):
the piece-level best-buddy search needs only min over 12 relative transforms.

Everything is written as matrix products: D_LR(i, j) = left_feat(i) . right_feat(j), so the full
N x N compatibility of 2048 pieces is a handful of (N x 116) @ (116 x N) products.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from encseg.cipher import CHANNEL_ORDERS  # the cipher's table: out[..., c] = in[..., order[c]]

N_TRANSFORMS = 12  # t = 6 * negate + order

# Gallagher's nine dummy gradients: regularise the 3x3 covariance of flat edges. The set is closed
# under negation and channel permutation, which keeps MGC exactly invariant to NP and CS.
_DUMMY = np.array(
    [[0, 0, 0], [1, 1, 1], [-1, -1, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1]],
    dtype=np.float64,
)


def split_blocks(img: np.ndarray, p: int) -> np.ndarray:
    """(R*p, C*p, 3) image -> (R*C, p, p, 3) blocks in row-major order."""
    H, W = img.shape[:2]
    if H % p or W % p:
        raise ValueError(f"image {H}x{W} is not a multiple of the block size {p}")
    R, C = H // p, W // p
    return img.reshape(R, p, C, p, -1).swapaxes(1, 2).reshape(R * C, p, p, -1)


def join_blocks(blocks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(R*C, p, p, 3) blocks in row-major order -> (R*p, C*p, 3) image."""
    R, C = grid
    p = blocks.shape[1]
    return blocks.reshape(R, C, p, p, -1).swapaxes(1, 2).reshape(R * p, C * p, -1)


def apply_transform(blocks: np.ndarray, t: np.ndarray | int) -> np.ndarray:
    """Apply colour transform(s) t (6 * negate + channel order) to uint8 blocks (..., p, p, 3)."""
    t = np.broadcast_to(np.asarray(t), blocks.shape[:-3])
    order = CHANNEL_ORDERS[t % 6]  # (..., 3)
    out = np.take_along_axis(blocks, order[..., None, None, :], axis=-1)
    neg = (t >= 6)[..., None, None, None]
    return np.where(neg, 255 - out, out).astype(blocks.dtype)


def inverse_transform(t: int) -> int:
    """The transform that undoes t (negation is its own inverse and commutes with channel orders)."""
    return 6 * (t // 6) + _INV_ORDER[t % 6]


_INV_ORDER = [int(np.flatnonzero((CHANNEL_ORDERS == np.argsort(o)).all(1))[0]) for o in CHANNEL_ORDERS]


# -- compatibility ------------------------------------------------------------------------------

def _lr_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MGC features for the left-right relation of float blocks x (N, p, p, 3), centred.

    Returns (F_left, F_right) with D_LR(i, j) = F_left[i] . F_right[j] for i left of j:
    D_LR = sum_rows (G_ij - mu_i) S_i^-1 (G_ij - mu_i) + sum_rows (G_ji - mu'_j) S'_j^-1 (G_ji - mu'_j),
    with G_ij = x_j[:, 0] - x_i[:, -1] the seam gradient (Gallagher 2012, symmetric form).
    """
    n, p = x.shape[:2]
    a = x[:, :, -1, :]  # right column of i  (N, p, 3)
    b = x[:, :, 0, :]  # left column of j   (N, p, 3)
    g_r = a - x[:, :, -2, :] if p > 1 else np.zeros_like(a)  # gradients just inside the right edge
    g_l = b - x[:, :, 1, :] if p > 1 else np.zeros_like(b)  # ... inside the left edge (pointing out)

    def stats(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = g.mean(axis=1)  # (N, 3)
        allg = np.concatenate([g, np.broadcast_to(_DUMMY, (n, 9, 3))], axis=1)
        d = allg - allg.mean(axis=1, keepdims=True)
        cov = np.einsum("npk,npl->nkl", d, d) / (allg.shape[1] - 1)
        return mu, np.linalg.inv(cov)

    mu_i, q_i = stats(g_r)
    mu_j, q_j = stats(g_l)
    # term 1: i's model of the seam gradient, d = b_j - v_i, v_i = a_i + mu_i
    v = a + mu_i[:, None, :]
    qv = np.einsum("npk,nkl->npl", v, q_i)
    c_i = np.einsum("npl,npl->n", qv, v)
    bb = np.einsum("npk,npl->nkl", b, b).reshape(n, 9)
    # term 2: j's model, d = a_i - w_j, w_j = b_j + mu'_j (G_ji = x_i[:, -1] - x_j[:, 0])
    w = b + mu_j[:, None, :]
    qw = np.einsum("npk,nkl->npl", w, q_j)
    c_j = np.einsum("npl,npl->n", qw, w)
    aa = np.einsum("npk,npl->nkl", a, a).reshape(n, 9)
    one = np.ones((n, 1))
    f_left = np.concatenate([q_i.reshape(n, 9), -2 * qv.reshape(n, -1), c_i[:, None], aa, -2 * a.reshape(n, -1), one], 1)
    f_right = np.concatenate([bb, b.reshape(n, -1), one, q_j.reshape(n, 9), qw.reshape(n, -1), c_j[:, None]], 1)
    return f_left, f_right


@dataclass
class Features:
    """Left/right MGC features of every piece under every colour transform, for both relations.

    lr[0] / lr[1]: (T, N, F) features of pieces as the left / right member of a left-right pair;
    tb[0] / tb[1]: the same for top / bottom members of a top-bottom pair.
    """

    lr: tuple[np.ndarray, np.ndarray]
    tb: tuple[np.ndarray, np.ndarray]
    n_transforms: int


def compute_features(blocks: np.ndarray, extended: bool) -> Features:
    """Features of uint8 blocks (N, p, p, 3); `extended` adds the 12 NP x CS colour transforms."""
    ts = range(N_TRANSFORMS) if extended else range(1)
    lrs, tbs = [], []
    for t in ts:
        x = apply_transform(blocks, t).astype(np.float64) - 127.5 if t else blocks.astype(np.float64) - 127.5
        lrs.append(_lr_features(x))
        tbs.append(_lr_features(x.swapaxes(1, 2)))  # top-bottom is left-right of the transposed pieces
    lr = (np.stack([f[0] for f in lrs]), np.stack([f[1] for f in lrs]))
    tb = (np.stack([f[0] for f in tbs]), np.stack([f[1] for f in tbs]))
    return Features(lr, tb, len(ts))


def dense_features(d_lr: np.ndarray, d_tb: np.ndarray) -> Features:
    """Features that reproduce any N x N dissimilarities (d_lr[i, j]: i left of j; d_tb[i, j]: i above
    j) as the solver's matrix products (left = rows of D, right = the identity), one colour state.
    Lets the placer run on a compatibility that is not MGC (e.g. one learned on a model's features)."""
    eye = np.eye(len(d_lr))
    return Features((d_lr[None], eye[None]), (d_tb[None], eye[None]), 1)


def seam_cost(sol: "Solution", feats: Features) -> float:
    """Mean dissimilarity over the adjacent pairs of a solution (its pieces under their transforms):
    the solver's own measure of how well an answer fits, used to choose between candidate inputs."""
    p, t = sol.placement, sol.transforms
    lr = np.einsum("rcf,rcf->rc", feats.lr[0][t[:, :-1], p[:, :-1]], feats.lr[1][t[:, 1:], p[:, 1:]])
    tb = np.einsum("rcf,rcf->rc", feats.tb[0][t[:-1], p[:-1]], feats.tb[1][t[1:], p[1:]])
    n = lr.size + tb.size
    return float((lr.sum() + tb.sum()) / n) if n else 0.0


def pairwise(feats: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Piece-level dissimilarities (N x N, min over relative colour transforms) and the argmin.

    Returns (D_lr, D_tb, H_lr, H_tb): D_lr[i, j] = min_h MGC(i left of T_h j), self-pairs = inf.
    """
    out = []
    for left, right in (feats.lr, feats.tb):
        best = left[0] @ right[0].T
        arg = np.zeros(best.shape, np.int8)
        for h in range(1, feats.n_transforms):
            d = left[0] @ right[h].T
            better = d < best
            best = np.where(better, d, best)
            arg[better] = h
        np.fill_diagonal(best, np.inf)
        out.append((best, arg))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def buddy_agreement(sol: "Solution", feats: Features) -> float:
    """Fraction of a solution's adjacent pairs that are mutual best buddies (each the other's best
    match in that relation): the solver's own, scale-free measure of how well an answer fits, used to
    choose between candidate inputs (e.g. blocks transposed or not after the PS leak)."""
    d_lr, d_tb, _, _ = pairwise(feats)
    P = sol.placement
    right, left = d_lr.argmin(axis=1), d_lr.argmin(axis=0)
    below, above = d_tb.argmin(axis=1), d_tb.argmin(axis=0)
    lr = (right[P[:, :-1]] == P[:, 1:]) & (left[P[:, 1:]] == P[:, :-1])
    tb = (below[P[:-1]] == P[1:]) & (above[P[1:]] == P[:-1])
    n = lr.size + tb.size
    return float((lr.sum() + tb.sum()) / n) if n else 1.0


# -- greedy placement -----------------------------------------------------------------------------

# neighbour offsets: (dr, dc, relation, the placed piece's side in it)
# "right of n" means n is the left member of an LR pair; etc.
_DIRS = ((0, 1, "lr", 0), (0, -1, "lr", 1), (1, 0, "tb", 0), (-1, 0, "tb", 1))


@dataclass
class Solution:
    """The solver's answer: which piece sits at each grid cell, and its colour transform."""

    placement: np.ndarray  # (R, C) piece index
    transforms: np.ndarray  # (R, C) transform index applied to the piece
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def render(self, blocks: np.ndarray) -> np.ndarray:
        """The reconstructed image from the encrypted blocks."""
        R, C = self.placement.shape
        placed = apply_transform(blocks[self.placement.ravel()], self.transforms.ravel())
        return join_blocks(placed, (R, C))


def _best_buddies(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For an N x N dissimilarity D[i, j] (i before j): each i's best j and whether it is mutual."""
    fwd = D.argmin(axis=1)  # i's best partner after it
    bwd = D.argmin(axis=0)  # j's best partner before it
    mutual = bwd[fwd] == np.arange(len(D))
    return fwd, mutual


class _Slot:
    """An empty cell next to placed pieces: summed dissimilarity of every (transform, piece) to them."""

    __slots__ = ("sum", "count", "nbrs", "best", "second", "d1", "d2", "version")

    def __init__(self, n: int, t: int) -> None:
        self.sum = np.zeros((t, n))
        self.count = 0
        self.nbrs: list[tuple[int, str, int]] = []  # (placed piece, relation, its side)
        self.best = self.second = -1
        self.d1 = self.d2 = np.inf
        self.version = 0

    @property
    def confidence(self) -> float:
        """1 - best / runner-up (Paikin & Tal's confidence): near 0 when two candidates tie."""
        if np.isfinite(self.d2) and self.d2 > 0:
            return 1.0 - self.d1 / self.d2
        return 1.0 if self.d1 <= 0 or not np.isfinite(self.d2) else 0.0


class _Placer:
    """Greedy placement state. `limit` bounds the placed region: ("box", h, w) caps the bounding box,
    ("frame", r0, c0, R, C) fixes the frame. With `fixed` (no block scrambling) each cell can only take
    its own piece and only the colour transform is chosen.

    Candidate cells sit in a lazy max-heap keyed by (best candidate is everybody's best buddy,
    confidence); a cell is re-ranked and re-pushed whenever its neighbours or its best candidates
    change, and stale entries are skipped when popped. A cell that stops fitting the box never fits
    again (the box only grows), so it is dropped for good.
    """

    def __init__(self, feats: Features, grid: tuple[int, int], bb: dict | None, limit: tuple, fixed: bool) -> None:
        self.f, self.grid, self.bb, self.limit, self.fixed = feats, grid, bb, limit, fixed
        self.n = grid[0] * grid[1]
        self.T = feats.n_transforms
        self.placed = np.zeros(self.n, bool)
        self.where: dict[tuple[int, int], int] = {}
        self.tr = np.zeros(self.n, int)
        self.slots: dict[tuple[int, int], _Slot] = {}
        self.heap: list = []
        self.bbox: list[int] | None = None  # min r, max r, min c, max c
        self.n_bb = 0
        self._tick = 0

    def fits(self, pos: tuple[int, int]) -> bool:
        if self.limit[0] == "frame":
            _, r0, c0, R, C = self.limit
            return r0 <= pos[0] < r0 + R and c0 <= pos[1] < c0 + C
        _, h, w = self.limit
        r0, r1, c0, c1 = self.bbox
        return max(r1, pos[0]) - min(r0, pos[0]) < h and max(c1, pos[1]) - min(c0, pos[1]) < w

    def place_many(self, items: list[tuple[tuple[int, int], int, int]]) -> None:
        """Put several (pos, piece, transform) at once, then score the empty cells around them."""
        for pos, piece, t in items:
            self._put(piece, t, pos)
        for pos, piece, t in items:
            self._touch(piece, t, pos)
        for q, s in self.slots.items():
            self._rank(q, s)

    def _put(self, piece: int, t: int, pos: tuple[int, int]) -> None:
        self.placed[piece] = True
        self.tr[piece] = t
        self.where[pos] = piece
        self.slots.pop(pos, None)
        b = self.bbox or [pos[0], pos[0], pos[1], pos[1]]
        self.bbox = [min(b[0], pos[0]), max(b[1], pos[0]), min(b[2], pos[1]), max(b[3], pos[1])]

    def place(self, piece: int, t: int, pos: tuple[int, int]) -> None:
        """Put `piece` under transform `t` at `pos`, then update and re-rank the cells around it."""
        self._put(piece, t, pos)
        touched = self._touch(piece, t, pos)
        for q, s in self.slots.items():  # cells whose best or runner-up this was must be re-ranked
            if s.best == piece or s.second == piece:
                touched.append(q)
        for q in set(touched):
            self._rank(q, self.slots[q])

    def _touch(self, piece: int, t: int, pos: tuple[int, int]) -> list[tuple[int, int]]:
        """Add the placed piece's dissimilarities to every empty cell next to it; return those cells."""
        T, n = self.T, self.n
        touched = []
        for dr, dc, rel, side in _DIRS:
            q = (pos[0] + dr, pos[1] + dc)
            if q in self.where or not self.fits(q):
                continue
            s = self.slots.get(q)
            if s is None:
                s = self.slots[q] = _Slot(1 if self.fixed else n, T)
            f_mine = getattr(self.f, rel)[side][t, piece]  # this piece's features as placed, (F,)
            other = getattr(self.f, rel)[1 - side]  # every piece under every transform, (T, N, F)
            if self.fixed:
                s.sum[:, 0] += other[:, q[0] * self.grid[1] + q[1], :] @ f_mine
            else:
                s.sum += (other.reshape(-1, other.shape[-1]) @ f_mine).reshape(T, n)
            s.count += 1
            s.nbrs.append((piece, rel, side))
            touched.append(q)
        return touched

    def _rank(self, pos: tuple[int, int], s: _Slot) -> None:
        m = s.sum / s.count
        if self.fixed:
            col = np.sort(m[:, 0])
            s.best, s.second = pos[0] * self.grid[1] + pos[1], -1
            s.d1, s.d2 = col[0], (col[1] if self.T > 1 else np.inf)
        else:
            per_piece = m.min(axis=0)
            per_piece[self.placed] = np.inf
            if self.n - len(self.where) > 1:
                two = np.argpartition(per_piece, 1)[:2]
                i1, i2 = two if per_piece[two[0]] <= per_piece[two[1]] else two[::-1]
                s.best, s.second, s.d1, s.d2 = int(i1), int(i2), per_piece[i1], per_piece[i2]
            else:
                i1 = int(per_piece.argmin())
                s.best, s.second, s.d1, s.d2 = i1, -1, per_piece[i1], np.inf
        s.version += 1
        self._tick += 1
        heapq.heappush(self.heap, (not self._is_bb(s), -s.confidence, self._tick, pos, s.version))

    def _is_bb(self, s: _Slot) -> bool:
        """Is the cell's best candidate the best buddy of every placed neighbour?"""
        if self.bb is None:
            return False
        return all(self.bb[(rel, side)][nb] == s.best for nb, rel, side in s.nbrs)

    def run(self, only_buddies: bool = False) -> None:
        """Place pieces until every piece is placed or no cell is left (or, with `only_buddies`,
        until no cell's best candidate is a best buddy of all its placed neighbours)."""
        while len(self.where) < self.n and self.heap:
            not_bb, _, _, pos, version = self.heap[0]
            s = self.slots.get(pos)
            if s is None or s.version != version:
                heapq.heappop(self.heap)
                continue
            if not self.fits(pos):
                heapq.heappop(self.heap)
                del self.slots[pos]
                continue
            if only_buddies and not_bb:
                return
            heapq.heappop(self.heap)
            self.n_bb += not not_bb
            t = int((s.sum / s.count)[:, 0 if self.fixed else s.best].argmin())
            self.place(s.best, t, pos)


def _best_window(weight: dict[tuple[int, int], float], R: int, C: int) -> tuple[int, int]:
    """Top-left corner of the R x C window with the largest total weight of the cells inside."""
    rs = np.array([r for r, _ in weight])
    cs = np.array([c for _, c in weight])
    r0, c0 = rs.min(), cs.min()
    h, w = max(rs.max() - r0 + 1, R), max(cs.max() - c0 + 1, C)
    pad = np.zeros((h + 1, w + 1))
    pad[rs - r0 + 1, cs - c0 + 1] = list(weight.values())
    ii = pad.cumsum(0).cumsum(1)
    sums = ii[R:, C:] - ii[:-R, C:] - ii[R:, :-C] + ii[:-R, :-C]
    i, j = np.unravel_index(sums.argmax(), sums.shape)
    return int(i + r0), int(j + c0)


def _buddy_weight(where: dict[tuple[int, int], int], bb: dict) -> dict[tuple[int, int], float]:
    """Per placed cell: 1 + the number of its neighbours that are its best buddies in that direction.
    Trusted cells (inside best-buddy agreement) outweigh filler when choosing the frame."""
    out = {}
    for pos, piece in where.items():
        k = 0
        for dr, dc, rel, side in _DIRS:
            other = where.get((pos[0] + dr, pos[1] + dc))
            k += other is not None and bb[(rel, side)][piece] == other
        out[pos] = 1.0 + k
    return out




def solve(
    blocks: np.ndarray,
    grid: tuple[int, int],
    extended: bool = False,
    fixed_positions: bool = False,
    slack: float = 0.5,
    features: Features | None = None,
) -> Solution:
    """Reassemble scrambled blocks (N, p, p, 3, uint8, row-major as read off the ciphertext) on a
    grid of known size (R, C).

    Two phases (after Gallagher's place / trim / fill): greedy placement, best buddies first, in a
    region up to (1 + slack) times the grid on each side; keep the R x C window holding the most
    pieces; refill the rest of that frame greedily. The slack lets a wrongly started edge be cut
    off instead of pinning the frame.

    extended: also search the 12 NP x CS colour transforms per block (the first placed block is
    taken as untransformed, so the result is right up to one global colour transform).
    fixed_positions: the blocks are known to be in place (no block scrambling); only colour
    transforms are solved (used for schemes without BS).
    features: a precomputed compatibility (`compute_features`, `dense_features`) instead of MGC on
    `blocks`; its number of colour states replaces `extended`.
    """
    t0 = time.perf_counter()
    R, C = grid
    n = len(blocks)
    if n != R * C:
        raise ValueError(f"{n} blocks do not fill a {R}x{C} grid")
    feats = features if features is not None else compute_features(blocks, extended)
    if n == 1:
        return Solution(np.zeros((1, 1), int), np.zeros((1, 1), int), time.perf_counter() - t0)

    if fixed_positions:
        placer = _Placer(feats, grid, None, ("frame", 0, 0, R, C), fixed=True)
        placer.place(0, 0, (0, 0))
        placer.run()
        placement = np.arange(n).reshape(R, C)
        return Solution(placement, placer.tr[placement], time.perf_counter() - t0, {})

    D_lr, D_tb, _, _ = pairwise(feats)
    right_of, mutual_r = _best_buddies(D_lr)
    left_of, mutual_l = _best_buddies(D_lr.T)
    below, mutual_b = _best_buddies(D_tb)
    above, mutual_a = _best_buddies(D_tb.T)
    bb = {  # bb[(relation, side)][n] = n's best buddy in that direction, or -1
        ("lr", 0): np.where(mutual_r, right_of, -1),
        ("lr", 1): np.where(mutual_l, left_of, -1),
        ("tb", 0): np.where(mutual_b, below, -1),
        ("tb", 1): np.where(mutual_a, above, -1),
    }
    # start: the piece with the most best buddies, ties broken by how distinct its best matches are
    nbb = sum((v >= 0).astype(int) for v in bb.values())
    conf = np.zeros(n)
    for D in (D_lr, D_lr.T, D_tb, D_tb.T):
        part = np.partition(D, 1, axis=1)[:, :2]
        conf += 1 - part[:, 0] / np.maximum(part[:, 1], 1e-12)
    start = int(np.lexsort((-conf, -nbb))[0])

    h, w = (R + int(slack * R), C + int(slack * C))
    first = _Placer(feats, grid, bb, ("box", h, w), fixed=False)
    first.place(start, 0, (0, 0))
    first.run(only_buddies=True)
    r0, c0 = _best_window(_buddy_weight(first.where, bb), R, C)
    kept = [(pos, piece) for pos, piece in first.where.items() if r0 <= pos[0] < r0 + R and c0 <= pos[1] < c0 + C]
    placer = _Placer(feats, grid, bb, ("box", R, C), fixed=False)
    placer.place_many([(pos, piece, int(first.tr[piece])) for pos, piece in kept])
    placer.run()

    r0, c0 = placer.bbox[0], placer.bbox[2]
    placement = np.empty((R, C), int)
    for (r, c), piece in placer.where.items():
        placement[r - r0, c - c0] = piece
    info = {"kept_after_trim": len(kept), "best_buddy_placements": first.n_bb + placer.n_bb}
    return Solution(placement, placer.tr[placement], time.perf_counter() - t0, info)
