"""The compiled exact re-rank of dense euclidean candidates: float64 distances pair by pair, then the tie rule.

:func:`rank_euclidean` does for each query what :func:`sklspark.neighbors._rerank.paired_distances` and a
``lexsort`` by (distance, key) do, in one pass that never leaves the query's row: each candidate's squared
difference is summed in float64 one feature at a time, in column order (the same additions, in the same
order, as :func:`sklspark.neighbors._rerank.ordered_sums`, so the same bits as the CSR path), and the
candidates are put in order by an insertion sort, stable like ``lexsort``. numba compiles it without
``fastmath``: no reassociation, no fused multiply-add, the rounding of every operation as numpy's.

The numpy passes it replaces made a float64 copy of every candidate row, a cumulative sum per column of
candidates and a sort per query: most of the re-rank's time, which was a fifth of the exact search's.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, error_model="numpy")
def rank_euclidean(
    Q: np.ndarray, R: np.ndarray, keys: np.ndarray, candidates: np.ndarray, positions: np.ndarray, distances: np.ndarray
) -> None:  # pragma: no cover  (compiled: covered through the re-rank's tests)
    """The ``n`` nearest candidates of each query, by (exact euclidean distance, key), written in place.

    Parameters
    ----------
    Q : ndarray of float32 or float64 of shape (n_queries, n_features)
    R : ndarray of float32 or float64 of shape (n_ref, n_features)
    keys : ndarray of int64 of shape (n_ref,)
        Tie-break key of each row of ``R``.
    candidates : ndarray of int64 of shape (n_queries, n_cand)
        Row positions in ``R``.
    positions : ndarray of int64 of shape (n_queries, n)
        Out: the candidate positions kept, nearest first (``n <= n_cand``).
    distances : ndarray of float64 of shape (n_queries, n)
        Out: their distances, ascending.
    """
    n_cand = candidates.shape[1]
    n = positions.shape[1]
    exact = np.empty(n_cand)
    order = np.empty(n_cand, dtype=np.int64)
    for i in range(Q.shape[0]):
        q = Q[i]
        for j in range(n_cand):
            r = R[candidates[i, j]]
            total = 0.0
            for t in range(q.shape[0]):
                difference = np.float64(q[t]) - np.float64(r[t])
                total += difference * difference
            exact[j] = np.sqrt(total)
            # insert j after every earlier candidate not larger by (distance, key): a stable sort
            s = j
            while s > 0 and (
                exact[order[s - 1]] > exact[j]
                or (exact[order[s - 1]] == exact[j] and keys[candidates[i, order[s - 1]]] > keys[candidates[i, j]])
            ):
                order[s] = order[s - 1]
                s -= 1
            order[s] = j
        for j in range(n):
            positions[i, j] = candidates[i, order[j]]
            distances[i, j] = exact[order[j]]
