"""Chunk runner: call the method once per stacked chunk inside a task, with thread caps and clear errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark import TaskContext
from threadpoolctl import ThreadpoolController

from ._shipping import ShippedModel
from ._validation import accepts_sparse

#: Per worker process: whether a shipped model's method took CSR input, learnt on its first sparse chunk.
_takes_sparse: dict[tuple[str, str], bool] = {}

#: Prefix of every message sklspark raises inside a task: the CLI finds sklspark's own error in a Spark trace by it.
ERROR_MARKER = "sklspark:"

#: Per worker process: the threadpoolctl controller, and the number of imported modules when it scanned.
_controller: ThreadpoolController | None = None
_scanned_modules = 0


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


def capped_threads() -> Any:
    """Context manager capping BLAS/OpenMP pools at the task's CPUs (``spark.task.cpus``; no cap outside a task).

    Concurrent tasks on an executor then do not oversubscribe its cores. The native libraries are
    found once per worker process by one cached ``threadpoolctl`` controller, scanned again only after
    new modules were imported (a backend such as faiss brings its own BLAS): ``threadpool_limits``
    would scan every loaded library on every call (about 3 ms).
    """
    global _controller, _scanned_modules
    context = TaskContext.get()
    if _controller is None or len(sys.modules) != _scanned_modules:
        _controller, _scanned_modules = ThreadpoolController(), len(sys.modules)
    return _controller.limit(limits=context.cpus() if context is not None else None)


def apply_chunks(
    fn: Callable[[Any], Any],
    label: str,
    chunks: Iterator[tuple[Any, ...]],
    partition: int | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Call ``fn(X)`` on every chunk with threads capped, yielding each chunk's items followed by the output.

    ``chunks`` yields tuples whose first item is the chunk's first row in the partition and whose last
    item ``X`` is the feature matrix. Any error reading a chunk or in ``fn`` becomes a
    :class:`ChunkError` whose message starts with :data:`ERROR_MARKER` and names ``label`` (what ran),
    the partition, the rows and the cause.
    """
    if partition is None:
        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
    with capped_threads():
        while True:
            try:
                item = next(chunks)
            except StopIteration:
                return
            except Exception as exc:
                raise ChunkError(f"{ERROR_MARKER} bad input for {label} in partition {partition}: {exc}") from exc
            X = item[-1]
            where = f"rows {item[0]}-{item[0] + X.shape[0] - 1}"
            try:
                output = fn(X)
            except Exception as exc:
                raise ChunkError(
                    f"{ERROR_MARKER} {label} failed in partition {partition}, {where}: {type(exc).__name__}: {exc}"
                ) from exc
            yield (*item, output)


def run_chunks(
    model: ShippedModel,
    method: str,
    method_kwargs: dict,
    chunks: Iterator[tuple[Any, ...]],
    partition: int | None = None,
    convert: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Run a shipped model's ``method`` on every chunk (see :func:`apply_chunks`), one output row per input row.

    CSR chunks are made dense for methods that refuse sparse input (see
    :func:`~sklspark._validation.accepts_sparse`). ``convert``, if given, turns each output into what is
    yielded (e.g. Arrow arrays); its errors become :class:`ChunkError` s naming the rows like the method's.
    """
    estimator = model.get()
    fn = getattr(estimator, method)

    def call(X: Any) -> Any:
        X = _densify_if_refused(model, estimator, method, method_kwargs, X)
        output = one_row_per_input(fn(X, **method_kwargs), X.shape[0])
        return output if convert is None else convert(output)

    return apply_chunks(call, f"{type(estimator).__name__}.{method}", chunks, partition)
