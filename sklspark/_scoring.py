"""The scoring plan: every decision of one call, made once on the driver and read whole by every task.

:func:`build_plan` checks the user's arguments (a :class:`ScoringRequest`) against the fitted estimator
and the data, derives the feature spec and the result columns, ships the model and returns a frozen
:class:`ScoringPlan`. ``distribute()`` and ``udf()`` are siblings over it: the tasks they start run
:func:`score_rows` (an RDD partition) or :func:`score_batches` (a DataFrame's Arrow batches, also inside
the Arrow UDF of :func:`scoring_udf`), each with the plan as its only setting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import sklearn
from pyspark import RDD
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.functions import arrow_udf
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import DataType, StringType, StructType, _parse_datatype_string

from ._features import FeatureSpec, check_arrow_features, resolve_features
from ._frames import READERS, FrameStyles, frame_styles
from ._inputs import batch_to_matrix, iter_batch_chunks, iter_row_lists, null_feature_rows, stack_rows
from ._operators import OperatorChoice, choose_operator
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
from ._shipping import BROADCAST_MAX_BYTES, ShippedFleet, ShippedModel
from ._validation import (
    MAX_BATCH_CHUNK,
    MAX_CHUNK_SIZE,
    check_method,
    check_optional_chunk_size,
    check_scalar,
    declares_sparse,
    n_features_of,
)

_log = logging.getLogger("sklspark")

#: Rows per chunk for an RDD, whose elements come one by one (DataFrames follow their Arrow batches).
RDD_CHUNK_SIZE = 4096

#: Feature bytes per chunk for a mapping of models over a DataFrame when ``chunk_size=None``: each model is
#: called once per key in a chunk, so larger chunks mean fewer, larger calls (scikit-learn validates the
#: input of every call, 0.1-0.7 ms); 64 MiB is 1,048,576 rows of 8 float64 features.
FLEET_CHUNK_BYTES = 64 << 20

#: What a row that cannot be scored does: fail the job, or become nulls and a reason.
ON_ERROR = ("raise", "null")

#: Per worker process: whether a shipped model's method took CSR input, learnt on its first sparse chunk.
_takes_sparse: dict[tuple[str, int, str], bool] = {}


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
    key: Any = None
    pandas_reader: Any = None

    @property
    def keyed(self) -> bool:
        """Whether the call has a mapping of models (a fleet) rather than one estimator."""
        return isinstance(self.estimator, Mapping)


@dataclass(frozen=True, eq=False)
class ScoringPlan:
    """Everything a scoring task needs, decided once on the driver.

    Attributes
    ----------
    model : ShippedModel or ShippedFleet
        The estimator, or the estimators keyed by a value, serialised once (see :mod:`sklspark._shipping`).
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
    n_features : int or None
        The width every chunk must have (``n_features_in_``, the same for every model of a mapping);
        ``None`` where the estimator records none.
    columns : tuple of OutputColumn
        The result columns (DataFrame, ``udf()``), ending with ``error`` when ``on_error="null"``.
    frame : FrameStyles or None
        For an estimator with ``feature_names_in_``: those names and how each column is handed over
        (null marker, Python types: :func:`sklspark._frames.frame_styles`), for ``dict``/``Row`` RDD
        elements and a ``udf()``'s argument columns.
    partitioning : PartitionPolicy or None
        How the input is spread first (``None`` for a ``udf()``, which has no input of its own).
    on_error : {"raise", "null"}
    key : str or None
        For a fleet: the key column (DataFrame), or ``"key"`` (the first argument of a ``udf()``, the
        first item of an RDD element's pair); ``None`` for one model.
    operator : OperatorChoice or None
        A DataFrame's: ``mapInArrow`` (every column through Python, :func:`map_batches`) or the Arrow
        UDF (only the feature columns, :func:`scoring_udf`), from the schema
        (:func:`sklspark._operators.choose_operator`); ``None`` for an RDD and a ``udf()``.
    """

    model: ShippedModel | ShippedFleet
    method: str
    label: str
    method_kwargs: dict = field(default_factory=dict)
    spec: FeatureSpec | None = None
    chunk_size: int | None = None
    sparse_ok: bool = False
    n_features: int | None = None
    columns: tuple[OutputColumn, ...] = ()
    frame: FrameStyles | None = None
    partitioning: PartitionPolicy | None = None
    on_error: str = "raise"
    key: str | None = None
    operator: OperatorChoice | None = None

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The estimator's ``feature_names_in_``, or ``None``."""
        return self.frame.columns if self.frame is not None else None

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
    caller = request.caller
    models = _fleet(request, data)
    keyed = request.keyed
    for estimator in models.values():
        check_method(estimator, request.method, caller)
    method: str = request.method
    chunk_size = check_optional_chunk_size(request.chunk_size, caller)
    on_error = check_scalar(request.on_error, "on_error", caller, kind=str, options=ON_ERROR)
    check_scalar(request.pandas_reader, "pandas_reader", caller, kind=str, options=READERS, none_ok=True)
    heads: dict = {}  # the data's first rows, read at most once for all the models
    if isinstance(data, RDD):
        if request.features is not None or request.output_cols is not None:
            raise TypeError(
                "features= and output_cols= apply to DataFrame input; the elements of an RDD are "
                "the feature vectors themselves"
            )
        chunk_size = chunk_size or RDD_CHUNK_SIZE
    elif not isinstance(data, DataFrame) and data is not None:
        raise TypeError(f"data must be a pyspark RDD or DataFrame, got {type(data).__module__}.{type(data).__name__}")
    decided = _agreed(
        {
            key: _rdd_fields(request, estimator, data, heads)
            if isinstance(data, RDD)
            else _dataframe_fields(request, estimator, data, heads)
            if isinstance(data, DataFrame)
            else _udf_fields(request, estimator)
            for key, estimator in models.items()
        }
    )
    if isinstance(data, DataFrame) and chunk_size is None and keyed:
        spec: FeatureSpec = decided["spec"]
        width = spec.width or decided["n_features"] or len(spec.columns)
        chunk_size = min(max(FLEET_CHUNK_BYTES // (8 * width), MAX_BATCH_CHUNK), MAX_CHUNK_SIZE)
    if on_error == "null" and decided.get("columns") is not None:
        existing = data.columns if isinstance(data, DataFrame) else ()
        if ERROR_COLUMN in existing:
            raise ValueError(
                f"on_error='null' adds a column {ERROR_COLUMN!r}, but the DataFrame already has one; rename it first"
            )
        decided["columns"] = (*decided["columns"], OutputColumn(ERROR_COLUMN, pa.string(), StringType()))
    session = data.context if isinstance(data, RDD) else data if data is not None else _active_session(caller)
    kinds = sorted({type(estimator).__name__ for estimator in models.values()})
    plan = ScoringPlan(
        model=ShippedFleet(models, session) if keyed else ShippedModel(request.estimator, session),
        method=method,
        label=f"{kinds[0] if len(kinds) == 1 else 'model'}.{method}",
        method_kwargs=dict(request.method_kwargs),
        chunk_size=chunk_size,
        partitioning=None if data is None else partition_policy(request.partitions, method, caller),
        on_error=on_error,
        key=(request.key if isinstance(data, DataFrame) else "key") if keyed else None,
        operator=choose_operator(data.schema, decided["spec"].columns, keyed) if isinstance(data, DataFrame) else None,
        **decided,
    )
    _log_plan(plan)
    return plan


def _fleet(request: ScoringRequest, data: RDD | DataFrame | None) -> Mapping[Any, Any]:
    """The models of a call by key: the user's mapping (checked with its ``key=``), or ``{None: estimator}``."""
    estimator, key, caller = request.estimator, request.key, request.caller
    if not request.keyed:
        if key is not None:
            raise TypeError(
                f"key= names the column that picks a model from a mapping of models; {caller}() got one model"
            )
        return {None: estimator}
    if not estimator:
        raise ValueError(f"{caller}() got an empty mapping of models")
    if isinstance(data, DataFrame):
        check_scalar(key, "key", caller, kind=str)
        if key not in data.columns:
            raise ValueError(f"key column {key!r} not found; the DataFrame has columns {data.columns}")
    elif key is not None:
        where = (
            "an RDD's elements are (key, features) pairs" if isinstance(data, RDD) else "the key is the first column"
        )
        raise TypeError(f"key= applies to a DataFrame; {where}")
    return estimator


def _agreed(decisions: dict[Any, dict]) -> dict:
    """The decisions of a fleet's models, which must agree on the features, their count and the result columns."""
    (first_key, first), *others = decisions.items()
    for key, decided in others:
        for name in _AGREE:
            if decided.get(name) != first.get(name):
                raise ValueError(
                    f"the models for keys {first_key!r} and {key!r} disagree on their {_AGREE[name]}: "
                    f"{_describe(first.get(name))} against {_describe(decided.get(name))}; every model of a mapping "
                    f"must give the same result columns from the same features"
                )
    return {**first, "sparse_ok": all(d["sparse_ok"] for d in decisions.values())}


_AGREE = {"spec": "features", "n_features": "feature counts (n_features_in_)", "columns": "result columns"}


def _describe(decided: Any) -> str:
    if isinstance(decided, FeatureSpec):
        return decided.describe()
    if decided is None or isinstance(decided, int):
        return str(decided)
    return ", ".join(f"{c.name} {c.spark_type.simpleString()}" for c in decided)


def _log_plan(plan: ScoringPlan) -> None:
    model = plan.model
    if plan.operator is not None:
        _log.info("%s: scored by %s (%s)", plan.label, plan.operator.operator, plan.operator.reason)
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


def _rdd_fields(request: ScoringRequest, estimator: Any, rdd: RDD, heads: dict) -> dict:
    """The decisions for one model over an RDD (of ``(key, features)`` pairs for a mapping of models)."""
    width = n_features_of(estimator)
    frame = frame_styles(estimator, request.pandas_reader)  # dict / Row elements become DataFrames of these

    def head_rows() -> Any:
        if "rdd" not in heads:
            heads["rdd"] = rdd.take(2)
        head = [pair[1] for pair in heads["rdd"]] if request.keyed else heads["rdd"]
        return stack_rows(head, 0, accept_sparse=False, frame=frame) if head else None

    if frame is not None or width is not None:
        # float32 zeros: a float32-fitted model (a large NearestNeighbors) is not upcast to score them
        probe(
            estimator, request.method, request.method_kwargs, None if frame else width, np.dtype(np.float32), head_rows
        )
    return {"sparse_ok": declares_sparse(estimator), "frame": frame, "n_features": width}


def _dataframe_fields(request: ScoringRequest, estimator: Any, df: DataFrame, heads: dict) -> dict:
    """The decisions for one model over a DataFrame."""
    method = request.method
    frame = frame_styles(estimator, request.pandas_reader)
    spec = resolve_features(df.schema, estimator, request.features, frame)
    head_rows = head_reader(df, spec, heads)
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
        "n_features": n_features_of(estimator),
        "columns": tuple(columns),
        "frame": frame,
    }


def _udf_fields(request: ScoringRequest, estimator: Any) -> dict:
    """A ``udf()``'s result columns for one model: from ``return_type`` when given, else from the model."""
    method = request.method
    if request.return_type is None:
        columns = _estimator_columns(request, estimator)
    else:
        columns = _return_type_columns(method, request.return_type)
        _check_return_type(request, estimator, columns)
    frame = frame_styles(estimator, request.pandas_reader)
    return {
        "columns": tuple(columns),
        "sparse_ok": declares_sparse(estimator),
        "frame": frame,
        "n_features": n_features_of(estimator),
    }


def _estimator_columns(request: ScoringRequest, estimator: Any) -> list[OutputColumn]:
    method = request.method
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


def _check_return_type(request: ScoringRequest, estimator: Any, columns: list[OutputColumn]) -> None:
    """Refuse a ``return_type`` that cannot hold the method's output, probed on rows of zeros where it can be.

    Where the estimator records no ``n_features_in_`` or refuses zeros, the tasks check each chunk
    (:func:`sklspark._outputs.chunk_arrays` names the declared type and what came).
    """
    method = request.method
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


#: The name a fleet's key column has inside a task's Arrow batches.
_KEY_FIELD = "__sklspark_key"


class _Task:
    """One task's view of a plan: the loaded model(s), the method, and the feature spec once known."""

    def __init__(self, plan: ScoringPlan) -> None:
        self.plan = plan
        self.keyed = isinstance(plan.model, ShippedFleet)
        self.estimator = None if isinstance(plan.model, ShippedFleet) else plan.model.get()  # narrows for mypy

    def call(self, estimator: Any, X: Any) -> Any:
        """The method on one stacked chunk (CSR made dense if the method refuses it), one output row per row."""
        plan = self.plan
        if sp.issparse(X):
            key = (plan.model.token, id(estimator), plan.method)
            if key not in _takes_sparse:
                _takes_sparse[key] = _accepts_sparse(estimator, plan.method, plan.method_kwargs, X.shape[1])
            if not _takes_sparse[key]:
                X = X.toarray()
        output = getattr(estimator, plan.method)(X, **plan.method_kwargs)
        return one_row_per_input(output, X.shape[0])

    def score(self, X: Any, keys: np.ndarray | None, convert: Callable[[Any], list], first_row: int) -> list:
        """``convert`` of the method's output on ``X``: a list of row-indexed parts (Arrow arrays, RDD items).

        With ``keys`` (a fleet), the rows are grouped by key, each key's model called once on its rows,
        and the converted parts put back in the rows' order; no shuffle. ``first_row``: the chunk's
        position in the partition, for messages.
        """
        if keys is None:
            return convert(self.call(self.estimator, X))
        assert isinstance(self.plan.model, ShippedFleet)
        groups = _groups(keys)
        for key, rows in groups.items():
            if key not in self.plan.model:
                shown = ", ".join(str(first_row + r) for r in rows[:5])
                raise LookupError(f"no model for key {key!r}, at row(s) {shown}{' ...' if len(rows) > 5 else ''}")
        # Many small calls: scikit-learn's finiteness check of each group is done once for the chunk here.
        finite = isinstance(X, np.ndarray) and X.dtype.kind == "f" and bool(np.isfinite(X).all())
        with sklearn.config_context(assume_finite=True) if finite else contextlib.nullcontext():
            parts = [convert(self.call(self.plan.model.get(key), _take_rows(X, rows))) for key, rows in groups.items()]
        position = np.empty(len(keys), dtype=np.int64)
        position[np.concatenate(list(groups.values()))] = np.arange(len(keys))
        return [_concat_parts([p[j] for p in parts], position) for j in range(len(parts[0]))]

    def read_batch(self, batch: pa.RecordBatch, first_row: int) -> tuple[Any, np.ndarray | None]:
        """One Arrow chunk as the method's input, checked against ``n_features_in_`` where that is recorded."""
        spec = self.plan.spec
        assert spec is not None
        try:
            X = batch_to_matrix(batch, spec, first_row, self.plan.sparse_ok and spec.layout == "vector")
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
        n_features = self.plan.n_features
        if spec.is_matrix and n_features is not None and X.shape[1] != n_features:
            raise BadInput(
                f"{spec.describe()} has {X.shape[1]} features at rows {first_row}-{first_row + X.shape[0] - 1}, "
                f"but the estimator was fitted on {n_features} features"
            )
        if not self.keyed:
            return X, None
        keys = batch.column(_KEY_FIELD)
        if keys.null_count:
            rows = np.flatnonzero(np.asarray(keys.is_null()))[:5] + first_row
            raise BadInput(f"the key is null at row(s) {', '.join(map(str, rows))}; a null key picks no model")
        return X, np.asarray(keys.to_numpy(zero_copy_only=False))

    def read_rows(self, rows: list, first_row: int) -> tuple[Any, np.ndarray | None]:
        """RDD elements stacked as the method's input (``(key, features)`` pairs for a fleet)."""
        keys = None
        if self.keyed:
            bad = next((i for i, row in enumerate(rows) if not (isinstance(row, tuple) and len(row) == 2)), None)
            if bad is not None:
                raise BadInput(f"row {first_row + bad} is not a (key, features) pair: {rows[bad]!r:.80}")
            keys = np.array([row[0] for row in rows], dtype=object)
            rows = [row[1] for row in rows]
        try:
            return stack_rows(rows, first_row, self.plan.sparse_ok, self.plan.frame), keys
        except ValueError as exc:
            raise BadInput(str(exc)) from exc


def _groups(keys: np.ndarray) -> dict[Any, np.ndarray]:
    """Row positions by key, in order of first appearance, each ascending."""
    if keys.dtype == object:
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys.tolist()):
            groups.setdefault(key, []).append(i)
        return {key: np.array(rows) for key, rows in groups.items()}
    uniques, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniques)))[:-1]
    by_key = dict(zip(uniques.tolist(), np.split(order, bounds)))
    return {key: by_key[key] for key in uniques[np.argsort(first)].tolist()}


