"""Input adapters: turn RDD elements or Arrow record batches into stacked chunk matrices.

Every adapter yields ``(first_row, X)`` pairs (or ``(first_row, batch, X)`` for Arrow), where
``first_row`` is the position of the chunk's first row inside its partition and ``X`` holds at
most ``chunk_size`` rows: a dense ``ndarray``, or a CSR matrix when the input is sparse and
the estimator accepts sparse input; a pandas DataFrame for named columns (layout ``"frame"``);
a 1-D object array of ``str`` for a text column (layout ``"text"``). Bad rows raise ``ValueError``
naming the row's position in the partition; the chunk runner adds the method and partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pyspark.ml.linalg import DenseVector, SparseVector
from pyspark.sql import Row

from ._features import FeatureSpec
from ._frames import ColumnStyle, FrameStyles
from ._validation import MAX_BATCH_CHUNK

# --------------------------------------------------------------------------- RDD elements


def _row_to_array(row: Any, position: int) -> np.ndarray | sp.csr_matrix:
    """One RDD element as a 1-D array, or as a 1-row CSR matrix if it is sparse."""
    if isinstance(row, np.ndarray):
        if row.ndim != 1:
            raise ValueError(f"row {position} is an array of shape {row.shape}; expected a 1-D array")
        return row
    if isinstance(row, DenseVector):
        return row.toArray()
    if isinstance(row, SparseVector):
        return sp.csr_matrix((row.values, row.indices, np.array([0, len(row.indices)])), shape=(1, row.size))
    if sp.issparse(row):
        if row.shape[0] != 1:
            raise ValueError(f"row {position} is a sparse matrix of shape {row.shape}; expected one row")
        return sp.csr_matrix(row)
    if isinstance(row, (list, tuple)):
        arr = np.asarray(row)
        if arr.ndim != 1 or arr.dtype.kind not in "biuf":
            raise ValueError(f"row {position} is not a flat sequence of numbers: {_short(row)}")
        return arr
    if row is None:
        raise ValueError(f"row {position} is None; expected a vector of features")
    raise ValueError(
        f"row {position} is a {type(row).__name__}; expected a 1-D numpy array, a list/tuple of numbers, "
        f"a pyspark.ml.linalg vector or a 1-row scipy sparse matrix"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _records_frame(rows: list, frame: FrameStyles, first_row: int) -> pd.DataFrame:
    """``dict`` / ``Row`` elements as a pandas DataFrame of the fields ``frame.columns``, typed like named columns."""
    names = frame.columns
    records = []
    for i, row in enumerate(rows):
        record = row.asDict() if isinstance(row, Row) else row
        if not isinstance(record, dict):
            raise ValueError(
                f"row {first_row + i} is a {type(row).__name__}; expected a dict or Row like row {first_row}"
            )
        missing = [name for name in names if name not in record]
        if missing:
            raise ValueError(
                f"row {first_row + i} has no field(s) {missing}; the estimator was fitted on {list(names)}"
            )
        records.append({name: record[name] for name in names})
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"rows {first_row}-{first_row + len(rows) - 1} mix value types in one field: {exc}") from exc
    kinds = tuple(arrow_kind(column.type) for column in table.columns)
    return frame_from_columns(table.columns, FeatureSpec("frame", names, np.dtype(object), kinds, frame.styles))


def stack_rows(
    rows: list, first_row: int, accept_sparse: bool, frame: FrameStyles | None = None
) -> np.ndarray | sp.csr_matrix | pd.DataFrame:
    """Stack RDD elements into one matrix (CSR if any row is sparse and the estimator accepts it).

    With ``frame`` (the estimator's ``feature_names_in_`` and their styles), ``dict`` / ``Row`` elements
    give a pandas DataFrame of those fields instead, typed as :func:`frame_from_columns` types named columns.
    """
    if frame is not None and isinstance(rows[0], (dict, Row)):
        return _records_frame(rows, frame, first_row)
    arrays = [_row_to_array(row, first_row + i) for i, row in enumerate(rows)]
    width = arrays[0].shape[-1]
    for i, arr in enumerate(arrays):
        if arr.shape[-1] != width:
            raise ValueError(
                f"row {first_row + i} has {arr.shape[-1]} features but row {first_row} has {width}; "
                f"all rows must have the same number of features"
            )
    if not any(sp.issparse(a) for a in arrays):
        return np.stack(arrays)
    stacked = sp.vstack([a if sp.issparse(a) else sp.csr_matrix(a[None, :]) for a in arrays], format="csr")
    return stacked if accept_sparse else stacked.toarray()


def iter_row_lists(rows: Iterable, chunk_size: int) -> Iterator[tuple[int, list]]:
    """Group an iterator of RDD elements into lists of at most ``chunk_size`` rows, each with its first row's position.

    Each list is stacked into the method's input by :func:`stack_rows` when it is scored.
    """
    buffer: list = []
    first_row = 0
    for row in rows:
        buffer.append(row)
        if len(buffer) == chunk_size:
            yield first_row, buffer
            first_row += chunk_size
            buffer = []
    if buffer:
        yield first_row, buffer


# --------------------------------------------------------------------------- Arrow batches


def iter_batch_chunks(
    batches: Iterable[pa.RecordBatch], chunk_size: int | None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Re-cut a stream of Arrow record batches into batches of exactly ``chunk_size`` rows (the last may be short).

    ``chunk_size=None`` follows the stream's own batches (no copy), cutting only those longer than
    :data:`~sklspark._validation.MAX_BATCH_CHUNK` rows.
    """
    if chunk_size is None:
        first_row = 0
        for batch in batches:
            for start in range(0, batch.num_rows, MAX_BATCH_CHUNK):
                piece = batch.slice(start, MAX_BATCH_CHUNK)
                yield first_row, piece
                first_row += piece.num_rows
        return
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    first_row = 0
    for batch in batches:
        while batch.num_rows:
            take = min(chunk_size - n_pending, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch = batch.slice(take)
            n_pending += take
            if n_pending == chunk_size:
                yield first_row, _concat(pending)
                first_row += n_pending
                pending, n_pending = [], 0
    if pending:
        yield first_row, _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _check_no_nulls(array: pa.Array, what: str, first_row: int) -> None:
    if array.null_count:
        row = pc.index(pc.is_null(array), True).as_py()
        raise ValueError(f"{what} is null at row {first_row + row}; rows with missing features cannot be scored")


def null_feature_rows(batch: pa.RecordBatch, spec: FeatureSpec) -> np.ndarray | None:
    """Rows of a matrix layout with a missing feature value: a null cell, or a null element of an array.

    Returns a boolean mask, or ``None`` when no row has one (the common case, checked without a copy).
    Such rows are not scored: their result is null, as Spark's own functions give null for null input.
    """
    mask: np.ndarray | None = None
    for name in spec.columns:
        column = batch.column(name)
        missing = np.asarray(column.is_null()) if column.null_count else None
        if spec.layout in ("vector", "array"):
            values = column.flatten()[3] if spec.layout == "vector" else column  # flatten() honours slices
            # No null in the unsliced elements (the common case, no copy): none in this slice either.
            elements = values.values if not values.values.null_count else values.flatten()
            if elements.null_count:
                lengths = np.diff(_list_offsets(values))
                owner = np.repeat(np.arange(len(values)), lengths)  # the row of each element
                has_null = np.zeros(len(values), dtype=bool)
                has_null[owner[np.asarray(elements.is_null())]] = True
                missing = has_null if missing is None else missing | has_null
        if missing is not None:
            mask = missing if mask is None else mask | missing
    return mask


def _list_offsets(array: pa.ListArray) -> np.ndarray:
    offsets = np.asarray(array.offsets, dtype=np.int64)
    return offsets - offsets[0]


def _check_equal_widths(widths: np.ndarray, what: str, first_row: int) -> int:
    if widths.size == 0:
        return 0
    width = int(widths[0])
    bad = np.flatnonzero(widths != width)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{what} has {int(widths[i])} values at row {first_row + i} but {width} at row {first_row}; "
            f"all rows must have the same number of features"
        )
    return width


def _list_values(array: pa.ListArray, what: str, first_row: int) -> np.ndarray:
    values = array.flatten()
    if values.null_count:
        # Find the row that holds the first null element.
        offsets = _list_offsets(array)
        element = pc.index(pc.is_null(values), True).as_py()
        row = int(np.searchsorted(offsets, element, side="right") - 1)
        raise ValueError(f"{what} has a null element at row {first_row + row}")
    return values.to_numpy(zero_copy_only=False)


def _array_column(column: pa.ListArray, spec: FeatureSpec, first_row: int) -> np.ndarray:
    what = f"array column {spec.columns[0]!r}"
    _check_no_nulls(column, what, first_row)
    width = _check_equal_widths(np.diff(_list_offsets(column)), what, first_row)
    return _list_values(column, what, first_row).astype(spec.dtype, copy=False).reshape(len(column), width)


def _vector_column(column: pa.StructArray, spec: FeatureSpec, first_row: int, accept_sparse: bool):
    """Decode Spark ML's VectorUDT struct<type, size, indices, values> into a dense or CSR matrix."""
    what = f"vector column {spec.columns[0]!r}"
    _check_no_nulls(column, what, first_row)
    kind, size, indices, values = column.flatten()  # flatten() honours the struct's slice offset
    is_sparse = kind.to_numpy(zero_copy_only=False) == 0
    offsets = _list_offsets(values)
    lengths = np.diff(offsets)
    flat_values = _list_values(values, what, first_row)
    widths = np.where(is_sparse, size.fill_null(0).to_numpy(zero_copy_only=False), lengths)
    width = _check_equal_widths(widths, what, first_row)
    n = len(column)
    if not is_sparse.any():
        return flat_values.reshape(n, width)
    # Column positions: 0..len-1 within each dense row, the stored indices for sparse rows.
    col = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    col[np.repeat(is_sparse, lengths)] = indices.filter(pa.array(is_sparse)).flatten().to_numpy()
    matrix = sp.csr_matrix((flat_values, col, offsets), shape=(n, width))
    return matrix if accept_sparse else matrix.toarray()


def _numeric_columns(batch: pa.RecordBatch, spec: FeatureSpec, first_row: int) -> np.ndarray:
    out = np.empty((batch.num_rows, len(spec.columns)), dtype=spec.dtype)
    for j, name in enumerate(spec.columns):
        column = batch.column(name)
        _check_no_nulls(column, f"feature column {name!r}", first_row)
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out


def _null_rows(array: pa.Array, first_row: int, limit: int = 5) -> str:
    rows = np.flatnonzero(np.asarray(array.is_null())) + first_row
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"{shown} and {rows.size - limit} more" if rows.size > limit else shown


def _text_column(column: pa.Array, spec: FeatureSpec, first_row: int) -> np.ndarray:
    if column.null_count:
        raise ValueError(
            f"text column {spec.columns[0]!r} is null at row(s) {_null_rows(column, first_row)}; a missing "
            f"document cannot be scored (fill it, e.g. with an empty string, or filter it out)"
        )
    return column.to_numpy(zero_copy_only=False)


#: Arrow types, as met in RDD records, and the conversion of :func:`_pandas_column` they take.
_ARROW_KINDS = (
    (pa.types.is_string, "string"),
    (pa.types.is_large_string, "string"),
    (pa.types.is_boolean, "bool"),
    (pa.types.is_integer, "int"),
    (pa.types.is_floating, "float"),
    (pa.types.is_decimal, "decimal"),
    (pa.types.is_date, "date"),
    (pa.types.is_timestamp, "timestamp"),
)


def arrow_kind(arrow_type: pa.DataType) -> str:
    """The conversion a column of ``arrow_type`` takes; all-null columns are missing strings."""
    if pa.types.is_null(arrow_type):
        return "string"
    kind = next((k for test, k in _ARROW_KINDS if test(arrow_type)), None)
    if kind is None:
        raise ValueError(
            f"a field of type {arrow_type} has no pandas scalar dtype; expected str, numbers, bool, dates or timestamps"
        )
    return kind


def _objects(values: np.ndarray, nulls: np.ndarray | None, style: ColumnStyle) -> np.ndarray:
    """An object column with its nulls (``None`` from Arrow) set to the style's marker."""
    if nulls is not None and style.missing == "nan":
        values = values.astype(object, copy=False)
        values[nulls] = np.nan
    return values


def _wall_clock(column: pa.Array, style: ColumnStyle) -> pa.Array:
    """A timestamp column without its zone: local wall-clock time, or UTC for ``read_parquet``."""
    if column.type.tz is None:
        return column
    if style.timestamps == "utc":
        return column.cast(pa.timestamp(column.type.unit))
    return pc.local_timestamp(column)


def _datetimes(column: pa.Array, style: ColumnStyle) -> np.ndarray:
    """``datetime64[ns]``, but a zone-less timestamp keeps its unit as ``read_parquet`` reads it from Spark."""
    keep_unit = style.timestamps == "utc" and column.type.tz is None
    values = _wall_clock(column, style).to_numpy(zero_copy_only=False)
    return values if keep_unit else values.astype("datetime64[ns]")


def _timestamp_strings(column: pa.Array) -> np.ndarray:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` per value, as ``str(pd.Timestamp)`` writes it; ``None`` for null."""
    micros = column.cast(pa.timestamp("us"))
    fraction = np.asarray(micros.cast(pa.int64()).fill_null(0)) % 1_000_000 != 0
    whole = micros.cast(pa.timestamp("s"), safe=False).cast(pa.string())  # "2024-01-02 03:04:05"
    fine = micros.cast(pa.string())  # with six decimals
    return pc.if_else(pa.array(fraction), fine, whole).to_numpy(zero_copy_only=False)


def _pandas_column(column: pa.Array, kind: str, style: ColumnStyle) -> np.ndarray:
    """One Arrow column as the style's pandas reader would give it (see :func:`~sklspark._validation.frame_spec`)."""
    nulls = np.asarray(column.is_null()) if column.null_count else None
    if kind == "float":
        values = column.to_numpy(zero_copy_only=False)  # nulls -> NaN
        return values.astype(np.float64, copy=False) if style.widen else values
    if kind == "int":
        if nulls is not None:
            return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        values = column.to_numpy(zero_copy_only=False)
        return values.astype(np.int64, copy=False) if style.widen else values
    if kind == "decimal":
        if style.decimals == "float":  # through the text, as read_csv parses it: Arrow's direct cast is not exact
            return column.cast(pa.string()).cast(pa.float64()).to_numpy(zero_copy_only=False)
        return _objects(column.to_numpy(zero_copy_only=False), nulls, style)
    if kind == "date":
        if style.dates == "date":
            return _objects(column.to_pandas(date_as_object=True).to_numpy(), nulls, style)
        if style.dates == "str":
            return _objects(column.cast(pa.string()).to_numpy(zero_copy_only=False), nulls, style)
        return column.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False).astype("datetime64[ns]")
    if kind == "timestamp":
        if style.timestamps == "str":
            return _objects(_timestamp_strings(_wall_clock(column, style)), nulls, style)
        return _datetimes(column, style)
    values = column.to_numpy(zero_copy_only=False)  # strings, and booleans with nulls: object with None
    if kind == "bool" and nulls is None:
        return values
    return _objects(values.astype(object, copy=False), nulls, style)


def frame_from_columns(columns: list[pa.Array], spec: FeatureSpec) -> pd.DataFrame:
    """Arrow columns, one per name of a ``"frame"`` spec, as a pandas DataFrame with those names in that order."""
    data = {
        name: _pandas_column(column, kind, style)
        for name, column, kind, style in zip(spec.columns, columns, spec.kinds, spec.styles)
    }
    return pd.DataFrame(data, columns=list(spec.columns), copy=False)


def batch_to_matrix(batch: pa.RecordBatch, spec: FeatureSpec, first_row: int, accept_sparse: bool) -> Any:
    """The feature column(s) of one Arrow record batch as the method's input.

    A dense or CSR matrix for the matrix layouts, a pandas DataFrame for ``"frame"``, a 1-D
    object array of ``str`` for ``"text"``.
    """
    if spec.layout == "frame":
        return frame_from_columns([batch.column(name) for name in spec.columns], spec)
    if spec.layout == "columns":
        return _numeric_columns(batch, spec, first_row)
    column = batch.column(spec.columns[0])
    if spec.layout == "text":
        return _text_column(column, spec, first_row)
    if spec.layout == "array":
        return _array_column(column, spec, first_row)
    return _vector_column(column, spec, first_row, accept_sparse)
