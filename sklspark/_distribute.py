"""``distribute()``: validation, input adapter, model shipping, chunk runner and output schema, tied together."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark import RDD
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf
from pyspark.sql.types import DataType, StructType

from ._inputs import batch_to_matrix, iter_batch_chunks, iter_row_chunks, stack_rows
from ._outputs import OutputColumn, output_columns, output_parts, split_rows, to_arrow
from ._runner import one_row_per_input, run_chunks
from ._shipping import ShippedModel
from ._validation import (
    FeatureSpec,
    check_arrow_features,
    check_features,
    check_method,
    check_optional_chunk_size,
    check_width,
    declares_sparse,
    n_features_of,
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
        ``pyspark.ml.linalg`` vectors or 1-row scipy sparse matrices), or a DataFrame.
    chunk_size : int, default=None
        Rows passed to one call of the method; bounds the memory a task needs. ``None``: for a
        DataFrame, one call per Arrow batch Spark hands to Python
        (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000 rows by default; batches over
        65,536 rows are cut), with no copy; for an RDD, 4,096 rows. An int: chunks of exactly that
        many rows (the last of a partition may be shorter), re-cut across Arrow batches.
    features : str or list of str, default=None
        DataFrame only: a ``VectorUDT`` column, an ``array<numeric>`` column, or a list of
        numeric columns. ``None`` means the column ``"features"``.
    output_cols : str or list of str, default=None
        DataFrame only: names of the result columns, one per part of the method's output.
        Defaults: ``prediction`` (predict), ``probability`` (predict_proba), ``log_probability``
        (predict_log_proba), ``distances`` and ``indices`` (kneighbors, radius_neighbors), and the
        method's own name otherwise.
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
    >>> nn = NearestNeighbors().fit(X)                                      # doctest: +SKIP
    >>> out = distribute(nn, "kneighbors", df, n_neighbors=10)             # doctest: +SKIP
    >>> out.select("id", "indices", "distances").show()                    # doctest: +SKIP
    """
    check_method(estimator, method)
    chunk_size = check_optional_chunk_size(chunk_size)
    if isinstance(data, RDD):
        if features is not None or output_cols is not None:
            raise TypeError(
                "features= and output_cols= apply to DataFrame input; the elements of an RDD are "
                "the feature vectors themselves"
            )
        return _distribute_rdd(estimator, method, data, chunk_size or RDD_CHUNK_SIZE, method_kwargs)
    if isinstance(data, DataFrame):
        return _distribute_dataframe(estimator, method, data, chunk_size, features, output_cols, method_kwargs)
    raise TypeError(f"data must be a pyspark RDD or DataFrame, got {type(data).__module__}.{type(data).__name__}")


