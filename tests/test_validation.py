"""Bad input gets a clear error: on the driver before any job where it can be known there, else from the task."""

import re

import numpy as np
import pyarrow as pa
import pytest
from _helpers import make_input, no_spark_job
from pyspark.errors import PythonException
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import FunctionTransformer

from sklspark import distribute

# These tests feed small one-partition inputs on purpose; the warning that such an input leaves cores idle
# (tested in test_inputs.py) is not what they check.
pytestmark = pytest.mark.filterwarnings("ignore:kneighbors will run on:UserWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4))
Y = (X[:, 0] > 0).astype(int)
NN = NearestNeighbors(n_neighbors=3).fit(X)


@pytest.fixture(scope="module")
def df(spark):
    return make_input(spark, X, "df-array")


@pytest.fixture(scope="module")
def rdd(spark):
    return make_input(spark, X, "rdd-ndarray")


# ----------------------------------------------------------------------------- driver-side errors


@pytest.mark.parametrize("kind", ["df", "rdd"])
@pytest.mark.parametrize(
    ("estimator", "method", "kwargs", "error", "match"),
    [
        (NearestNeighbors(), "kneighbors", {}, NotFittedError, "not fitted"),
        (
            KMeans(2, n_init=1).fit(X),
            "predict_proba",
            {},
            ValueError,
            r"KMeans has no method 'predict_proba'; it has 'predict', 'transform'",
        ),
        (NN, "fit", {}, ValueError, "'fit' is not a prediction-time method"),
        (SGDClassifier().fit(X, Y), "partial_fit", {}, ValueError, "'partial_fit' is not a prediction-time method"),
        (FunctionTransformer().fit(X), "fit_transform", {}, ValueError, "not a prediction-time method"),
        (LogisticRegression().fit(X, Y), "score", {}, ValueError, "'score' is not a prediction-time method"),
        (NN, "_fit", {}, ValueError, "not a prediction-time method"),
        (NN, 3, {}, TypeError, "The 'method' parameter of distribute must be a str. Got 3 instead."),
        (
            NN,
            "kneighbors",
            {"chunk_size": 0},
            ValueError,
            re.escape("The 'chunk_size' parameter of distribute must be an int in the range [1, 4194304]. Got 0"),
        ),
        (NN, "kneighbors", {"chunk_size": -5}, ValueError, "Got -5 instead"),
        (NN, "kneighbors", {"chunk_size": 10**9}, ValueError, "Got 1000000000 instead"),
        (NN, "kneighbors", {"chunk_size": 2.5}, TypeError, r"an int in the range \[1, 4194304\]. Got 2.5 instead"),
        (NN, "kneighbors", {"chunk_size": True}, TypeError, "Got True instead"),
    ],
)
def test_driver_errors_before_any_job(spark, df, rdd, kind, estimator, method, kwargs, error, match):
    data = df if kind == "df" else rdd
    with no_spark_job(spark.sparkContext), pytest.raises(error, match=match):
        distribute(estimator, method, data, **kwargs)


@pytest.mark.parametrize("kind", ["df", "rdd"])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"n_neighbors": 100},
            r"NearestNeighbors.kneighbors\(n_neighbors=100\) failed on the first rows .*n_samples_fit = 40",
        ),
        ({"n_neighbors": 0}, "Expected n_neighbors > 0"),
        ({"no_such_kwarg": 1}, "unexpected keyword argument 'no_such_kwarg'"),
    ],
)
def test_method_kwargs_checked_on_the_driver(spark, df, rdd, kind, kwargs, match):
    """Rejected on rows of zeros, then on the data's first rows (one small job), before the main job."""
    with pytest.raises(ValueError, match=match):
        distribute(NN, "kneighbors", df if kind == "df" else rdd, **kwargs)


def test_input_computed_in_python_is_not_read_on_the_driver(spark, df):
    """Reading the first rows of another distribute()'s output would run it and stop it mid-stream."""
    scored = distribute(NN, "kneighbors", df, n_neighbors=2)
    with no_spark_job(spark.sparkContext):
        chained = distribute(NN, "kneighbors", scored, output_cols=["d2", "i2"])
    np.testing.assert_array_equal(
        np.array(chained.orderBy("id").select("i2").toPandas()["i2"].tolist()), NN.kneighbors(X)[1]
    )


def test_data_must_be_spark(spark):
    with pytest.raises(TypeError, match=r"data must be a pyspark RDD or DataFrame, got numpy\.ndarray"):
        distribute(NN, "kneighbors", X)


def test_dataframe_options_refused_for_rdd(spark, rdd):
    with (
        no_spark_job(spark.sparkContext),
        pytest.raises(TypeError, match="features= and output_cols= apply to DataFrame"),
    ):
        distribute(NN, "kneighbors", rdd, features="features")


