"""The compiled part of the exact kernel: each query's ``n`` smallest scores, and the loops over the tiles.

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

A self-search, where the queries are the reference's own rows, multiplies each pair of own rows once:
the product of rows ``a`` and ``b`` scores ``b`` as a candidate of ``a`` and ``a`` as a candidate of ``b``, and
:func:`keep_pairs` reads a tile of such products along its rows and along its columns. There, scores
arrive out of position order: the ``n`` smallest scores are kept, ties in any order (the exact re-rank
orders them).

The loops over the tiles are compiled too (:func:`score_rows`, :func:`score_pairs`): each tile's product
is one call of the BLAS ``sgemm`` through numba's ``np.dot``, with no Python between tiles. Measured
single-threaded on 256 x 256 x 64 tiles: 103 GFLOP/s from the compiled loop against 60 GFLOP/s for
``np.matmul`` called from Python per tile. (They live in this module with the selection they call, because
numba's on-disk cache of a module does not notice changes to functions it calls from another one.)

numba compiles each function on its first call in a process (about 8 s for all of them with an empty cache,
most of it for the loops that call ``np.dot``) and caches the machine code on disk beside this file, or in
numba's user-wide cache directory where this one is read-only; from the cache they load in milliseconds.
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


@njit(nogil=True, cache=True, error_model="numpy")
def keep_pairs(
    G: np.ndarray, width: int, at: tuple[int, int, int], bias: np.ndarray, V: np.ndarray, P: np.ndarray
) -> None:  # pragma: no cover  (compiled: covered through the kernel's tests)
    """Merge a tile of a self-search into the lists of *both* its rows' and its columns' queries, in place.

    ``G[i, j] = c x_a . x_b`` (``c`` the queries' scale) gives query ``a`` the score ``G[i, j] + bias[b]`` of
    row ``b``, and query ``b`` the score ``G[i, j] + bias[a]`` of row ``a``.

    Parameters
    ----------
    G : ndarray of float32 of shape (m, >= width), C-contiguous
        Products of own rows ``a = at[0] + i`` and ``b = at[1] + j`` (indices into ``bias``, ``V``, ``P``).
    width : int
        Columns of ``G`` to read.
    at : (int, int, int)
        Own row of ``G``'s first row, own row of its first column, reference position of own row 0.
    bias : ndarray of float32 of shape (n_own,)
        Each own row's bias (its squared norm for euclidean, else 0).
    V : ndarray of float32 of shape (n_own, n)
        Each own row's ``n`` smallest scores so far, ascending (``inf`` in empty slots).
    P : ndarray of int64 of shape (n_own, n)
        Their reference positions (``-1`` in empty slots).

    Scores arrive out of position order, so equal scores are kept in the order they arrive: the ``n``
    smallest scores, ties in any order (the exact re-rank orders them).
    """
    rows, cols, offset = at
    n = V.shape[1]
    column_bias = bias[cols : cols + width]
    thresholds = np.empty(width, dtype=np.float32)  # the columns' n-th smallest, contiguous for the comparisons
    for j in range(width):
        thresholds[j] = V[cols + j, n - 1]
    for i in range(G.shape[0]):
        a = rows + i
        products = G[i]
        values, positions = V[a], P[a]
        threshold, row_bias = values[n - 1], bias[a]
        below = False
        for j in range(width):  # row a: most rows of a late tile hold no score below its threshold
            below |= products[j] + column_bias[j] < threshold
        if below:
            for j in range(0, width, BLOCK):
                below = False
                for t in range(j, min(width, j + BLOCK)):
                    below |= products[t] + column_bias[t] < threshold
                if below:
                    for t in range(j, min(width, j + BLOCK)):
                        score = products[t] + column_bias[t]
                        if score < threshold:
                            _insert(values, positions, score, offset + cols + t)
                            threshold = values[n - 1]
        below = False
        for j in range(width):  # the columns: row a is a candidate of few of them
            below |= products[j] + row_bias < thresholds[j]
        if below:
            for j in range(0, width, BLOCK):
                below = False
                for t in range(j, min(width, j + BLOCK)):
                    below |= products[t] + row_bias < thresholds[t]
                if below:
                    for t in range(j, min(width, j + BLOCK)):
                        score = products[t] + row_bias
                        if score < thresholds[t]:
                            _insert(V[cols + t], P[cols + t], score, offset + a)
                            thresholds[t] = V[cols + t, n - 1]


@njit(nogil=True, cache=True, error_model="numpy")
def _product(A: np.ndarray, B: np.ndarray, out: np.ndarray) -> np.ndarray:  # pragma: no cover
    """``A @ B.T`` into ``out`` when it has that shape, else into a new array (the edge tiles)."""
    if A.shape[0] == out.shape[0] and B.shape[0] == out.shape[1]:
        np.dot(A, B.T, out)
        return out
    return np.dot(A, B.T)


@njit(nogil=True, cache=True, error_model="numpy")
def score_rows(
    Q: np.ndarray, R: np.ndarray, V: np.ndarray, P: np.ndarray, work: tuple[int, int, int, int, int, int]
) -> None:  # pragma: no cover  (compiled: covered through the kernel's tests)
    """Merge the scores ``Q[i] . R[r]`` of own rows ``i`` against reference rows ``r`` into the own rows' lists.

    Parameters
    ----------
    Q : ndarray of float32 of shape (n_own, K), C-contiguous
        The own rows as queries, ``[q', 1]``.
    R : ndarray of float32 of shape (n_ref, K), C-contiguous
        The reference rows as scored, ``[r, bias[r]]``; row ``r`` is position ``r``.
    V, P : ndarray
        The own rows' lists (see :func:`keep_pairs`).
    work : (int, int, int, int, int, int)
        Own rows ``work[0]:work[1]`` against reference rows ``work[2]:work[3]``, in tiles of ``work[4]`` own
        rows x ``work[5]`` reference rows.
    """
    first_row, last_row, first_ref, last_ref, tile_rows, tile_columns = work
    out = np.empty((tile_rows, tile_columns), dtype=np.float32)
    for first in range(first_row, last_row, tile_rows):
        last = min(last_row, first + tile_rows)
        own = np.arange(first, last)
        for begin in range(first_ref, last_ref, tile_columns):
            end = min(last_ref, begin + tile_columns)
            keep_smallest(_product(Q[first:last], R[begin:end], out), end - begin, begin, own, V, P)


@njit(nogil=True, cache=True, error_model="numpy")
def score_pairs(
    Q: np.ndarray,
    R: np.ndarray,
    bias: np.ndarray,
    V: np.ndarray,
    P: np.ndarray,
    work: tuple[int, int, int, int, int, int, int],
) -> None:  # pragma: no cover  (compiled: covered through the kernel's tests)
    """Merge the pairs of own rows ``a`` in ``work[0]:work[1]`` and ``b > a`` in ``work[2]:work[3]`` into both lists.

    Parameters
    ----------
    Q : ndarray of float32 of shape (n_own, n_features), C-contiguous
        The own rows scaled as queries (``c x``).
    R : ndarray of float32 of shape (n_own, n_features), C-contiguous
        The own rows.
    bias : ndarray of float32 of shape (n_own,)
    V, P : ndarray
        The own rows' lists (see :func:`keep_pairs`).
    work : (int, int, int, int, int, int, int)
        Rows ``work[0]:work[1]``, columns ``work[2]:work[3]``, the reference position of own row 0, and tiles of
        ``work[5]`` rows x ``work[6]`` columns.
    """
    first_row, last_row, first_column, last_column, offset, tile_rows, tile_columns = work
    out = np.empty((tile_rows, tile_columns), dtype=np.float32)
    for first in range(first_row, last_row, tile_rows):
        last = min(last_row, first + tile_rows)
        for begin in range(max(first_column, last), last_column, tile_columns):
            end = min(last_column, begin + tile_columns)
            G = _product(Q[first:last], R[begin:end], out)
            keep_pairs(G, end - begin, (first, begin, offset), bias, V, P)
