"""Output schema: name and type the method's output, and convert it per chunk.

For a DataFrame, each part of the method's output becomes one typed column, built as an Arrow
array without per-row Python objects:

==================================  ==============================================
output part                         column type
==================================  ==============================================
1-D numeric / bool array            the matching scalar type (int32 stays int)
1-D array of strings                ``string``
``predict`` of a classifier         the type of ``classes_`` (strings: ``string``)
``predict`` of a regressor          ``double`` (``float`` if the model gives float32)
``predict_proba`` & co. of a        ``array<double>``
classifier
2-D array                           ``array<element type>`` (N-D: nested arrays)
1-D object array of 1-D arrays      ``array<element type>`` (``radius_neighbors``)
scipy sparse matrix                 ``VectorUDT`` (Spark ML vector)
tuple or list of the above          one column per item
==================================  ==============================================

Types the fitted estimator declares come first, the probe's output second. A chunk whose values
do not fit the declared type (a float where an integer column was declared) is never truncated:
converting it raises ``ValueError`` naming the column.

For an RDD, the output is cut into one element per input row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.ml.linalg import VectorUDT
from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type
from pyspark.sql.types import DataType, StructField
from sklearn.utils import get_tags

#: Default column names per method; a method not listed names its column after itself.
_DEFAULT_NAMES = {
    "predict": ("prediction",),
    "predict_proba": ("probability",),
    "predict_log_proba": ("log_probability",),
    "kneighbors": ("distances", "indices"),
    "radius_neighbors": ("distances", "indices"),
}

#: The column of reasons added by ``on_error="null"``: null where the row was scored.
ERROR_COLUMN = "error"

#: NumPy dtypes Spark has no type for, and the dtype they are widened to.
_WIDEN: dict[np.dtype, np.dtype] = {
    np.dtype(np.uint8): np.dtype(np.int16),
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.uint32): np.dtype(np.int64),
    np.dtype(np.uint64): np.dtype(np.int64),
    np.dtype(np.float16): np.dtype(np.float32),
}

_VECTOR_ARROW_TYPE = to_arrow_type(VectorUDT())


@dataclass(frozen=True)
class OutputColumn:
    """One result column: its name, its Arrow type, and its Spark type."""

    name: str
    arrow_type: pa.DataType
    spark_type: DataType

    @property
    def field(self) -> StructField:
        return StructField(self.name, self.spark_type, nullable=True)


def output_parts(output: Any) -> list:
    """The method's output as a list of parts: a tuple's or list's items, or the output itself.

    Tuples come from ``kneighbors``-like methods, lists from multi-output models (one array per
    output); each part becomes one column.
    """
    return list(output) if isinstance(output, (tuple, list)) else [output]


def default_names(method: str, n_parts: int) -> tuple[str, ...]:
    """Column names used when ``output_cols`` is not given.

    A method with several outputs that has no names of its own gets ``<name>_0``, ``<name>_1``...
    """
    names = _DEFAULT_NAMES.get(method, (method,))
    if len(names) == n_parts:
        return names
    if method in ("kneighbors", "radius_neighbors") and n_parts == 1:
        return ("indices",)  # return_distance=False
    return tuple(f"{names[0]}_{i}" for i in range(n_parts))


def _element_dtype(dtype: np.dtype) -> np.dtype:
    return _WIDEN.get(dtype, dtype)


def _arrow_scalar_type(values: np.ndarray, method: str) -> pa.DataType:
    if values.dtype.kind in "biuf":
        return pa.from_numpy_dtype(_element_dtype(values.dtype))
    if values.dtype.kind == "U" or (values.dtype.kind == "O" and all(isinstance(v, str) for v in values.ravel())):
        return pa.string()
    raise TypeError(f"{method} returned values of dtype {values.dtype} that have no Spark column type")


def _arrow_type(part: Any, method: str) -> pa.DataType:
    if sp.issparse(part):
        return _VECTOR_ARROW_TYPE
    if not isinstance(part, np.ndarray):
        raise TypeError(
            f"{method} returned a {type(part).__name__}; a DataFrame result needs arrays, sparse matrices "
            f"or tuples of them (use an RDD to keep arbitrary Python objects)"
        )
    if part.ndim == 1 and part.dtype.kind == "O" and part.size and isinstance(part[0], np.ndarray):
        return pa.list_(_arrow_scalar_type(part[0], method))  # ragged rows, e.g. radius_neighbors
    arrow_type = _arrow_scalar_type(part, method)
    for _ in range(part.ndim - 1):  # each row of an N-D output is an (N-1)-deep nested array
        arrow_type = pa.list_(arrow_type)
    return arrow_type


_CLASS_SCORES = ("predict_proba", "predict_log_proba", "decision_function")


def fitted_element_type(estimator: Any, method: str, sample: Any) -> pa.DataType | None:
    """The element type the fitted estimator declares for a one-part output of ``method``, or ``None``.

    A classifier's ``predict`` returns values of ``classes_``; a regressor's ``predict`` and a
    classifier's scores are floating point (float32 only if the probe's output is float32).
    """
    if not isinstance(sample, np.ndarray):
        return None
    try:
        kind = get_tags(estimator).estimator_type
    except Exception:  # noqa: BLE001 - objects without scikit-learn tags declare nothing
        return None
    floating = pa.float32() if sample.dtype == np.float32 else pa.float64()
    if method == "predict" and kind == "classifier" and sample.ndim == 1:
        classes = getattr(estimator, "classes_", None)
        if not isinstance(classes, np.ndarray) or classes.ndim != 1:
            return None  # multi-output: one array of classes per output
        if classes.dtype.kind in "US" or (classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes)):
            return pa.string()
        return pa.from_numpy_dtype(_element_dtype(classes.dtype)) if classes.dtype.kind in "biuf" else None
    if method == "predict" and kind == "regressor":
        return floating
    if method in _CLASS_SCORES and kind == "classifier":
        return floating
    return None


def _with_element_type(arrow_type: pa.DataType, element: pa.DataType) -> pa.DataType:
    if pa.types.is_list(arrow_type):
        return pa.list_(_with_element_type(arrow_type.value_type, element))
    return element


def output_columns(
    method: str,
    sample_output: Any,
    output_cols: str | Sequence[str] | None,
    existing: Sequence[str],
    estimator: Any = None,
) -> list[OutputColumn]:
    """Name and type the result columns: from the fitted ``estimator`` where it says, else from a probe's output.

    Raises
    ------
    ValueError
        If ``output_cols`` does not give one name per output part, or a name is already a column.
    """
    parts = output_parts(sample_output)
    if output_cols is None:
        names = default_names(method, len(parts))
    else:
        names = (output_cols,) if isinstance(output_cols, str) else tuple(output_cols)
        if len(names) != len(parts):
            raise ValueError(
                f"output_cols gives {len(names)} name(s) {list(names)}, but {method} returns {len(parts)} "
                f"output(s); expected names for {list(default_names(method, len(parts)))}"
            )
    clashes = [n for n in names if n in existing]
    if clashes or len(set(names)) != len(names):
        raise ValueError(
            f"result column name(s) {clashes or list(names)} clash with each other or with the input columns "
            f"{list(existing)}; pass output_cols=... to choose other names"
        )
    declared = fitted_element_type(estimator, method, parts[0]) if len(parts) == 1 else None
    columns = []
    for name, part in zip(names, parts):
        arrow_type = _arrow_type(part, method)
        if declared is not None:
            arrow_type = _with_element_type(arrow_type, declared)
        spark_type = VectorUDT() if arrow_type == _VECTOR_ARROW_TYPE else from_arrow_type(arrow_type)
        columns.append(OutputColumn(name, arrow_type, spark_type))
    return columns


def declared_columns(
    estimator: Any, method: str, output_cols: str | Sequence[str] | None, existing: Sequence[str]
) -> list[OutputColumn] | None:
    """The result columns the fitted estimator alone declares, without running it; ``None`` if it does not.

    A single-output classifier's ``predict`` (the type of ``classes_``), ``predict_proba`` and
    ``predict_log_proba`` (``array<double>``) and ``decision_function`` (``double`` for two classes,
    else ``array<double>``); a single-output regressor's ``predict`` (``double``). Used where the
    method cannot be probed: a stream of named columns, or an empty DataFrame.
    """
    try:
        kind = get_tags(estimator).estimator_type
    except Exception:  # noqa: BLE001 - objects without scikit-learn tags declare nothing
        return None
    classes = getattr(estimator, "classes_", None)
    if kind == "regressor" and method == "predict" and getattr(estimator, "n_outputs_", 1) == 1:
        sample: Any = np.zeros(1)
    elif kind != "classifier" or not isinstance(classes, np.ndarray) or classes.ndim != 1:
        return None
    elif method == "predict":
        sample = classes[:1]
    elif method in ("predict_proba", "predict_log_proba") or (method == "decision_function" and len(classes) > 2):
        sample = np.zeros((1, len(classes)))
    elif method == "decision_function":
        sample = np.zeros(1)
    else:
        return None
    return output_columns(method, sample, output_cols, existing, estimator)


def _scalar_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_string(arrow_type):
        return pa.array(values.tolist(), type=arrow_type)
    if values.dtype.kind in "iu" and pa.types.is_floating(arrow_type):
        # Integers into a floating column: Arrow's safe cast refuses any beyond +-2^53, although many (-2^63,
        # RadiusNeighborsRegressor's value for a row without neighbours) are exact; numpy checks each one.
        floats = values.astype(arrow_type.to_pandas_dtype())
        exact = floats.astype(values.dtype) == values
        if not exact.all():
            raise ValueError(f"the integer {values[~exact][0]} is not exactly a {arrow_type}")
        return pa.array(floats)
    if values.dtype.kind in "biuf" and (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)):
        target = np.dtype(arrow_type.to_pandas_dtype())
        if np.can_cast(values.dtype, target, casting="safe"):  # widening (float32 into double): exact, in numpy
            return pa.array(values.astype(target, copy=False))
    array = pa.array(values.astype(_element_dtype(values.dtype), copy=False))
    # A safe cast: a value the column type cannot hold (1.5 into an integer column) raises, never truncates.
    return array if array.type == arrow_type else array.cast(arrow_type, safe=True)


def _list_array(offsets: np.ndarray, values: pa.Array, arrow_type: pa.DataType) -> pa.Array:
    arrow_offsets = pa.array(offsets) if offsets.dtype == np.int32 else pa.array(offsets, type=pa.int32())
    return pa.ListArray.from_arrays(arrow_offsets, values, type=arrow_type)


def _nested_array(part: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """An N-D array as a column of (N-1)-deep nested lists, built from the flat values (no per-row objects)."""
    types = [arrow_type]
    while pa.types.is_list(types[-1]):
        types.append(types[-1].value_type)
    array = _scalar_array(part.ravel(), types.pop())
    for axis in range(part.ndim - 1, 0, -1):
        n_lists = int(np.prod(part.shape[:axis]))
        step = part.shape[axis]
        # int32 offsets directly where they fit (Arrow's list offsets); else int64, refused by _list_array
        dtype = np.int32 if n_lists * step < 2**31 else np.int64
        array = _list_array(np.arange(n_lists + 1, dtype=dtype) * step, array, types.pop())
    return array


def _vector_array(part: Any) -> pa.Array:
    csr = sp.csr_matrix(part)
    if not csr.has_canonical_format:  # a SparseVector needs strictly increasing indices
        csr = csr.copy()
        csr.sum_duplicates()
    n = csr.shape[0]
    indptr = pa.array(csr.indptr, type=pa.int32())
    kind, size, indices, values = _VECTOR_ARROW_TYPE
    return pa.StructArray.from_arrays(
        [
            pa.array(np.zeros(n, dtype=np.int8)),  # 0: sparse
            pa.array(np.full(n, csr.shape[1], dtype=np.int32)),
            pa.ListArray.from_arrays(indptr, pa.array(csr.indices, type=pa.int32()), type=indices.type),
            pa.ListArray.from_arrays(indptr, pa.array(csr.data, type=pa.float64()), type=values.type),
        ],
        fields=[kind, size, indices, values],
    )


def describe_output(output: Any) -> str:
    """What a method's output is, in words: ``"a 2-D float64 array (3 values per row)"``, or a tuple of such."""
    parts = output_parts(output)
    if len(parts) > 1:
        return f"{len(parts)} parts ({'; '.join(describe_output(p) for p in parts)})"
    part = parts[0]
    if sp.issparse(part):
        return f"a scipy sparse matrix ({part.shape[1]} values per row)"
    if not isinstance(part, np.ndarray):
        return f"a {type(part).__name__}"
    if part.ndim == 1 and part.dtype.kind == "O" and part.size and isinstance(part[0], np.ndarray):
        return f"a 1-D object array of {part[0].dtype} arrays (one list per row)"
    if part.ndim == 1:
        return f"a 1-D {part.dtype} array (one value per row)"
    return f"a {part.ndim}-D {part.dtype} array ({' x '.join(map(str, part.shape[1:]))} values per row)"


