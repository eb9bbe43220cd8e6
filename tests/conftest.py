import tempfile
from pathlib import Path

import pytest

from sklspark import spark_session


@pytest.fixture(scope="session")
def spark():
    """One embedded local[2] Spark session for the whole test run."""
    session = spark_session(
        "local[2]",
        app_name="sklspark-tests",
        conf={
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        },
    )
    session.sparkContext.setLogLevel("FATAL")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sc(spark):
    return spark.sparkContext


@pytest.fixture(scope="session")
def old_sklearn_python():
    """A Python for the executors with an older scikit-learn and this run's other packages (see _venvs.py)."""
    import sklearn
    from _venvs import WORKER_SKLEARN, worker_python

    assert sklearn.__version__ != WORKER_SKLEARN, "the tests need a driver on another scikit-learn"
    return worker_python(Path(tempfile.gettempdir()) / "sklspark-test-envs", f"scikit-learn=={WORKER_SKLEARN}")
