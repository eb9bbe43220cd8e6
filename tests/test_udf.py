"""udf(): the estimator's method as a Column in select, withColumn and SQL, against the in-process result."""

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _helpers import assert_same, collect_df, make_input, no_spark_job
from pyspark.errors import PythonException
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StructType
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import sklspark

RNG = np.random.default_rng(1)
X = RNG.normal(size=(60, 4))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)
NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def table(spark):
    """One DataFrame with the features as a vector, an array and four named columns, plus a string column."""
    vectors = make_input(spark, X, "df-vector").withColumnRenamed("features", "vector")
    arrays = make_input(spark, X, "df-array")
    columns = make_input(spark, X, "df-columns").toDF("id", *NAMES)
    return vectors.join(arrays, "id").join(columns, "id").withColumn("note", F.lit("x" * 30)).cache()


@pytest.mark.parametrize("column", ["vector", "features"])
@pytest.mark.parametrize(
    ("estimator", "method", "kwargs"),
    [
        (LogisticRegression().fit(X, Y), "predict", {}),
        (LogisticRegression().fit(X, Y), "predict_proba", {}),
        (StandardScaler().fit(X), "transform", {}),
        (NearestNeighbors(n_neighbors=3).fit(X), "kneighbors", {}),
        (NearestNeighbors(n_neighbors=3).fit(X), "kneighbors", {"return_distance": False}),
    ],
)
def test_select_one_feature_column(spark, table, column, estimator, method, kwargs):
    expected = getattr(estimator, method)(X, **kwargs)
    with no_spark_job(spark.sparkContext):
        score = sklspark.udf(estimator, method, **kwargs)
    out = table.select("id", score(column).alias("out"))
    if isinstance(expected, tuple):  # kneighbors: one struct column, expanded with "out.*"
        assert out.schema["out"].dataType.fieldNames() == ["distances", "indices"]
        assert_same(collect_df(out.select("id", "out.*"), ["distances", "indices"], expected), expected)
    else:
        assert_same(collect_df(out, ["out"], expected), expected)


def test_named_columns_with_column_and_sql(spark, table):
    clf = LogisticRegression().fit(pd.DataFrame(X, columns=NAMES), Y)
    expected = clf.predict_proba(pd.DataFrame(X, columns=NAMES))
    score = sklspark.udf(clf, "predict_proba")
    # No arguments: the columns named by feature_names_in_; Column objects; withColumn keeps every column.
    out = table.withColumn("p", score()).withColumn("q", score(*(F.col(n) for n in NAMES)))
    assert out.columns == [*table.columns, "p", "q"]
    assert_same(collect_df(out, ["p", "q"], (expected, expected)), (expected, expected))
    spark.udf.register("churn_score", sklspark.udf(clf))
    table.createOrReplaceTempView("customers")
    got = spark.sql("SELECT id, churn_score(a, b, c, d) AS churn FROM customers WHERE id % 2 = 0")
    churn = clf.predict(pd.DataFrame(X[::2], columns=NAMES))
    assert_same(collect_df(got, ["churn"], churn), churn)


def test_return_types_come_from_the_estimator(spark):
    with no_spark_job(spark.sparkContext):
        assert sklspark.udf(LogisticRegression().fit(X, Y)).returnType == LongType()
        assert sklspark.udf(LinearRegression().fit(X, Y)).returnType == DoubleType()
        assert sklspark.udf(StandardScaler().fit(X), "transform").returnType == ArrayType(DoubleType())
        knn = sklspark.udf(NearestNeighbors(n_neighbors=2).fit(X), "kneighbors").returnType
        assert knn == StructType().add("distances", ArrayType(DoubleType())).add("indices", ArrayType(LongType()))


