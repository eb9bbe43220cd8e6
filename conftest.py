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


# --- pytest-xdist groups ----------------------------------------------------------------------------------
# `--dist=loadgroup` keeps the tests marked `xdist_group(NAME)` in one test process by appending "@NAME" to
# their node ids, but pytest-xdist 3.8 edits `item._nodeid`, which pytest 9 no longer reads: the marks are
# silently ignored, and the cluster tests ran in both processes, each starting a standalone cluster of its
# own. The groups are therefore also given here by node id, for the scheduler below; collection checks
# that every `xdist_group` mark is listed.
XDIST_GROUPS = {
    "tests/test_cluster.py::": "cluster",
    "tests/test_connect.py::": "connect",
    "tests/test_versions.py::test_an_older_scikit_learn_on_the_workers_fails_under_spark_connect": "connect",
}


def _xdist_group(nodeid):
    """The group of ``nodeid`` in :data:`XDIST_GROUPS`, else ``None``."""
    return next((group for prefix, group in XDIST_GROUPS.items() if nodeid.startswith(prefix)), None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("xdist_group"):
            name = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
            if _xdist_group(item.nodeid.split("@")[0]) != name:
                raise pytest.UsageError(f"{item.nodeid}: xdist_group({name!r}) is not in XDIST_GROUPS (conftest.py)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist=loadgroup`` scheduling with the groups of :data:`XDIST_GROUPS`."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class _Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            return _xdist_group(nodeid.split("@")[0]) or super()._split_scope(nodeid)

    return _Scheduling(config, log)
