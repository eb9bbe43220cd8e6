"""Property-based: random shapes, partitionings, chunk sizes, nulls and NaNs. Every call either returns
exactly the in-process result, row for row, or raises the documented error (on the driver when the bad
row is among those it reads, else from the task); never a shorter output."""

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.errors import PythonException
from sklearn.linear_model import LogisticRegression

from sklspark import distribute

WIDTH = 3
RNG = np.random.default_rng(7)
X_FIT = RNG.normal(size=(50, WIDTH))
MODEL = LogisticRegression().fit(X_FIT, X_FIT[:, 0] > 0)


@st.composite
def datasets(draw):
    n_rows = draw(st.integers(0, 40))
    values = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n_rows * WIDTH, max_size=n_rows * WIDTH))
    X = np.array(values, dtype=np.float64).reshape(n_rows, WIDTH)
    nan_rows = draw(st.sets(st.integers(0, max(n_rows - 1, 0)), max_size=2)) if n_rows else set()
    null_rows = draw(st.sets(st.integers(0, max(n_rows - 1, 0)), max_size=2)) if n_rows else set()
    for i in nan_rows:
        X[i, draw(st.integers(0, WIDTH - 1))] = np.nan
    return X, sorted(null_rows - nan_rows), draw(st.integers(1, 6)), draw(st.integers(1, 50))


SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(run, X, null_rows):
    has_nan = bool(np.isnan(X).any())
    try:
        got = run()
    except ValueError as exc:  # a null among the rows read on the driver before the job
        message = str(exc)
        assert null_rows and "read on the driver to check the method on them" in message and "is null" in message
        return
    except PythonException as exc:
        message = str(exc)
        assert "ChunkError: sklspark:" in message
        null_reported = "is null" in message or "is None" in message
        assert ("contains NaN" in message and has_nan) or (null_reported and null_rows), message
        return
    assert not has_nan and not null_rows, "bad rows were not reported"
    assert got.shape == (len(X), 2)
    if len(X):
        np.testing.assert_allclose(got, MODEL.predict_proba(X), rtol=1e-12)


@SETTINGS
@given(datasets())
def test_dataframe_rows_all_come_out_or_the_documented_error(spark, data):
    X, null_rows, n_partitions, chunk_size = data
    features = [None if i in null_rows else row.tolist() for i, row in enumerate(X)]
    table = pa.table(
        {"id": pa.array(np.arange(len(X)), pa.int64()), "features": pa.array(features, pa.list_(pa.float64()))}
    )
    df = spark.createDataFrame(table).repartition(n_partitions)

    def run():
        out = distribute(MODEL, "predict_proba", df, chunk_size=chunk_size).toArrow().sort_by("id")
        assert out.column("id").to_pylist() == list(range(len(X)))
        proba = out.column("probability").to_numpy(zero_copy_only=False)
        return np.stack(proba) if len(proba) else np.empty((0, 2))

    _check(run, X, null_rows)


@SETTINGS
@given(datasets())
def test_rdd_rows_all_come_out_in_order_or_the_documented_error(spark, data):
    X, null_rows, n_partitions, chunk_size = data
    rows = [None if i in null_rows else row for i, row in enumerate(X)]
    rdd = spark.sparkContext.parallelize(rows, n_partitions)

    def run():
        out = distribute(MODEL, "predict_proba", rdd, chunk_size=chunk_size).collect()
        return np.array(out) if out else np.empty((0, 2))

    _check(run, X, null_rows)