def _nesting(arrow_type: pa.DataType) -> int:
    """How many list levels a column type has (a Spark ML vector counts as one)."""
    if arrow_type == _VECTOR_ARROW_TYPE:
        return 1
    return 1 + _nesting(arrow_type.value_type) if pa.types.is_list(arrow_type) else 0


def _part_nesting(part: Any) -> int | None:
    if sp.issparse(part):
        return 1
    if not isinstance(part, np.ndarray) or part.size == 0:
        return None
    if part.ndim == 1 and part.dtype.kind == "O" and isinstance(part[0], np.ndarray):
        return 1
    return part.ndim - 1


def shape_mismatch(output: Any, columns: Sequence[OutputColumn]) -> str | None:
    """Why ``output`` cannot fill ``columns`` whatever its values are (parts, nesting), or ``None`` if it can.

    A multi-part output needs one column per part; a part with rows of values needs a list (or vector)
    column as deep as its rows, and a sparse part a vector column.
    """
    parts = output_parts(output)
    if len(parts) != len(columns):
        return f"{len(parts)} part(s) for {len(columns)} result field(s)"
    for i, (part, column) in enumerate(zip(parts, columns)):
        nesting = _part_nesting(part)
        if nesting is None:
            continue
        if nesting != _nesting(column.arrow_type) or (sp.issparse(part) and column.arrow_type != _VECTOR_ARROW_TYPE):
            what = "it" if len(parts) == 1 else f"part {i + 1}, {describe_output(part)}"
            return f"field {column.name!r} of type {column.spark_type.simpleString()} cannot hold {what}"
    return None


