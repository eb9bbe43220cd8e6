"""The scoring plan: every decision of one call, made once on the driver and read whole by every task.

:func:`build_plan` checks the user's arguments (a :class:`ScoringRequest`) against the fitted estimator
and the data, derives the feature spec and the result columns, ships the model and returns a frozen
:class:`ScoringPlan`. ``distribute()`` and ``udf()`` are siblings over it: the tasks they start run
:func:`score_rows` (an RDD partition) or :func:`score_batches` (a DataFrame's Arrow batches, also inside
the Arrow UDF of :func:`scoring_udf`), each with the plan as its only setting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark import RDD
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.functions import arrow_udf
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import DataType, StringType, StructType, _parse_datatype_string

from ._features import FeatureSpec, check_arrow_features, fitted_feature_names, resolve_features
from ._inputs import batch_to_matrix, iter_batch_chunks, iter_row_lists, null_feature_rows, stack_rows
from ._outputs import (
    ERROR_COLUMN,
    OutputColumn,
    chunk_arrays,
    declared_columns,
    default_names,
    describe_output,
    output_columns,
    shape_mismatch,
    split_rows,
)
from ._partitions import PartitionPolicy, partition_policy
from ._probe import feature_width, head_reader, no_rows, probe
from ._runner import ERROR_MARKER, BadInput, ChunkError, Piece, capped_threads, one_row_per_input, score_chunk
from ._shipping import BROADCAST_MAX_BYTES, ShippedModel
from ._validation import check_method, check_optional_chunk_size, check_scalar, declares_sparse, n_features_of

_log = logging.getLogger("sklspark")

#: Rows per chunk for an RDD, whose elements come one by one (DataFrames follow their Arrow batches).
RDD_CHUNK_SIZE = 4096

#: What a row that cannot be scored does: fail the job, or become nulls and a reason.
ON_ERROR = ("raise", "null")

#: Per worker process: whether a shipped model's method took CSR input, learnt on its first sparse chunk.
_takes_sparse: dict[tuple[str, str], bool] = {}


@dataclass(frozen=True)
class ScoringRequest:
    """The user's arguments to ``distribute()`` or ``udf()``, unchecked; :func:`build_plan` checks them."""

    estimator: Any
    method: Any
    caller: str
    method_kwargs: dict = field(default_factory=dict)
    chunk_size: Any = None
    features: Any = None
    output_cols: Any = None
    partitions: Any = None
    return_type: Any = None
    on_error: Any = "raise"


@dataclass(frozen=True, eq=False)
class ScoringPlan:
    """Everything a scoring task needs, decided once on the driver.

    Attributes
    ----------
    model : ShippedModel
        The estimator, serialised once (see :mod:`sklspark._shipping`).
    method : str
    label : str
        ``"<Estimator>.<method>"``, for messages.
    method_kwargs : dict
    spec : FeatureSpec or None
        Where a DataFrame's features are; ``None`` for an RDD, and for a ``udf()`` (resolved from the
        first Arrow batch of each task, where the argument columns' types are first seen).
    chunk_size : int or None
        Rows per call of the method; ``None``: one call per Arrow batch.
    sparse_ok : bool
        Sparse rows may be handed over as CSR.
    columns : tuple of OutputColumn
        The result columns (DataFrame, ``udf()``), ending with ``error`` when ``on_error="null"``.
    feature_names : tuple of str or None
        The estimator's ``feature_names_in_``: fields of ``dict``/``Row`` RDD elements, names of a
        ``udf()``'s argument columns.
    partitioning : PartitionPolicy or None
        How the input is spread first (``None`` for a ``udf()``, which has no input of its own).
    on_error : {"raise", "null"}
    """

    model: ShippedModel
    method: str
    label: str
    method_kwargs: dict = field(default_factory=dict)
    spec: FeatureSpec | None = None
    chunk_size: int | None = None
    sparse_ok: bool = False
    columns: tuple[OutputColumn, ...] = ()
    feature_names: tuple[str, ...] | None = None
    partitioning: PartitionPolicy | None = None
    on_error: str = "raise"

    @property
    def isolate(self) -> bool:
        """Whether failing rows are isolated (``on_error="null"``) instead of failing the task."""
        return self.on_error == "null"


