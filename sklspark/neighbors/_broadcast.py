"""Broadcast mode: the whole reference on every executor, queries scored by :func:`sklspark.distribute`.

The reference (matrix, IDs) is built once on the driver into a :class:`ReferenceIndex`, which
``distribute()`` pickles once, broadcasts once and loads once per Python worker process. Backends
with ``ships_as_file`` (``faiss``, ``annoy``) leave their index out of that pickle: it is written
to a file on the driver, distributed with ``SparkContext.addFile`` and loaded (memory-mapped)
from ``SparkFiles.get`` the first time a worker process needs it; the loaded index then lives as
long as the ``ReferenceIndex`` in ``distribute()``'s per-process model cache (keyed by a token).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from typing import Any, Sequence

import numpy as np
from pyspark import SparkFiles
from pyspark.sql import DataFrame

from .._distribute import _spark_context, distribute
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
        The backend built on the driver; written to a temporary file and added to the SparkContext.
    metric : str
    n_features : int
    spark_context : SparkContext
    """

    def __init__(self, template: Backend, built: Backend, metric: str, n_features: int, spark_context: Any) -> None:
        directory = tempfile.mkdtemp(prefix="sklspark-neighbors-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        self.file_name = f"{uuid.uuid4().hex}.{template.name}"
        path = os.path.join(directory, self.file_name)
        built.save(path)
        spark_context.addFile(path)
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


class ReferenceIndex:
    """A fitted search over the reference, in the shape ``distribute()`` runs: ``search(X)`` per chunk.

    Parameters
    ----------
    backend : Backend
        Built on ``X``, or an :class:`IndexFile` holding it.
    X : ndarray of shape (n_ref, n_features)
        The reference rows, in reference position order (used for the exact re-rank).
    ids : ndarray of shape (n_ref,)
        The reference IDs, integers or strings.
    n_neighbors : int
    metric : str
    """

    def __init__(self, backend: Backend | IndexFile, X: np.ndarray, ids: np.ndarray, n_neighbors: int, metric: str):
        self.index_ = backend
        self.X_ = X
        self.ids_ = ids
        self.n_neighbors_ = n_neighbors
        self.metric_ = metric
        self.n_features_in_ = X.shape[1]

    def search(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The IDs and exact distances of each row's ``n_neighbors_`` nearest reference rows, nearest first."""
        backend = self.index_.get() if isinstance(self.index_, IndexFile) else self.index_
        keys = np.arange(self.X_.shape[0], dtype=np.int64)
        positions, distances = exact_top_k(backend, self.X_, keys, X, self.n_neighbors_, self.metric_)
        return self.ids_[positions], distances


def broadcast_join(
    queries: DataFrame,
    features: str | Sequence[str],
    id_col: str,
    template: Backend,
    built: Backend,
    X: np.ndarray,
    ids: np.ndarray,
    n_neighbors: int,
    metric: str,
    chunk_size: int,
) -> DataFrame:
    """Score the queries against a reference held on the driver.

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids`` and ``distances`` (``n_neighbors`` each), one row per query row.
    """
    backend: Backend | IndexFile = built
    if built.ships_as_file:
        spark_context = _spark_context(queries)
        if spark_context is None:
            raise ValueError(
                f"backend {built.name!r} ships its index as a file (SparkContext.addFile), which a Spark Connect "
                f"session cannot do; use backend='sklearn'"
            )
        backend = IndexFile(template, built, metric, X.shape[1], spark_context)
    index = ReferenceIndex(backend, X, ids, n_neighbors, metric)
    feature_cols = [features] if isinstance(features, str) else list(features)
    scored = distribute(
        index,
        "search",
        queries.select(id_col, *feature_cols),
        chunk_size=chunk_size,
        features=features,
        output_cols=[NEIGHBOR_IDS, DISTANCES],
    )
    return scored.select(id_col, NEIGHBOR_IDS, DISTANCES)