def chunk_arrays(output: Any, columns: Sequence[OutputColumn]) -> list[pa.Array]:
    """One chunk's output as Arrow arrays, one per result column.

    Raises
    ------
    ValueError
        If a part does not fit its column's type, naming the column.
    """
    mismatch = shape_mismatch(output, columns)
    if mismatch is not None:
        declared = ", ".join(f"{c.name} {c.spark_type.simpleString()}" for c in columns)
        raise ValueError(
            f"the method returned {describe_output(output)}, which does not fit the declared result ({declared}): "
            f"{mismatch}"
        )
    arrays = []
    for part, column in zip(output_parts(output), columns):
        try:
            arrays.append(to_arrow(part, column))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            got = getattr(part, "dtype", type(part).__name__)
            raise ValueError(
                f"the output ({got}) does not fit result column {column.name!r} of type "
                f"{column.spark_type.simpleString()}, declared from the fitted estimator or the first rows; "
                f"nothing is truncated: {type(exc).__name__}: {exc}"
            ) from exc
    return arrays


def to_arrow(part: Any, column: OutputColumn) -> pa.Array:
    """Convert one output part for one chunk into an Arrow array of the column's type."""
    arrow_type = column.arrow_type
    if arrow_type == _VECTOR_ARROW_TYPE:
        return _vector_array(part)
    if part.dtype != object or not pa.types.is_list(arrow_type):
        return _nested_array(part, arrow_type)
    # A 1-D object array of 1-D arrays of different lengths (radius_neighbors).
    lengths = np.fromiter((len(row) for row in part), dtype=np.int64, count=len(part))
    values = np.concatenate(part) if len(part) else np.empty(0, dtype=np.float64)
    return _list_array(
        np.concatenate([[0], np.cumsum(lengths)]), _scalar_array(values, arrow_type.value_type), arrow_type
    )


def split_rows(output: Any) -> list:
    """Cut a method's output into one item per input row, for an RDD result.

    Arrays give their rows (a scalar for 1-D), sparse matrices give 1-row CSR matrices, tuples give
    tuples (``(distances, indices)`` for ``kneighbors``) and lists give lists (multi-output models).
    """
    if isinstance(output, tuple):
        return list(zip(*(split_rows(part) for part in output)))
    if isinstance(output, list):
        return [list(row) for row in zip(*(split_rows(part) for part in output))]
    if sp.issparse(output):
        csr = sp.csr_matrix(output)
        return [csr[i] for i in range(csr.shape[0])]
    return list(output)
