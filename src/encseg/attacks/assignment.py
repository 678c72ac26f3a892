"""Minimum-cost perfect matching (the linear assignment problem) in numpy, for placing pieces on a
grid: pixel positions on the block's grid (the PS-leak attack) and tokens on the block grid (the
position probe). scipy is not a dependency, so this is the shortest-augmenting-path Hungarian
method (Jonker & Volgenant's form, O(n^3)) with its inner loop vectorised over columns.
"""

from __future__ import annotations

import numpy as np


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """For a square cost matrix (n x n, finite), the column assigned to each row in a matching of
    least total cost: `cols[i]` is row i's column, a permutation of range(n)."""
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cost must be a square matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost must be finite")
    n = c.shape[0]
    # 1-based arrays with a virtual column 0, as in the classic formulation
    u = np.zeros(n + 1)  # row potentials
    v = np.zeros(n + 1)  # column potentials
    row_of = np.zeros(n + 1, dtype=np.int64)  # row matched to column j (0: none)
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used
            free[0] = False
            cur = c[i0 - 1] - u[i0] - v[1:]  # reduced costs of row i0 against every column
            better = free[1:] & (cur < minv[1:])
            idx = np.flatnonzero(better) + 1
            minv[idx] = cur[idx - 1]
            way[idx] = j0
            cand = np.where(free, minv, np.inf)
            j1 = int(np.argmin(cand))
            delta = cand[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while True:  # augment along the path
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
            if j0 == 0:
                break
    cols = np.empty(n, dtype=np.int64)
    cols[row_of[1:] - 1] = np.arange(n)
    return cols
