"""Public entry points :func:`kneighbors_join` and :func:`all_neighbors`: the plan, the choice of mode, the result.

Each call is checked once into a :class:`~sklspark.neighbors._plan.JoinPlan` (no Spark job), which the
chosen mode takes whole; the decisions (backend, mode, shards and blocks) are logged once per call on
the ``sklspark`` logger at INFO, with the figures behind them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import scipy.sparse as sp
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, StringType
from sklearn.neighbors import NearestNeighbors

from .._features import FeatureSpec
from .._inputs import batch_to_matrix
from ._backends import Backend
from ._broadcast import broadcast_join, reference_index
from ._checks import NON_FINITE
from ._names import BAD_ROW, DISTANCES, ERROR, NEIGHBOR_IDS
from ._plan import FittedReference, JoinOptions, JoinPlan, plan_join
from ._sharded import shard_layout, sharded_join

_log = logging.getLogger("sklspark")

#: The mode's limit: a DataFrame reference whose estimated size (Spark's plan statistics) is at most this many
#: bytes is collected to the driver and broadcast (broadcast mode); a larger one is sharded. Tests may lower it.
#: (Not :data:`sklspark._shipping.BROADCAST_MAX_BYTES`, the largest pickled model shipped as a broadcast.)
REFERENCE_BROADCAST_MAX_BYTES = 256 << 20

#: Spark's size estimate for a plan it knows nothing about (an RDD, ``createDataFrame`` of Python rows).
_UNKNOWN_SIZE = (1 << 63) - 1


def _estimated_bytes(df: DataFrame) -> int | None:
    """Spark's estimate of the DataFrame's size from its optimised plan (no job), or ``None`` if it has none.

    ``None`` under Spark Connect (no JVM handle) and for plans without statistics, which Spark
    estimates at ``Long.MaxValue`` bytes (DataFrames made from an RDD or from a list of rows).
    """
    try:
        size = int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:  # noqa: BLE001 - Spark Connect: no JVM handle
        return None
    return None if size >= _UNKNOWN_SIZE else size


def _counted_bytes(df: DataFrame, spec: FeatureSpec) -> int:
    """The size of a DataFrame without plan statistics: its rows (a count) x its first row's feature bytes.

    Two small jobs; a sparse first row counts its stored entries only.
    """
    n_rows = df.count()
    first = df.select(*spec.columns).limit(1).toArrow()
    if n_rows == 0 or first.num_rows == 0:
        return 0
    row: Any = batch_to_matrix(first.combine_chunks().to_batches()[0], spec, 0, accept_sparse=True)
    return n_rows * (row.data.nbytes + row.indices.nbytes if sp.issparse(row) else row.nbytes)


def _broadcasts(plan: JoinPlan) -> bool:
    """Whether the join runs in broadcast mode (else sharded); the decision is logged with its figures."""
    reference = plan.reference
    if isinstance(reference, FittedReference):
        _log.info("%s: broadcast mode: the reference is a fitted NearestNeighbors", plan.caller)
        return True
    if plan.shards is not None:
        _log.info("%s: sharded mode: shards=%d given", plan.caller, plan.shards)
        return False
    size, source = _estimated_bytes(reference), "Spark's plan estimate"
    if size is None:  # no plan statistics: an RDD, Python rows, Spark Connect
        assert plan.search.r_spec is not None
        size, source = _counted_bytes(reference, plan.search.r_spec), "counted: rows x the first row's bytes"
    broadcast = size <= REFERENCE_BROADCAST_MAX_BYTES
    _log.info(
        "%s: %s mode: reference of %d bytes (%s) %s REFERENCE_BROADCAST_MAX_BYTES=%d",
        plan.caller,
        "broadcast" if broadcast else "sharded",
        size,
        source,
        "<=" if broadcast else ">",
        REFERENCE_BROADCAST_MAX_BYTES,
    )
    return broadcast


def _empty_result(plan: JoinPlan) -> DataFrame:
    """The result of a join without queries: no rows, the result's columns."""
    assert isinstance(plan.reference, DataFrame)  # a fitted reference's size is checked before any job
    id_type = plan.reference.schema[plan.id_col].dataType
    return plan.queries.select(
        plan.id_col,
        F.lit(None).cast(ArrayType(id_type)).alias(NEIGHBOR_IDS),
        F.lit(None).cast(ArrayType(DoubleType())).alias(DISTANCES),
        F.lit(False).alias(BAD_ROW),
    )