def build_plan(request: ScoringRequest, data: RDD | DataFrame | None) -> ScoringPlan:
    """Check ``request`` against its estimator and ``data`` (``None`` for a ``udf()``) and decide everything.

    Raises
    ------
    TypeError, ValueError
        With scikit-learn's wording, naming the function the user called, before any Spark job (except
        the small one reading two rows where the method must be probed on real rows).
    """
    estimator, caller = request.estimator, request.caller
    check_method(estimator, request.method, caller)
    method: str = request.method
    chunk_size = check_optional_chunk_size(request.chunk_size, caller)
    on_error = check_scalar(request.on_error, "on_error", caller, kind=str, options=ON_ERROR)
    if isinstance(data, RDD):
        if request.features is not None or request.output_cols is not None:
            raise TypeError(
                "features= and output_cols= apply to DataFrame input; the elements of an RDD are "
                "the feature vectors themselves"
            )
        decided = _rdd_fields(request, data)
        chunk_size = chunk_size or RDD_CHUNK_SIZE
    elif isinstance(data, DataFrame):
        decided = _dataframe_fields(request, data)
    elif data is None:
        decided = _udf_fields(request)
    else:
        raise TypeError(f"data must be a pyspark RDD or DataFrame, got {type(data).__module__}.{type(data).__name__}")
    if on_error == "null" and decided.get("columns") is not None:
        existing = data.columns if isinstance(data, DataFrame) else ()
        if ERROR_COLUMN in existing:
            raise ValueError(
                f"on_error='null' adds a column {ERROR_COLUMN!r}, but the DataFrame already has one; rename it first"
            )
        decided["columns"] = (*decided["columns"], OutputColumn(ERROR_COLUMN, pa.string(), StringType()))
    session = data.context if isinstance(data, RDD) else data if data is not None else _active_session(caller)
    plan = ScoringPlan(
        model=ShippedModel(estimator, session),
        method=method,
        label=f"{type(estimator).__name__}.{method}",
        method_kwargs=dict(request.method_kwargs),
        chunk_size=chunk_size,
        partitioning=None if data is None else partition_policy(request.partitions, method, caller),
        on_error=on_error,
        **decided,
    )
    _log_plan(plan)
    return plan


def _log_plan(plan: ScoringPlan) -> None:
    model = plan.model
    _log.info(
        "%s: model shipped by %s (%.1f MiB pickled; a file above %d MiB), features %s, %s, on_error=%r",
        plan.label,
        model.via,
        model.nbytes / 2**20,
        BROADCAST_MAX_BYTES >> 20,
        plan.spec.describe() if plan.spec is not None else "as the elements or argument columns come",
        f"chunks of {plan.chunk_size} rows" if plan.chunk_size else "one call per Arrow batch",
        plan.on_error,
    )


def _active_session(caller: str) -> SparkSession:
    """The running session, seen from any thread (PySpark's active session is per thread)."""
    try:
        return SparkSession.active()
    except Exception as exc:
        raise RuntimeError(
            f"sklspark.{caller}() ships the model through the running Spark session; start one first"
        ) from exc


def _rdd_fields(request: ScoringRequest, rdd: RDD) -> dict:
    estimator = request.estimator
    width = n_features_of(estimator)
    names = fitted_feature_names(estimator)  # dict / Row elements become DataFrames of these fields

    def head_rows() -> Any:
        head = rdd.take(2)
        return stack_rows(head, 0, accept_sparse=False, names=names) if head else None

    if names is not None or width is not None:
        # float32 zeros: a float32-fitted model (a large NearestNeighbors) is not upcast to score them
        probe(
            estimator, request.method, request.method_kwargs, None if names else width, np.dtype(np.float32), head_rows
        )
    return {"sparse_ok": declares_sparse(estimator), "feature_names": names}


