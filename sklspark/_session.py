"""Starting a Spark session the way sklspark's CLI, examples and benchmarks need it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession


def spark_session(
    master: str = "local[*]",
    *,
    app_name: str = "sklspark",
    conf: Mapping[str, str] | None = None,
    remote: str | None = None,
) -> SparkSession:
    """Get or create a Spark session.

    For a local master (``local[*]``, the default: an embedded Spark needing no cluster) the Python
    workers are made to use this very interpreter (``PYSPARK_PYTHON=sys.executable``), so they see
    the same packages as the driver.

    Parameters
    ----------
    master : str, default="local[*]"
        Spark master URL: ``local[N]``, ``spark://host:port``, ``yarn``, ``k8s://...``.
    app_name : str, default="sklspark"
    conf : mapping of str to str, optional
        Extra Spark configuration, e.g. ``{"spark.executor.memory": "4g"}``.
    remote : str, optional
        A Spark Connect URL (``sc://host:port``); ``master`` is then ignored.

    Returns
    -------
    SparkSession
    """
    builder = SparkSession.builder.appName(app_name)
    if remote is not None:
        builder = builder.remote(remote)
    else:
        if master.startswith("local"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
            os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def spark_context_of(spark: SparkSession | DataFrame | SparkContext) -> SparkContext | None:
    """The ``SparkContext`` behind a session, a DataFrame or a context; ``None`` under Spark Connect.

    A Spark Connect client has no JVM and no ``SparkContext`` (asking for one raises), so callers fall
    back to what Connect offers: task closures and uploaded artifacts.
    """
    if isinstance(spark, SparkContext):
        return spark
    if isinstance(spark, DataFrame):
        spark = spark.sparkSession
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return None
    return spark.sparkContext


def default_parallelism(spark: SparkSession | DataFrame | SparkContext) -> int:
    """How many tasks the session can run at once: ``SparkContext.defaultParallelism`` (the cluster's cores).

    Under Spark Connect (no ``SparkContext``) it is read from the session's ``spark.conf``:
    ``spark.default.parallelism`` if set, else ``spark.sql.shuffle.partitions`` (Spark's own number of
    tasks for a shuffle).
    """
    context = spark_context_of(spark)
    if context is not None:
        return max(1, context.defaultParallelism)
    session = spark.sparkSession if isinstance(spark, DataFrame) else spark
    conf = session.conf  # type: ignore[union-attr]
    value = conf.get("spark.default.parallelism", None) or conf.get("spark.sql.shuffle.partitions", None) or "1"
    return max(1, int(value))