@pytest.fixture(scope="module")
def typed_df(spark):
    table = pa.table(
        {
            "id": np.arange(3),
            "a": [1.0, 2.0, 3.0],
            "b": [1, 2, 3],
            "c": [0.5, 0.5, 0.5],
            "d": [1.0, 1.0, 1.0],
            "name": ["x", "y", "z"],
            "flag": [True, False, True],
            "words": [["a"], ["b"], ["c"]],
        }
    )
    return spark.createDataFrame(table).withColumn("money", F.col("a").cast("decimal(10,2)"))


@pytest.mark.parametrize(
    ("features", "error", "match"),
    [
        ("nope", ValueError, r"feature column\(s\) \['nope'\] not found; the DataFrame has columns \['id', 'a'"),
        (["a", "nope"], ValueError, r"\['nope'\] not found"),
        ("name", TypeError, "feature column 'name' is string; expected a vector, an array of numbers, or numeric"),
        (["a", "flag"], TypeError, "feature column 'flag' is boolean"),
        ("words", TypeError, "feature column 'words' is array<string>; expected an array of float, double or integer"),
        (["money"], TypeError, "feature column 'money' is decimal"),
        ([], ValueError, "features must name at least one column, got an empty list"),
        (["a", "a"], ValueError, r"features lists columns more than once: \['a'\]"),
        (3, TypeError, "features must be a column name or a list of column names, got 3"),
        (
            ["a", "b", "c"],
            ValueError,
            "The DataFrame's feature columns \\['a', 'b', 'c'\\] has 3 features, but NearestNeighbors was fitted on 4",
        ),
    ],
)
def test_feature_column_errors(spark, typed_df, features, error, match):
    with no_spark_job(spark.sparkContext), pytest.raises(error, match=match):
        distribute(NN, "kneighbors", typed_df, features=features)


def test_missing_default_features_column(spark, typed_df):
    with pytest.raises(ValueError, match=r"feature column\(s\) \['features'\] not found"):
        distribute(NN, "kneighbors", typed_df)


def test_width_mismatch_in_array_column(spark):
    """A width the estimator records is trusted on the driver (no data read) and checked by every chunk."""
    df = make_input(spark, X[:, :3], "df-array").coalesce(1)
    with no_spark_job(spark.sparkContext):
        result = distribute(NN, "kneighbors", df)
    assert (
        "bad input for NearestNeighbors.kneighbors in partition 0: array column 'features' has 3 features at "
        "rows 0-39, but the estimator was fitted on 4 features" in _task_error(result)
    )


def test_zero_column_vectors(spark):
    empty = spark.createDataFrame(
        pa.table({"id": np.arange(4), "features": [[]] * 4}).cast(
            pa.schema([("id", pa.int64()), ("features", pa.list_(pa.float64()))])
        )
    ).coalesce(1)
    message = _task_error(distribute(NN, "kneighbors", empty))
    assert "array column 'features' has 0 features at rows 0-3, but the estimator was fitted on 4" in message
    vectors = spark.createDataFrame([(0, Vectors.dense([]))], ["id", "features"]).coalesce(1)
    message = _task_error(distribute(NN, "kneighbors", vectors))
    assert "vector column 'features' has 0 features at rows 0-0, but the estimator was fitted on 4" in message
    rows = spark.sparkContext.parallelize([np.zeros(0)] * 4, 2)
    message = _task_error(distribute(NN, "kneighbors", rows))
    assert re.search(
        r"NearestNeighbors.kneighbors failed in partition [01], rows 0-1: ValueError: Found array with "
        r"0 feature\(s\)",
        message,
    ), message


def test_output_cols_errors(spark):
    df = make_input(spark, X, "df-columns")
    features = ["x0", "x1", "x2", "x3"]
    with no_spark_job(spark.sparkContext):
        with pytest.raises(
            ValueError, match=r"clash with each other or with the input columns \['id', 'x0', 'x1', 'x2', 'x3'\]"
        ):
            distribute(NN, "kneighbors", df, features=features, output_cols=["id", "nbrs"])
        with pytest.raises(
            ValueError,
            match=r"output_cols gives 1 name\(s\) \['d'\], but kneighbors returns 2 output\(s\); "
            r"expected names for \['distances', 'indices'\]",
        ):
            distribute(NN, "kneighbors", df, features=features, output_cols="d")


# ----------------------------------------------------------------------------- errors inside tasks


def _task_error(result):
    with pytest.raises(PythonException) as info:
        result.collect()
    message = str(info.value)
    assert "sklspark._runner.ChunkError: sklspark:" in message
    return message


