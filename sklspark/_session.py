"""Starting a Spark session the way sklspark's CLI, examples and benchmarks need it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession

#: The log4j2 configuration a quiet session's JVM starts with: Spark's errors only.
QUIET_LOG4J2 = Path(__file__).with_name("log4j2-quiet.properties")
_DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def spark_session(
    master: str = "local[*]",
    *,
    app_name: str = "sklspark",
    conf: Mapping[str, str] | None = None,
    remote: str | None = None,
    quiet: bool = True,
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
    quiet : bool, default=True
        Start the driver's JVM with Spark's log at level ERROR (the log4j2 file :data:`QUIET_LOG4J2`),
        so that a run prints its results and no ``WARN`` lines. ``False`` keeps Spark's default log
        (``WARN`` and above). Either way ``spark.sparkContext.setLogLevel()`` changes it later. It applies
        when this call starts the JVM: not to a session that already exists, not under Spark Connect, and
        not when ``conf`` gives ``spark.driver.extraJavaOptions`` with a ``log4j2.configurationFile``.

    Returns
    -------
    SparkSession

    Examples
    --------
    >>> spark = spark_session("local[2]")  # the session already running here, else a new one
    >>> spark.range(3).count()
    3
    """
    builder = SparkSession.builder.appName(app_name)
    if remote is not None:
        builder = builder.remote(remote)
    else:
        if master.startswith("local"):
            os.environ["PYSPARK_PYTHON"] = sys.executable
            os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        builder = builder.master(master)
    conf = dict(conf or {})
    java_options = conf.get(_DRIVER_JAVA_OPTIONS, "")
    if quiet and remote is None and "log4j2.configurationFile" not in java_options:
        conf[_DRIVER_JAVA_OPTIONS] = f'"-Dlog4j2.configurationFile={QUIET_LOG4J2.as_uri()}" {java_options}'.strip()
    for key, value in conf.items():
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