def probe_output(
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


def _distribute_rdd(estimator: Any, method: str, rdd: RDD, chunk_size: int, method_kwargs: dict) -> RDD:
    width = n_features_of(estimator)
    sparse_ok = declares_sparse(estimator)

    def head_rows():
        head = rdd.take(2)
        return stack_rows(head, 0, accept_sparse=False) if head else None

    if width is not None:
        # float32 zeros: a float32-fitted model (a large NearestNeighbors) is not upcast to score them
        probe_output(estimator, method, method_kwargs, width, np.dtype(np.float32), head_rows)
    model = ShippedModel(estimator, rdd.context)

    def apply(index, rows):
        chunks = iter_row_chunks(rows, chunk_size, sparse_ok)
        for _, _, output in run_chunks(model, method, method_kwargs, chunks, partition=index):
            yield from split_rows(output)

    return rdd.mapPartitionsWithIndex(apply, preservesPartitioning=True)


def _head_reader(df: DataFrame, spec: FeatureSpec) -> Callable[[], Any]:
    """A function returning the DataFrame's first two rows as a dense matrix (read once, by a small Spark job).

    It returns ``None`` for an empty DataFrame. A streaming DataFrame cannot be read before its
    query starts: there the function raises ``ValueError`` saying what would let sklspark do without.
    """
    head: list = []

    def head_rows() -> Any:
        if df.isStreaming:
            raise ValueError(
                f"cannot read the first rows of a streaming DataFrame before its query starts, to learn the "
                f"width of its {spec.describe()}: fit the estimator so it records n_features_in_, or pass "
                f"numeric feature columns (features=[...]), or use sklspark.udf(..., return_type=...)"
            )
        if not head:
            head.append(_head_matrix(df, spec))
        return head[0]

    return head_rows


def _head_matrix(df: DataFrame, spec: FeatureSpec) -> Any:
    """The DataFrame's first two rows as a dense matrix (a small Spark job), or ``None`` if it is empty."""
    table = df.select(*spec.columns).limit(2).toArrow()
    if table.num_rows == 0:
        return None
    try:
        return batch_to_matrix(table.combine_chunks().to_batches()[0], spec, 0, accept_sparse=False)
    except ValueError as exc:
        raise ValueError(f"the DataFrame's first rows, read on the driver to check the feature width: {exc}") from exc


def feature_width(estimator: Any, spec: FeatureSpec, head_rows: Callable[[], Any]) -> int | None:
    """The feature width, from the schema, else the estimator's ``n_features_in_``, else the first rows.

    A width known from the estimator is trusted without reading data: every chunk is checked against it
    in its task (see :func:`batch_scorer`). ``None`` means an empty DataFrame and no ``n_features_in_``.
    """
    width = spec.width if spec.width is not None else n_features_of(estimator)
    if width is None:
        rows = head_rows()
        width = rows.shape[1] if rows is not None else None
    if width is not None:
        check_width(estimator, width, f"The DataFrame's {spec.describe()}")
    return width


def result_type(columns: Sequence[OutputColumn]) -> DataType:
    """The Spark type of a scoring Column: the one result column's type, or a struct of all of them."""
    return columns[0].spark_type if len(columns) == 1 else StructType([c.field for c in columns])


def _feature_chunks(
    batches: Iterator[pa.RecordBatch],
    spec: FeatureSpec | None,
    chunk_size: int | None,
    n_features: int | None,
    sparse_declared: bool,
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Stack the feature batches of one task into chunk matrices, checked against ``n_features_in_``."""
    for start, batch in iter_batch_chunks(batches, chunk_size):
        if spec is None:
            spec = check_arrow_features(batch.schema)
        X = batch_to_matrix(batch, spec, start, sparse_declared and spec.layout == "vector")
        if n_features is not None and X.shape[1] != n_features:
            raise ValueError(
                f"{spec.describe()} has {X.shape[1]} features at rows {start}-{start + X.shape[0] - 1}, but the "
                f"estimator was fitted on {n_features} features"
            )
        yield start, X


def batch_scorer(
    estimator: Any,
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    columns: Sequence[OutputColumn],
    chunk_size: int | None,
    spec: FeatureSpec | None,
) -> Callable[[Iterator[Any]], Iterator[pa.Array]]:
    """The function a task runs: the feature columns' Arrow arrays, batch by batch, to result arrays.

    It takes an iterator of one Arrow array per batch (one feature column) or of tuples of arrays
    (several), as Spark's Arrow iterator UDFs receive them, stacks them into chunks (see
    :func:`~sklspark._inputs.iter_batch_chunks`), runs the chunks through the chunk runner and yields
    one array per chunk: the result column, or a struct of the result columns for multi-part outputs.
    ``spec=None`` resolves the features from the first batch's Arrow types (``udf()`` Columns meet their
    input types only in the task); the arrays are named after ``spec.columns``, else the estimator's
    ``feature_names_in_``, else ``argument 1``, ``argument 2``...
    """
    n_features = n_features_of(estimator)
    sparse_declared = declares_sparse(estimator)
    fitted_names = getattr(estimator, "feature_names_in_", None)
    known_names = spec.columns if spec is not None else None if fitted_names is None else tuple(map(str, fitted_names))
    fields = [pa.field(c.name, c.arrow_type) for c in columns]

    def to_batch(arrays: Any) -> pa.RecordBatch:
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        names = known_names
        if names is None or len(names) != len(arrays):
            names = tuple(f"argument {i + 1}" for i in range(len(arrays)))
        return pa.RecordBatch.from_arrays(list(arrays), names=list(names))

    def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        chunks = _feature_chunks(map(to_batch, batches), spec, chunk_size, n_features, sparse_declared)
        for *_, output in run_chunks(model, method, method_kwargs, chunks):
            arrays = [to_arrow(part, col) for part, col in zip(output_parts(output), columns)]
            yield arrays[0] if len(arrays) == 1 else pa.StructArray.from_arrays(arrays, fields=fields)

    return score


def scoring_udf(
    score: Callable[[Iterator[Any]], Iterator[pa.Array]], method: str, columns: Sequence[OutputColumn]
) -> Any:
    """A :func:`batch_scorer` as an Arrow iterator UDF named after the method.

    Only the UDF's argument columns cross into Python; Spark keeps the rest of each row in the JVM.
    """
    score.__name__ = method
    return arrow_udf(score, result_type(columns))  # type: ignore[call-overload]  # a struct type is fine


def quoted(name: str) -> Column:
    """The column named ``name`` exactly (dots and backticks in it are not struct paths)."""
    return F.col("`" + name.replace("`", "``") + "`")


def _distribute_dataframe(
    estimator: Any,
    method: str,
    df: DataFrame,
    chunk_size: int | None,
    features: str | Sequence[str] | None,
    output_cols: str | Sequence[str] | None,
    method_kwargs: dict,
) -> DataFrame:
    spec = check_features(df.schema, features)
    head_rows = _head_reader(df, spec)
    width = feature_width(estimator, spec, head_rows)
    sample = probe_output(estimator, method, method_kwargs, width, spec.dtype, head_rows)
    if sample is None:
        raise ValueError(
            f"cannot tell the result columns of {type(estimator).__name__}.{method}: the DataFrame is empty and "
            f"the estimator does not record n_features_in_"
        )
    columns = output_columns(method, sample, output_cols, df.columns)
    model = ShippedModel(estimator, df)
    score = batch_scorer(estimator, model, method, method_kwargs, columns, chunk_size, spec)
    result = scoring_udf(score, method, columns)(*map(quoted, spec.columns))
    if len(columns) == 1:
        return df.select("*", result.alias(columns[0].name))
    packed = f"__sklspark_{model.token}"
    return (
        df.select("*", result.alias(packed))
        .withColumns({c.name: F.col(packed).getField(c.name) for c in columns})
        .drop(packed)
    )