def _take_rows(X: Any, rows: np.ndarray) -> Any:
    return X.iloc[rows] if hasattr(X, "iloc") else X[rows]


def _concat_parts(parts: list, position: np.ndarray) -> Any:
    """Row-indexed parts of the groups, concatenated and put back in the rows' order."""
    if isinstance(parts[0], pa.Array):
        return pa.concat_arrays(parts).take(pa.array(position))
    items = [item for part in parts for item in part]
    return [items[i] for i in position]


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
        X, keys = task.read_rows(chunk, first_row)
        return task.score(X, keys, lambda output: [split_rows(output)], first_row)[0]

    with capped_threads():
        for start, chunk in iter_row_lists(rows, plan.chunk_size or RDD_CHUNK_SIZE):
            for piece in score_chunk(score, chunk, range(start, start + len(chunk)), plan.label, plan.isolate):
                if piece.error is not None:
                    yield (None, piece.error)
                elif plan.isolate:
                    yield from ((item, None) for item in piece.output)
                else:
                    yield from piece.output


def score_batches(plan: ScoringPlan, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task of a DataFrame partition: Arrow batches stacked into chunks, scored, one result batch per chunk.

    The batches hold the feature columns by the names of ``plan.spec`` (resolved from the first batch's
    Arrow types when the plan has none, as for a ``udf()``), and a fleet's key column. Rows of a matrix
    layout with a missing feature value are not scored: their results are null. Each result batch holds
    ``plan.columns``.
    """
    names = [c.name for c in plan.columns]
    for _, arrays in _scored_chunks(plan, batches):
        yield pa.RecordBatch.from_arrays(arrays, names=names)


def map_batches(plan: ScoringPlan, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task of ``mapInArrow`` (``plan.operator``): each chunk's columns, unchanged, then its result columns.

    The batches hold every column of the DataFrame; the chunks follow them as in :func:`score_batches`,
    so the rows keep their order.
    """
    names = [c.name for c in plan.columns]
    for chunk, arrays in _scored_chunks(plan, batches):
        yield pa.RecordBatch.from_arrays([*chunk.columns, *arrays], names=[*chunk.schema.names, *names])


def _scored_chunks(
    plan: ScoringPlan, batches: Iterable[pa.RecordBatch]
) -> Iterator[tuple[pa.RecordBatch, list[pa.Array]]]:
    """Each chunk of the batches (as read, all its rows) and its result arrays, one per ``plan.columns``."""
    task = _Task(plan)
    columns = plan.columns[:-1] if plan.isolate else plan.columns

    def score(chunk: pa.RecordBatch, first_row: int) -> list[pa.Array]:
        X, keys = task.read_batch(chunk, first_row)
        return task.score(X, keys, functools.partial(chunk_arrays, columns=columns), first_row)

    with capped_threads():
        for start, chunk in iter_batch_chunks(batches, plan.chunk_size):
            if task.plan.spec is None:
                features = chunk.drop_columns([_KEY_FIELD]) if task.keyed else chunk
                some_model = task.estimator if task.estimator is not None else next(iter_models(plan))
                task.plan = replace(plan, spec=check_arrow_features(features.schema, some_model, plan.frame))
            spec = task.plan.spec
            assert spec is not None
            missing = null_feature_rows(chunk, spec) if spec.is_matrix else None
            batch = chunk
            positions: Sequence[int] = range(start, start + batch.num_rows)  # no array unless rows are dropped
            if missing is not None:
                batch, positions = batch.filter(pa.array(~missing)), np.arange(start, start + batch.num_rows)[~missing]
            pieces = score_chunk(score, batch, positions, plan.label, plan.isolate) if len(positions) else []
            arrays = _assemble(pieces, columns, plan)
            if missing is not None:
                arrays = _with_null_rows(arrays, missing)
            yield chunk, arrays


def iter_models(plan: ScoringPlan) -> Iterator[Any]:
    """The plan's models, loaded in this process (a fleet's in key order)."""
    model = plan.model
    if isinstance(model, ShippedFleet):
        yield from (model.get(key) for key in model.offsets)
    else:
        yield model.get()


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
    the result columns for several. For a fleet the first argument is the key. The feature arrays are
    named after ``plan.spec.columns``, else the estimator's ``feature_names_in_`` when there are as
    many, else ``argument 1``, ``argument 2``...
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
        key = (_KEY_FIELD,) if plan.key is not None else ()
        names = known_names
        if names is None or len(names) != len(arrays) - len(key):
            names = tuple(f"argument {i + 1 + len(key)}" for i in range(len(arrays) - len(key)))
        return pa.RecordBatch.from_arrays(list(arrays), names=[*key, *names])

    def score(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        for result in score_batches(plan, map(to_batch, batches)):
            yield result.column(0) if len(fields) == 1 else pa.StructArray.from_arrays(result.columns, fields=fields)

    score.__name__ = plan.method
    return arrow_udf(score, result_type(plan.columns))  # type: ignore[call-overload]  # a struct type is fine


def result_type(columns: Sequence[OutputColumn]) -> DataType:
    """The Spark type of a scoring Column: the one result column's type, or a struct of all of them."""
    return columns[0].spark_type if len(columns) == 1 else StructType([c.field for c in columns])