def test_return_type_override_and_when_it_is_needed(spark, table):
    summed = FunctionTransformer(lambda Z: Z.sum(axis=1)).fit(None)  # fitted without data: no n_features_in_
    with pytest.raises(TypeError, match="records no n_features_in_; pass return_type="):
        sklspark.udf(summed, "transform")
    score = sklspark.udf(summed, "transform", return_type="double")
    assert_same(collect_df(table.select("id", score("features").alias("s")), ["s"], X.sum(axis=1)), X.sum(axis=1))
    vectors = sklspark.udf(StandardScaler().fit(X), "transform", return_type=VectorUDT())
    assert vectors.returnType == VectorUDT()


def test_errors(spark, table):
    nn = NearestNeighbors(n_neighbors=2).fit(X)
    with pytest.raises(TypeError, match="the estimator has no feature_names_in_"):
        sklspark.udf(nn, "kneighbors")()
    with pytest.raises(ValueError, match="3 feature columns were passed, but the estimator was fitted on 4"):
        sklspark.udf(nn, "kneighbors")("a", "b", "c")
    bad = spark.createDataFrame(pa.table({"id": [0, 1, 2], "features": [[0.0] * 4, [np.nan] * 4, [1.0] * 4]}))
    with pytest.raises(PythonException, match=r"NearestNeighbors.kneighbors failed in partition 0, rows 0-2"):
        bad.coalesce(1).select(sklspark.udf(nn, "kneighbors")("features")).collect()
    with pytest.raises(PythonException, match=r"feature column 'argument 2' is string"):
        table.coalesce(1).select(sklspark.udf(LogisticRegression().fit(X[:, :2], Y))("a", "note")).collect()


@pytest.mark.parametrize(
    ("estimator", "method", "return_type", "returns"),
    [
        (NearestNeighbors(n_neighbors=2).fit(X), "kneighbors", "double", "2 parts"),
        (StandardScaler().fit(X), "transform", "double", "a 2-D float64 array (4 values per row)"),
        (
            NearestNeighbors(n_neighbors=2).fit(X),
            "kneighbors",
            "struct<a:array<double>,b:array<bigint>,c:double>",
            "2 part(s) for 3 result field(s)",
        ),
        (LogisticRegression().fit(X, Y), "predict", "array<double>", "a 1-D int64 array (one value per row)"),
    ],
)
def test_a_return_type_that_cannot_hold_the_output_is_refused_on_the_driver(
    spark, estimator, method, return_type, returns
):
    derived = sklspark.udf(estimator, method).returnType.simpleString()
    with no_spark_job(spark.sparkContext), pytest.raises(TypeError) as info:
        sklspark.udf(estimator, method, return_type=return_type)
    message = str(info.value)
    assert f"does not match what {type(estimator).__name__}.{method} returns" in message
    assert returns in message and f"use return_type={derived!r}" in message


def test_a_return_type_that_cannot_hold_the_output_fails_clearly_in_the_task(spark, table):
    rows = FunctionTransformer(lambda Z: np.c_[Z, Z]).fit(None)  # no n_features_in_: not probed on the driver
    score = sklspark.udf(rows, "transform", return_type="double")
    message = "returned a 2-D float64 array (8 values per row), which does not fit the declared result "
    message += "(transform double)"
    with pytest.raises(PythonException, match=re.escape(message)):
        table.select(score("features")).collect()
    kept = sklspark.udf(rows, "transform", return_type="array<double>")
    assert_same(collect_df(table.select("id", kept("features").alias("s")), ["s"], np.c_[X, X]), np.c_[X, X])


def test_sql_call_with_no_columns_is_refused_clearly(spark, table):
    clf = LogisticRegression().fit(pd.DataFrame(X, columns=NAMES), Y)
    spark.udf.register("churn_no_args", sklspark.udf(clf))
    table.createOrReplaceTempView("customers_no_args")
    with pytest.raises(PythonException, match=r"was called with no columns.*f\(a, b, c, d\), the columns of feature_"):
        spark.sql("SELECT churn_no_args() FROM customers_no_args").collect()