def run_join(plan: JoinPlan) -> DataFrame:
    """Run the planned join in the mode it calls for and shape its result."""
    if _broadcasts(plan):
        index = reference_index(plan)
        result = _empty_result(plan) if index is None else broadcast_join(plan, index)
    else:
        layout = shard_layout(plan)
        result = _empty_result(plan) if layout is None else sharded_join(plan, layout)
    return _finish(plan, result)


def _bad_row_reason(plan: JoinPlan) -> Column:
    """Why a flagged query row has no neighbours: its ID, and that its features are not finite."""
    id_value = F.col(plan.id_col).cast(StringType())
    if isinstance(plan.queries.schema[plan.id_col].dataType, StringType):
        id_value = F.concat(F.lit("'"), id_value, F.lit("'"))
    return F.concat(F.lit(f"the queries' row ({plan.result_id} "), id_value, F.lit(f") {NON_FINITE}"))


def _finish(plan: JoinPlan, result: DataFrame) -> DataFrame:
    """The result as the user sees it: flagged rows refused (or null with ``on_error="null"``), the query's own ID
    and the neighbours beyond ``max_distance`` left out, ``k`` neighbours at most, the ID column's own name."""
    bad, reason = F.col(BAD_ROW), _bad_row_reason(plan)
    if plan.search.on_error == "raise":
        refused = F.raise_error(F.concat(F.lit(f"sklspark: {plan.caller}: "), reason))
        ids = F.when(bad, refused).otherwise(F.col(NEIGHBOR_IDS))
        distances = F.when(bad, refused).otherwise(F.col(DISTANCES))
        extra: list[Column] = []
    else:
        ids = F.when(~bad, F.col(NEIGHBOR_IDS))
        distances = F.when(~bad, F.col(DISTANCES))
        extra = [F.when(bad, F.concat(F.lit(f"{plan.caller}: ValueError: "), reason)).alias(ERROR)]
    kept_ids, kept_distances = _keep(plan, ids, distances)
    result = result.select(plan.id_col, kept_ids.alias(NEIGHBOR_IDS), kept_distances.alias(DISTANCES), *extra)
    return result if plan.id_col == plan.result_id else result.withColumnRenamed(plan.id_col, plan.result_id)


def _keep(plan: JoinPlan, ids: Column, distances: Column) -> tuple[Column, Column]:
    """The first ``k`` neighbours other than the query's own ID (``exclude_self``) within ``max_distance``."""
    max_distance = plan.max_distance
    if not plan.exclude_self and max_distance is None:
        return ids, distances
    pairs = F.zip_with(ids, distances, lambda i, d: F.struct(i.alias("id"), d.alias("distance")))

    def keep(p: Column) -> Column:
        # integer IDs of different types (int, bigint) compare as long: Spark widens the narrower one
        kept = ~p["id"].eqNullSafe(F.col(plan.id_col)) if plan.exclude_self else F.lit(True)
        return kept if max_distance is None else kept & (p["distance"] <= F.lit(max_distance))

    kept = F.slice(F.filter(pairs, keep), 1, plan.k)
    return F.transform(kept, lambda p: p["id"]), F.transform(kept, lambda p: p["distance"])


