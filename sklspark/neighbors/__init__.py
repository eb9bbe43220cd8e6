"""Exact k-nearest neighbours of every row of a large set, with IDs, on Spark.

:func:`kneighbors_join` finds each query's ``k`` nearest reference rows, :func:`all_neighbors` each
row's nearest other rows (the self-join) and :func:`to_edges` turns either result into an edge list.

Modes
-----
Broadcast (a fitted ``NearestNeighbors``, or a DataFrame reference estimated at most
``sklspark.neighbors._join.REFERENCE_BROADCAST_MAX_BYTES``)
    The reference is collected to the driver once (as Arrow), indexed once and replicated once per
    executor (a broadcast, or an index file for ``faiss``/``hnsw``/``annoy``); the queries are never shuffled
    and are scored in chunks of ``chunk_size`` rows by :func:`sklspark.distribute`. A task holds the
    reference, its index and one chunk's scratch. See :mod:`sklspark.neighbors._broadcast`.
Sharded (a larger DataFrame reference, or ``shards=S``)
    The reference stays distributed in ``S`` shards, of nearby rows where that pays (dense euclidean rows with
    clusters: a query is sent only to the shards that can hold one of its neighbours, see
    :mod:`sklspark.neighbors._shard_route`), else by position (every query to every shard). Shards are
    copied to every query block, and the per-shard top ``k`` lists are merged per query. See
    :mod:`sklspark.neighbors._sharded` for the data movement and the per-task memory bound.

Exactness
---------
Backends only propose candidates; every candidate's distance is recomputed exactly, pair by pair,
and ties go to the smaller reference position, widening the search where ties might have been cut
off (:mod:`sklspark.neighbors._rerank`). Both modes and every exact backend therefore agree exactly.

Backends
--------
``gemm`` (exact, euclidean, cosine and inner product, the default for those: float32 matrix products in cache-sized
tiles, see :mod:`sklspark.neighbors._gemm`; on clustered euclidean data it visits only the clusters of a k-means
partition that can hold a neighbour, see :mod:`sklspark.neighbors._clustered`),
``sklearn`` (exact, any metric, the default for the others),
``faiss`` (exact, euclidean; ``pip install 'sklspark[faiss]'``),
``hnsw`` (approximate, faiss's HNSW graph, for millions of rows; ``pip install 'sklspark[faiss]'``),
``annoy`` (approximate; ``pip install 'sklspark[annoy]'``), or your own :class:`Backend`.
"""

from ._backends import AnnoyBackend, Backend, FaissBackend, GemmBackend, HnswBackend, SklearnBackend
from ._edges import to_edges
from ._join import all_neighbors, kneighbors_join

__all__ = [
    "AnnoyBackend",
    "Backend",
    "FaissBackend",
    "GemmBackend",
    "HnswBackend",
    "SklearnBackend",
    "all_neighbors",
    "kneighbors_join",
    "to_edges",
]
