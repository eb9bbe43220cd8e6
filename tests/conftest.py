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
