"""``distribute()``: validation, input adapter, model shipping, chunk runner and output schema, tied together."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import RDD
from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

from ._inputs import batch_to_matrix, iter_batch_chunks, iter_row_chunks, stack_rows
from ._outputs import OutputColumn, chunk_arrays, output_columns, split_rows
from ._runner import one_row_per_input, run_chunks
from ._shipping import ShippedModel
from ._validation import (
    FeatureSpec,
    check_chunk_size,
    check_method,
    check_width,
    declares_sparse,
    fitted_feature_names,
    n_features_of,
    quote_column,
    resolve_features,
)


def distribute(
    estimator: Any,
    method: str,
    data: RDD | DataFrame,
    *,
    chunk_size: int = 4096,
    features: str | Sequence[str] | None = None,
    output_cols: str | Sequence[str] | None = None,
    **method_kwargs: Any,
) -> RDD | DataFrame:
    """Apply a fitted estimator's prediction-time method to every row of an RDD or DataFrame.

    The estimator is serialised once on the driver (cloudpickle), shipped once, and loaded once per
    Python worker process. Each partition is stacked into matrices of at most ``chunk_size`` rows
    (CSR when the rows are sparse and the estimator accepts sparse input) and the method runs once
    per chunk, with BLAS/OpenMP threads capped at ``spark.task.cpus``. The result is lazy, like any
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
    chunk_size : int, default=4096
        Most rows passed to one call of the method; bounds the memory a task needs.
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
    **method_kwargs
        Passed to the method, e.g. ``n_neighbors=5`` or ``return_distance=False``.

    Returns
    -------
    pyspark.RDD or pyspark.sql.DataFrame
        For an RDD: one element per input element, in the same order, holding the method's
        output for that row (a scalar for ``predict``, a 1-D array for ``predict_proba`` or
        ``transform``, a ``(distances, indices)`` tuple for ``kneighbors``...).
        For a DataFrame: every input column plus the typed result columns (see
        :mod:`sklspark._outputs` for the types).

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
    chunk_size = check_chunk_size(chunk_size, "distribute")
    if isinstance(data, RDD):
        if features is not None or output_cols is not None:
            raise TypeError(
                "features= and output_cols= apply to DataFrame input; the elements of an RDD are "
                "the feature vectors themselves"
            )
        return _distribute_rdd(estimator, method, data, chunk_size, method_kwargs)
    if isinstance(data, DataFrame):
        return _distribute_dataframe(estimator, method, data, chunk_size, features, output_cols, method_kwargs)
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
    names = fitted_feature_names(estimator)  # dict / Row elements become DataFrames of these fields

    def head_rows():
        head = rdd.take(2)
        return stack_rows(head, 0, accept_sparse=False, names=names) if head else None

    if names is not None:
        _probe(estimator, method, method_kwargs, None, np.dtype(np.float32), head_rows)
    elif width is not None:
        # float32 zeros: a float32-fitted model (a large NearestNeighbors) is not upcast to score them
        _probe(estimator, method, method_kwargs, width, np.dtype(np.float32), head_rows)
    model = ShippedModel(estimator, rdd.context)

    def apply(index: int, rows: Iterable[Any]) -> Iterator[Any]:
        return score_rows(model, method, method_kwargs, rows, chunk_size, sparse_ok, names, index)

    return rdd.mapPartitionsWithIndex(apply, preservesPartitioning=True)


def score_rows(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    rows: Iterable[Any],
    chunk_size: int,
    sparse_ok: bool,
    names: tuple[str, ...] | None,
    partition: int,
) -> Iterator[Any]:
    """The task of an RDD partition: its elements stacked into chunks, scored, cut into one item per row.

    ``names``: the fields taken from ``dict``/``Row`` elements into pandas chunks, or ``None`` for vectors.
    """
    chunks = iter_row_chunks(rows, chunk_size, sparse_ok, names)
    for _, _, output in run_chunks(model, method, method_kwargs, chunks, partition=partition):
        yield from split_rows(output)


def score_batches(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    batches: Iterable[pa.RecordBatch],
    input_names: Sequence[str],
    spec: FeatureSpec,
    chunk_size: int,
    sparse_ok: bool,
    columns: list[OutputColumn],
) -> Iterator[pa.RecordBatch]:
    """The task of a DataFrame partition: Arrow batches re-cut into chunks, scored, result columns appended.

    The batches arrive with positional column names (see :func:`_distribute_dataframe`) and are read by
    ``input_names``; they leave with the same positional names followed by the result columns' names.
    """
    named = (pa.RecordBatch.from_arrays(b.columns, names=list(input_names)) for b in batches)
    chunks = (
        (start, batch, batch_to_matrix(batch, spec, start, sparse_ok))
        for start, batch in iter_batch_chunks(named, chunk_size)
    )
    output_names = _positional(len(input_names)) + [c.name for c in columns]
    convert = functools.partial(chunk_arrays, columns=columns)
    for _, batch, _, arrays in run_chunks(model, method, method_kwargs, chunks, convert=convert):
        yield pa.RecordBatch.from_arrays(batch.columns + arrays, names=output_names)


def _positional(n: int) -> list[str]:
    return [f"_sklspark_{i}" for i in range(n)]


def _head_matrix(df: DataFrame, spec: FeatureSpec):
    """The DataFrame's first two rows as the method's input (a small Spark job), or ``None`` if it is empty."""
    table = df.select(*(quote_column(c) for c in spec.columns)).limit(2).toArrow()
    if table.num_rows == 0:
        return None
    try:
        return batch_to_matrix(table.combine_chunks().to_batches()[0], spec, 0, accept_sparse=False)
    except ValueError as exc:
        raise ValueError(f"the DataFrame's first rows, read on the driver to check the method on them: {exc}") from exc


def _distribute_dataframe(
    estimator: Any,
    method: str,
    df: DataFrame,
    chunk_size: int,
    features: str | Sequence[str] | None,
    output_cols: str | Sequence[str] | None,
    method_kwargs: dict,
) -> DataFrame:
    spec = resolve_features(df.schema, estimator, features)
    head: list = []

    def head_rows():
        if not head:
            head.append(_head_matrix(df, spec))
        return head[0]

    width = spec.width
    if spec.is_matrix and width is None and n_features_of(estimator) is not None:
        rows = head_rows()
        width = rows.shape[1] if rows is not None else n_features_of(estimator)
    if width is not None:
        check_width(estimator, width, f"The DataFrame's {spec.describe()}")
    sparse_ok = spec.layout == "vector" and declares_sparse(estimator)
    # Frames and text are probed on the data's first rows: zeros are no valid category or document.
    zero_width = width if spec.is_matrix else None
    sample = _probe(estimator, method, method_kwargs, zero_width, spec.dtype, head_rows)
    if sample is None:
        raise ValueError(
            f"cannot tell the result columns of {type(estimator).__name__}.{method}: the DataFrame is empty and "
            f"the estimator does not record n_features_in_"
        )
    columns = output_columns(method, sample, output_cols, df.columns, estimator)
    model = ShippedModel(estimator, df)
    input_names = df.columns
    # mapInArrow resolves every input column by name and reads the output's names back, which fails on names
    # with dots or duplicates: the batches travel with positional names, and get their real ones inside the task.

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return score_batches(model, method, method_kwargs, batches, input_names, spec, chunk_size, sparse_ok, columns)

    return df.toDF(*_positional(len(input_names))).mapInArrow(
        apply, StructType(df.schema.fields + [c.field for c in columns])
    )
