"""Driver-side validation: everything that can be checked before a Spark job starts."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.ml.linalg import VectorUDT
from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type
from pyspark.sql.types import (
    ArrayType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StructField,
    StructType,
)
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

#: Largest accepted ``chunk_size``: one chunk must stay a bounded slice of a task's memory.
MAX_CHUNK_SIZE = 1 << 22

#: Largest chunk when ``chunk_size=None`` follows Spark's Arrow batches
#: (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000 rows by default): longer batches are cut.
MAX_BATCH_CHUNK = 1 << 16

#: Methods that fit, mutate or need targets: never run by :func:`sklspark.distribute`.
_NOT_PREDICTION_TIME = frozenset({"score"})
_NOT_PREDICTION_PREFIXES = ("fit", "partial_fit", "set_", "get_", "_")

#: Spark numeric element types accepted as features, and the NumPy dtype they arrive as.
_SPARK_TO_NUMPY = {
    DoubleType: np.float64,
    FloatType: np.float32,
    LongType: np.int64,
    IntegerType: np.int32,
    ShortType: np.int16,
    ByteType: np.int8,
}


def check_method(estimator: Any, method: Any) -> None:
    """Check that ``estimator`` is fitted and has the prediction-time ``method``.

    Raises
    ------
    TypeError
        If ``method`` is not a string.
    ValueError
        If ``method`` fits or mutates the estimator, if the estimator does not
        have it, or (``NotFittedError``, a ``ValueError``) if it is not fitted.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be the name of a method as a str, got {type(method).__name__}: {method!r}")
    name = type(estimator).__name__
    if method in _NOT_PREDICTION_TIME or method.startswith(_NOT_PREDICTION_PREFIXES):
        raise ValueError(
            f"method {method!r} is not a prediction-time method; distribute() runs methods such as "
            f"'predict', 'predict_proba', 'transform', 'kneighbors' on an already fitted estimator "
            f"(fit {name} on the driver first)"
        )
    if not callable(getattr(estimator, method, None)):
        raise ValueError(f"{name} has no method {method!r}{_available_hint(estimator)}")
    check_is_fitted(estimator)


def _available_hint(estimator: Any) -> str:
    common = (
        "predict",
        "predict_proba",
        "predict_log_proba",
        "decision_function",
        "transform",
        "inverse_transform",
        "score_samples",
        "kneighbors",
        "radius_neighbors",
    )
    have = [m for m in common if callable(getattr(estimator, m, None))]
    return f"; it has {', '.join(repr(m) for m in have)}" if have else ""


def check_chunk_size(chunk_size: Any) -> int:
    """Return ``chunk_size`` as an int after checking it is an integer in ``[1, MAX_CHUNK_SIZE]``."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive int, got {type(chunk_size).__name__}: {chunk_size!r}")
    if not 1 <= int(chunk_size) <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} rows, got {chunk_size}")
    return int(chunk_size)


def check_optional_chunk_size(chunk_size: Any) -> int | None:
    """``None`` (one chunk per Arrow batch, see :data:`MAX_BATCH_CHUNK`), or a checked ``chunk_size``."""
    return None if chunk_size is None else check_chunk_size(chunk_size)


def declares_sparse(estimator: Any) -> bool:
    """Whether the estimator declares sparse input through scikit-learn tags (a cheap driver-side check)."""
    try:
        return bool(get_tags(estimator).input_tags.sparse)
    except Exception:  # noqa: BLE001 - third-party objects without tags: give them dense input
        return False


def accepts_sparse(estimator: Any, method: str, method_kwargs: dict, width: int) -> bool:
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


def n_features_of(estimator: Any) -> int | None:
    """The number of features the estimator was fitted on, or ``None`` if it does not say."""
    n = getattr(estimator, "n_features_in_", None)
    return int(n) if isinstance(n, numbers.Integral) else None


def check_width(estimator: Any, width: int, where: str) -> None:
    """Raise ``ValueError`` if ``width`` differs from the estimator's ``n_features_in_``."""
    expected = n_features_of(estimator)
    if expected is not None and width != expected:
        raise ValueError(
            f"{where} has {width} features, but {type(estimator).__name__} was fitted on {expected} features"
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Where a DataFrame's features are: one vector/array column, or several numeric columns.

    Attributes
    ----------
    layout : {"vector", "array", "columns"}
    columns : tuple of str
    dtype : numpy dtype of the stacked matrix
    """

    layout: str
    columns: tuple[str, ...]
    dtype: np.dtype

    @property
    def width(self) -> int | None:
        """Feature count when the schema alone tells it (numeric columns), else ``None``."""
        return len(self.columns) if self.layout == "columns" else None

    def describe(self) -> str:
        if self.layout == "columns":
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
    missing = [c for c in names if c not in fields]
    if missing:
        raise ValueError(f"feature column(s) {missing} not found; the DataFrame has columns {list(fields)}")

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


_VECTOR_FIELDS = tuple(field.name for field in to_arrow_type(VectorUDT()))


def check_arrow_features(schema: pa.Schema) -> FeatureSpec:
    """Resolve the feature columns of Arrow batches whose Spark types were not known on the driver.

    A ``udf()`` Column is built before it meets a DataFrame, so its argument columns are first seen
    as Arrow arrays in the task. A struct shaped like Spark ML's vector (``type, size, indices,
    values``) is a ``VectorUDT`` column; every other type is read as its Spark type, and the columns
    are checked by :func:`check_features` exactly as a DataFrame's.
    """
    fields = []
    for field in schema:
        is_vector = pa.types.is_struct(field.type) and tuple(f.name for f in field.type) == _VECTOR_FIELDS
        fields.append(StructField(field.name, VectorUDT() if is_vector else from_arrow_type(field.type)))
    return check_features(StructType(fields), list(schema.names))
