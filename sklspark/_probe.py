"""The driver-side probe: run the method on two rows before the job, to check its kwargs and learn its output.

Two rows of zeros are tried first (no Spark job); where the estimator rejects them, or the width is not
known (named columns, text), the data's first two rows are read by one small job, never on a stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from pyspark.sql import DataFrame

from ._features import FeatureSpec, quote_column
from ._inputs import batch_to_matrix
from ._runner import one_row_per_input
from ._validation import check_width, n_features_of

#: A function returning the data's first two rows as the method's input, or ``None`` when there are none.
HeadRows = Callable[[], Any]


def no_rows() -> None:
    """The head of data that is not there yet (a ``udf()`` is made before it meets any data)."""


def probe(
    estimator: Any, method: str, method_kwargs: dict, width: int | None, dtype: np.dtype, head_rows: HeadRows
) -> Any:
    """The method's output on two rows, run on the driver: checks ``method_kwargs`` and shows the output's shape.

    Rows of zeros ``width`` wide and of the chunks' ``dtype`` are tried first (two rows, because some
    methods drop the first axis of a 1-row input); if the estimator
    rejects them, or ``width`` is ``None``, ``head_rows()`` are used. Returns ``None`` when there are no
    rows and no zero row could be scored.

    Raises
    ------
    ValueError
        If the method fails on the data's first rows, or on rows of zeros when there are no rows.
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
    call = f"{type(estimator).__name__}.{method}({', '.join(f'{k}={v!r}' for k, v in method_kwargs.items())})"
    if X is None:
        if zero_error is not None:
            raise ValueError(
                f"{call} failed on rows of zeros: {type(zero_error).__name__}: {zero_error}"
            ) from zero_error
        return None
    try:
        return one_row_per_input(fn(X, **method_kwargs), X.shape[0])
    except Exception as exc:
        raise ValueError(
            f"{call} failed on the first rows of the data, checked on the driver before the job: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def head_reader(df: DataFrame, spec: FeatureSpec, memo: dict) -> HeadRows:
    """A function returning the DataFrame's first two rows as the method's input (read once, by a small job).

    The rows read are kept in ``memo`` under ``spec``, so that every reader of the same call (one per
    model of a fleet) shares one job. It returns ``None`` for an empty DataFrame. A streaming DataFrame
    cannot be read before its query starts: there the function raises ``ValueError`` saying what would
    let sklspark do without.
    """

    def head_rows() -> Any:
        if df.isStreaming:
            raise ValueError(
                f"cannot read the first rows of a streaming DataFrame before its query starts, to probe "
                f"{spec.describe()} (its width is not recorded, or the estimator refuses rows of zeros): fit the "
                f"estimator on a numeric matrix so it records n_features_in_, or pass numeric feature columns "
                f"(features=[...]), or use sklspark.udf(..., return_type=...)"
            )
        if spec not in memo:
            memo[spec] = _head_matrix(df, spec)
        return memo[spec]

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


def feature_width(estimator: Any, spec: FeatureSpec, head_rows: HeadRows) -> int | None:
    """The width of a matrix layout: from the schema, else the estimator's ``n_features_in_``, else the first rows.

    A width known from the estimator is trusted without reading data: every chunk is checked against it
    in its task. ``None`` for frames and text, and for an empty DataFrame whose estimator records no
    ``n_features_in_``.
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
