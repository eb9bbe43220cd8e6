"""Chunk runner: call a function once per chunk inside a task, with thread caps and clear errors.

A failing chunk either fails its task with a :class:`ChunkError` naming what ran, the partition, the rows
and the cause, or, when failures are isolated (``on_error="null"``), is cut in halves until each failing
row stands alone (:func:`score_chunk`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark import TaskContext
from threadpoolctl import ThreadpoolController

from ._versions import ERROR_MARKER

#: Per worker process: the threadpoolctl controller, and the number of imported modules when it scanned.
_controller: ThreadpoolController | None = None
_scanned_modules = 0


class BadInput(ValueError):
    """Raised by a task's input adapter for rows it cannot read (null, ragged, wrong width)."""


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


def _partition() -> int:
    context = TaskContext.get()
    return context.partitionId() if context is not None else 0


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
        partition = _partition()
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


@dataclass(frozen=True)
class Piece:
    """Consecutive rows of a chunk, from ``offset`` for ``length`` rows, and what scoring them gave.

    ``output`` when they were scored; otherwise ``error``, the reason, as
    ``"<method>: <ExceptionType>: <message>"``.
    """

    offset: int
    length: int
    output: Any = None
    error: str | None = None


def score_chunk(
    fn: Callable[[Any, int], Any], chunk: Any, rows: Sequence[int], label: str, isolate: bool
) -> list[Piece]:
    """``fn(chunk)`` as one :class:`Piece` covering the whole chunk, or the pieces left by isolating failures.

    Parameters
    ----------
    fn : callable
        ``fn(chunk, first_row)`` reads, scores and converts a chunk whose first row is at ``first_row``
        in the partition; ``chunk[a:b]`` must be a chunk too (a list of RDD elements, an Arrow record
        batch). It raises :class:`BadInput` for rows it cannot read.
    chunk : sliceable
    rows : sequence of int
        The partition positions of the chunk's rows, for messages (a ``range`` when they are consecutive).
    label : str
        What runs, ``"<Estimator>.<method>"``.
    isolate : bool
        ``False``: any error raises a :class:`ChunkError` naming ``label``, the partition, the rows and
        the cause. ``True``: a failing chunk is bisected until every failing row is a piece of its own
        with its reason; every other row is scored as part of a larger piece.
    """
    try:
        return [Piece(0, len(rows), fn(chunk, int(rows[0])))]
    except Exception as exc:
        if not isolate:
            where = f"partition {_partition()}"
            if isinstance(exc, BadInput):
                raise ChunkError(f"{ERROR_MARKER} bad input for {label} in {where}: {exc}") from exc
            raise ChunkError(
                f"{ERROR_MARKER} {label} failed in {where}, rows {rows[0]}-{rows[-1]}: {type(exc).__name__}: {exc}"
            ) from exc
        if len(rows) == 1:
            return [Piece(0, 1, error=f"{label.rpartition('.')[2]}: {type(exc).__name__}: {exc}")]
    half = len(rows) // 2
    tail = score_chunk(fn, chunk[half:], rows[half:], label, isolate)
    head = score_chunk(fn, chunk[:half], rows[:half], label, isolate)
    return head + [Piece(p.offset + half, p.length, p.output, p.error) for p in tail]