def test_nan_row_in_dataframe_names_method_partition_rows_and_cause(spark):
    bad = X.copy()
    bad[25, 2] = np.nan
    df = make_input(spark, bad, "df-columns").coalesce(1)
    message = _task_error(distribute(NN, "kneighbors", df, features=["x0", "x1", "x2", "x3"], chunk_size=10))
    assert "NearestNeighbors.kneighbors failed in partition 0, rows 20-29: ValueError: Input X contains NaN" in message


def test_inf_row_in_rdd(spark):
    bad = X.copy()
    bad[3, 0] = np.inf
    rdd = spark.sparkContext.parallelize(list(bad), 2)
    message = _task_error(distribute(LogisticRegression().fit(X, Y), "predict", rdd, chunk_size=8))
    assert (
        "LogisticRegression.predict failed in partition 0, rows 0-7: ValueError: Input X contains infinity" in message
    )


def test_null_vector_is_never_dropped_and_gives_null_results(spark):
    rows = [(i, Vectors.dense(r)) for i, r in enumerate(X)]
    rows[7] = (7, None)
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame(rows, schema).coalesce(1)
    out = {r.id: r for r in distribute(NN, "kneighbors", df).collect()}
    assert sorted(out) == list(range(len(X)))
    assert out[7].distances is None and out[7].indices is None
    distances, indices = NN.kneighbors(X)
    for i in set(out) - {7}:
        assert out[i].indices == indices[i].tolist()
        np.testing.assert_allclose(out[i].distances, distances[i])


def test_null_in_numeric_column_gives_a_null_result(spark):
    a = [1.0, 2.0, None, 4.0, 5.0]
    table = pa.table({"id": np.arange(5), "a": a, "b": np.ones(5)})
    df = spark.createDataFrame(table).coalesce(1)
    est = KMeans(2, n_init=1, random_state=0).fit(X[:, :2])
    got = [r.prediction for r in distribute(est, "predict", df, features=["a", "b"]).orderBy("id").collect()]
    expected = est.predict(np.array([[v, 1.0] for v in a if v is not None]))
    assert got[2] is None
    assert [g for g in got if g is not None] == expected.tolist()


def test_null_element_gives_a_null_result_and_ragged_array_column_fails(spark):
    null_element = [[1.0, 2.0, 3.0, 4.0]] * 3 + [[1.0, None, 3.0, 4.0]]
    df = spark.createDataFrame(pa.table({"id": np.arange(4), "features": null_element})).coalesce(1)
    got = [r.indices for r in distribute(NN, "kneighbors", df).orderBy("id").collect()]
    assert got[3] is None
    assert got[:3] == NN.kneighbors(np.array(null_element[:3]), return_distance=False).tolist()
    ragged = [[1.0, 2.0, 3.0, 4.0]] * 3 + [[1.0, 2.0]]
    df = spark.createDataFrame(pa.table({"id": np.arange(4), "features": ragged})).coalesce(1)
    assert "array column 'features' has 2 values at row 3 but 4 at row 0" in _task_error(
        distribute(NN, "kneighbors", df)
    )


def test_ragged_and_non_numeric_rdd_rows(spark):
    sc = spark.sparkContext
    ragged = [*X[:5], X[5, :3]]
    assert "row 5 has 3 features but row 0 has 4" in _task_error(
        distribute(NN, "kneighbors", sc.parallelize(ragged, 1))
    )
    words = [list(x) for x in X[:3]] + [["a", "b", "c", "d"]]
    assert "row 3 is not a flat sequence of numbers" in _task_error(
        distribute(NN, "kneighbors", sc.parallelize(words, 1))
    )
    nulls = [*X[:3], None]
    assert "row 3 is None; expected a vector of features" in _task_error(
        distribute(NN, "kneighbors", sc.parallelize(nulls, 1))
    )


def test_method_returning_the_wrong_number_of_rows(spark):
    def first_row_only(Z):
        return Z[:1]

    est = FunctionTransformer(first_row_only).fit(X)
    df = make_input(spark, X, "df-columns")
    rdd = spark.sparkContext.parallelize(list(X), 1)
    # The driver-side probe on the data's first two rows sees it before the main job.
    for data, options in ((df, {"features": ["x0", "x1", "x2", "x3"]}), (rdd, {})):
        with pytest.raises(ValueError, match="returned 1 rows for 2 input rows"):
            distribute(est, "transform", data, **options)

    def drops_rows_of_big_chunks(Z):
        return Z[:1] if len(Z) > 2 else Z

    # A method that misbehaves only on larger chunks is caught by the task.
    est = FunctionTransformer(drops_rows_of_big_chunks).fit(X)
    message = _task_error(distribute(est, "transform", rdd, chunk_size=10))
    assert (
        "FunctionTransformer.transform failed in partition 0, rows 0-9: ValueError: returned 1 rows for 10 input rows"
        in message
    )
