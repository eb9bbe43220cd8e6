"""Sharded mode's gemm search of a shard: a k-means partition when its queries are many, tried on the first ones.

The ``gemm`` backend searches a dense euclidean reference as a k-means partition
(:mod:`sklspark.neighbors._clustered`) only from :data:`~sklspark.neighbors._clustered.MIN_ROWS` rows: below,
brute force over that reference takes well under a second. A shard is often smaller (``shards=4`` at 100,000
rows: 25,000 rows) but is searched by a whole query block (100,000 queries there), and brute force then
costs as much as over the whole reference in broadcast mode, which partitions it: measured in one process
at 100,000 x 64 on clustered data, the four shards took 23 s of brute force against 6 s for broadcast's
partitioned search, and 12 s when partitioned too.

So a (query block, shard) group of at least :data:`MIN_PAIRS` (query, shard row) pairs, on a shard of
:data:`MIN_ROWS` to ``_clustered.MIN_ROWS`` rows, gets a :class:`TrialPartition`: the shard is partitioned
(the build's own trial is skipped: it assumes the reference's rows as queries) and the first
:data:`TRIAL_QUERIES` queries searched are the trial. If they scored more than
:data:`~sklspark.neighbors._clustered.MAX_FRACTION` of their pairs (data without clusters), the rest go to
brute force, as the backend's own trial decides for a larger reference. Both searches are exact and
:func:`~sklspark.neighbors._rerank.exact_top_k` re-ranks their candidates the same way: the results do
not depend on the choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backends import Backend, GemmBackend
from ._clustered import MAX_FRACTION, Partition, partition
from ._clustered import MIN_ROWS as PARTITION_MIN_ROWS

#: Fewest (query, shard row) pairs of a group for a shard below ``_clustered.MIN_ROWS`` rows to be tried as a
#: partition: brute force over them takes a few tenths of a second of a core at 64 features, the partition's build
#: about 0.1 s. (With shards of nearby rows, a 25,000-row shard is searched by about 25,000 queries: 2^29 pairs.)
MIN_PAIRS = 1 << 28

#: Fewest shard rows tried as a partition (k-means with at least 16 clusters of a few hundred rows).
MIN_ROWS = 4096

#: Queries of the trial: two of the kernel's query blocks, as in the backend's own trial.
TRIAL_QUERIES = 512


def shard_engine(engine: Backend, metric: str, n_rows: int, n_queries: int, reference_rows: int) -> Backend:
    """An unbuilt backend for a shard of ``n_rows`` rows of a reference of ``reference_rows`` searched by
    ``n_queries`` queries: a :class:`TrialPartition` for the ``gemm`` backend's automatic choice when it may pay,
    else a fresh copy."""
    tried = (
        type(engine) is GemmBackend
        and engine.clustered_search == "auto"
        and metric == "euclidean"
        and MIN_ROWS <= n_rows < PARTITION_MIN_ROWS
        and n_rows * n_queries >= MIN_PAIRS
    )
    return TrialPartition(np.sqrt(max(n_rows, reference_rows))) if tried else engine.fresh()


class TrialPartition(GemmBackend):
    """The ``gemm`` backend on a shard, partitioned, until the trial shows brute force is cheaper (module docstring).

    The partition's clusters have about ``cluster_rows`` rows each. :func:`shard_engine` gives them
    ``sqrt(reference_rows)``: the size of the clusters broadcast mode's partition would give the whole reference,
    rather than ``sqrt(n_rows)`` for the shard alone. A shard is a region (or a sample) of the whole, of the same
    density, and smaller clusters would cost more visits, each with its fixed cost, for the same rows: measured in
    one process on 4 routed shards of 100,000 x 64, 3.37 s against 2.24 s on 50 clusters, and 6.32 s against
    5.40 s on a mixture of 316.

    Parameters
    ----------
    cluster_rows : float, optional
        Rows per cluster of the partition (default: ``sqrt`` of the rows built on).

    Attributes
    ----------
    choice : {"trial", "partition", "brute force"}
        The search used now: ``"trial"`` until :data:`TRIAL_QUERIES` queries were searched.
    """

    def __init__(self, cluster_rows: float | None = None) -> None:
        super().__init__(clustered=True)
        self.cluster_rows = cluster_rows
        self.choice = "trial"
        self._rows: Any = None
        self._rows_metric = "euclidean"
        self._tried = 0
        self._trial_pairs = 0

    def build(self, X: Any, metric: str) -> None:
        super().build(X, metric)
        self._rows, self._rows_metric = X, metric
        if not self.clustered:  # sparse rows: no partition, nothing to try
            self.choice = "brute force"

    def _partitioned(self, R: np.ndarray) -> Partition | None:
        return partition(R, force=True, cluster_rows=self.cluster_rows)

    def search(self, Q: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.choice != "trial":
            return super().search(Q, n)
        trial = min(Q.shape[0], TRIAL_QUERIES - self._tried)
        before = self.pairs_scored
        found = super().search(Q[:trial], n)
        self._tried += trial
        self._trial_pairs += self.pairs_scored - before
        if self._tried < TRIAL_QUERIES:
            return found
        if self._trial_pairs <= MAX_FRACTION * self._tried * self._rows.shape[0]:
            self.choice = "partition"
        else:
            self.choice = "brute force"
            self.clustered_search = False
            super().build(self._rows, self._rows_metric)
        if trial == Q.shape[0]:
            return found
        rest = self.search(Q[trial:], n)
        return np.concatenate([found[0], rest[0]]), np.concatenate([found[1], rest[1]])
