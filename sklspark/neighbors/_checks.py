"""The rules a join's rows must follow, each written once: unique non-null reference IDs, finite features.

The rules are checked where the rows are: on the driver for a collected or fitted reference (Arrow,
numpy), in a Spark aggregate for a sharded one, in the tasks for the queries; each place computes its
figures and hands them here, so that every mode refuses the same input with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

#: What a row with NaN or infinite features is told, after the side and row that name it.
NON_FINITE = "has NaN or infinite features"


def check_unique_ids(n_rows: int, n_ids: int, n_distinct: int, duplicates: Callable[[], list]) -> None:
    """Refuse reference IDs that are null (``n_ids < n_rows``) or repeated (``n_distinct < n_ids``).

    ``duplicates`` gives a few of the repeated IDs for the message; it is called only when there are some.
    """
    if n_ids != n_rows:
        raise ValueError("the reference has null IDs; every reference row needs a unique ID")
    if n_distinct != n_ids:
        raise ValueError(
            f"the reference has duplicate IDs (e.g. {sorted(duplicates())[:5]}); every reference row needs a unique ID"
        )


def check_unique_arrow_ids(ids: pa.Array) -> None:
    """:func:`check_unique_ids` on an Arrow array of IDs."""

    def duplicates() -> list:
        counts = pc.value_counts(ids)
        return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()

    check_unique_ids(len(ids), len(ids) - ids.null_count, pc.count_distinct(ids).as_py(), duplicates)


def ids_from_sequence(reference_ids: Any, n_ref: int) -> np.ndarray:
    """The IDs of a fitted ``NearestNeighbors``'s rows: ``reference_ids`` checked, or ``0..n_ref-1``."""
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
    check_unique_arrow_ids(pa.array(ids.tolist()))
    return ids


def non_finite_rows(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Positions of the rows of a dense or CSR matrix with a NaN or infinite value (a CSR row's stored entries)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        return np.unique(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[~np.isfinite(X.data)])
    return np.flatnonzero(~np.isfinite(X).all(axis=1))


def non_finite_message(row: int, id_col: str, row_id: Any) -> str:
    """``row 7 (id 107) has NaN or infinite features``: the message of a non-finite row, after its side."""
    return f"row {row} ({id_col} {row_id!r}) {NON_FINITE}"