def _dataframe_fields(request: ScoringRequest, df: DataFrame) -> dict:
    estimator, method = request.estimator, request.method
    spec = resolve_features(df.schema, estimator, request.features)
    head_rows = head_reader(df, spec)
    width = feature_width(estimator, spec, head_rows)
    declared = None if spec.is_matrix else declared_columns(estimator, method, request.output_cols, df.columns)
    columns: list[OutputColumn] | None
    if declared is not None and df.isStreaming:
        columns = declared  # frames and text are probed on real rows, which a stream does not have yet
    else:
        # Frames and text are probed on the data's first rows: zeros are no valid category or document.
        sample = probe(estimator, method, request.method_kwargs, width, spec.dtype, head_rows)
        if sample is None and declared is None:
            raise ValueError(
                f"cannot tell the result columns of {type(estimator).__name__}.{method}: the DataFrame is empty and "
                f"the estimator does not record n_features_in_"
            )
        columns = (
            declared if sample is None else output_columns(method, sample, request.output_cols, df.columns, estimator)
        )
    assert columns is not None
    return {
        "spec": spec,
        "sparse_ok": spec.layout == "vector" and declares_sparse(estimator),
        "columns": tuple(columns),
        "feature_names": fitted_feature_names(estimator),
    }


def _udf_fields(request: ScoringRequest) -> dict:
    """A ``udf()``'s result columns: from ``return_type`` when given, else from the fitted estimator."""
    estimator, method = request.estimator, request.method
    if request.return_type is None:
        columns = _estimator_columns(request)
    else:
        columns = _return_type_columns(method, request.return_type)
        _check_return_type(request, columns)
    return {
        "columns": tuple(columns),
        "sparse_ok": declares_sparse(estimator),
        "feature_names": fitted_feature_names(estimator),
    }


def _estimator_columns(request: ScoringRequest) -> list[OutputColumn]:
    estimator, method = request.estimator, request.method
    name = f"{type(estimator).__name__}.{method}"
    declared = declared_columns(estimator, method, None, ())
    try:
        sample = probe(
            estimator, method, request.method_kwargs, n_features_of(estimator), np.dtype(np.float64), no_rows
        )
    except ValueError as exc:
        if declared is not None:
            return declared
        raise TypeError(f"cannot derive the return type of {name}: {exc}; pass return_type=...") from exc
    if sample is not None:
        return output_columns(method, sample, None, (), estimator)
    if declared is not None:
        return declared
    raise TypeError(
        f"cannot derive the return type of {name} without reading data: the estimator records no "
        f'n_features_in_; pass return_type=..., e.g. return_type="double"'
    )


def _check_return_type(request: ScoringRequest, columns: list[OutputColumn]) -> None:
    """Refuse a ``return_type`` that cannot hold the method's output, probed on rows of zeros where it can be.

    Where the estimator records no ``n_features_in_`` or refuses zeros, the tasks check each chunk
    (:func:`sklspark._outputs.chunk_arrays` names the declared type and what came).
    """
    estimator, method = request.estimator, request.method
    width = n_features_of(estimator)
    if width is None:
        return
    try:
        sample = probe(estimator, method, request.method_kwargs, width, np.dtype(np.float64), no_rows)
    except ValueError:
        return  # rows of zeros refused: the tasks check the real output
    mismatch = shape_mismatch(sample, columns)
    if mismatch is not None:
        returns = describe_output(sample)
        derived = result_type(output_columns(method, sample, None, (), estimator)).simpleString()
        raise TypeError(
            f"return_type={result_type(columns).simpleString()!r} does not match what "
            f"{type(estimator).__name__}.{method} returns, {returns}: {mismatch}; "
            f"use return_type={derived!r}, or leave it out to derive it"
        )


def _return_type_columns(method: str, return_type: DataType | str) -> list[OutputColumn]:
    spark_type = _parse_datatype_string(return_type) if isinstance(return_type, str) else return_type
    if not isinstance(spark_type, DataType):
        raise TypeError(f"return_type must be a Spark DataType or a DDL string, got {return_type!r}")
    if not isinstance(spark_type, StructType):
        return [OutputColumn(default_names(method, 1)[0], to_arrow_type(spark_type), spark_type)]
    return [OutputColumn(f.name, to_arrow_type(f.dataType), f.dataType) for f in spark_type.fields]


# --------------------------------------------------------------------------- in the tasks


