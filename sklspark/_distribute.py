"""``distribute()``: validation, input adapter, model shipping, chunk runner and output schema, tied together."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import RDD
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf
from pyspark.sql.types import DataType, StructType

from ._frames import READERS, FrameStyles, frame_styles
from ._inputs import batch_to_matrix, iter_batch_chunks, iter_row_chunks, stack_rows
from ._outputs import OutputColumn, chunk_arrays, output_columns, split_rows
from ._partitions import PartitionPolicy, partition_policy
from ._runner import one_row_per_input, run_chunks
from ._shipping import ShippedModel
from ._validation import (
    FeatureSpec,
    check_arrow_features,
    check_method,
    check_optional_chunk_size,
    check_scalar,
    check_width,
    declares_sparse,
    n_features_of,
    quote_column,
    resolve_features,
)

#: Rows per chunk for an RDD, whose elements come one by one (DataFrames follow their Arrow batches).
RDD_CHUNK_SIZE = 4096


def distribute(
    estimator: Any,
    method: str,
    data: RDD | DataFrame,
    *,
    chunk_size: int | None = None,
    features: str | Sequence[str] | None = None,
    output_cols: str | Sequence[str] | None = None,
    partitions: int | None = None,
    pandas_reader: str | None = None,
    **method_kwargs: Any,
) -> RDD | DataFrame:
    """Apply a fitted estimator's prediction-time method to every row of an RDD or DataFrame.

    The estimator is serialised once on the driver (cloudpickle), shipped once, and loaded once per
    Python worker process. Each partition is stacked into matrices (CSR when the rows are sparse and
    the estimator accepts sparse input) and the method runs once per matrix ("chunk"), with
    BLAS/OpenMP threads capped at ``spark.task.cpus``. The result is lazy, like any
    Spark transformation: nothing runs until an action (``collect``, ``count``, ``write``...).

    Parameters
    ----------
    estimator : object
        A fitted scikit-learn estimator, ``Pipeline`` or any object with the method.
    method : str
        The method to run, e.g. ``"predict"``, ``"predict_proba"``, ``"transform"``,
        ``"decision_function"``, ``"score_samples"``, ``"kneighbors"``, ``"radius_neighbors"``.
        Methods that fit or need targets (``fit*``, ``partial_fit``, ``score``) are refused.
    data : pyspark.RDD or pyspark.sql.DataFrame
        An RDD whose elements are feature vectors (1-D numpy arrays, lists/tuples of numbers,
        ``pyspark.ml.linalg`` vectors or 1-row scipy sparse matrices), or, for an estimator with
        ``feature_names_in_``, ``dict`` or ``Row`` records holding those fields; or a DataFrame.
    chunk_size : int, default=None
        Rows passed to one call of the method; bounds the memory a task needs. ``None``: for a
        DataFrame, one call per Arrow batch Spark hands to Python
        (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000 rows by default; batches over
        65,536 rows are cut), with no copy; for an RDD, 4,096 rows. An int: chunks of exactly that
        many rows (the last of a partition may be shorter), re-cut across Arrow batches.
    features : str or list of str, default=None
        DataFrame only: a ``VectorUDT`` column, an ``array<numeric>`` column, a list of
        numeric columns, or one string column of documents (passed as a 1-D array of ``str``).
        ``None`` means the column ``"features"``, or, for an estimator fitted on a pandas
        DataFrame (it has ``feature_names_in_``), exactly the columns it was fitted on, by name,
        handed over as a pandas DataFrame (see :func:`sklspark._validation.frame_spec` for the
        types); a list given for such an estimator must name the same columns.
    output_cols : str or list of str, default=None
        DataFrame only: names of the result columns, one per part of the method's output.
        Defaults: ``prediction`` (predict), ``probability`` (predict_proba), ``log_probability``
        (predict_log_proba), ``distances`` and ``indices`` (kneighbors, radius_neighbors), and the
        method's own name otherwise.
    partitions : int, default=None
        Repartition the input into this many balanced partitions first, so that every core works on
        an input with few partitions (one Parquet file is one partition). An RDD keeps its order (it
        is counted and numbered first: two small jobs); a DataFrame is repartitioned round-robin.
        Without it, ``kneighbors`` and ``radius_neighbors`` on fewer partitions than cores warn.
    pandas_reader : {"toPandas", "read_parquet", "read_csv"}, default=None
        For an estimator fitted on a pandas DataFrame: the reader of the frame it was fitted on, which
        each chunk imitates (null marker ``None`` or ``np.nan``; dates, decimals and timestamps as
        objects, strings or numbers) where the fitted estimator does not record it. What it records
        wins: an encoder's ``categories_`` holding ``None`` or ``nan``, ``datetime.date``, ``str`` or
        ``Decimal`` values, a ``SimpleImputer``'s ``missing_values=None``. ``None``: inferred from that
        evidence, else as ``toPandas()``. See docs/pipelines.md for the type table and the rules.
    **method_kwargs
        Passed to the method, e.g. ``n_neighbors=5`` or ``return_distance=False``.

    Returns
    -------
    pyspark.RDD or pyspark.sql.DataFrame
        For an RDD: one element per input element, in the same order, holding the method's
        output for that row (a scalar for ``predict``, a 1-D array for ``predict_proba`` or
        ``transform``, a ``(distances, indices)`` tuple for ``kneighbors``...).
        For a DataFrame: every input column plus the typed result columns (see
        :mod:`sklspark._outputs` for the types), in the input's row order and partitioning. Only the
        feature columns cross into Python; every other column stays in the JVM. A streaming
        DataFrame gives a streaming DataFrame, with no Spark job started on the driver.

    Raises
    ------
    TypeError, ValueError
        Before any task runs, if the estimator is not fitted or lacks the method, ``chunk_size``
        or ``features`` are invalid, the feature width differs from ``n_features_in_``, or the
        method rejects ``method_kwargs``. A row that cannot be scored fails its task with a
        ``ChunkError`` naming the method, partition, rows and cause.

    Examples
    --------
    >>> from sklearn.neighbors import NearestNeighbors
    >>> nn = NearestNeighbors(n_neighbors=2).fit([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> df = spark.createDataFrame([(7, [0.1, 0.0]), (8, [0.0, 1.9])], "id long, features array<double>")
    >>> out = distribute(nn, "kneighbors", df)
    >>> [(row.id, row.indices) for row in out.orderBy("id").collect()]
    [(7, [0, 1]), (8, [2, 0])]
    >>> distribute(nn, "kneighbors", spark.sparkContext.parallelize([[0.9, 0.1]]), return_distance=False).collect()
    [array([1, 0])]
    """
    check_method(estimator, method)
    chunk_size = check_optional_chunk_size(chunk_size, "distribute")
    policy = partition_policy(partitions, method, "distribute")
    check_scalar(pandas_reader, "pandas_reader", "distribute", kind=str, options=READERS, none_ok=True)
    if isinstance(data, RDD):
        if features is not None or output_cols is not None:
            raise TypeError(
                "features= and output_cols= apply to DataFrame input; the elements of an RDD are "
                "the feature vectors themselves"
            )
        frame = frame_styles(estimator, pandas_reader)  # dict / Row elements become DataFrames of these fields
        chunk_size = chunk_size or RDD_CHUNK_SIZE
        return _distribute_rdd(estimator, method, data, chunk_size, method_kwargs, (policy, frame))
    if isinstance(data, DataFrame):
        spec = resolve_features(data.schema, estimator, features, pandas_reader)
        return _distribute_dataframe(estimator, method, data, chunk_size, spec, output_cols, method_kwargs, policy)
    raise TypeError(f"data must be a pyspark RDD or DataFrame, got {type(data).__module__}.{type(data).__name__}")


def _probe(
    estimator: Any,
    method: str,
    method_kwargs: dict,
    width: int | None,
    dtype: np.dtype,
    head_rows: Callable[[], Any],
) -> Any:
    """Run the method on one row on the driver, to check ``method_kwargs`` and learn the output's shape.

    Two rows of zeros are tried first (no Spark job; two, because some methods drop the first axis
    of a 1-row input); if the estimator rejects them (or the width is not known), the data's first
    two rows are used. Returns ``None`` when the data is empty and no zero row could be scored.
    """
    fn = getattr(estimator, method)
    zero_error = None
    if width is not None:
        try:
            with warnings.catch_warnings():  # what the estimator says of our rows of zeros is not the user's concern
                warnings.simplefilter("ignore")
                return one_row_per_input(fn(np.zeros((2, width), dtype=dtype), **method_kwargs), 2)
        except Exception as exc:  # noqa: BLE001 - any refusal of zeros means: probe on real rows
            zero_error = exc
    X = head_rows()
    if X is None:
        if zero_error is not None:
            raise ValueError(
                f"{type(estimator).__name__}.{method}({_kwargs_repr(method_kwargs)}) failed on rows of zeros: "
                f"{type(zero_error).__name__}: {zero_error}"
            ) from zero_error
        return None
    try:
        return one_row_per_input(fn(X, **method_kwargs), X.shape[0])
    except Exception as exc:
        raise ValueError(
            f"{type(estimator).__name__}.{method}({_kwargs_repr(method_kwargs)}) failed on the first rows of "
            f"the data, checked on the driver before the job: {type(exc).__name__}: {exc}"
        ) from exc


def _kwargs_repr(method_kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in method_kwargs.items())


def _distribute_rdd(
    estimator: Any,
    method: str,
    rdd: RDD,
    chunk_size: int,
    method_kwargs: dict,
    policy_frame: tuple[PartitionPolicy, FrameStyles | None],
) -> RDD:
    policy, frame = policy_frame
    width = n_features_of(estimator)
    sparse_ok = declares_sparse(estimator)

    def head_rows():
        head = rdd.take(2)
        return stack_rows(head, 0, accept_sparse=False, frame=frame) if head else None

    if frame is not None:
        _probe(estimator, method, method_kwargs, None, np.dtype(np.float32), head_rows)
    elif width is not None:
        # float32 zeros: a float32-fitted model (a large NearestNeighbors) is not upcast to score them
        _probe(estimator, method, method_kwargs, width, np.dtype(np.float32), head_rows)
    rdd = policy.apply(rdd, stacklevel=3)  # after the checks: an RDD is counted to keep its order
    model = ShippedModel(estimator, rdd.context)

    def apply(index: int, rows: Iterable[Any]) -> Iterator[Any]:
        return score_rows(model, method, method_kwargs, rows, chunk_size, sparse_ok, frame, index)

    return rdd.mapPartitionsWithIndex(apply, preservesPartitioning=True)


def score_rows(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    rows: Iterable[Any],
    chunk_size: int,
    sparse_ok: bool,
    frame: FrameStyles | None,
    partition: int,
) -> Iterator[Any]:
    """The task of an RDD partition: its elements stacked into chunks, scored, cut into one item per row.

    ``frame``: the fields taken from ``dict``/``Row`` elements into pandas chunks and their styles
    (:func:`~sklspark._frames.frame_styles`), or ``None`` for vectors.
    """
    chunks = iter_row_chunks(rows, chunk_size, sparse_ok, frame)
    for _, _, output in run_chunks(model, method, method_kwargs, chunks, partition=partition):
        yield from split_rows(output)


def score_batches(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    batches: Iterable[pa.RecordBatch],
    input_names: Sequence[str] | None,
    spec: FeatureSpec | None,
    chunk_size: int | None,
    sparse_ok: bool,
    columns: Sequence[OutputColumn],
    frame: FrameStyles | None = None,
) -> Iterator[pa.RecordBatch]:
    """The task of a DataFrame partition: Arrow batches stacked into chunks, scored, one result batch per chunk.

    The batches are read by ``input_names`` (when given, they replace the batches' own names), stacked
    into chunks (see :func:`~sklspark._inputs.iter_batch_chunks`; ``sparse_ok`` lets a vector column
    give CSR chunks) and run through the chunk runner; each chunk yields a batch of the result columns.
    ``spec=None`` resolves the features from the first batch's Arrow types (``udf()`` Columns meet their
    input types only in the task, see :func:`~sklspark._validation.check_arrow_features`). Where the
    estimator records ``n_features_in_``, every stacked chunk is checked against it, naming its rows.
    ``frame``: the named columns' styles decided on the driver, for a spec resolved in the task.
    """
    estimator = model.get()
    if input_names is not None:
        batches = (pa.RecordBatch.from_arrays(b.columns, names=list(input_names)) for b in batches)
    chunks = _feature_chunks(batches, spec, chunk_size, estimator, sparse_ok, frame)
    convert = functools.partial(chunk_arrays, columns=columns)
    names = [c.name for c in columns]
    for *_, arrays in run_chunks(model, method, method_kwargs, chunks, convert=convert):
        yield pa.RecordBatch.from_arrays(arrays, names=names)


def _feature_chunks(
    batches: Iterable[pa.RecordBatch],
    spec: FeatureSpec | None,
    chunk_size: int | None,
    estimator: Any,
    sparse_ok: bool,
    frame: FrameStyles | None,
) -> Iterator[tuple[int, Any]]:
    """Stack a task's feature batches into the method's chunks, checking matrices against ``n_features_in_``."""
    n_features = n_features_of(estimator)
    for start, batch in iter_batch_chunks(batches, chunk_size):
        if spec is None:
            spec = check_arrow_features(batch.schema, estimator, frame)
        X = batch_to_matrix(batch, spec, start, sparse_ok and spec.layout == "vector")
        if spec.is_matrix and n_features is not None and X.shape[1] != n_features:
            raise ValueError(
                f"{spec.describe()} has {X.shape[1]} features at rows {start}-{start + X.shape[0] - 1}, but the "
                f"estimator was fitted on {n_features} features"
            )
        yield start, X


def batch_scorer(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    spec: FeatureSpec | None,
    chunk_size: int | None,
    sparse_ok: bool,
    columns: Sequence[OutputColumn],
    frame: FrameStyles | None,
) -> Callable[[Iterator[Any]], Iterator[pa.Array]]:
    """The function an Arrow iterator UDF runs in its task: :func:`score_batches` over its argument columns.

    It takes an iterator of one Arrow array per batch (one argument column) or of tuples of arrays
    (several), as Spark's Arrow iterator UDFs receive them, and yields one array per chunk: the result
    column, or a struct of the result columns for multi-part outputs. The arrays are named after
    ``spec.columns``, else the fitted names of ``frame`` (named columns and their styles, see
    :func:`~sklspark._frames.frame_styles`) when there are as many, else ``argument 1``, ``argument 2``...
    """
    known_names = spec.columns if spec is not None else frame.columns if frame is not None else None
    fields = [pa.field(c.name, c.arrow_type) for c in columns]

    def to_batch(arrays: Any) -> pa.RecordBatch:
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        names = known_names
        if names is None or len(names) != len(arrays):
            names = tuple(f"argument {i + 1}" for i in range(len(arrays)))
        return pa.RecordBatch.from_arrays(list(arrays), names=list(names))

    def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        results = score_batches(
            model, method, method_kwargs, map(to_batch, batches), None, spec, chunk_size, sparse_ok, columns, frame
        )
        for result in results:
            yield result.column(0) if len(fields) == 1 else pa.StructArray.from_arrays(result.columns, fields=fields)

    return score


def scoring_udf(
    score: Callable[[Iterator[Any]], Iterator[pa.Array]], method: str, columns: Sequence[OutputColumn]
) -> Any:
    """A :func:`batch_scorer` as an Arrow iterator UDF named after the method.

    Only the UDF's argument columns cross into Python; Spark keeps the rest of each row in the JVM.
    """
    score.__name__ = method
    return arrow_udf(score, result_type(columns))  # type: ignore[call-overload]  # a struct type is fine


def result_type(columns: Sequence[OutputColumn]) -> DataType:
    """The Spark type of a scoring Column: the one result column's type, or a struct of all of them."""
    return columns[0].spark_type if len(columns) == 1 else StructType([c.field for c in columns])


def quoted(name: str) -> Column:
    """The column named ``name`` exactly (dots and backticks in it are not struct paths)."""
    return F.col(quote_column(name))


def _head_reader(df: DataFrame, spec: FeatureSpec) -> Callable[[], Any]:
    """A function returning the DataFrame's first two rows as the method's input (read once, by a small job).

    It returns ``None`` for an empty DataFrame. A streaming DataFrame cannot be read before its
    query starts: there the function raises ``ValueError`` saying what would let sklspark do without.
    """
    head: list = []

    def head_rows() -> Any:
        if df.isStreaming:
            raise ValueError(
                f"cannot read the first rows of a streaming DataFrame before its query starts, to probe "
                f"{spec.describe()} (its width is not recorded, or the estimator refuses rows of zeros): fit the "
                f"estimator on a numeric matrix so it records n_features_in_, or pass numeric feature columns "
                f"(features=[...]), or use sklspark.udf(..., return_type=...)"
            )
        if not head:
            head.append(_head_matrix(df, spec))
        return head[0]

    return head_rows


def _head_matrix(df: DataFrame, spec: FeatureSpec) -> Any:
    """The DataFrame's first two rows as the method's input (a small Spark job), or ``None`` if it is empty."""
    table = df.select(*(quote_column(c) for c in spec.columns)).limit(2).toArrow()
    if table.num_rows == 0:
        return None
    try:
        return batch_to_matrix(table.combine_chunks().to_batches()[0], spec, 0, accept_sparse=False)
    except ValueError as exc:
        raise ValueError(f"the DataFrame's first rows, read on the driver to check the method on them: {exc}") from exc


def feature_width(estimator: Any, spec: FeatureSpec, head_rows: Callable[[], Any]) -> int | None:
    """The width of a matrix layout: from the schema, else the estimator's ``n_features_in_``, else the first rows.

    A width known from the estimator is trusted without reading data: every chunk is checked against it
    in its task (see :func:`score_batches`). ``None`` for frames and text, and for an empty DataFrame
    whose estimator records no ``n_features_in_``.
    """
    if not spec.is_matrix:
        return None
    width = spec.width if spec.width is not None else n_features_of(estimator)
    if width is None:
        rows = head_rows()
        width = rows.shape[1] if rows is not None else None
    if width is not None:
        check_width(estimator, width, f"The DataFrame's {spec.describe()}")
    return width


def _distribute_dataframe(
    estimator: Any,
    method: str,
    df: DataFrame,
    chunk_size: int | None,
    spec: FeatureSpec,
    output_cols: str | Sequence[str] | None,
    method_kwargs: dict,
    policy: PartitionPolicy,
) -> DataFrame:
    head_rows = _head_reader(df, spec)
    width = feature_width(estimator, spec, head_rows)
    # Frames and text are probed on the data's first rows: zeros are no valid category or document.
    sample = _probe(estimator, method, method_kwargs, width, spec.dtype, head_rows)
    if sample is None:
        raise ValueError(
            f"cannot tell the result columns of {type(estimator).__name__}.{method}: the DataFrame is empty and "
            f"the estimator does not record n_features_in_"
        )
    columns = output_columns(method, sample, output_cols, df.columns, estimator)
    df = policy.apply(df)  # after the probe, which reads the first rows unshuffled
    model = ShippedModel(estimator, df)
    sparse_ok = spec.layout == "vector" and declares_sparse(estimator)
    score = batch_scorer(model, method, method_kwargs, spec, chunk_size, sparse_ok, columns, None)
    result = scoring_udf(score, method, columns)(*map(quoted, spec.columns))
    if len(columns) == 1:
        return df.select("*", result.alias(columns[0].name))
    packed = f"__sklspark_{model.token}"
    return (
        df.select("*", result.alias(packed))
        .withColumns({c.name: F.col(packed).getField(c.name) for c in columns})
        .drop(packed)
    )
