"""Exact euclidean search that skips clusters: a k-means partition of the reference, visited in lower-bound order.

The reference rows are grouped by their nearest of ``C`` centroids (k-means on a sample, then every row
assigned) and stored cluster by cluster. Each cluster ``c`` has a centre ``c`` and a radius ``rho_c``, the
largest distance (float64) of a member to it. By the triangle inequality every member ``r`` of ``c`` is at
least ``lb(q, c) = max(0, |q - c| - rho_c)`` from a query ``q``.

A block of queries (sorted by nearest centroid, so that a block shares its clusters) visits the clusters
in ascending order of their smallest bound over the block; each query scores the members of a cluster
(:class:`sklspark.neighbors._gemm.Scored` products, the same float32 scores as brute force) only while the
cluster's bound is not above the query's current ``n``-th smallest score *plus a proven rounding margin*:

* a float32 score ``|r|^2 - 2 q . r`` (a dot product of ``K = n_features + 1`` terms, the bias one of them)
  is within ``2 (K + 1) eps (|q|^2 + max |r|^2)`` of its exact value; the margin used is four times that,
  the same margin :func:`sklspark.neighbors._rerank._complete` allows the backend's distances;
* the bound itself is computed in float64, lowered by twice the rounding error of ``|q|^2 + |c|^2 - 2 q . c``,
  and the radii are raised by a relative ``1e-9``.

So a skipped row's exact distance is above the ``n``-th candidate's by more than any rounding: it could not
have been among the ``n`` smallest float32 scores of brute force, nor tie with a neighbour; the exact
float64 re-rank then fixes order and ties (smaller distance, then smaller reference position) as for
brute force. On data without clusters nearly nothing can be skipped: :func:`partition` tries the search
on a sample of rows and returns ``None`` when the pairs scored would not be few enough to pay.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _gemm
from ._gemm import Kept, Scored, map_blocks

#: Fewest reference rows worth a partition: below, brute force takes well under a second.
MIN_ROWS = 50_000

#: Largest fraction of all (query, reference) pairs that the sample may score for the partition to be
#: used: a clustered search pays smaller products, gathers and a Python loop per cluster visited.
MAX_FRACTION = 0.35

#: Query blocks of the trial search (consecutive stored rows from random places) and the neighbours it asks for
#: among all rows (fewer among the sample it searches).
TRIAL_BLOCKS = 2
TRIAL_NEIGHBOURS = 16

#: Lloyd iterations of the k-means on the sample, sample rows per centroid, and rows per centroid of the
#: k-means++ seeding (a subset of the sample).
LLOYD_ITERATIONS = 6
SAMPLE_PER_CLUSTER = 32
SEED_ROWS_PER_CLUSTER = 8

#: Relative margin on the float64 centroid distances and radii.
_FLOAT64_MARGIN = 1e-9


class Partition:
    """A k-means partition of reference rows, stored cluster by cluster, with the bounds the search needs.

    Attributes
    ----------
    order : ndarray of int64 of shape (n_ref,)
        Original position of each stored row: the stored rows are ``R[order]``, cluster after cluster.
    offsets : ndarray of int64 of shape (n_clusters + 1,)
        Cluster ``c`` is stored rows ``offsets[c]:offsets[c + 1]``.
    centroids : ndarray of float64 of shape (n_clusters, n_features)
    radii : ndarray of float64 of shape (n_clusters,)
    reference : Scored
        The stored rows and their squared norms, ready for scoring.
    """

    def __init__(self, R: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> None:
        counts = np.bincount(labels, minlength=len(centroids))
        used = counts > 0
        renumber = np.cumsum(used) - 1
        labels, counts, centroids = renumber[labels], counts[used], centroids[used]
        self.order = np.argsort(labels, kind="stable").astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        stored = R[self.order]
        self.centroids = _means(stored, labels[self.order], len(counts))
        self.radii = np.zeros(len(counts))
        stored_labels = labels[self.order]
        for start in range(0, len(stored), 65536):  # float64 distances of members to their centroid, in slices
            part = (
                stored[start : start + 65536].astype(np.float64) - self.centroids[stored_labels[start : start + 65536]]
            )
            np.maximum.at(self.radii, stored_labels[start : start + 65536], np.sqrt(np.einsum("ij,ij->i", part, part)))
        self.radii *= 1 + _FLOAT64_MARGIN
        self.reference = Scored(stored, np.einsum("ij,ij->i", stored, stored))
        self._max_bias = float(self.reference.bias.max(initial=0))

    def search(self, Q: np.ndarray, n: int, limit: float = np.inf) -> tuple[np.ndarray, np.ndarray, float]:
        """The ``n`` smallest scores ``|r|^2 - 2 q . r`` of each query over the reference (as brute force would
        find them), their *original* positions, and the number of (query, row) pairs scored.

        Parameters
        ----------
        Q : ndarray of float32 of shape (n_queries, n_features)
        n : int
        limit : float
            A trial's budget: a block that would score more pairs stops, and the pairs returned are ``inf``
            (the scores and positions are then meaningless).
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        nearest = _nearest(Q, self.centroids)
        by_cluster = np.argsort(nearest, kind="stable")
        Qs = self.reference.queries(Q[by_cluster] * np.float32(-2))
        Q64 = Q[by_cluster].astype(np.float64)

        def run(block: slice) -> tuple[np.ndarray, np.ndarray, float]:
            return self._block(Q64[block], Qs[block], n, limit)

        self.reference.rows  # made once, before the threads share it  # noqa: B018
        parts = map_blocks(run, len(Q))
        scores = np.empty((len(Q), n), dtype=np.float32)
        positions = np.empty((len(Q), n), dtype=np.int64)
        if parts:
            scores[by_cluster] = np.concatenate([p[0] for p in parts])
            positions[by_cluster] = self.order[np.concatenate([p[1] for p in parts])]
        return scores, positions, sum(p[2] for p in parts)

    def _bounds(self, Q64: np.ndarray) -> np.ndarray:
        """Per query and cluster, the smallest score any member could have, lowered by the rounding margin.

        A cluster whose bound is above a query's ``n``-th smallest float32 score holds no row whose float32
        score could be at or below it.
        """
        norms = np.einsum("ij,ij->i", Q64, Q64)
        centre_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        squared = norms[:, None] + centre_norms - 2 * Q64 @ self.centroids.T
        # float64 rounding of |q|^2 + |c|^2 - 2 q.c: at most (d + 3) eps (|q| + |c|)^2; taken twice over
        error = (
            2
            * (Q64.shape[1] + 3)
            * np.finfo(np.float64).eps
            * np.square(np.sqrt(norms)[:, None] + np.sqrt(centre_norms))
        )
        distance = np.sqrt(np.maximum(squared - error, 0))
        lower = np.maximum(distance - self.radii, 0)
        eps = float(np.finfo(np.float32).eps)
        margin = 8.0 * (self.centroids.shape[1] + 2) * eps * (norms + self._max_bias)
        return lower * lower - norms[:, None] - margin[:, None]

    def _block(self, Q64: np.ndarray, Qs: np.ndarray, n: int, limit: float) -> tuple[np.ndarray, np.ndarray, float]:
        """One block: each query's nearest cluster first (its threshold), then what each query still needs.

        The clusters nearest some query of the block are scored for the queries nearest them, then for the
        other queries that need them; the remaining clusters, in ascending order of their smallest bound, are
        gathered into tiles of about :data:`sklspark.neighbors._gemm.REFERENCE_TILE` rows, each scored (one
        product) for the queries that need one of its clusters. Every (query, row) pair is scored at most once.
        """
        bounds = self._bounds(Q64)
        nearest = np.argmin(bounds, axis=1)
        own = np.unique(nearest)
        kept = Kept(len(Q64), n)
        tiles: list[np.ndarray] = []
        pairs = sum(self._score(kept, Qs, [c], tiles, np.flatnonzero(nearest == c)) for c in own)
        for c in own:
            needy = np.flatnonzero((bounds[:, c] <= kept.threshold) & (nearest != c))
            pairs += self._score(kept, Qs, [c], tiles, needy)
        smallest = bounds.min(axis=0)
        rest = np.argsort(smallest, kind="stable")
        batch: list[int] = []
        batch_rows = 0
        for c in [*rest[~np.isin(rest, own)], -1]:
            if c >= 0 and smallest[c] <= kept.threshold.max() and (bounds[:, c] <= kept.threshold).any():
                batch.append(c)
                batch_rows += int(self.offsets[c + 1] - self.offsets[c])
            if batch and (c < 0 or batch_rows >= _gemm.REFERENCE_TILE or smallest[c] > kept.threshold.max()):
                needy = np.flatnonzero((bounds[:, batch] <= kept.threshold[:, None]).any(axis=1))
                pairs += self._score(kept, Qs, batch, tiles, needy)
                batch, batch_rows = [], 0
            if pairs > limit:
                return np.empty((len(Q64), n), np.float32), np.zeros((len(Q64), n), np.int64), np.inf
            if c >= 0 and smallest[c] > kept.threshold.max():
                break  # later clusters' bounds are larger still, for every query
        scores, positions = kept.result()
        index = np.concatenate(tiles)
        return scores, np.where(positions >= 0, index[positions], -1), float(pairs)

    def _score(self, kept: Kept, Qs: np.ndarray, clusters: list[int], tiles: list[np.ndarray], rows: np.ndarray) -> int:
        """Score the members of ``clusters`` for the query ``rows`` of the block into ``kept``; the pairs scored."""
        if not clusters or rows.size == 0:
            return 0
        done = sum(len(t) for t in tiles)
        index = np.concatenate([np.arange(self.offsets[c], self.offsets[c + 1]) for c in clusters])
        queries = Qs if rows.size == len(Qs) else Qs[rows]
        step = max(_gemm.REFERENCE_TILE, kept.n)
        for start in range(0, len(index), step):
            kept.add(queries @ self.reference.rows[index[start : start + step]].T, done + start, rows=rows)
        tiles.append(index)
        return int(rows.size * len(index))


