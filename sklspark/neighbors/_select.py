"""The compiled selection of the exact kernel: each query's ``n`` smallest scores, updated tile by tile in place.

:func:`keep_smallest` reads a tile of scores once, while it is still in the core's cache after the product
that wrote it, and keeps each query's ``n`` smallest ``(score, position)`` pairs in ascending order in two
small arrays. Most scores are above the query's current ``n``-th smallest: they are rejected by
vectorised comparisons (numba compiles the loops for the CPU it runs on: AVX-512 here, AVX2 elsewhere), a
whole row of the tile at once, then a :data:`BLOCK` of scores at a time in a row that holds a smaller one;
only a block holding a smaller score is walked one score at a time.

Positions arrive in ascending order, so a score equal to the current ``n``-th smallest is not kept: the
result is the ``n`` smallest scores by (score, position), the tie rule of every exact backend. NaN scores
are never kept (rows with NaN are refused before any search); an empty slot holds ``inf`` and position
``-1``.

numba compiles :func:`keep_smallest` on its first call in a process (about a second) and caches the machine
code on disk beside this file, or in numba's user-wide cache directory where this one is read-only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Scores compared at once before any is looked at one by one: 64 float32 are four AVX-512 comparisons.
#: Measured in a tile of 256 x 1024 (100,000 x 64 uniform rows): the row-then-block rejection costs 0.28 ns per
#: score against 0.42 ns for blocks alone and 0.84 ns for numpy's compare-and-gather passes it replaced.
BLOCK = 64


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _insert(values: np.ndarray, positions: np.ndarray, score: float, position: int) -> None:  # pragma: no cover
    """Insert ``(score, position)`` into one query's ascending lists, dropping the last pair."""
    t = values.shape[0] - 1
    while t > 0 and (positions[t - 1] < 0 or values[t - 1] > score):
        values[t] = values[t - 1]
        positions[t] = positions[t - 1]
        t -= 1
    values[t] = score
    positions[t] = position


@njit(nogil=True, cache=True, error_model="numpy")
def keep_smallest(
    S: np.ndarray, width: int, offset: int, rows: np.ndarray, V: np.ndarray, P: np.ndarray
) -> None:  # pragma: no cover  (compiled: covered through the kernel's tests)
    """Merge the scores ``S[:, :width]`` into each query's ``n`` smallest kept so far, in place.

    Parameters
    ----------
    S : ndarray of float32 of shape (m, >= width), C-contiguous
        A tile of scores; column ``j`` is position ``offset + j``, larger than every position kept so far.
    width : int
        Columns of ``S`` to read.
    offset : int
        Position of column 0.
    rows : ndarray of int64 of shape (m,)
        The query (row of ``V`` and ``P``) of each row of ``S``.
    V : ndarray of float32 of shape (n_queries, n)
        Each query's ``n`` smallest scores so far, ascending (``inf`` in empty slots).
    P : ndarray of int64 of shape (n_queries, n)
        Their positions (``-1`` in empty slots).
    """
    n = V.shape[1]
    for i in range(S.shape[0]):
        scores = S[i]
        values = V[rows[i]]
        positions = P[rows[i]]
        j = 0
        while j < width and positions[n - 1] < 0:  # fewer than n kept: every score but NaN goes in
            if scores[j] == scores[j]:
                _insert(values, positions, scores[j], offset + j)
            j += 1
        threshold = values[n - 1]
        below = False
        for t in range(width):  # most rows of a late tile have no score below: one pass rejects them all
            below |= scores[t] < threshold
        if not below:
            continue
        while j + BLOCK <= width:
            below = False
            for t in range(BLOCK):
                below |= scores[j + t] < threshold
            if below:
                for t in range(j, j + BLOCK):
                    if scores[t] < threshold:
                        _insert(values, positions, scores[t], offset + t)
                        threshold = values[n - 1]
            j += BLOCK
        for t in range(j, width):
            if scores[t] < threshold:
                _insert(values, positions, scores[t], offset + t)
                threshold = values[n - 1]
