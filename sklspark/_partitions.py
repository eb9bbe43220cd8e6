"""The partition policy: how an input is spread over the cluster's cores before the method runs.

A Spark task scores one partition, so an input with fewer partitions than the cluster has cores (one
Parquet file is one partition) leaves cores idle however large it is. The rule, decided once per call by
:func:`partition_policy` and applied by :meth:`PartitionPolicy.apply`, is the same from every entry point
(``distribute()``, the CLI's ``apply``, both kNN join modes):

* ``partitions=n``: the input is repartitioned into ``n`` balanced partitions (an RDD keeps its
  order: it is counted and numbered first, two small jobs; a DataFrame is repartitioned round-robin).
* ``partitions="auto"``: a method that searches a whole reference per row (:data:`EXPENSIVE_METHODS`)
  gets the same, into :func:`spread_target` partitions, at least :data:`TASKS_PER_CORE` per core,
  whatever the input's partitioning (which may look balanced and not be); other methods keep the
  input's partitions. The CLI and the kNN joins, whose inputs are files, use it.
* ``partitions=None``: the input is scored as it is partitioned; a method that searches a whole
  reference per row (:data:`EXPENSIVE_METHODS`) on fewer partitions than cores gets a ``UserWarning``
  at the user's line naming ``partitions=``.

``udf()`` returns a Column, which has no partitioning of its own: the policy does not apply there.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from pyspark import RDD
from pyspark.sql import DataFrame

from ._session import default_parallelism, spark_context_of
from ._validation import check_scalar

_log = logging.getLogger("sklspark")

#: Methods that search a whole reference per row: their inputs are spread over every core.
EXPENSIVE_METHODS = frozenset(
    {"kneighbors", "radius_neighbors", "kneighbors_graph", "radius_neighbors_graph", "search"}
)

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


def spread_tasks(spark: Any) -> int:
    """Tasks that keep every core of the session busy: :data:`TASKS_PER_CORE` per core."""
    return default_parallelism(spark) * TASKS_PER_CORE


def spread_target(data: RDD | DataFrame) -> int:
    """Partitions to spread ``data`` over (round-robin) so that every core works: as many as it has, at least
    :func:`spread_tasks`.

    The number of partitions alone does not show that they are balanced: Spark splits a large Parquet
    file by bytes but a row group goes whole to one split, so one file with one row group of 256 MiB is
    two partitions, one of them empty. Under Spark Connect the partitioning cannot be seen at all.
    """
    return max(n_partitions(data) or 0, spread_tasks(_session_of(data)))


@dataclass(frozen=True)
class PartitionPolicy:
    """How one call spreads its input; made by :func:`partition_policy`.

    Attributes
    ----------
    partitions : int, "auto" or None
        The user's ``partitions=``, checked.
    expensive : bool
        The method searches a whole reference per row: idle cores are worth a warning.
    method : str
        The method that will run, named in the warning.
    caller : str
        The public function the user called, named in the warning.
    """

    partitions: int | str | None
    expensive: bool
    method: str
    caller: str

    def apply(self, data: RDD | DataFrame, *, stacklevel: int = 2) -> RDD | DataFrame:
        """``data`` spread as the policy says (see the module docstring).

        ``stacklevel`` counts from the caller of ``apply``, as :func:`warnings.warn` does, so that a
        warning points at the user's line.
        """
        if self.partitions == "auto" and self.expensive:
            target = spread_target(data)
            _log.info(
                "spreading the input over %d partitions (%d per core; it has %s)",
                target,
                TASKS_PER_CORE,
                n_partitions(data) or "an unknown number of",
            )
            return _repartition(data, target)
        if isinstance(self.partitions, int):
            _log.info("repartitioning the input into partitions=%d", self.partitions)
            return _repartition(data, self.partitions)
        current = n_partitions(data) if self.expensive and self.partitions is None else None
        cores = default_parallelism(_session_of(data)) if current is not None else 0
        if current is not None and current < cores:
            warnings.warn(
                f"{self.method} will run on {current} partition(s), fewer than the cluster's {cores} cores; pass "
                f"partitions='auto' (or partitions={spread_target(data)}) to {self.caller}() to use them all",
                UserWarning,
                stacklevel=stacklevel + 1,
            )
        return data


def partition_policy(partitions: Any, method: str, caller: str) -> PartitionPolicy:
    """Check ``partitions=`` (``None``, ``"auto"`` or an int in ``[1, inf)``) and decide the policy for ``method``."""
    if partitions != "auto":
        partitions = check_scalar(partitions, "partitions", caller, low=1, none_ok=True, also=["'auto'"])
    return PartitionPolicy(partitions, method in EXPENSIVE_METHODS, method, caller)


def _repartition(data: RDD | DataFrame, partitions: int) -> RDD | DataFrame:
    """``data`` in ``partitions`` balanced partitions; an RDD keeps its order."""
    if isinstance(data, DataFrame):
        return data.repartition(partitions)
    total = max(1, data.count())
    numbered = data.zipWithIndex().map(lambda pair: (pair[1], pair[0]))
    ranged = numbered.repartitionAndSortWithinPartitions(partitions, lambda i: i * partitions // total)
    return ranged.values()