def partition(R: np.ndarray, seed: int = 0, force: bool = False, cluster_rows: float | None = None) -> Partition | None:
    """A k-means partition of the float32 rows ``R`` if a trial search shows it skips enough work, else ``None``.

    With ``force``, the partition without the trial, whatever the number of rows (from 2).

    ``n_ref / cluster_rows`` clusters (16 to 2,048; by default ``sqrt(n_ref)``): k-means++ seeds and
    :data:`LLOYD_ITERATIONS` Lloyd iterations on a sample of :data:`SAMPLE_PER_CLUSTER` rows per cluster. The
    trial runs on the sample before any other row is assigned (on uniform data, where it fails, the rest is never
    paid for): the sample, partitioned by the same centroids, is searched by :data:`TRIAL_BLOCKS` blocks of its own
    rows for as many neighbours as :data:`TRIAL_NEIGHBOURS` are among all rows (scaled by the sample's share, the row
    itself included), and the pairs scored are counted against the sample's.
    """
    n_ref = len(R)
    if n_ref < (2 if force else MIN_ROWS):
        return None
    rng = np.random.default_rng(seed)
    n_clusters = min(n_ref, int(np.clip(n_ref / (cluster_rows or np.sqrt(n_ref)), 16, 2048)))
    sample = R[np.sort(rng.choice(n_ref, min(n_ref, SAMPLE_PER_CLUSTER * n_clusters), replace=False))]
    centroids = _seeds(sample, n_clusters, rng)
    for _ in range(LLOYD_ITERATIONS):
        labels = _nearest(sample, centroids)
        centroids = _means(sample, labels, n_clusters, centroids)
    if not force and not _pays(Partition(sample, _nearest(sample, centroids), centroids), n_ref, rng):
        return None
    return Partition(R, _nearest(R, centroids), centroids)