class _Task:
    """One task's view of a plan: the loaded estimator, its method, and the feature spec once known."""

    def __init__(self, plan: ScoringPlan) -> None:
        self.plan = plan
        self.estimator = plan.model.get()
        self.fn = getattr(self.estimator, plan.method)
        self.n_features = n_features_of(self.estimator)

    def call(self, X: Any) -> Any:
        """The method on one stacked chunk (CSR made dense if the method refuses it), one output row per row."""
        plan = self.plan
        if sp.issparse(X):
            key = (plan.model.token, plan.method)
            if key not in _takes_sparse:
                _takes_sparse[key] = _accepts_sparse(self.estimator, plan.method, plan.method_kwargs, X.shape[1])
            if not _takes_sparse[key]:
                X = X.toarray()
        return one_row_per_input(self.fn(X, **plan.method_kwargs), X.shape[0])

    def read_batch(self, batch: pa.RecordBatch, first_row: int) -> Any:
        """One Arrow chunk as the method's input, checked against ``n_features_in_`` where that is recorded."""
        spec = self.plan.spec
        assert spec is not None
        try:
            X = batch_to_matrix(batch, spec, first_row, self.plan.sparse_ok and spec.layout == "vector")
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
        if spec.is_matrix and self.n_features is not None and X.shape[1] != self.n_features:
            raise BadInput(
                f"{spec.describe()} has {X.shape[1]} features at rows {first_row}-{first_row + X.shape[0] - 1}, "
                f"but the estimator was fitted on {self.n_features} features"
            )
        return X

    def read_rows(self, rows: list, first_row: int) -> Any:
        """RDD elements stacked as the method's input."""
        try:
            return stack_rows(rows, first_row, self.plan.sparse_ok, self.plan.feature_names)
        except ValueError as exc:
            raise BadInput(str(exc)) from exc


def _accepts_sparse(estimator: Any, method: str, method_kwargs: dict, width: int) -> bool:
    """Whether the method takes sparse (CSR) input of ``width`` features.

    The estimator must declare it through scikit-learn tags, and the method must accept two rows of CSR
    zeros: a fitted state can refuse sparse input that the class accepts (``NearestNeighbors`` fitted
    with a KD-tree, for one). The call can cost as much as scoring against the whole model (a brute
    ``NearestNeighbors`` over millions of rows), so it runs only where sparse rows are met.
    """
    if not declares_sparse(estimator):
        return False
    try:
        getattr(estimator, method)(sp.csr_matrix((2, width)), **method_kwargs)
    except Exception:  # noqa: BLE001 - any refusal means: give this method dense input
        return False
    return True


def score_rows(plan: ScoringPlan, rows: Iterable[Any]) -> Iterator[Any]:
    """The task of an RDD partition: its elements stacked into chunks, scored, cut into one item per row.

    With ``on_error="null"`` each item is a pair ``(result, None)``, or ``(None, reason)`` for a row
    that could not be scored.
    """
    task = _Task(plan)

    def score(chunk: list, first_row: int) -> Any:
        return task.call(task.read_rows(chunk, first_row))

    with capped_threads():
        for start, chunk in iter_row_lists(rows, plan.chunk_size or RDD_CHUNK_SIZE):
            positions = np.arange(start, start + len(chunk))
            for piece in score_chunk(score, chunk, positions, plan.label, plan.isolate):
                if piece.error is not None:
                    yield (None, piece.error)
                elif plan.isolate:
                    yield from ((item, None) for item in split_rows(piece.output))
                else:
                    yield from split_rows(piece.output)


