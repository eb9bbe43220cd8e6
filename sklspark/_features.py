"""The feature spec: where a DataFrame's features are, and what the method is handed per chunk.

Resolved once on the driver from the DataFrame's schema and the fitted estimator
(:func:`resolve_features`), or in the task from the first Arrow batch where the Spark types are not
known on the driver (a ``udf()`` Column, :func:`check_arrow_features`); the input adapters of
:mod:`sklspark._inputs` read it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.ml.linalg import VectorUDT
from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    ByteType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from ._frames import DEFAULT_READER, PRESETS, ColumnStyle, FrameStyles
from ._validation import n_features_of

#: Spark numeric element types accepted as features, and the NumPy dtype they arrive as.
_SPARK_TO_NUMPY = {
    DoubleType: np.float64,
    FloatType: np.float32,
    LongType: np.int64,
    IntegerType: np.int32,
    ShortType: np.int16,
    ByteType: np.int8,
}


@dataclass(frozen=True)
class FeatureSpec:
    """Where a DataFrame's features are, and what the method is handed per chunk.

    Layouts: ``"vector"`` (one ``VectorUDT`` column), ``"array"`` (one ``array<numeric>`` column) and
    ``"columns"`` (several numeric columns) stack into a matrix; ``"frame"`` (named columns of any
    scalar type, for an estimator with ``feature_names_in_``) gives a pandas DataFrame with one
    column per name, converted as ``kinds`` and ``styles`` say (see :func:`frame_spec`); ``"text"`` (one string
    column) gives a 1-D object array of ``str``.

    Attributes
    ----------
    layout : {"vector", "array", "columns", "frame", "text"}
    columns : tuple of str
    dtype : numpy dtype of the stacked matrix (``object`` for ``"frame"`` and ``"text"``)
    kinds : tuple of str
        ``"frame"`` only: each column's Spark kind, one of ``"string"``, ``"int"``, ``"float"``,
        ``"bool"``, ``"decimal"``, ``"date"``, ``"timestamp"``.
    styles : tuple of ColumnStyle
        ``"frame"`` only: each column's null marker and Python types, decided on the driver from the
        fitted estimator and the ``pandas_reader`` option (:func:`sklspark._frames.frame_styles`).
    """

    layout: str
    columns: tuple[str, ...]
    dtype: np.dtype
    kinds: tuple[str, ...] = ()
    styles: tuple[ColumnStyle, ...] = ()

    @property
    def width(self) -> int | None:
        """Feature count when the schema alone tells it (numeric columns), else ``None``."""
        return len(self.columns) if self.layout == "columns" else None

    @property
    def is_matrix(self) -> bool:
        """Whether chunks are stacked into a numeric matrix (dense or CSR)."""
        return self.layout in ("vector", "array", "columns")

    def describe(self) -> str:
        if self.layout in ("columns", "frame"):
            return f"feature columns {list(self.columns)}"
        return f"{self.layout} column {self.columns[0]!r}"


def _numeric_dtype(data_type: DataType) -> np.dtype | None:
    for spark_type, dtype in _SPARK_TO_NUMPY.items():
        if isinstance(data_type, spark_type):
            return np.dtype(dtype)
    return None


def check_features(schema: StructType, features: str | Sequence[str] | None) -> FeatureSpec:
    """Resolve ``features`` against a DataFrame schema.

    Parameters
    ----------
    schema : StructType
        The input DataFrame's schema.
    features : str, sequence of str or None
        One column of type ``VectorUDT`` / ``array<numeric>`` / numeric, or a list of
        numeric columns. ``None`` means the column ``"features"``.

    Returns
    -------
    FeatureSpec
    """
    if features is None:
        features = "features"
    if isinstance(features, str):
        names: tuple[str, ...] = (features,)
    elif isinstance(features, Sequence) and all(isinstance(c, str) for c in features):
        names = tuple(features)
        if not names:
            raise ValueError("features must name at least one column, got an empty list")
        if len(set(names)) != len(names):
            dupes = sorted({c for c in names if names.count(c) > 1})
            raise ValueError(f"features lists columns more than once: {dupes}")
    else:
        raise TypeError(f"features must be a column name or a list of column names, got {features!r}")

    fields = {f.name: f.dataType for f in schema.fields}
    _check_present(schema, names)

    if len(names) == 1:
        data_type = fields[names[0]]
        if isinstance(data_type, VectorUDT):
            return FeatureSpec("vector", names, np.dtype(np.float64))
        if isinstance(data_type, ArrayType):
            dtype = _numeric_dtype(data_type.elementType)
            if dtype is None:
                raise TypeError(
                    f"feature column {names[0]!r} is {data_type.simpleString()}; expected an array of "
                    f"float, double or integer values"
                )
            return FeatureSpec("array", names, dtype)

    dtypes = []
    for name in names:
        dtype = _numeric_dtype(fields[name])
        if dtype is None:
            raise TypeError(
                f"feature column {name!r} is {fields[name].simpleString()}; expected a vector, an array of "
                f"numbers, or numeric (float, double or integer) columns"
            )
        dtypes.append(dtype)
    return FeatureSpec("columns", names, np.result_type(*dtypes))


# --------------------------------------------------------------------------- named columns

#: Spark scalar types a named feature column may have, and how its chunk column is converted.
_FRAME_KINDS: tuple[tuple[type, str], ...] = (
    (StringType, "string"),
    (BooleanType, "bool"),
    (LongType, "int"),
    (IntegerType, "int"),
    (ShortType, "int"),
    (ByteType, "int"),
    (DoubleType, "float"),
    (FloatType, "float"),
    (DecimalType, "decimal"),
    (DateType, "date"),
    (TimestampType, "timestamp"),
    (TimestampNTZType, "timestamp"),
)


def fitted_feature_names(estimator: Any) -> tuple[str, ...] | None:
    """The column names the estimator was fitted on (``feature_names_in_``), or ``None``."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return None
    return tuple(str(n) for n in names)


