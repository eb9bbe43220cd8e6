"""Chunk runner: call the method once per stacked chunk inside a task, with thread caps and clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark import TaskContext
from threadpoolctl import threadpool_limits

from ._shipping import ShippedModel
from ._validation import accepts_sparse

#: Per worker process: whether a shipped model's method took CSR input, learnt on its first sparse chunk.
_takes_sparse: dict[tuple[str, str], bool] = {}


class ChunkError(RuntimeError):
    """Raised inside a Spark task when a chunk cannot be read or the method fails on it.

    Its message names the estimator and method, the partition, the rows and the cause; Spark
    hands it to the driver as a ``PythonException`` whose message contains this text.
    """


def n_rows(output: Any) -> int:
    """Rows in a method's output: the common length of every array it is made of."""
    if isinstance(output, (tuple, list)):
        lengths = {n_rows(part) for part in output}
        if len(lengths) != 1:
            raise ValueError(f"the output's parts have different lengths {sorted(lengths)}")
        return lengths.pop()
    if isinstance(output, np.ndarray) or sp.issparse(output):
        return output.shape[0]
    raise TypeError(f"expected arrays, sparse matrices or tuples of them, got {type(output).__name__}")


def one_row_per_input(output: Any, n_input: int) -> Any:
    """Check that ``output`` has one row per input row and return it.

    A single array from a 1-row input that lost its first axis (some transforms squeeze it) gets
    it back.

    Raises
    ------
    ValueError
        If the row counts differ: distribute() needs one output row per input row.
    """
    got = n_rows(output)
    if got != n_input and n_input == 1 and isinstance(output, np.ndarray):
        return output[np.newaxis]
    if got != n_input:
        raise ValueError(
            f"returned {got} rows for {n_input} input rows; distribute() needs one output row per input row"
        )
    return output


def _densify_if_refused(model: ShippedModel, estimator: Any, method: str, method_kwargs: dict, X: Any) -> Any:
    """``X``, made dense if it is CSR and the method refuses sparse input (probed once per process)."""
    if not sp.issparse(X):
        return X
    key = (model.token, method)
    if key not in _takes_sparse:
        _takes_sparse[key] = accepts_sparse(estimator, method, method_kwargs, X.shape[1])
    return X if _takes_sparse[key] else X.toarray()


def run_chunks(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    chunks: Iterator[tuple[Any, ...]],
    partition: int | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Run ``method`` on every chunk, yielding each chunk's items followed by the output.

    ``chunks`` yields tuples whose first item is the chunk's first row in the partition and
    whose last item is the feature matrix (CSR chunks are made dense for methods that refuse
    sparse input, see :func:`~sklspark._validation.accepts_sparse`). BLAS/OpenMP pools are
    capped at the task's CPUs (``spark.task.cpus``) so concurrent tasks on an executor do not
    oversubscribe its cores.
    """
    context = TaskContext.get()
    if partition is None:
        partition = context.partitionId() if context is not None else 0
    cpus = context.cpus() if context is not None else None
    estimator = model.get()
    label = f"{type(estimator).__name__}.{method}"
    fn = getattr(estimator, method)
    with threadpool_limits(limits=cpus):
        while True:
            try:
                item = next(chunks)
            except StopIteration:
                return
            except Exception as exc:
                raise ChunkError(f"sklspark: bad input for {label} in partition {partition}: {exc}") from exc
            first_row, X = item[0], _densify_if_refused(model, estimator, method, method_kwargs, item[-1])
            rows = f"rows {first_row}-{first_row + X.shape[0] - 1}"
            try:
                output = one_row_per_input(fn(X, **method_kwargs), X.shape[0])
            except Exception as exc:
                raise ChunkError(
                    f"sklspark: {label} failed in partition {partition}, {rows}: {type(exc).__name__}: {exc}"
                ) from exc
            yield (*item, output)