def kneighbors_join(
    queries: DataFrame,
    reference: DataFrame | NearestNeighbors,
    k: int,
    *,
    id_col: str = "id",
    features_col: str | Sequence[str] = "features",
    exclude_self: bool = False,
    metric: str = "euclidean",
    backend: str | Backend = "auto",
    shards: int | None = None,
    chunk_size: int | None = None,
    reference_ids: Sequence | None = None,
    max_distance: float | None = None,
    on_error: str = "raise",
    index_dir: str | os.PathLike | None = None,
) -> DataFrame:
    """The ``k`` nearest reference rows of every query row, with their IDs and exact distances.

    Exact backends return exactly what ``NearestNeighbors(algorithm="brute", metric=metric)`` would,
    with ties broken by the smaller reference position (a DataFrame's partition, then ID within the
    partition; a fitted ``NearestNeighbors``'s row number), and the same neighbours and bit-identical
    distances whatever the mode or backend.

    Parameters
    ----------
    queries : DataFrame
        Rows to find neighbours for: an ``id_col`` column and the features.
    reference : DataFrame or fitted NearestNeighbors
        Rows to search: a DataFrame with an ``id_col`` column and the features, or a fitted
        ``NearestNeighbors`` whose rows are named by ``reference_ids``.
    k : int
        Neighbours per query, at most the number of reference rows (minus one with ``exclude_self``).
    id_col : str, default="id"
        ID column (integer or string) of both DataFrames. Reference IDs must be unique.
    features_col : str or list of str, default="features"
        A ``VectorUDT`` or ``array<numeric>`` column, or a list of numeric columns, as in
        :func:`sklspark.distribute`.
    exclude_self : bool, default=False
        Leave out the reference row whose ID equals the query's ID (and only that row: other rows at
        distance 0 stay).
    metric : str, default="euclidean"
        Any metric ``NearestNeighbors`` accepts with the ``sklearn`` backend; ``euclidean``, ``cosine``
        or ``inner_product`` with ``gemm``; ``euclidean`` or ``cosine`` with ``hnsw``; ``euclidean``
        with ``faiss``; ``euclidean``, ``manhattan`` or ``cosine`` with ``annoy``. With
        ``inner_product`` the nearest rows are those of largest inner product ``q . r``, and the
        distance is ``-q . r`` (ascending like every distance, negative for positive inner products).
    backend : {"auto", "gemm", "sklearn", "faiss", "hnsw", "annoy"} or Backend, default="auto"
        Candidate search (see :mod:`sklspark.neighbors._backends`): ``auto`` is the built-in float32
        matrix-product kernel ``gemm`` for euclidean, cosine and inner product and ``sklearn`` for others;
        ``hnsw`` (``HnswBackend``) and ``annoy`` are approximate.
    shards : int, optional
        Split a DataFrame reference into this many shards (sharded mode). By default the reference
        is broadcast if its size is at most ``REFERENCE_BROADCAST_MAX_BYTES`` and sharded otherwise (the size is
        Spark's plan estimate; where there is none, under Spark Connect or for a DataFrame made from an RDD
        or Python rows, a count x the first row's feature bytes).
    chunk_size : int, optional
        Most query rows searched at once in a task. By default 4,096, and in broadcast mode's self-join
        (``all_neighbors``) a task's whole range of the reference's own rows, up to 262,144: a product of two
        own rows scores both, so the larger the range searched at once, the fewer products.
    reference_ids : sequence, optional
        With a fitted ``NearestNeighbors`` only: the ID of each of its rows (default ``0..n-1``).
    max_distance : float, optional
        Leave out neighbours farther than this (exact distances; a neighbour at exactly
        ``max_distance`` stays, as in ``radius_neighbors``): a query's lists then hold at most ``k``
        neighbours, possibly none. With ``inner_product``, any float: ``max_distance=-t`` keeps the
        neighbours with ``q . r >= t``.
    on_error : {"raise", "null"}, default="raise"
        What a row with NaN or infinite features does. ``"raise"``: the join fails with an error naming
        the side (queries or reference) and the row's ID. ``"null"``: such a query row gets null
        ``neighbor_ids`` and ``distances`` and its reason in an added ``error`` column
        (``"<function>: ValueError: ..."``, null for the rows searched); such a reference row is left
        out (nobody's neighbour, logged as a warning).
    index_dir : str or os.PathLike, optional
        Sharded mode with a backend whose index is a file (``faiss``, ``hnsw``, ``annoy``): each shard's
        index is built once, by one task, and written to this directory with the shard's rows, then
        loaded once per worker process by every task that searches that shard. It must exist and be
        readable by the driver and every executor (a shared file system on a cluster of several
        machines); the files are left there. By default they go to a temporary directory of the
        driver's, removed when it exits, which executors on the driver's machine read (``local[*]``).

    Returns
    -------
    DataFrame
        One row per query row: ``id_col``, ``neighbor_ids`` (array of reference IDs, nearest first)
        and ``distances`` (array<double>, ascending), ``k`` of each (fewer with ``max_distance``); with
        ``on_error="null"`` also ``error``. Empty if there are no queries, whatever ``k``.

    Raises
    ------
    TypeError, ValueError
        On the driver before the search job: bad ``k``, missing or mistyped columns, unknown backend,
        metric the backend does not support, duplicate or null reference IDs, ``k`` larger than the
        reference (knowing the reference's size and IDs takes one small job for a DataFrame), a
        collected reference row with NaN or infinite features.
    ImportError
        If the backend's optional package is missing.

    Examples
    --------
    >>> reference = spark.createDataFrame([(1, [0.0]), (2, [1.0]), (3, [5.0])], "id long, features array<double>")
    >>> queries = spark.createDataFrame([(10, [0.4]), (11, [4.0])], "id long, features array<double>")
    >>> result = kneighbors_join(queries, reference, 2)
    >>> [(row.id, row.neighbor_ids, row.distances) for row in result.orderBy("id").collect()]
    [(10, [1, 2], [0.4, 0.6]), (11, [3, 2], [1.0, 3.0])]
    """
    options = JoinOptions(
        id_col=id_col,
        features_col=features_col,
        exclude_self=exclude_self,
        metric=metric,
        backend=backend,
        shards=shards,
        chunk_size=chunk_size,
        reference_ids=reference_ids,
        max_distance=max_distance,
        on_error=on_error,
        index_dir=index_dir,
    )
    return run_join(plan_join(queries, reference, k, options, "kneighbors_join"))


