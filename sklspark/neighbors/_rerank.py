"""Exact re-rank: recompute candidate distances pair by pair and apply the tie rule.

Distances from matrix products (BLAS, FAISS) differ in their last bits with the shapes of the
batches they are computed in, so they cannot be compared across execution modes. Here each
candidate pair's distance is recomputed in float64 from that pair's two rows alone, with the
same arithmetic whatever the batch, and rows are ordered by ``(distance, reference position)``:
the nearest first, ties to the smaller position. Broadcast and sharded modes, and every exact
backend, therefore return identical neighbours and identical distances.

Completeness: an exact backend returns the ``n_cand`` rows nearest by *its* distances, which may
be off by a rounding error ``e``. A row outside the candidates is at least ``horizon - e`` away,
``horizon`` being the farthest candidate's backend distance, so the re-ranked top ``n`` is the
true one when the ``n``-th exact distance is below ``horizon - e``. Rows where that fails (ties
or near-ties at the boundary) are searched again with twice as many candidates, and in the end
against every reference row.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._backends import Backend
from ._names import CHEBYSHEV, COSINE, EUCLIDEAN, INNER_PRODUCT, MANHATTAN
from ._ranking import rank_euclidean

#: Candidates asked of an exact backend beyond the ``n`` wanted: enough to see past a boundary tie of a
#: few rows (larger ties are caught by the completeness check and searched again, wider). Each extra
#: candidate costs selection and an exact distance per query: 2n + 16 made a k=10 join 13 % slower.
EXACT_MARGIN = 4

#: Candidates asked of an approximate backend: ``2 * n + APPROXIMATE_MARGIN`` (more candidates, better recall).
APPROXIMATE_MARGIN = 16

#: Most (query, candidate) pairs scored at once when every reference row is a candidate.
_EXHAUSTIVE_PAIRS = 1 << 22

#: Most (query, candidate) pairs of CSR rows stacked at once by the exact distance.
_SPARSE_PAIRS = 1 << 16

#: Most candidates per query ranked by the compiled :func:`sklspark.neighbors._ranking.rank_euclidean` (an
#: insertion sort); more, as when every reference row is a candidate, are ranked by numpy.
_COMPILED_CANDIDATES = 256


def ordered_sums(M: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Row sums added one term at a time in column order, as float64: the same bits for a dense row and its CSR form.

    A dense sum (numpy's pairwise summation) and a CSR one add the same terms in different orders, and
    differ in the last bit, enough to break an exact tie differently. Added strictly left to right,
    the zeros a dense row has and its CSR form leaves out change nothing (``x + 0 == x``), so both
    layouts give identical distances. (``+ 0.0`` turns a ``-0.0`` sum into ``0.0``, as CSR has it.)
    """
    if sp.issparse(M):
        M = sp.csr_matrix(M, dtype=np.float64)
        M.sort_indices()
        counts = np.diff(M.indptr)
        padded = np.zeros((M.shape[0], max(int(counts.max(initial=0)), 1)))
        rank = np.arange(M.nnz) - np.repeat(M.indptr[:-1], counts)
        padded[np.repeat(np.arange(M.shape[0]), counts), rank] = M.data
        M = padded
    M = np.asarray(M, dtype=np.float64)
    if M.shape[1] == 0:
        return np.zeros(M.shape[0])
    return np.cumsum(M, axis=1)[:, -1] + 0.0


