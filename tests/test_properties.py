"""Property-based: random shapes, partitionings, chunk sizes, nulls and NaNs. Every call either returns
exactly the in-process result, row for row, or raises the documented error (on the driver when the bad
row is among those it reads, else from the task); never a shorter output. A DataFrame's null rows give
null results (null in, null out); an RDD's None elements are errors. With ``on_error="null"`` nothing
fails: every bad row is a null result with its reason, every other row exact."""

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
    """``run()`` gives the in-process result, or the documented error for a NaN or null row."""
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


def _dataframe(spark, X, null_rows, n_partitions):
    features = [None if i in null_rows else row.tolist() for i, row in enumerate(X)]
    table = pa.table(
        {"id": pa.array(np.arange(len(X)), pa.int64()), "features": pa.array(features, pa.list_(pa.float64()))}
    )
    return spark.createDataFrame(table).repartition(n_partitions)


@SETTINGS
@given(datasets())
def test_dataframe_rows_all_come_out_with_nulls_for_null_rows_or_the_documented_error(spark, data):
    X, null_rows, n_partitions, chunk_size = data
    df = _dataframe(spark, X, null_rows, n_partitions)
    try:
        out = distribute(MODEL, "predict_proba", df, chunk_size=chunk_size).toArrow().sort_by("id")
    except PythonException as exc:
        message = str(exc)
        assert "ChunkError: sklspark:" in message and "contains NaN" in message, message
        assert np.isnan(X).any()
        return
    assert not np.isnan(X).any(), "NaN rows were not reported"
    assert out.column("id").to_pylist() == list(range(len(X)))
    proba = out.column("probability").to_pylist()
    assert [i for i, p in enumerate(proba) if p is None] == null_rows
    kept = [i for i in range(len(X)) if i not in null_rows]
    if kept:
        np.testing.assert_allclose([proba[i] for i in kept], MODEL.predict_proba(X[kept]), rtol=1e-12)


@SETTINGS
@given(datasets())
def test_on_error_null_keeps_every_row_and_names_each_bad_one(spark, data):
    X, null_rows, n_partitions, chunk_size = data
    df = _dataframe(spark, X, null_rows, n_partitions)
    out = distribute(MODEL, "predict_proba", df, chunk_size=chunk_size, on_error="null").toArrow().sort_by("id")
    assert out.column("id").to_pylist() == list(range(len(X)))
    proba, errors = out.column("probability").to_pylist(), out.column("error").to_pylist()
    nan_rows = [i for i in range(len(X)) if np.isnan(X[i]).any() and i not in null_rows]
    assert [i for i, e in enumerate(errors) if e is not None] == nan_rows
    assert all(errors[i].startswith("predict_proba: ValueError: Input X contains NaN") for i in nan_rows)
    assert [i for i, p in enumerate(proba) if p is None] == sorted([*null_rows, *nan_rows])
    good = [i for i in range(len(X)) if proba[i] is not None]
    if good:
        np.testing.assert_allclose([proba[i] for i in good], MODEL.predict_proba(X[good]), rtol=1e-12)


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