def all_neighbors(df: DataFrame, k: int, *, exclude_self: bool = True, **options: Any) -> DataFrame:
    """The ``k`` nearest other rows of every row of ``df``: ``kneighbors_join(df, df, k, ...)``.

    Parameters
    ----------
    df : DataFrame
        Rows with a unique ``id_col`` column and the features.
    k : int
        Neighbours per row, at most ``len(df) - 1`` (``len(df)`` with ``exclude_self=False``).
    exclude_self : bool, default=True
        Leave each row out of its own neighbours (rows that are exact duplicates of it stay).
    **options
        Any other keyword argument of :func:`kneighbors_join` (``id_col``, ``features_col``,
        ``metric``, ``backend``, ``shards``, ``chunk_size``, ``max_distance``, ``on_error``, ``index_dir``).

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids``, ``distances``: one row per row of ``df``.

    Examples
    --------
    >>> df = spark.createDataFrame([(1, [0.0]), (2, [1.0]), (3, [5.0])], "id long, features array<double>")
    >>> [(row.id, row.neighbor_ids) for row in all_neighbors(df, 1).orderBy("id").collect()]
    [(1, [2]), (2, [1]), (3, [2])]
    """
    if "reference_ids" in options:
        raise TypeError("all_neighbors() takes no reference_ids: the reference is df itself")
    unknown = sorted(set(options) - JoinOptions.names())
    if unknown:
        raise TypeError(f"all_neighbors() got an unexpected keyword argument {unknown[0]!r}")
    plan = plan_join(df, df, k, JoinOptions(exclude_self=exclude_self, **options), "all_neighbors")
    return run_join(plan)
