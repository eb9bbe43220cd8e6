"""Spreading an input over the cluster's cores before the method runs: ``distribute(partitions=...)``.

A Spark task scores one partition, so an input with fewer partitions than the cluster has cores (one
Parquet file is one partition) leaves cores idle however large it is. ``partitions=`` repartitions
it first; without it, an expensive method on too few partitions gets a warning that names the option.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from pyspark import RDD
from pyspark.sql import DataFrame

from ._session import default_parallelism, spark_context_of
from ._validation import check_scalar

_Data = TypeVar("_Data", RDD, DataFrame)

#: Methods that search a whole reference per row: worth a warning when they would leave cores idle.
EXPENSIVE_METHODS = frozenset({"kneighbors", "radius_neighbors", "kneighbors_graph", "radius_neighbors_graph"})

#: Partitions per core when an input is spread: a few, so a slow task does not hold the others up.
TASKS_PER_CORE = 2


def n_partitions(data: RDD | DataFrame) -> int | None:
    """The input's number of partitions (from its plan, no job), or ``None`` under Spark Connect."""
    if isinstance(data, RDD):
        return data.getNumPartitions()
    if spark_context_of(data) is None:
        return None
    return data.rdd.getNumPartitions()


def _session_of(data: RDD | DataFrame) -> Any:
    return data.context if isinstance(data, RDD) else data


def spread_target(data: RDD | DataFrame) -> int:
    """Partitions to spread ``data`` over (round-robin) so that every core works: as many as it has, at least
    :data:`TASKS_PER_CORE` per core.

    The number of partitions alone does not show that they are balanced: Spark splits a large Parquet
    file by bytes but a row group goes whole to one split, so one file with one row group of 256 MiB is
    two partitions, one of them empty. Under Spark Connect the partitioning cannot be seen at all.
    """
    return max(n_partitions(data) or 0, default_parallelism(_session_of(data)) * TASKS_PER_CORE)


def check_partitions(partitions: Any) -> int | None:
    """Validate ``partitions=``: ``None`` or an int in ``[1, inf)``."""
    return check_scalar(partitions, "partitions", "distribute", low=1, none_ok=True)


def repartition(data: _Data, partitions: int | None, method: str) -> _Data:
    """``data`` in ``partitions`` balanced partitions, or as it is when ``partitions`` is ``None``.

    An RDD keeps its order (its elements are numbered and range-partitioned: a count and a numbering
    job run first); a DataFrame is repartitioned round-robin. Without ``partitions``, an expensive
    method (:data:`EXPENSIVE_METHODS`) on fewer partitions than cores gets a ``UserWarning``.
    """
    if partitions is None:
        current = n_partitions(data) if method in EXPENSIVE_METHODS else None
        cores = default_parallelism(_session_of(data)) if current is not None else 0
        if current is not None and current < cores:
            warnings.warn(
                f"{method} will run on {current} partition(s), fewer than the cluster's {cores} cores; "
                f"pass partitions={spread_target(data)} to distribute() to use them all",
                UserWarning,
                stacklevel=3,
            )
        return data
    if isinstance(data, DataFrame):
        return data.repartition(partitions)
    total = max(1, data.count())
    numbered = data.zipWithIndex().map(lambda pair: (pair[1], pair[0]))
    ranged = numbered.repartitionAndSortWithinPartitions(partitions, lambda i: i * partitions // total)
    return ranged.values()
