"""Docstring examples run as doctests (``--doctest-modules`` over the ``sklspark`` package).

Their namespace holds ``np`` and ``spark``: a local[2] session, the same object as the test suite's
``spark`` fixture whichever starts first (``spark_session`` gets the active session if there is one).
"""

import os

import numpy as np
import pytest
from _pytest.doctest import DoctestItem

from sklspark import spark_session

# Every JVM the tests start (local sessions, example and CLI subprocesses, the standalone cluster, the
# Connect server) lives for seconds: compiling only with C1 and one GC thread starts Spark ~40 % faster
# on 2 cores (session plus first job, 18 s -> 11 s). The JVM prints "Picked up JAVA_TOOL_OPTIONS" once.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


@pytest.fixture(scope="session")
def doctest_spark():
    session = spark_session(
        "local[2]",
        app_name="sklspark-tests",
        conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"},
    )
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace):
    """Give doctests ``np`` and ``spark`` (started only for doctests: other tests ask for their own)."""
    if isinstance(request.node, DoctestItem):
        doctest_namespace.update(np=np, spark=request.getfixturevalue("doctest_spark"))