def _pays(trial: Partition, n_ref: int, rng: np.random.Generator) -> bool:
    """Whether a search of the partitioned sample ``trial`` of ``n_ref`` rows scores few enough pairs.

    The queries are blocks of consecutive stored rows, as a search of the reference itself blocks them.
    """
    n_sample = len(trial.order)
    starts = rng.choice(max(1, n_sample - _gemm.QUERY_BLOCK), TRIAL_BLOCKS)
    rows = np.unique(np.minimum(np.concatenate([np.arange(s, s + _gemm.QUERY_BLOCK) for s in starts]), n_sample - 1))
    neighbours = 1 + max(1, round((TRIAL_NEIGHBOURS - 1) * n_sample / n_ref))
    budget = MAX_FRACTION * len(rows) * n_sample
    _, _, pairs = trial.search(trial.reference.features()[rows], min(n_sample, neighbours), limit=budget)
    return pairs <= budget


def _seeds(sample: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds from :data:`SEED_ROWS_PER_CLUSTER` rows per cluster of ``sample``: each next centre drawn
    with probability proportional to its squared distance to the nearest centre so far.

    Row differences, not matrix-vector products: a multi-threaded BLAS call per centre is slow on a busy machine.
    """
    rows = rng.choice(len(sample), min(len(sample), SEED_ROWS_PER_CLUSTER * n_clusters), replace=False)
    X = sample[rows].astype(np.float64)
    chosen = [int(rng.integers(len(X)))]
    difference = X - X[chosen[0]]
    nearest = np.einsum("ij,ij->i", difference, difference)
    for _ in range(1, n_clusters):
        total = nearest.sum()
        pick = int(rng.choice(len(X), p=nearest / total)) if total > 0 else int(rng.integers(len(X)))
        chosen.append(pick)
        np.subtract(X, X[pick], out=difference)
        np.minimum(nearest, np.einsum("ij,ij->i", difference, difference), out=nearest)
    return X[chosen]


def _nearest(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (float32 scores: a near-tie may go either way)."""
    scaled = centroids.astype(np.float32) * np.float32(-2)
    norms = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)
    step = max(1, (1 << 22) // max(1, len(centroids)))
    return np.concatenate(
        [np.argmin(X[i : i + step] @ scaled.T + norms, axis=1) for i in range(0, len(X), step)] or [np.zeros(0, int)]
    )


def _means(X: np.ndarray, labels: np.ndarray, n_clusters: int, fallback: np.ndarray | None = None) -> np.ndarray:
    """Float64 mean of the rows of each label; ``fallback``'s row for a label without rows."""
    ones = np.ones(len(labels), dtype=np.float32)
    members = sp.csr_matrix((ones, (labels, np.arange(len(labels)))), shape=(n_clusters, len(X)))
    counts = np.bincount(labels, minlength=n_clusters)
    sums = np.asarray(members @ np.asarray(X, dtype=np.float32), dtype=np.float64)
    means = sums / np.maximum(counts, 1)[:, None]
    if fallback is not None:
        means[counts == 0] = fallback[counts == 0]
    return means
