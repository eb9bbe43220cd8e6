"""The built-in exact kernel: float32 matrix products in tiles, the bias folded into the product, threshold selection.

For every query the kernel ranks reference rows by a *score* ``bias[r] + q' . r`` (smaller is nearer):
with ``q' = -2 q`` and ``bias = |r|^2`` that is the squared euclidean distance minus ``|q|^2``; with
``q' = -q`` on normalised rows and ``bias = 0`` it is the cosine distance minus 1.

A dense reference is stored once as :class:`Scored` rows ``[r, bias[r]]`` and each query as ``[q', 1]``, so
that one matrix product (``K = n_features + 1``) writes the scores: no separate pass adds the bias.
Per block of :data:`QUERY_BLOCK` queries, the reference is visited in tiles of :data:`REFERENCE_TILE` rows:
each tile's scores are written by one product and read once, while still in the core's cache, by the
compiled :func:`sklspark.neighbors._select.keep_smallest`, which merges them into each query's ``n``
smallest so far (a whole block of scores above a query's current ``n``-th smallest is rejected by one
vectorised comparison).

The result is exactly the ``n`` smallest scores (in float32) by (score, position), which is what
:func:`sklspark.neighbors._rerank.exact_top_k` expects of an exact backend: it recomputes the distances in
float64 and fixes the order and ties.

Threads: when the BLAS may use several threads (outside a Spark task, whose threads are capped to its
CPUs), query blocks are shared out to that many Python threads, each running single-threaded BLAS
products and the compiled selection (both release the GIL). On this kind of problem (``K = 65``) one product
per core is much faster than a multi-threaded BLAS call per tile, and the selection runs in parallel too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from ._select import keep_pairs, keep_smallest

#: Queries scored together: one tile of scores is ``QUERY_BLOCK x REFERENCE_TILE`` float32 (1 MiB).
QUERY_BLOCK = 256

#: Reference rows per tile. A 1 MiB tile of scores stays in a core's L2 cache (1 MiB on Zen 4) between the
#: product that writes it and the comparison that reads it. Measured single-threaded on the shared 2-core
#: Zen 4 under load (best of 4, 1,024 x 100,000 x 64): 256 x 1024 tiles 2.70 s, 512 x 1024 2.65 s,
#: 256 x 2048 2.89 s, 256 x 4096 3.25 s (the product alone: 1.70 s).
REFERENCE_TILE = 1024

#: Most bytes of the lists (float32 score, int64 position) that :func:`own_scores` keeps, one set per thread.
_KEPT_BYTES = 1 << 28

#: The threadpoolctl controller and the number of imported modules when it scanned the loaded libraries.
_controller: list[Any] = [None, 0]


class Scored:
    """Reference rows prepared for scoring: dense rows carry their bias as a last column; CSR rows stay CSR.

    The dense ``[r, bias[r]]`` matrix is made on first use in each process and never pickled: a pickle holds
    ``R`` itself, which the broadcast shares with the re-rank's copy of the reference when they are the
    same array (float32 input).

    Parameters
    ----------
    R : ndarray or CSR matrix of float32 of shape (n_ref, n_features)
    bias : ndarray of float32 of shape (n_ref,)
    """

    def __init__(self, R: Any, bias: np.ndarray) -> None:
        self.sparse = sp.issparse(R)
        self.n_features = R.shape[1]
        self._R = R
        self.bias = np.asarray(bias, dtype=np.float32)
        self._rows: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}

    def __len__(self) -> int:
        return int(self._R.shape[0])

    @property
    def rows(self) -> Any:
        """The rows as scored: ``[r, bias[r]]`` (float32, C-contiguous) for dense rows, the CSR matrix for CSR."""
        if self.sparse:
            return self._R
        if self._rows is None:
            rows = np.empty((self._R.shape[0], self.n_features + 1), dtype=np.float32)
            rows[:, :-1] = self._R
            rows[:, -1] = self.bias
            self._rows = rows
        return self._rows

    def features(self) -> Any:
        """The reference rows without their bias."""
        return self._R

    def queries(self, Q: Any) -> Any:
        """Scaled queries ``q'`` in the layout :meth:`scores` multiplies: ``[q', 1]`` for a dense reference."""
        if self.sparse:
            return sp.csr_matrix(Q, dtype=np.float32)
        out = np.empty((Q.shape[0], self.n_features + 1), dtype=np.float32)
        out[:, :-1] = Q
        out[:, -1] = 1
        return out

    def scores(self, Qs: Any, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """The tile of scores of queries ``Qs`` (from :meth:`queries`) against rows ``start:stop``."""
        if self.sparse:
            S = Qs @ self.rows[start:stop].T
            S = S.toarray() if sp.issparse(S) else np.asarray(S)
            S += self.bias[start:stop]
            return S
        if out is None:
            return Qs @ self.rows[start:stop].T
        out = out[: Qs.shape[0], : stop - start]
        return np.matmul(Qs, self.rows[start:stop].T, out=out)


class Kept:
    """Each query's ``n`` smallest scores and their positions, merged tile by tile (:func:`keep_smallest`).

    Parameters
    ----------
    n_rows : int
        Queries of the block.
    n : int
        Scores wanted per query.
    """

    def __init__(self, n_rows: int, n: int) -> None:
        self.values = np.full((n_rows, n), np.inf, dtype=np.float32)
        self.positions = np.full((n_rows, n), -1, dtype=np.int64)
        self._all = np.arange(n_rows, dtype=np.int64)

    @property
    def n(self) -> int:
        """Scores kept per query."""
        return int(self.values.shape[1])

    @property
    def threshold(self) -> np.ndarray:
        """Each query's ``n``-th smallest score so far (``inf`` while it has fewer)."""
        return self.values[:, -1]

    def add(self, S: np.ndarray, offset: int, rows: np.ndarray | None = None, width: int | None = None) -> None:
        """Merge the scores ``S[:, :width]`` in; column ``j`` is position ``offset + j``.

        ``rows`` maps the rows of ``S`` to query rows (all of them, in order, when ``None``). Positions must
        grow from one call to the next (ties go to the smaller position).
        """
        S = np.ascontiguousarray(S, dtype=np.float32)
        rows = self._all if rows is None else rows.astype(np.int64, copy=False)
        keep_smallest(S, S.shape[1] if width is None else width, offset, rows, self.values, self.positions)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` smallest scores of each query and their positions, by (score, position)."""
        return self.values, self.positions


def top_scores(Q: Any, ref: Scored, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` smallest ``bias[r] + Q[i] . R[r]`` of each query row, ascending (ties: smaller position first).

    Parameters
    ----------
    Q : ndarray or CSR matrix of float32 of shape (n_queries, n_features)
        The queries, already scaled (``-2 q`` or ``-q``); CSR when the reference is.
    ref : Scored
        The reference rows and their bias.
    n : int
        ``1 <= n <= len(ref)``.

    Returns
    -------
    scores : ndarray of float32 of shape (n_queries, n)
    positions : ndarray of int64 of shape (n_queries, n)
    """
    Qs = ref.queries(Q)
    ref.rows  # made once, before the threads share it  # noqa: B018
    parts = map_blocks(lambda block: _block(Qs[block], ref, n), Q.shape[0], not ref.sparse)
    if not parts:
        return np.empty((0, n), dtype=np.float32), np.empty((0, n), dtype=np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def map_blocks(fn: Callable[[slice], Any], n_queries: int, threads: bool = True) -> list[Any]:
    """``fn(block)`` for the slice of every block of :data:`QUERY_BLOCK` queries, in order.

    The BLAS is limited to one thread meanwhile; with ``threads``, blocks are shared out to as many Python
    threads as it could use before (:func:`blas_threads`).
    """
    starts = [slice(start, start + QUERY_BLOCK) for start in range(0, n_queries, QUERY_BLOCK)]
    return _shared(fn, starts, threads)


def _shared(fn: Callable[[Any], Any], items: list[Any], threads: bool = True) -> list[Any]:
    """``[fn(item) for item in items]``, with single-threaded BLAS products, on up to :func:`blas_threads` threads."""
    threads_now = blas_threads()
    if threads_now <= 1:
        return [fn(item) for item in items]
    workers = min(len(items), threads_now) if threads else 1
    with _threadpools().limit(limits=1, user_api="blas"):  # tiles are too small for a multi-threaded product
        if workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))


def own_scores(ref: Scored, rows: slice, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_scores` of the reference's own dense rows ``rows`` as the queries (a self-search), each pair once.

    A product of two own rows scores both of them (:func:`keep_pairs`), so the own rows' pairs cost half
    the products; the other reference rows are scored as by :func:`top_scores`. Each thread keeps lists
    for every own row, merged at the end by (score, position).

    Parameters
    ----------
    ref : Scored
        Dense rows.
    rows : slice
        The own rows ``start:stop`` (step 1) searched as queries.
    n : int
        ``1 <= n <= len(ref)``.
    scale : float
        The queries' scale (``-2`` for euclidean scores, ``-1`` for the others).

    Returns
    -------
    scores : ndarray of float32 of shape (stop - start, n)
    positions : ndarray of int64 of shape (stop - start, n)
        Ascending by score; equal scores in no particular order.
    """
    start, stop, _ = rows.indices(len(ref))
    X = ref.rows
    Qs = ref.queries(np.float32(scale) * ref.features()[start:stop])
    bias = ref.bias[start:stop]
    n_own, n_ref = stop - start, len(ref)
    blocks = [(i, min(n_own, i + QUERY_BLOCK)) for i in range(0, n_own, QUERY_BLOCK)]
    others = [  # the reference rows that are not own rows, in tiles
        (t, min(end, t + REFERENCE_TILE))
        for begin, end in ((0, start), (stop, n_ref))
        for t in range(begin, end, REFERENCE_TILE)
    ]
    workers = max(1, min(len(blocks), blas_threads(), _KEPT_BYTES // (n_own * n * 12)))  # each keeps every own row

    def work(worker: int) -> tuple[np.ndarray, np.ndarray]:
        kept = Kept(n_own, n)
        out = np.empty((QUERY_BLOCK, REFERENCE_TILE), dtype=np.float32)

        def score(first: int, last: int, tiles: list[tuple[int, int]]) -> None:  # the bias folded into the product
            own = np.arange(first, last, dtype=np.int64)
            for begin, end in tiles:
                np.matmul(Qs[first:last], X[begin:end].T, out=out[: last - first, : end - begin])
                keep_smallest(out[: last - first], end - begin, begin, own, kept.values, kept.positions)

        for first, last in blocks:  # every own row's own block first: the columns' thresholds start tight
            score(first, last, [(start + first, start + last)])
        for first, last in blocks[worker::workers]:  # every other block: the later blocks pair with fewer rows
            score(first, last, others)
            for begin in range(last, n_own, REFERENCE_TILE):  # later own rows: each product scores both sides
                end = min(n_own, begin + REFERENCE_TILE)
                products = out[: last - first, : end - begin]
                np.matmul(Qs[first:last, :-1], X[start + begin : start + end, :-1].T, out=products)
                keep_pairs(out[: last - first], end - begin, (first, begin, start), bias, kept.values, kept.positions)
        return kept.result()

    parts = _shared(work, list(range(workers)))
    if len(parts) == 1:
        return parts[0]
    # every thread scored the own blocks: a pair found twice is kept once
    values, positions = np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((positions, values), axis=-1)
    values, positions = np.take_along_axis(values, order, axis=1), np.take_along_axis(positions, order, axis=1)
    again = np.zeros(positions.shape, dtype=bool)
    again[:, 1:] = (positions[:, 1:] == positions[:, :-1]) & (positions[:, 1:] >= 0)
    values[again], positions[again] = np.inf, -1
    order = np.argsort(values, axis=-1, kind="stable")[:, :n]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(positions, order, axis=1)


def _block(Qs: Any, ref: Scored, n: int) -> tuple[np.ndarray, np.ndarray]:
    kept = Kept(Qs.shape[0], n)
    n_ref = len(ref)
    out = None if ref.sparse else np.empty((Qs.shape[0], REFERENCE_TILE), dtype=np.float32)
    for start in range(0, n_ref, REFERENCE_TILE):
        stop = min(n_ref, start + REFERENCE_TILE)
        S = ref.scores(Qs, start, stop, out)
        kept.add(S if out is None else out, start, width=stop - start)
    return kept.result()


def _threadpools() -> Any:
    """A threadpoolctl controller, scanned again only after new modules were imported (a scan costs ~3 ms)."""
    if _controller[0] is None or len(sys.modules) != _controller[1]:
        _controller[:] = [ThreadpoolController(), len(sys.modules)]
    return _controller[0]


def blas_threads() -> int:
    """The threads the BLAS libraries may use now (1 inside a Spark task capped to one CPU)."""
    return max((int(info["num_threads"]) for info in _threadpools().select(user_api="blas").info()), default=1)
