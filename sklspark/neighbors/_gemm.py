"""The built-in exact kernel: float32 matrix products in cache-sized tiles and vectorised top-``n`` selection.

For every query the kernel ranks reference rows by a *score* ``bias[r] + q' . r`` (smaller is nearer):
with ``q' = -2 q`` and ``bias = |r|^2`` that is the squared euclidean distance minus ``|q|^2``; with
``q' = -q`` on normalised rows and ``bias = 0`` it is the cosine distance minus 1.

Per block of :data:`QUERY_BLOCK` queries, the reference is visited in tiles of :data:`REFERENCE_TILE`
rows, so that a tile of scores (``QUERY_BLOCK x REFERENCE_TILE`` float32, 2 MiB) stays in the core's
cache between the matrix product that writes it and the comparison that reads it:

1. The first tile's ``n``-th smallest score of each query (``np.argpartition``) is a threshold: the
   true ``n``-th smallest over the whole reference can only be smaller or equal.
2. Every tile is compared against the thresholds in one vectorised pass; only the scores at or below
   them (a few per thousand on typical data) are kept, as (query, position, score).
3. The kept scores of each query are gathered into a padded matrix and its ``n`` smallest selected.

Everything kept includes every score at or below the ``n``-th smallest, so the result is exactly the
``n`` smallest scores (in float32), which is what :func:`sklspark.neighbors._rerank.exact_top_k`
expects of an exact backend: it recomputes the distances in float64 and fixes the order and ties.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Queries scored together: one tile of scores is ``QUERY_BLOCK x REFERENCE_TILE`` float32.
QUERY_BLOCK = 256

#: Reference rows per tile; 256 x 2048 float32 scores are 2 MiB, an L2 cache's worth on current x86.
REFERENCE_TILE = 2048


def top_scores(Q: np.ndarray, R: np.ndarray, bias: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` smallest ``bias[r] + Q[i] . R[r]`` of each query row, ascending.

    Parameters
    ----------
    Q : ndarray or CSR matrix of float32 of shape (n_queries, n_features)
        The queries, already scaled (``-2 q`` or ``-q``); CSR when ``R`` is.
    R : ndarray (C-contiguous) or CSR matrix of float32 of shape (n_ref, n_features)
    bias : ndarray of float32 of shape (n_ref,)
    n : int
        ``1 <= n <= n_ref``.

    Returns
    -------
    scores : ndarray of float32 of shape (n_queries, n)
    positions : ndarray of int64 of shape (n_queries, n)
    """
    scores = np.empty((Q.shape[0], n), dtype=np.float32)
    positions = np.empty((Q.shape[0], n), dtype=np.int64)
    for start in range(0, Q.shape[0], QUERY_BLOCK):
        stop = start + QUERY_BLOCK
        scores[start:stop], positions[start:stop] = _block(Q[start:stop], R, bias, n)
    return scores, positions


def _block(Q: np.ndarray, R: np.ndarray, bias: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    n_ref = R.shape[0]
    first = min(n_ref, max(REFERENCE_TILE, n))
    S = _scores(Q, R, bias, 0, first)
    top = np.argpartition(S, n - 1, axis=1)[:, :n]
    if first == n_ref:
        return _sorted(np.take_along_axis(S, top, axis=1), top)
    threshold = np.take_along_axis(S, top, axis=1).max(axis=1, keepdims=True)
    rows, columns, values = [], [], []
    for start in [0, *range(first, n_ref, REFERENCE_TILE)]:
        if start:
            S = _scores(Q, R, bias, start, start + REFERENCE_TILE)
        flat = np.less_equal(S, threshold).ravel().nonzero()[0]
        row, column = np.divmod(flat, S.shape[1])
        rows.append(row)
        columns.append(column + start)
        values.append(S.ravel()[flat])
    return _select(np.concatenate(rows), np.concatenate(columns), np.concatenate(values), Q.shape[0], n)


def _scores(Q, R, bias: np.ndarray, start: int, stop: int) -> np.ndarray:
    """One dense tile of scores; CSR ``Q`` and ``R`` multiply sparse (the product of a tile is dense enough)."""
    S = Q @ R[start:stop].T
    S = S.toarray() if sp.issparse(S) else S
    S += bias[start:stop]
    return S


def _select(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, n_rows: int, n: int):
    """The ``n`` smallest kept values of each row, from (row, column, value) triples."""
    order = np.argsort(rows, kind="stable")
    rows, columns, values = rows[order], columns[order], values[order]
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(counts.max())
    V = np.full((n_rows, width), np.inf, dtype=np.float32)
    P = np.zeros((n_rows, width), dtype=np.int64)
    V[rows, rank], P[rows, rank] = values, columns
    top = np.argpartition(V, n - 1, axis=1)[:, :n] if width > n else np.broadcast_to(np.arange(n), (n_rows, n))
    return _sorted(np.take_along_axis(V, top, axis=1), np.take_along_axis(P, top, axis=1))


def _sorted(values: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((positions, values), axis=-1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(positions, order, axis=1)