def score_batches(plan: ScoringPlan, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task of a DataFrame partition: Arrow batches stacked into chunks, scored, one result batch per chunk.

    The batches hold the feature columns by the names of ``plan.spec`` (resolved from the first batch's
    Arrow types when the plan has none, as for a ``udf()``). Rows of a matrix layout with a missing
    feature value are not scored: their results are null. Each result batch holds ``plan.columns``.
    """
    task = _Task(plan)
    columns = plan.columns[:-1] if plan.isolate else plan.columns

    def score(chunk: pa.RecordBatch, first_row: int) -> list[pa.Array]:
        return chunk_arrays(task.call(task.read_batch(chunk, first_row)), columns)

    with capped_threads():
        for start, batch in iter_batch_chunks(batches, plan.chunk_size):
            if task.plan.spec is None:
                task.plan = replace(plan, spec=check_arrow_features(batch.schema, task.estimator))
            spec = task.plan.spec
            assert spec is not None
            missing = null_feature_rows(batch, spec) if spec.is_matrix else None
            positions = np.arange(start, start + batch.num_rows)
            if missing is not None:
                batch, positions = batch.filter(pa.array(~missing)), positions[~missing]
            arrays = _assemble(
                score_chunk(score, batch, positions, plan.label, plan.isolate) if len(positions) else [], columns, plan
            )
            if missing is not None:
                arrays = _with_null_rows(arrays, missing)
            yield pa.RecordBatch.from_arrays(arrays, names=[c.name for c in plan.columns])


def _assemble(pieces: list[Piece], columns: Sequence[OutputColumn], plan: ScoringPlan) -> list[pa.Array]:
    """The result arrays of a chunk's pieces, in row order: nulls where a piece failed, then the reasons."""
    if len(pieces) == 1 and pieces[0].error is None:
        arrays = list(pieces[0].output)
    else:
        arrays = [
            pa.concat_arrays(
                [p.output[j] if p.error is None else pa.nulls(p.length, c.arrow_type) for p in pieces]
                or [pa.nulls(0, c.arrow_type)]
            )
            for j, c in enumerate(columns)
        ]
    if plan.isolate and all(p.error is None for p in pieces):
        arrays.append(pa.nulls(sum(p.length for p in pieces), pa.string()))  # the clean case: no list of Nones
    elif plan.isolate:
        reasons = [reason for p in pieces for reason in [p.error] * p.length]
        arrays.append(pa.array(reasons, type=pa.string()))
    return arrays


def _with_null_rows(arrays: list[pa.Array], missing: np.ndarray) -> list[pa.Array]:
    """Arrays for the rows not ``missing``, spread over all rows with nulls at the missing ones."""
    index = pa.array(np.cumsum(~missing) - 1, mask=missing)
    return [array.take(index) for array in arrays]


def scoring_udf(plan: ScoringPlan) -> Any:
    """The plan as an Arrow iterator UDF named after the method, over its feature (argument) columns.

    It takes one Arrow array per batch (one argument column) or tuples of arrays (several), as Spark's
    Arrow iterator UDFs receive them, and yields one array per chunk: the result column, or a struct of
    the result columns for several. The arrays are named after ``plan.spec.columns``, else the
    estimator's ``feature_names_in_`` when there are as many, else ``argument 1``, ``argument 2``...
    Only the argument columns cross into Python; Spark keeps the rest of each row in the JVM.
    """
    known_names = plan.spec.columns if plan.spec is not None else plan.feature_names
    fields = [pa.field(c.name, c.arrow_type) for c in plan.columns]

    def to_batch(arrays: Any) -> pa.RecordBatch:
        arrays = arrays if isinstance(arrays, tuple) else (arrays,)
        if not arrays:
            fitted = ", ".join(plan.feature_names or ())
            raise ChunkError(
                f"{ERROR_MARKER} {plan.label} was called with no columns: Spark hands a Python function only the "
                f"columns named in its call, so in SQL name them"
                + (f": f({fitted}), the columns of feature_names_in_" if fitted else ", one per feature")
            )
        names = known_names
        if names is None or len(names) != len(arrays):
            names = tuple(f"argument {i + 1}" for i in range(len(arrays)))
        return pa.RecordBatch.from_arrays(list(arrays), names=list(names))

    def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        for result in score_batches(plan, map(to_batch, batches)):
            yield result.column(0) if len(fields) == 1 else pa.StructArray.from_arrays(result.columns, fields=fields)

    score.__name__ = plan.method
    return arrow_udf(score, result_type(plan.columns))  # type: ignore[call-overload]  # a struct type is fine


def result_type(columns: Sequence[OutputColumn]) -> DataType:
    """The Spark type of a scoring Column: the one result column's type, or a struct of all of them."""
    return columns[0].spark_type if len(columns) == 1 else StructType([c.field for c in columns])
