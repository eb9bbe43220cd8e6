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

import logging
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark import SparkFiles
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from sklearn.base import BaseEstimator

from .._distribute import distribute
from .._inputs import batch_to_matrix
from .._partitions import spread_tasks
from .._session import default_parallelism
from .._shipping import ship_file, staging_path
from ._backends import Backend, SklearnBackend
from ._checks import check_unique_arrow_ids, non_finite_message, non_finite_rows
from ._names import BAD_ROW, DISTANCES, NEIGHBOR_IDS, POSITION
from ._plan import FittedReference, JoinPlan, stable_order
from ._rerank import exact_top_k

_log = logging.getLogger("sklspark")


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

    def fit(self, X: Any, y: None = None, built: Backend | None = None, left_out: int = 0) -> ReferenceIndex:
        """Index the reference rows ``X`` (in position order), or adopt ``built``, a backend already built on them;
        ``left_out``: the rows of the reference the caller left out of ``X`` (non-finite features).

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
        self.left_out_ = left_out
        return self

    def ship(self, spark: Any) -> None:
        """Make a ``ships_as_file`` index travel as a file instead of inside the pickle."""
        if not isinstance(self.index_, IndexFile) and self.index_.ships_as_file:
            self.index_ = IndexFile(self.backend, self.index_, self.metric, self.n_features_in_, spark)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = sp.issparse(getattr(self, "X_", None))  # CSR query chunks for a CSR reference
        return tags

    def search(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The IDs and exact distances of each row's ``n_neighbors`` nearest reference rows, nearest first, and
        whether the row has NaN or infinite features (then it is not searched: its lists are placeholders).

        The task cannot name a bad row's ID (it sees the features only): the join does, from the flag.
        """
        bad = np.zeros(X.shape[0], dtype=bool)
        bad[non_finite_rows(X)] = True
        positions = np.zeros((X.shape[0], self.n_neighbors), dtype=np.int64)
        distances = np.full((X.shape[0], self.n_neighbors), np.nan)
        good = np.flatnonzero(~bad)
        if good.size:
            positions[good], distances[good] = self._nearest(X[good] if bad.any() else X)
        return self.ids[positions], distances, bad

    def search_own(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search` of the reference rows ``rows`` themselves (every reference row is finite: none left out)."""
        positions, distances = self._nearest(rows)
        return self.ids[positions], distances, np.zeros(positions.shape[0], dtype=bool)

    def _nearest(self, Q: Any) -> tuple[np.ndarray, np.ndarray]:
        """:func:`exact_top_k` of the queries ``Q`` (rows, or a slice of the reference's own rows)."""
        backend = self.index_.get() if isinstance(self.index_, IndexFile) else self.index_
        keys = np.arange(self.X_.shape[0], dtype=np.int64)
        return exact_top_k(backend, self.X_, keys, Q, self.n_neighbors, self.metric)


class OwnRows(BaseEstimator):
    """The queries of a self-join named by their reference positions: every worker already holds their rows.

    Scored over ``spark.range(n_ref)``, it sends nothing but positions through Spark: the queries are not read
    from their source again, shuffled to spread them, nor converted from Arrow (at 50,000 x 64, reading one
    Parquet file, spreading it and handing it to Python took 1.1 s more than handing over a range, under load).

    Parameters
    ----------
    index : ReferenceIndex
        Fitted on every row of the reference (none left out).
    """

    def __init__(self, index: ReferenceIndex) -> None:
        self.index = index

    def __sklearn_tags__(self) -> Any:
        return self.index.__sklearn_tags__()

    def fit(self, X: Any = None, y: None = None) -> OwnRows:
        """Nothing to learn: the index is fitted already; the input is one column of positions."""
        self.n_features_in_ = 1
        return self

    def search(self, P: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The query's ID, then :meth:`ReferenceIndex.search` of the reference rows at positions ``P[:, 0]``.

        Consecutive positions (a range's chunk) are searched as the reference's own rows
        (:meth:`ReferenceIndex.search_own`): the backend may score each pair of them once.
        """
        positions = np.asarray(P, dtype=np.int64)[:, 0]
        ids = self.index.ids[positions]
        if positions.size and np.array_equal(positions, np.arange(positions[0], positions[0] + positions.size)):
            return (ids, *self.index.search_own(slice(int(positions[0]), int(positions[0]) + positions.size)))
        return (ids, *self.index.search(self.index.X_[positions]))


def reference_index(plan: JoinPlan) -> ReferenceIndex | None:
    """The reference indexed on the driver: a fitted ``NearestNeighbors`` adopted as it is, or a DataFrame
    collected (Arrow, in position order) with its IDs, size and features checked; ``None`` when ``k`` does
    not fit the reference but there are no queries (the result is then empty).

    A reference row with NaN or infinite features is refused, naming its ID; left out with
    ``on_error="null"`` (it is then nobody's neighbour).
    """
    search = plan.search
    reference = plan.reference
    if isinstance(reference, FittedReference):
        built = SklearnBackend.from_fitted(reference.nn) if isinstance(search.engine, SklearnBackend) else None
        return ReferenceIndex(search.engine, reference.ids, search.n, search.metric).fit(reference.X, built=built)
    assert search.r_spec is not None  # a DataFrame reference has its spec
    columns = search.r_spec.columns
    table = stable_order(reference, search.id_col, columns).select(search.id_col, *columns).toArrow()
    ids = table.column(search.id_col).combine_chunks()
    check_unique_arrow_ids(ids)
    if not plan.has_work(table.num_rows, plan.queries.isEmpty):
        return None
    X = batch_to_matrix(pa.concat_batches(table.to_batches()), search.r_spec, 0, accept_sparse=True)  # CSR stays CSR
    id_values = ids.to_numpy(zero_copy_only=False)
    bad = non_finite_rows(X)
    if bad.size and search.on_error == "raise":
        row = int(bad[0])
        raise ValueError(f"the reference's {non_finite_message(row, plan.result_id, ids[row].as_py())}")
    if bad.size:
        _log.warning("%s: %d reference row(s) with NaN or infinite features left out", plan.caller, bad.size)
        keep = np.setdiff1d(np.arange(X.shape[0]), bad)
        X, id_values = X[keep], id_values[keep]
    _log.info(
        "%s: broadcast reference of %d rows x %d features (%s), searched by %d cores",
        plan.caller,
        X.shape[0],
        X.shape[1],
        "CSR" if sp.issparse(X) else "dense",
        default_parallelism(plan.queries),
    )
    return ReferenceIndex(search.engine, id_values, min(search.n, X.shape[0]), search.metric).fit(X, left_out=bad.size)


def broadcast_join(plan: JoinPlan, index: ReferenceIndex) -> DataFrame:
    """Score the queries against a fitted :class:`ReferenceIndex`, shipped once to every executor.

    The queries go through :func:`sklspark.distribute` with ``partitions='auto'``, which spreads them round-robin
    over as many partitions as they have, at least a few per core (``search`` is an expensive method),
    a shuffle of the queries alone, small next to the search, after which every core searches whatever
    the input's partitioning (one Parquet file is one partition, or several of which all but one may be
    empty). A self-join (``all_neighbors``) whose reference kept every row needs neither: its queries are the
    rows the index holds, scored by position (:class:`OwnRows`).

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids`` and ``distances`` (``index.n_neighbors`` each), and the flag
        :data:`~sklspark.neighbors._names.BAD_ROW` (the row has NaN or infinite features), one row per query row.
    """
    search = plan.search
    index.ship(plan.queries)
    if plan.self_join and not index.left_out_:
        return _own_rows_join(plan, index)
    queries = plan.queries.select(search.id_col, *search.q_spec.columns)
    features = search.q_spec.columns[0] if search.q_spec.layout != "columns" else list(search.q_spec.columns)
    scored: DataFrame = distribute(  # type: ignore[assignment]  # a DataFrame in, a DataFrame out
        index,
        "search",
        queries,
        chunk_size=search.chunk_size,
        features=features,
        output_cols=[NEIGHBOR_IDS, DISTANCES, BAD_ROW],
        partitions="auto",
    )
    return scored.select(search.id_col, NEIGHBOR_IDS, DISTANCES, BAD_ROW)


def _own_rows_join(plan: JoinPlan, index: ReferenceIndex) -> DataFrame:
    """:func:`broadcast_join` of a self-join: :class:`OwnRows` over the reference's positions, a few ranges per core.

    The query ID comes from the index (the reference's own IDs), cast back to the ID column's type.
    """
    search = plan.search
    session = plan.queries.sparkSession
    ranges = spread_tasks(session)
    positions = session.range(0, len(index.ids), numPartitions=ranges).withColumnRenamed("id", POSITION)
    scored: DataFrame = distribute(  # type: ignore[assignment]  # a DataFrame in, a DataFrame out
        OwnRows(index).fit(),
        "search",
        positions,
        chunk_size=min(search.own_chunk_size, -(-len(index.ids) // ranges)),  # a range at once
        features=[POSITION],
        output_cols=[search.id_col, NEIGHBOR_IDS, DISTANCES, BAD_ROW],
    )
    id_type = plan.queries.schema[search.id_col].dataType
    return scored.select(F.col(search.id_col).cast(id_type).alias(search.id_col), NEIGHBOR_IDS, DISTANCES, BAD_ROW)