def quote_column(name: str) -> str:
    """``name`` quoted for Spark's column resolution (dots, spaces and backticks taken literally)."""
    return "`" + name.replace("`", "``") + "`"


def _close_matches(name: str, candidates: Sequence[str]) -> list[str]:
    same_case = [c for c in candidates if c.lower() == name.lower()]
    return same_case or difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.75)


def _check_present(schema: StructType, names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming every column of ``names`` that is missing or duplicated in ``schema``."""
    present = [f.name for f in schema.fields]
    missing = [c for c in names if c not in present]
    if missing:
        hints = [
            f"{c!r} (did you mean {', '.join(repr(m) for m in close)}?)"
            for c in missing
            if (close := _close_matches(c, present))
        ]
        hint = f"; close matches: {'; '.join(hints)}" if hints else ""
        raise ValueError(f"feature column(s) {missing} not found; the DataFrame has columns {present}{hint}")
    ambiguous = sorted({c for c in names if present.count(c) > 1})
    if ambiguous:
        raise ValueError(
            f"feature column(s) {ambiguous} appear more than once in the DataFrame, so which one holds the feature "
            f"is ambiguous; rename or drop the duplicates first"
        )


def frame_spec(schema: StructType, names: Sequence[str], frame: FrameStyles | None = None) -> FeatureSpec:
    """The ``"frame"`` layout: ``names`` read from ``schema`` and handed over as a pandas DataFrame.

    Each column is converted the way the pandas reader the model was fitted on types it
    (``frame``, from :func:`sklspark._frames.frame_styles`; ``None``: as ``toPandas()`` does), so a
    model fitted on a pandas DataFrame sees what it saw at fit time:

    ===========================  ============================================  =====================================
    Spark type                   ``toPandas()``, ``pd.read_parquet``           ``pd.read_csv``
    ===========================  ============================================  =====================================
    string                       ``object`` of ``str``, ``None`` for null      ``object`` of ``str``, ``np.nan``
    byte, short, int, long       own width; ``float64``, ``NaN`` if nulls      ``int64``; ``float64`` if nulls
    float, double                ``float32`` / ``float64``, ``NaN``            ``float64``, ``NaN``
    boolean                      ``bool``; ``object`` + ``None`` with nulls    ``bool``; ``object`` + ``np.nan``
    decimal                      ``object`` of ``Decimal``, ``None``           ``float64``, ``NaN``
    date                         ``object`` of ``datetime.date``, ``None``     ``object`` of ISO ``str``, ``np.nan``
    timestamp, timestamp_ntz     ``datetime64[ns]``, ``NaT`` (*)               ``object`` of ``str``, ``np.nan``
    ===========================  ============================================  =====================================

    (*) wall-clock time in the session time zone (``toPandas``) or in UTC (``read_parquet``, which
    also keeps ``timestamp_ntz`` in microseconds). Null booleans and integers change the dtype of the
    chunks holding them only (``object``, ``float64``), as in pandas. See docs/pipelines.md.

    Raises
    ------
    ValueError
        A column is missing (naming it and close matches) or appears more than once.
    TypeError
        A column is a vector, an array, a struct or another type with no pandas scalar dtype.
    """
    names = tuple(names)
    _check_present(schema, names)
    fields = {f.name: f.dataType for f in schema.fields}
    kinds = []
    for name in names:
        data_type = fields[name]
        kind = next((k for t, k in _FRAME_KINDS if isinstance(data_type, t)), None)
        if kind is None:
            raise TypeError(
                f"feature column {name!r} is {data_type.simpleString()}; a model fitted on named columns takes "
                f"scalar columns (string, numeric, boolean, decimal, date, timestamp), not vectors or arrays"
            )
        kinds.append(kind)
    styles = tuple(frame.style_of(name) if frame is not None else PRESETS[DEFAULT_READER] for name in names)
    return FeatureSpec("frame", names, np.dtype(object), tuple(kinds), styles)


def resolve_features(
    schema: StructType,
    estimator: Any,
    features: str | Sequence[str] | None,
    frame: FrameStyles | None = None,
) -> FeatureSpec:
    """The :class:`FeatureSpec` for ``estimator`` over a DataFrame of ``schema``.

    An estimator fitted on a pandas DataFrame (it has ``feature_names_in_``) is given exactly those
    columns, by name, in the fitted order (:func:`frame_spec`); ``features``, if given, must name the
    same set; ``frame`` holds how their values are handed over (the pandas reader the columns imitate,
    decided once by :func:`sklspark._frames.frame_styles`; ``None``: as ``toPandas()``). An estimator that records
    no feature count (a text pipeline fitted on a list of
    documents) is given one string column as a 1-D object array of ``str`` (layout ``"text"``).
    Any other estimator gets :func:`check_features`.
    """
    fitted = fitted_feature_names(estimator)
    if fitted is None:
        if isinstance(features, str) and n_features_of(estimator) is None:
            field = next((f for f in schema.fields if f.name == features), None)
            if field is not None and isinstance(field.dataType, StringType):
                _check_present(schema, (features,))
                return FeatureSpec("text", (features,), np.dtype(object))
        return check_features(schema, features)
    if features is not None:
        given = (features,) if isinstance(features, str) else tuple(features)
        if set(given) != set(fitted) or len(given) != len(fitted):
            raise ValueError(
                f"features={list(given)} does not name the columns {type(estimator).__name__} was fitted on: "
                f"{list(fitted)} (feature_names_in_); pass features=None to use those by name"
            )
    return frame_spec(schema, fitted, frame)


_VECTOR_FIELDS = tuple(field.name for field in to_arrow_type(VectorUDT()))


def check_arrow_features(schema: pa.Schema, estimator: Any, frame: FrameStyles | None = None) -> FeatureSpec:
    """Resolve the feature columns of Arrow batches whose Spark types were not known on the driver.

    A ``udf()`` Column is built before it meets a DataFrame, so its argument columns are first seen
    as Arrow arrays in the task. A struct shaped like Spark ML's vector (``type, size, indices,
    values``) is a ``VectorUDT`` column; every other type is read as its Spark type. Columns named
    exactly as the estimator's ``feature_names_in_`` are the ``"frame"`` layout; otherwise they are
    resolved as :func:`resolve_features` resolves a DataFrame's (one string column is ``"text"`` for an
    estimator without a feature count), except that an estimator with ``feature_names_in_`` is also
    given a vector, array or numeric columns positionally (:func:`check_features`). ``frame``: the
    named columns' styles, decided on the driver (:func:`sklspark._frames.frame_styles`).
    """
    fields = []
    for field in schema:
        is_vector = pa.types.is_struct(field.type) and tuple(f.name for f in field.type) == _VECTOR_FIELDS
        fields.append(StructField(field.name, VectorUDT() if is_vector else from_arrow_type(field.type)))
    struct, names = StructType(fields), list(schema.names)
    fitted = fitted_feature_names(estimator)
    if fitted is None:
        return resolve_features(struct, estimator, names[0] if len(names) == 1 else names)
    return frame_spec(struct, names, frame) if tuple(names) == fitted else check_features(struct, names)
