"""Broadcast mode: the whole reference on every executor, queries scored by :func:`sklspark.distribute`.

The reference (matrix, IDs) is built once on the driver into a :class:`ReferenceIndex`, which
``distribute()`` pickles once, ships once and loads once per Python worker process. Backends
with ``ships_as_file`` (``faiss``, ``hnsw``, ``annoy``) leave their index out of that pickle: it is written
to a file on the driver, shipped with :func:`sklspark._shipping.ship_file` (``SparkContext.addFile``,
or an uploaded artifact under Spark Connect) and loaded (memory-mapped) from ``SparkFiles.get`` the
first time a worker process needs it; the loaded index then lives as long as the ``ReferenceIndex``
in ``distribute()``'s per-process model cache (keyed by a token).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark import SparkFiles
from pyspark.sql import DataFrame
from sklearn.base import BaseEstimator

from .._distribute import distribute
from .._shipping import ship_file, staging_path
from ._backends import Backend
from ._rerank import exact_top_k

#: Names of the two result columns.
NEIGHBOR_IDS = "neighbor_ids"
DISTANCES = "distances"


class IndexFile:
    """A built backend that travels as an index file rather than inside a pickle.

    Parameters
    ----------
    template : Backend
        An unbuilt copy of the backend, pickled and used to :meth:`Backend.load` the file on workers.
    built : Backend
        The backend built on the driver; written to a temporary file and shipped to every executor.
    metric : str
    n_features : int
    spark : SparkSession or DataFrame
        The session to ship the file in.
    """

    def __init__(self, template: Backend, built: Backend, metric: str, n_features: int, spark: Any) -> None:
        self.file_name = f"sklspark-index-{uuid.uuid4().hex}.{template.name}"
        path = staging_path(self.file_name)
        built.save(path)
        ship_file(spark, path)
        self.template, self.metric, self.n_features = template, metric, n_features
        self._loaded: Backend | None = built

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def get(self) -> Backend:
        """The built backend: the driver's own, or loaded from the shipped file once per worker process."""
        if self._loaded is None:
            backend = self.template.fresh()
            backend.load(SparkFiles.get(self.file_name), self.metric, self.n_features)
            self._loaded = backend
        return self._loaded


class ReferenceIndex(BaseEstimator):
    """A search over the reference in the shape ``distribute()`` runs: fitted on the driver, ``search(X)`` per chunk.

    Parameters
    ----------
    backend : Backend
        Unbuilt backend, built by :meth:`fit`.
    ids : ndarray of shape (n_ref,)
        The reference IDs, integers or strings, in reference position order.
    n_neighbors : int
    metric : str
    """

    def __init__(self, backend: Backend, ids: np.ndarray, n_neighbors: int, metric: str) -> None:
        self.backend = backend
        self.ids = ids
        self.n_neighbors = n_neighbors
        self.metric = metric

    def fit(self, X: Any, y: None = None, built: Backend | None = None) -> ReferenceIndex:
        """Index the reference rows ``X`` (in position order), or adopt ``built``, a backend already built on them.

        A CSR ``X`` (``SparseVector`` features) stays CSR for backends that take it (``gemm``, ``sklearn``);
        other backends get it dense.
        """
        if sp.issparse(X) and not self.backend.sparse:
            X = X.toarray()
        if built is None:
            built = self.backend.fresh()
            built.build(X, self.metric)
        self.index_: Backend | IndexFile = built
        self.X_ = X
        self.n_features_in_ = X.shape[1]
        return self

    def ship(self, spark: Any) -> None:
        """Make a ``ships_as_file`` index travel as a file instead of inside the pickle."""
        if not isinstance(self.index_, IndexFile) and self.index_.ships_as_file:
            self.index_ = IndexFile(self.backend, self.index_, self.metric, self.n_features_in_, spark)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = sp.issparse(getattr(self, "X_", None))  # CSR query chunks for a CSR reference
        return tags

    def search(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """The IDs and exact distances of each row's ``n_neighbors`` nearest reference rows, nearest first."""
        backend = self.index_.get() if isinstance(self.index_, IndexFile) else self.index_
        keys = np.arange(self.X_.shape[0], dtype=np.int64)
        positions, distances = exact_top_k(backend, self.X_, keys, X, self.n_neighbors, self.metric)
        return self.ids[positions], distances


def broadcast_join(
    queries: DataFrame, features: str | Sequence[str], id_col: str, index: ReferenceIndex, chunk_size: int
) -> DataFrame:
    """Score the queries against a fitted :class:`ReferenceIndex`, shipped once to every executor.

    The queries are first spread round-robin over as many partitions as they have, at least a few per
    core (``partitions='auto'`` of :mod:`sklspark._partitions`: ``search`` is an expensive method), a
    shuffle of the queries alone, small next to the search, after which every core searches whatever
    the input's partitioning (one Parquet file is one partition, or several of which all but one may be
    empty).

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids`` and ``distances`` (``index.n_neighbors`` each), one row per query row.
    """
    index.ship(queries)
    feature_cols = [features] if isinstance(features, str) else list(features)
    queries = queries.select(id_col, *feature_cols)
    scored: DataFrame = distribute(  # type: ignore[assignment]  # a DataFrame in, a DataFrame out
        index,
        "search",
        queries,
        chunk_size=chunk_size,
        features=features,
        output_cols=[NEIGHBOR_IDS, DISTANCES],
        partitions="auto",
    )
    return scored.select(id_col, NEIGHBOR_IDS, DISTANCES)
