"""Public entry points :func:`kneighbors_join` and :func:`all_neighbors`: validation and choice of mode."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ByteType, IntegerType, LongType, ShortType, StringType, StructType
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from .._features import FeatureSpec, check_features
from .._inputs import batch_to_matrix
from .._partitions import spread_tasks
from .._validation import check_chunk_size, check_scalar
from ._backends import INNER_PRODUCT, Backend, SklearnBackend, get_backend
from ._broadcast import DISTANCES, NEIGHBOR_IDS, ReferenceIndex, broadcast_join
from ._sharded import QUERY_BLOCK_MAX_BYTES, SHARD_MAX_BYTES, count_blocks, sharded_join, stable_order

#: A DataFrame reference whose estimated size (Spark's plan statistics) is at most this many bytes
#: is collected to the driver and broadcast; a larger one is sharded. Tests may lower it.
BROADCAST_MAX_BYTES = 256 << 20

_ID_TYPES = (LongType, IntegerType, ShortType, ByteType, StringType)

#: Column names Spark resolves as written; others (dots, spaces, backticks) are renamed for the join.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _plain_names(frames: list[Any], id_col: Any, features_col: Any) -> tuple[list[Any], Any, Any, dict[str, str]]:
    """``frames`` with the ID and feature columns that need quoting renamed to plain names.

    Returns the frames, the new ``id_col`` and ``features_col``, and the renames. Columns that are
    missing keep their names, so the checks that follow name them as the caller wrote them.
    """
    if not isinstance(id_col, str) or not isinstance(features_col, Sequence):
        return frames, id_col, features_col, {}
    names = [id_col] + ([features_col] if isinstance(features_col, str) else list(features_col))
    present = set.intersection(*(set(f.columns) for f in frames if isinstance(f, DataFrame)))
    renames = {
        name: f"_sklspark_col_{i}"
        for i, name in enumerate(names)
        if isinstance(name, str) and name in present and not _PLAIN_NAME.fullmatch(name)
    }
    if not renames:
        return frames, id_col, features_col, {}
    frames = [f.withColumnsRenamed(renames) if isinstance(f, DataFrame) else f for f in frames]
    features = (
        renames.get(features_col, features_col)
        if isinstance(features_col, str)
        else [renames.get(c, c) for c in features_col]
    )
    return frames, renames.get(id_col, id_col), features, renames


@dataclass(frozen=True)
class _Join:
    """The validated arguments of one :func:`kneighbors_join` call."""

    queries: DataFrame
    k: int
    exclude_self: bool
    id_col: str
    features_col: str | Sequence[str]
    q_spec: FeatureSpec
    engine: Backend
    metric: str
    chunk_size: int

    @property
    def n(self) -> int:
        """Neighbours to search for: one more with ``exclude_self``, the query itself being dropped afterwards."""
        return self.k + 1 if self.exclude_self else self.k


def _check_k_fits(k: int, n_ref: int, exclude_self: bool) -> None:
    available = n_ref - 1 if exclude_self else n_ref
    if k > available:
        detail = f"{n_ref} rows, minus the query itself with exclude_self=True" if exclude_self else f"{n_ref} rows"
        raise ValueError(f"k={k} is larger than the reference set ({detail}); use k <= {max(available, 0)}")


def _check_id(schema: StructType, id_col: Any, what: str) -> None:
    check_scalar(id_col, "id_col", "kneighbors_join", kind=str)
    if id_col in (NEIGHBOR_IDS, DISTANCES):
        raise ValueError(f"id_col cannot be {id_col!r}: that is the name of a result column")
    if id_col not in schema.fieldNames():
        raise ValueError(f"id column {id_col!r} not found in the {what}; it has columns {schema.fieldNames()}")
    if not isinstance(schema[id_col].dataType, _ID_TYPES):
        raise TypeError(
            f"id column {id_col!r} of the {what} is {schema[id_col].dataType.simpleString()}; "
            f"expected an integer or string column"
        )


def _check_spec(schema: StructType, features_col: Any, id_col: str, what: str) -> FeatureSpec:
    _check_id(schema, id_col, what)
    spec = check_features(schema, features_col)
    if id_col in spec.columns:
        raise ValueError(f"id column {id_col!r} cannot also be a feature column")
    return spec


def _duplicates_error(examples: list) -> ValueError:
    return ValueError(
        f"the reference has duplicate IDs (e.g. {sorted(examples)[:5]}); every reference row needs a unique ID"
    )


def _check_unique(ids: pa.Array) -> None:
    if ids.null_count:
        raise ValueError("the reference has null IDs; every reference row needs a unique ID")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        raise _duplicates_error(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())


def _ids_from_sequence(reference_ids: Any, n_ref: int) -> np.ndarray:
    if reference_ids is None:
        return np.arange(n_ref, dtype=np.int64)
    ids = np.asarray(reference_ids)
    if ids.ndim != 1 or len(ids) != n_ref:
        raise ValueError(
            f"reference_ids must give one ID per row of the fitted NearestNeighbors ({n_ref}), got shape {ids.shape}"
        )
    if ids.dtype.kind in "iu":
        ids = ids.astype(np.int64)
    elif ids.dtype.kind == "U" or (ids.dtype.kind == "O" and all(isinstance(v, str) for v in ids)):
        ids = ids.astype(object)
    else:
        raise TypeError(f"reference_ids must be integers or strings, got values of dtype {ids.dtype}")
    _check_unique(pa.array(ids.tolist()))
    return ids


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


def _width_and_bytes(spec: FeatureSpec) -> tuple[Column, Column]:
    """Per row: its number of features, and the bytes of its stored features (a sparse row's stored entries only).

    A vector's size and stored values are read from its JSON form (Spark SQL has no vector functions,
    and ``vector_to_array`` would make a 2^18-column sparse vector a 2 MiB array); a sparse entry is
    counted as a float64 value and an int32 column index, as in a CSR matrix.
    """
    itemsize = spec.dtype.itemsize
    if spec.layout == "columns":
        return F.lit(len(spec.columns)), F.lit(len(spec.columns) * itemsize)
    column = F.col(spec.columns[0])
    if spec.layout != "vector":
        return F.size(column), F.size(column) * itemsize
    as_json = F.to_json(F.struct(column.alias("v")))
    stored = F.json_array_length(F.get_json_object(as_json, "$.v.values"))
    sparse = F.get_json_object(as_json, "$.v.type") == "0"
    width = F.coalesce(F.get_json_object(as_json, "$.v.size").cast("int"), stored)  # dense vectors have no size
    return width, stored * F.when(sparse, itemsize + 4).otherwise(itemsize)


def _shape_stats(spec: FeatureSpec) -> list[Column]:
    """Smallest and largest row width, and average stored bytes per row (one aggregate pass)."""
    width, stored = _width_and_bytes(spec)
    return [F.min(width), F.max(width), F.coalesce(F.avg(stored), F.lit(0.0))]


def _fitted_reference(nn: NearestNeighbors, metric: str, reference_ids: Any, shards: Any):
    check_is_fitted(nn)
    if shards is not None:
        raise ValueError("shards= applies to a DataFrame reference; a fitted NearestNeighbors is always broadcast")
    fitted_metric = SklearnBackend().check_metric(nn.effective_metric_)
    if fitted_metric != metric:
        raise ValueError(
            f"the fitted NearestNeighbors uses metric {fitted_metric!r} but metric={metric!r}; "
            f"pass metric={fitted_metric!r}"
        )
    if any(v is not None for v in nn.effective_metric_params_.values()):
        raise ValueError(f"NearestNeighbors with metric parameters {nn.effective_metric_params_} is not supported")
    X = sp.csr_matrix(nn._fit_X) if sp.issparse(nn._fit_X) else np.asarray(nn._fit_X)
    return X, _ids_from_sequence(reference_ids, X.shape[0])


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
    chunk_size: int = 4096,
    reference_ids: Sequence | None = None,
    max_distance: float | None = None,
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
        is broadcast if its size is at most ``BROADCAST_MAX_BYTES`` and sharded otherwise (the size is
        Spark's plan estimate; where there is none, under Spark Connect or for a DataFrame made from an RDD
        or Python rows, a count x the first row's feature bytes).
    chunk_size : int, default=4096
        Most query rows searched at once in a task.
    reference_ids : sequence, optional
        With a fitted ``NearestNeighbors`` only: the ID of each of its rows (default ``0..n-1``).
    max_distance : float, optional
        Leave out neighbours farther than this (exact distances; a neighbour at exactly
        ``max_distance`` stays, as in ``radius_neighbors``): a query's lists then hold at most ``k``
        neighbours, possibly none. With ``inner_product``, any float: ``max_distance=-t`` keeps the
        neighbours with ``q . r >= t``.

    Returns
    -------
    DataFrame
        One row per query row: ``id_col``, ``neighbor_ids`` (array of reference IDs, nearest first)
        and ``distances`` (array<double>, ascending), ``k`` of each (fewer with ``max_distance``).

    Raises
    ------
    TypeError, ValueError
        On the driver before the search job: bad ``k``, missing or mistyped columns, unknown backend,
        metric the backend does not support, duplicate or null reference IDs, ``k`` larger than the
        reference (knowing the reference's size and IDs takes one small job for a DataFrame).
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
    k = check_scalar(k, "k", "kneighbors_join", low=1)
    check_scalar(exclude_self, "exclude_self", "kneighbors_join", kind=bool)
    shards = check_scalar(shards, "shards", "kneighbors_join", low=1, none_ok=True)
    chunk_size = check_chunk_size(chunk_size, "kneighbors_join")
    if not isinstance(queries, DataFrame):
        raise TypeError(f"queries must be a pyspark DataFrame, got {type(queries).__name__}")
    (queries, reference), plain_id, features_col, renames = _plain_names([queries, reference], id_col, features_col)
    if renames:  # names with dots or spaces: joined under plain names, the ID column named back at the end
        result = kneighbors_join(
            queries,
            reference,
            k,
            id_col=plain_id,
            features_col=features_col,
            exclude_self=exclude_self,
            metric=metric,
            backend=backend,
            shards=shards,
            chunk_size=chunk_size,
            reference_ids=reference_ids,
            max_distance=max_distance,
        )
        return result.withColumnRenamed(plain_id, id_col)
    q_spec = _check_spec(queries.schema, features_col, id_col, "queries")
    engine = get_backend(backend, metric, "kneighbors_join")
    metric = engine.check_metric(metric)
    low = -np.inf if metric == INNER_PRODUCT else 0  # inner-product distances -q.r may be negative
    max_distance = check_scalar(
        max_distance, "max_distance", "kneighbors_join", kind=numbers.Real, low=low, none_ok=True
    )
    job = _Join(queries, k, exclude_self, id_col, features_col, q_spec, engine, metric, chunk_size)

    if isinstance(reference, NearestNeighbors):
        X, ids = _fitted_reference(reference, metric, reference_ids, shards)
        _check_k_fits(k, X.shape[0], exclude_self)
        built = SklearnBackend.from_fitted(reference) if isinstance(engine, SklearnBackend) else None
        index = ReferenceIndex(engine, ids, job.n, metric).fit(X, built=built)
        result = broadcast_join(queries, features_col, id_col, index, chunk_size)
    elif isinstance(reference, DataFrame):
        if reference_ids is not None:
            raise ValueError("reference_ids= applies to a fitted NearestNeighbors; a DataFrame reference has id_col")
        r_spec = _check_spec(reference.schema, features_col, id_col, "reference")
        q_type, r_type = queries.schema[id_col].dataType, reference.schema[id_col].dataType
        if exclude_self and q_type != r_type:
            raise TypeError(
                f"exclude_self compares IDs, but id column {id_col!r} is {q_type.simpleString()} in the queries "
                f"and {r_type.simpleString()} in the reference"
            )
        size = _estimated_bytes(reference)
        if shards is None and size is None:  # no plan statistics: an RDD, Python rows, Spark Connect
            size = _counted_bytes(reference, r_spec)
        if shards is None and size is not None and size <= BROADCAST_MAX_BYTES:
            result = _broadcast_dataframe(job, reference, r_spec)
        else:
            result = _shard_dataframe(job, reference, r_spec, shards)
    else:
        raise TypeError(
            f"reference must be a pyspark DataFrame or a fitted sklearn NearestNeighbors, "
            f"got {type(reference).__name__}"
        )
    return _keep(result, id_col, k, exclude_self, max_distance)


def _broadcast_dataframe(job: _Join, reference: DataFrame, r_spec: FeatureSpec) -> DataFrame:
    """Collect the reference to the driver (Arrow), check its IDs and size, index it and broadcast it."""
    table = stable_order(reference, job.id_col, r_spec.columns).select(job.id_col, *r_spec.columns).toArrow()
    ids = table.column(job.id_col).combine_chunks()
    _check_unique(ids)
    _check_k_fits(job.k, table.num_rows, job.exclude_self)
    X = batch_to_matrix(pa.concat_batches(table.to_batches()), r_spec, 0, accept_sparse=True)  # CSR stays CSR
    index = ReferenceIndex(job.engine, ids.to_numpy(zero_copy_only=False), job.n, job.metric).fit(X)
    return broadcast_join(job.queries, job.features_col, job.id_col, index, job.chunk_size)


def _shard_dataframe(job: _Join, reference: DataFrame, r_spec: FeatureSpec, shards: int | None) -> DataFrame:
    """Check the reference's IDs and widths with one aggregate job, size the shards and blocks, and shard it."""
    queries, id_col, q_spec, k, exclude_self = job.queries, job.id_col, job.q_spec, job.k, job.exclude_self
    stats = reference.agg(F.count(F.lit(1)), F.count(id_col), F.count_distinct(id_col), *_shape_stats(r_spec)).first()
    assert stats is not None  # an aggregate without grouping has one row
    n_ref, n_ids, n_distinct, width, max_width, row_bytes = stats
    if n_ids != n_ref:
        raise ValueError("the reference has null IDs; every reference row needs a unique ID")
    if n_distinct != n_ids:
        examples = [r[0] for r in reference.groupBy(id_col).count().where("count > 1").limit(5).collect()]
        raise _duplicates_error(examples)
    _check_k_fits(k, n_ref, exclude_self)
    if width != max_width:
        raise ValueError(f"the reference's {r_spec.describe()} has rows of {width} and of {max_width} features")
    q_stats = queries.agg(F.count(F.lit(1)), *_shape_stats(q_spec)).first()
    assert q_stats is not None
    n_queries, q_width, q_max_width, q_row_bytes = q_stats
    if n_queries and (q_width, q_max_width) != (width, width):
        raise ValueError(
            f"the queries' {q_spec.describe()} has rows of {q_width} to {q_max_width} features, but the "
            f"reference's has {width}"
        )
    if shards is None:  # by the bytes stored: a sparse row's entries, not its width
        shards = count_blocks(n_ref, row_bytes, SHARD_MAX_BYTES)
    blocks = count_blocks(n_queries, q_row_bytes, QUERY_BLOCK_MAX_BYTES)
    # a few (block, shard) groups per core, whatever the inputs' partitioning: every core searches
    tasks = spread_tasks(queries)
    blocks = max(blocks, min(max(n_queries, 1), -(-tasks // shards)))
    return sharded_join(
        queries,
        reference,
        job.n,
        id_col=id_col,
        q_spec=q_spec,
        r_spec=r_spec,
        backend=job.engine,
        metric=job.metric,
        shards=shards,
        blocks=blocks,
        chunk_size=job.chunk_size,
    )


def _keep(result: DataFrame, id_col: str, k: int, exclude_self: bool, max_distance: float | None) -> DataFrame:
    """The first ``k`` neighbours other than the query's own ID (``exclude_self``) within ``max_distance``."""
    if not exclude_self and max_distance is None:
        return result
    pairs = F.zip_with(NEIGHBOR_IDS, DISTANCES, lambda i, d: F.struct(i.alias("id"), d.alias("distance")))

    def keep(p: Column) -> Column:
        kept = ~p["id"].eqNullSafe(F.col(id_col)) if exclude_self else F.lit(True)
        return kept if max_distance is None else kept & (p["distance"] <= F.lit(max_distance))

    kept = F.slice(F.filter(pairs, keep), 1, k)
    return result.select(
        id_col,
        F.transform(kept, lambda p: p["id"]).alias(NEIGHBOR_IDS),
        F.transform(kept, lambda p: p["distance"]).alias(DISTANCES),
    )


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
        ``metric``, ``backend``, ``shards``, ``chunk_size``, ``max_distance``).

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
    check_scalar(k, "k", "all_neighbors", low=1)  # the other options are checked by kneighbors_join, naming it
    check_scalar(exclude_self, "exclude_self", "all_neighbors", kind=bool)
    return kneighbors_join(df, df, k, exclude_self=exclude_self, **options)
