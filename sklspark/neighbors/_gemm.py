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
vectorised comparison). The loop over the tiles is compiled as well (:mod:`sklspark.neighbors._select`:
the BLAS product through numba's ``np.dot``), so no Python runs between tiles.

When the queries are the reference's own rows (:func:`own_scores`), each product of two of them scores both.

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from ._select import keep_smallest, score_pairs, score_rows

#: Queries scored together: one tile of scores is ``QUERY_BLOCK x REFERENCE_TILE`` float32 (1 MiB).
QUERY_BLOCK = 256

#: Reference rows per tile. A 1 MiB tile of scores stays in a core's L2 cache (1 MiB on Zen 4) between the
#: product that writes it and the comparison that reads it. Measured single-threaded on the shared 2-core
#: Zen 4 under load (best of 4, 1,024 x 100,000 x 64): 256 x 1024 tiles 2.70 s, 512 x 1024 2.65 s,
#: 256 x 2048 2.89 s, 256 x 4096 3.25 s (the product alone: 1.70 s).
REFERENCE_TILE = 1024

#: Own rows per tile of a self-search's pairs (:func:`own_scores`): the tile's columns are queries too, whose lists
#: the selection updates, so 256 x 256 products, 256 lists and their thresholds stay in the L2 cache together.
#: Measured single-threaded, 40,000 x 64 all pairs: tiles of 1,024 columns 2.72 s, 512 1.87 s, 256 1.70 s.
PAIR_TILE = 256

#: Own rows per group of a self-search (:func:`own_scores`): the unit of work its threads share.
OWN_GROUP = 16 * QUERY_BLOCK

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
        """Scaled queries ``q'`` in the layout :attr:`rows` is multiplied by: ``[q', 1]`` for a dense reference."""
        if self.sparse:
            return sp.csr_matrix(Q, dtype=np.float32)
        out = np.empty((Q.shape[0], self.n_features + 1), dtype=np.float32)
        out[:, :-1] = Q
        out[:, -1] = 1
        return out

    def scores(self, Qs: Any, start: int, stop: int) -> np.ndarray:
        """The tile of scores of CSR queries ``Qs`` (from :meth:`queries`) against CSR rows ``start:stop``, dense.

        (Dense tiles are scored by the compiled :func:`sklspark.neighbors._select.score_rows`.)
        """
        S = Qs @ self.rows[start:stop].T
        S = S.toarray() if sp.issparse(S) else np.asarray(S)
        S += self.bias[start:stop]
        return S


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

    def add(self, S: np.ndarray, offset: int, rows: np.ndarray | None = None) -> None:
        """Merge the scores ``S`` in; column ``j`` is position ``offset + j``.

        ``rows`` maps the rows of ``S`` to query rows (all of them, in order, when ``None``). Positions must
        grow from one call to the next (ties go to the smaller position).
        """
        S = np.ascontiguousarray(S, dtype=np.float32)
        rows = self._all if rows is None else rows.astype(np.int64, copy=False)
        keep_smallest(S, S.shape[1], offset, rows, self.values, self.positions)

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
    with _workers(threads) as run:
        return run(fn, starts)


@contextmanager
def _workers(threads: bool = True) -> Iterator[Callable[[Callable[[Any], Any], list[Any]], list[Any]]]:
    """A ``run(fn, items)`` that maps ``fn`` over ``items``, with single-threaded BLAS products, on up to
    :func:`blas_threads` Python threads (one with ``threads=False``)."""
    threads_now = blas_threads()

    def serial(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]

    if threads_now <= 1:
        yield serial
        return
    with _threadpools().limit(limits=1, user_api="blas"):  # tiles are too small for a multi-threaded product
        if not threads:
            yield serial
            return
        with ThreadPoolExecutor(threads_now) as pool:
            yield lambda fn, items: serial(fn, items) if len(items) <= 1 else list(pool.map(fn, items))


def own_scores(ref: Scored, rows: slice, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_scores` of the reference's own dense rows ``rows`` as the queries (a self-search), each pair once.

    A product of two own rows scores both of them (:mod:`sklspark.neighbors._select`), so the own rows' pairs cost half
    the products; the other reference rows are scored as by :func:`top_scores`. The own rows are cut into
    groups of :data:`OWN_GROUP`: first every group's work that touches its own lists alone (the other
    rows, its own pairs), then the pairs of groups, in the rounds of a round-robin tournament, so that the
    threads of a round never update the same lists.

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
    own = ref.features()[start:stop]
    Q = np.float32(scale) * own
    Qs, X, bias = ref.queries(Q), ref.rows, ref.bias[start:stop]
    kept = Kept(len(own), n)
    V, P = kept.values, kept.positions

    def alone(group: tuple[int, int]) -> None:  # the group's own blocks first: tight thresholds for its pairs
        first, last = group
        for block in range(first, last, QUERY_BLOCK):
            end = min(last, block + QUERY_BLOCK)
            score_rows(Qs, X, V, P, (block, end, start + block, start + end, QUERY_BLOCK, QUERY_BLOCK))
        for begin, end in ((0, start), (stop, len(ref))):  # the other reference rows
            score_rows(Qs, X, V, P, (first, last, begin, end, QUERY_BLOCK, REFERENCE_TILE))
        score_pairs(Q, own, bias, V, P, (first, last, first, last, start, QUERY_BLOCK, PAIR_TILE))

    def between(groups: tuple[tuple[int, int], tuple[int, int]]) -> None:
        (first, last), (begin, end) = groups
        score_pairs(Q, own, bias, V, P, (first, last, begin, end, start, QUERY_BLOCK, PAIR_TILE))

    groups = [(i, min(len(own), i + OWN_GROUP)) for i in range(0, len(own), OWN_GROUP)]
    with _workers() as run:
        run(alone, groups)
        for matches in _rounds(len(groups)):
            run(between, [(groups[i], groups[j]) for i, j in matches])
    return kept.result()


def _rounds(n_teams: int) -> list[list[tuple[int, int]]]:
    """A round-robin tournament of ``n_teams`` (the circle method): every pair ``(i, j)``, ``i < j``, once, in rounds
    where no team plays twice."""
    teams: list[int | None] = [*range(n_teams), *([None] if n_teams % 2 else [])]
    rounds = []
    for _ in range(len(teams) - 1):
        half = len(teams) // 2
        matches = [(teams[i], teams[-1 - i]) for i in range(half)]
        rounds.append([(min(a, b), max(a, b)) for a, b in matches if a is not None and b is not None])
        teams = [teams[0], teams[-1], *teams[1:-1]]
    return rounds


def _block(Qs: Any, ref: Scored, n: int) -> tuple[np.ndarray, np.ndarray]:
    kept = Kept(Qs.shape[0], n)
    n_ref = len(ref)
    if not ref.sparse:  # the tiles' loop compiled (:func:`score_rows`)
        work = (0, Qs.shape[0], 0, n_ref, QUERY_BLOCK, REFERENCE_TILE)
        score_rows(np.ascontiguousarray(Qs), ref.rows, kept.values, kept.positions, work)
        return kept.result()
    for start in range(0, n_ref, REFERENCE_TILE):
        stop = min(n_ref, start + REFERENCE_TILE)
        kept.add(ref.scores(Qs, start, stop), start)
    return kept.result()


def _threadpools() -> Any:
    """A threadpoolctl controller, scanned again only after new modules were imported (a scan costs ~3 ms)."""
    if _controller[0] is None or len(sys.modules) != _controller[1]:
        _controller[:] = [ThreadpoolController(), len(sys.modules)]
    return _controller[0]


def blas_threads() -> int:
    """The threads the BLAS libraries may use now (1 inside a Spark task capped to one CPU)."""
    return max((int(info["num_threads"]) for info in _threadpools().select(user_api="blas").info()), default=1)