def _cosine(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Cosine distance of paired rows, as scikit-learn defines it (zero vectors have similarity 0)."""
    norms = np.sqrt(ordered_sums(q * q)) * np.sqrt(ordered_sums(r * r))
    dot = ordered_sums(q * r)
    similarity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return np.clip(1.0 - similarity, 0.0, 2.0)


_PAIRED = {
    EUCLIDEAN: lambda q, r: np.sqrt(ordered_sums(np.square(q - r))),
    MANHATTAN: lambda q, r: ordered_sums(np.abs(q - r)),
    CHEBYSHEV: lambda q, r: np.abs(q - r).max(axis=1),
    COSINE: _cosine,
    INNER_PRODUCT: lambda q, r: -ordered_sums(q * r),
}


def _sparse_cosine(q: sp.csr_matrix, r: sp.csr_matrix) -> np.ndarray:
    norms = np.sqrt(ordered_sums(q.multiply(q))) * np.sqrt(ordered_sums(r.multiply(r)))
    dot = ordered_sums(q.multiply(r))
    similarity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return np.clip(1.0 - similarity, 0.0, 2.0)


#: The same distances on CSR rows: element-wise over each pair's stored entries, never densified, and added in
#: the same order as a dense row's (:func:`ordered_sums`), so that both layouts give the same bits.
_PAIRED_SPARSE = {
    EUCLIDEAN: lambda q, r: np.sqrt(ordered_sums((q - r).power(2))),
    MANHATTAN: lambda q, r: ordered_sums(abs(q - r)),
    CHEBYSHEV: lambda q, r: abs(q - r).max(axis=1).toarray().ravel(),
    COSINE: _sparse_cosine,
    INNER_PRODUCT: lambda q, r: -ordered_sums(q.multiply(r)),
}


def row_sums(M: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Row sums of a dense or sparse matrix, as a 1-D float64 array."""
    return np.asarray(M.sum(axis=1), dtype=np.float64).ravel()


def _squares(M: Any) -> Any:
    return M.multiply(M) if sp.issparse(M) else np.square(M)


def _float64(M: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csr_matrix:
    return sp.csr_matrix(M, dtype=np.float64) if sp.issparse(M) else np.asarray(M, dtype=np.float64)


def paired_distances(Q: np.ndarray, R: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distance from each row of ``Q`` to each of its candidate rows of ``R``.

    Every value depends only on the pair's two rows (row-wise sums, added in column order), never on the batch
    or on the layout: dense and CSR rows give the same bits.

    Parameters
    ----------
    Q : ndarray of shape (n_queries, n_features)
    R : ndarray of shape (n_ref, n_features)
    candidates : ndarray of int of shape (n_queries, n_cand)
        Row positions in ``R``.
    metric : str
        A canonical metric name (see :meth:`Backend.check_metric`).

    Returns
    -------
    ndarray of float64 of shape (n_queries, n_cand)
    """
    out = np.empty(candidates.shape, dtype=np.float64)
    if sp.issparse(R) and metric in _PAIRED_SPARSE:  # (query, candidate) pairs stacked, a slice at a time
        Q = sp.csr_matrix(Q, dtype=np.float64)
        flat = out.reshape(-1)
        pairs = np.arange(candidates.size)
        for start in range(0, candidates.size, _SPARSE_PAIRS):
            part = pairs[start : start + _SPARSE_PAIRS]
            rows = Q[part // candidates.shape[1]]
            flat[part] = _PAIRED_SPARSE[metric](rows, _float64(R[candidates.reshape(-1)[part]]))
        return out
    Q = _float64(Q)
    paired = _PAIRED.get(metric)
    if paired is not None:
        for j in range(candidates.shape[1]):
            out[:, j] = paired(Q, _float64(R[candidates[:, j]]))
        return out
    from sklearn.metrics import pairwise_distances  # other metrics: one exact call per query row

    for i in range(Q.shape[0]):
        out[i] = pairwise_distances(Q[i : i + 1], _float64(R[candidates[i]]), metric=metric)[0]
    return out


def _rounding(backend: Backend, Q: np.ndarray, R: np.ndarray) -> float:
    """Relative rounding error of the backend's distances: a few ulps per feature in its precision."""
    precision = np.float32 if np.float32 in (backend.precision, Q.dtype, R.dtype) else np.float64
    # a dot product's error grows with the terms summed: the features, or for CSR rows their stored entries
    stored = [int(np.diff(M.indptr).max(initial=0)) for M in (Q, R) if sp.issparse(M)]  # type: ignore[attr-defined]
    terms = min(stored) if stored else Q.shape[1]
    return 8.0 * (terms + 2) * float(np.finfo(precision).eps)


#: The largest row norms of the references searched in this process, by (id, norm), while the reference lives.
_LARGEST: dict[tuple[int, str], tuple[weakref.ref, float]] = {}


def _largest(R: Any, norm: str) -> float:
    """The largest ``"squares"`` (squared euclidean) or ``"abs"`` (manhattan) norm of the rows of ``R``, in float64.

    Computed once per reference in a process (every chunk searched against a reference asks for it), a slice at
    a time: a float64 copy of a million-row reference would cost more than the check it serves.
    """
    key = (id(R), norm)
    known = _LARGEST.get(key)
    if known is not None and known[0]() is R:
        return known[1]
    row_norm = (lambda M: row_sums(_squares(M))) if norm == "squares" else (lambda M: row_sums(abs(M)))
    step = _EXHAUSTIVE_PAIRS // max(1, R.shape[1])
    largest = max((float(np.max(row_norm(_float64(R[i : i + step])))) for i in range(0, R.shape[0], step)), default=0.0)
    _LARGEST[key] = (weakref.ref(R, lambda _: _LARGEST.pop(key, None)), largest)
    return largest


def _complete(
    backend: Backend, metric: str, Q: np.ndarray, R: np.ndarray, nth: np.ndarray, horizon: np.ndarray
) -> np.ndarray:
    """Rows whose ``n``-th exact distance ``nth`` is safely below the backend's candidate ``horizon``."""
    gamma = _rounding(backend, Q, R)
    Q = _float64(Q)
    if metric == EUCLIDEAN:  # compare squares: the error of |q|^2 + |r|^2 - 2 q.r scales with the norms
        slack = gamma * (row_sums(_squares(Q)) + _largest(R, "squares"))
        return nth * nth < horizon * horizon - slack
    scale: Any
    if metric == INNER_PRODUCT:  # a dot product's error is bounded by |q| |r| (Cauchy-Schwarz)
        scale = np.sqrt(row_sums(_squares(Q)) * _largest(R, "squares"))
    else:
        scale = 1.0 if metric == COSINE else row_sums(abs(Q)) + _largest(R, "abs")
    return nth < horizon - gamma * (np.abs(horizon) + scale)


def _ranked(Q, R, keys, candidates, metric, n):
    """Re-rank candidates by (exact distance, key); the first ``n`` as (positions, distances)."""
    if metric == EUCLIDEAN and not sp.issparse(R) and candidates.shape[1] <= _COMPILED_CANDIDATES:
        positions = np.empty((candidates.shape[0], n), dtype=np.int64)
        distances = np.empty((candidates.shape[0], n), dtype=np.float64)
        keys, candidates = np.asarray(keys, dtype=np.int64), np.asarray(candidates, dtype=np.int64)
        rank_euclidean(Q, R, keys, candidates, positions, distances)
        return positions, distances
    exact = paired_distances(Q, R, candidates, metric)
    order = np.lexsort((keys[candidates], exact), axis=-1)[:, :n]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)


def _exhaustive(Q, R, keys, metric, n):
    """Top ``n`` with every reference row as a candidate, in slices of bounded size."""
    step = max(1, _EXHAUSTIVE_PAIRS // R.shape[0])
    every = np.arange(R.shape[0], dtype=np.int64)
    parts = [
        _ranked(Q[i : i + step], R, keys, np.broadcast_to(every, (Q[i : i + step].shape[0], len(every))), metric, n)
        for i in range(0, Q.shape[0], step)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def exact_top_k(
    backend: Backend, R: np.ndarray, keys: np.ndarray, Q: np.ndarray | slice, n: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` nearest rows of ``R`` to each row of ``Q``, by exact distance then smaller key.

    Parameters
    ----------
    backend : Backend
        Built on ``R``; proposes candidates.
    R : ndarray of shape (n_ref, n_features)
        The indexed rows, in the backend's position order.
    keys : ndarray of int of shape (n_ref,)
        Tie-break key of each row of ``R``: its global reference position.
    Q : ndarray of shape (n_queries, n_features), or slice
        The queries; a slice names rows of ``R`` (a self-join), which the backend may search as its own
        (:meth:`Backend.search_own`: each pair of them scored once).
    n : int
        Neighbours wanted, ``1 <= n <= n_ref``.
    metric : str

    Returns
    -------
    positions : ndarray of int64 of shape (n_queries, n)
        Rows of ``R``, nearest first.
    distances : ndarray of float64 of shape (n_queries, n)
        Exact distances, ascending.
    """
    own = Q if isinstance(Q, slice) else None
    rows: Any = R[Q] if isinstance(Q, slice) else Q
    if sp.issparse(rows) != sp.issparse(R):  # a chunk follows the reference: CSR for a CSR reference, else dense
        rows = sp.csr_matrix(rows) if sp.issparse(R) else sp.csr_matrix(rows).toarray()
    n_ref = R.shape[0]
    positions = np.empty((rows.shape[0], n), dtype=np.int64)
    distances = np.empty((rows.shape[0], n), dtype=np.float64)
    pending = np.arange(rows.shape[0])
    n_cand = min(n_ref, n + EXACT_MARGIN if backend.exact else 2 * n + APPROXIMATE_MARGIN)
    while pending.size:
        q = rows[pending]
        if n_cand >= n_ref:
            positions[pending], distances[pending] = _exhaustive(q, R, keys, metric, n)
            break
        approx, candidates = backend.search(q, n_cand) if own is None else backend.search_own(R, own, n_cand)
        own = None  # rows searched again are searched as queries
        found = candidates >= 0
        candidates = np.where(found, candidates, 0)
        top, top_distances = _ranked(q, R, keys, candidates, metric, n)
        done = found.all(axis=1)
        if backend.exact:
            horizon = np.where(found, approx, -np.inf).max(axis=1)
            done &= _complete(backend, metric, q, R, top_distances[:, -1], horizon)
        positions[pending[done]], distances[pending[done]] = top[done], top_distances[done]
        pending = pending[~done]
        n_cand = min(n_ref, 2 * n_cand)
    return positions, distances
