"""Pipelines fitted on pandas DataFrames (named, mixed-type and text columns), against the in-process call."""

import datetime as dt
import decimal
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _helpers import assert_same, no_spark_job
from pyspark.sql import Row
from pyspark.sql import functions as F
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsTransformer, NearestNeighbors, RadiusNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, TargetEncoder

from sklspark import distribute
from sklspark._features import resolve_features
from sklspark.neighbors import all_neighbors, to_edges

WORDS = np.array(
    [
        "late",
        "bill",
        "refund",
        "slow",
        "fast",
        "great",
        "support",
        "cancel",
        "upgrade",
        "price",
        "outage",
        "happy",
        "app",
        "call",
    ]
)
FEATURES = ["plan", "region", "tenure", "monthly", "calls", "autopay", "notes"]


def _tabular(n: int, seed: int, unseen: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """A churn-style frame as pandas' readers give it (NaN for missing strings, float64 for ints with gaps)."""
    rng = np.random.default_rng(seed)
    plans = ["basic", "plus", "pro"] + (["enterprise"] if unseen else [])
    frame = pd.DataFrame(
        {
            "plan": rng.choice(plans, n).astype(object),
            "region": rng.choice(["north", "south", "east", "west"], n).astype(object),
            "tenure": rng.integers(1, 72, n).astype(np.float64),
            "monthly": rng.gamma(3.0, 20.0, n),
            "calls": rng.poisson(1.5, n).astype(np.int64),
            "autopay": rng.random(n) < 0.5,
            "notes": [" ".join(rng.choice(WORDS, 4)) for _ in range(n)],
        }
    )
    for column in ("plan", "region", "tenure", "monthly"):
        frame.loc[rng.random(n) < 0.1, column] = np.nan
    score = frame["calls"] - frame["tenure"].fillna(30) / 20 + (frame["plan"] == "basic") + rng.normal(size=n)
    return frame, np.where(score > 0, "yes", "no")


TRAIN, Y_TRAIN = _tabular(300, 0)
SCORE, _ = _tabular(120, 1, unseen=True)

MODELS = {
    "encoders-imputers-logistic": make_pipeline(
        ColumnTransformer(
            [
                (
                    "onehot",
                    make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                    ["plan"],
                ),
                (
                    "ordinal",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
                    ["region"],
                ),
                ("target", TargetEncoder(), ["region", "plan"]),
                ("mean", SimpleImputer(), ["tenure", "monthly"]),
                ("knn", KNNImputer(n_neighbors=3), ["monthly", "calls"]),
                ("flag", "passthrough", ["autopay"]),
            ]
        ),
        LogisticRegression(max_iter=2000),
    ),
    "ordinal-hist-gradient-boosting": make_pipeline(
        ColumnTransformer(
            [
                (
                    "ordinal",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan),
                    ["plan", "region"],
                ),
                ("numbers", "passthrough", ["tenure", "monthly", "calls"]),
            ]
        ),
        HistGradientBoostingClassifier(categorical_features=[0, 1], max_iter=15, random_state=0),
    ),
    "tfidf-and-onehot": make_pipeline(
        ColumnTransformer(
            [("text", TfidfVectorizer(), "notes"), ("onehot", OneHotEncoder(handle_unknown="ignore"), ["region"])]
        ),
        LogisticRegression(max_iter=2000),
    ),
}
for _model in MODELS.values():
    _model.fit(TRAIN, Y_TRAIN)


def _spark_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as Arrow with Spark's natural types: integer columns with gaps are nullable longs."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if "tenure" in frame:
        index = table.schema.get_field_index("tenure")
        table = table.set_column(index, "tenure", table.column("tenure").cast(pa.int64()))
    return table


@pytest.fixture(scope="module")
def score_df(spark):
    """SCORE in Spark: columns in another order, extra columns (one with a dot), two partitions of 60 rows."""
    shuffled = SCORE[FEATURES[::-1]].assign(id=np.arange(len(SCORE)), **{"x.y": 1.0, "churn": "?"})
    return spark.createDataFrame(_spark_table(shuffled)).repartition(2, "id")


def _sorted(df, *columns) -> pd.DataFrame:
    return df.select("id", *columns).toPandas().sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize("name", MODELS)
def test_pipeline_equals_in_process(spark, score_df, name):
    model = MODELS[name]
    transformer = model[0]
    out = distribute(transformer, "transform", score_df, chunk_size=16, output_cols="encoded")
    out = distribute(model, "predict_proba", out, chunk_size=16)
    out = distribute(model, "predict", out, chunk_size=16)
    assert dict(out.dtypes)["prediction"] == "string"
    got = _sorted(out, "encoded", "probability", "prediction")
    assert got["prediction"].tolist() == model.predict(SCORE).tolist()
    assert_same(np.stack(got["probability"]), model.predict_proba(SCORE))
    expected = transformer.transform(SCORE)
    encoded = got["encoded"]
    if hasattr(expected, "toarray"):
        expected = expected.toarray()
        encoded = [v.toArray() for v in encoded]
    assert_same(np.stack(encoded), expected)


def test_columns_refused_before_any_job(spark, score_df):
    model = MODELS["encoders-imputers-logistic"]
    renamed = score_df.drop("plan").withColumnRenamed("region", "Region")
    with no_spark_job(spark.sparkContext):
        with pytest.raises(ValueError, match=r"\['plan', 'region'\] not found.*'region' \(did you mean 'Region'\?\)"):
            distribute(model, "predict", renamed)
        with pytest.raises(ValueError, match=r"does not name the columns LogisticRegression was fitted on|Pipeline"):
            distribute(model, "predict", score_df, features=FEATURES[:-1])
        duplicated = score_df.select("*", F.col("plan"))
        with pytest.raises(ValueError, match=r"\['plan'\] appear more than once"):
            distribute(model, "predict", duplicated)
        vectors = score_df.withColumn("calls", F.array(F.col("calls")))
        with pytest.raises(TypeError, match="feature column 'calls' is array<bigint>"):
            distribute(model, "predict", vectors)
    # The same set of names in another order is the fitted columns, by name.
    assert resolve_features(score_df.schema, model, FEATURES[::-1]).columns == tuple(FEATURES)


@pytest.mark.parametrize("reader", ["toPandas", "read_parquet", "read_csv"])
def test_nulls_in_every_column_type(spark, reader):
    def nulls(frame):
        return frame.isna().to_numpy(dtype=np.float64)

    table = pa.table(
        {
            "s": pa.array(["a", None, "b", None, "c", "d"]),
            "i": pa.array([1, None, 3, 4, None, 6], pa.int64()),
            "n": pa.array([1, 2, 3, 4, 5, 6], pa.int32()),
            "f": pa.array([1.5, None, 2.5, None, 3.5, 4.5], pa.float32()),
            "b": pa.array([True, None, False, True, None, False]),
            "d": pa.array([decimal.Decimal("1.25"), None] * 3, pa.decimal128(6, 2)),
            "day": pa.array([dt.date(2024, 1, 2), None] * 3),
            "at": pa.array([dt.datetime(2024, 1, 2, 3, 4), None] * 3, pa.timestamp("us")),
        }
    )
    # Every null is seen as missing by the model, whatever the chunk and the reader imitated (the
    # frames themselves are compared with each reader's in test_dirty_frames.py).
    expected = np.stack([np.asarray(column.is_null()) for column in table.columns], axis=1).astype(np.float64)
    marker = FunctionTransformer(nulls).fit(table.to_pandas())
    df = spark.createDataFrame(table.append_column("id", pa.array(np.arange(6))))
    out = distribute(marker, "transform", df, chunk_size=4, pandas_reader=reader)
    assert_same(np.stack(_sorted(out, "transform")["transform"]), expected)


def test_text_column(spark):
    notes = TRAIN["notes"].tolist()
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000)).fit(notes, Y_TRAIN)
    hashing = HashingVectorizer(n_features=64)
    df = spark.createDataFrame(pa.table({"id": np.arange(len(SCORE)), "notes": SCORE["notes"].tolist()}))
    out = distribute(hashing, "transform", distribute(model, "predict_proba", df, features="notes"), features="notes")
    got = _sorted(out, "probability", "transform")
    assert_same(np.stack(got["probability"]), model.predict_proba(SCORE["notes"].tolist()))
    assert_same(np.stack([v.toArray() for v in got["transform"]]), hashing.transform(SCORE["notes"]).toarray())

    with_null = df.withColumn("notes", F.when(F.col("id").isin(50, 51), None).otherwise(F.col("notes")))
    with pytest.raises(Exception, match=r"text column 'notes' is null at row\(s\) \d+, \d+"):
        distribute(model, "predict", with_null.coalesce(1), features="notes").collect()


def test_numeric_frames_and_matrices(spark):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.integers(0, 9, 40), "c": rng.normal(size=40)})
    y = frame["a"] + frame["b"]
    on_frame = LinearRegression().fit(frame, y)
    on_numpy = LinearRegression().fit(frame.to_numpy(), y)
    df = spark.createDataFrame(pa.Table.from_pandas(frame[["c", "b", "a"]].assign(id=np.arange(40))))
    assert resolve_features(df.schema, on_numpy, ["a", "b", "c"]).layout == "columns"
    assert resolve_features(df.schema, on_frame, None).layout == "frame"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names" from the driver's probe
        out = distribute(on_frame, "predict", df, chunk_size=7, output_cols="by_name")
    out = distribute(on_numpy, "predict", out, features=["a", "b", "c"], chunk_size=7)
    got = _sorted(out, "by_name", "prediction")
    assert_same(got["by_name"].to_numpy(), on_frame.predict(frame))
    assert_same(got["prediction"].to_numpy(), on_numpy.predict(frame.to_numpy()))


def test_regressor_float_and_sorted_sparse_output(spark):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 2)) + 10.0  # far from the zero rows of the driver's probe
    radius = RadiusNeighborsRegressor(radius=0.6).fit(X, np.arange(60) % 3)
    graph = KNeighborsTransformer(n_neighbors=4, mode="distance").fit(X[::-1])
    df = spark.createDataFrame(pa.table({"id": np.arange(60), "u": X[:, 0], "v": X[:, 1]}))
    out = distribute(radius, "predict", df, features=["u", "v"], chunk_size=8)
    out = distribute(graph, "transform", out, features=["u", "v"], chunk_size=8)
    assert dict(out.dtypes)["prediction"] == "double"
    got = _sorted(out, "prediction", "transform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without neighbours: NaN, as in-process
        expected = radius.predict(X)
    assert_same(got["prediction"].to_numpy(), expected)
    assert_same(np.stack([v.toArray() for v in got["transform"]]), graph.transform(X).toarray())


def test_chunk_that_does_not_fit_is_never_truncated(spark):
    # Integers on the driver's rows of zeros, then x * 1.5: the declared bigint column cannot hold them.
    def first_column(Z):
        return Z[:, 0].astype(np.int64) if (Z[:, 0] == 0).all() else Z[:, 0] * 1.5

    shifty = FunctionTransformer(first_column).fit(np.zeros((2, 1)))
    df = spark.createDataFrame(pa.table({"x": np.array([0.0, 0.0, 1.0, 2.0])})).coalesce(1)
    with pytest.raises(Exception, match=r"ChunkError.*rows 0-3.*does not fit result column 'transform' of type bigint"):
        distribute(shifty, "transform", df, features=["x"]).collect()


def test_any_column_name(spark):
    frame = pd.DataFrame({"a b": [1.0, 2.0, 3.0, 4.0], "c.d": [0.5, 0.1, 0.9, 0.3], "e`f": [1, 0, 1, 0]})
    model = LogisticRegression().fit(frame, [0, 1, 1, 0])
    raw = spark.createDataFrame(pa.Table.from_pandas(frame.assign(id=np.arange(4), extra=1, other=2)))
    df = raw.toDF("a b", "c.d", "e`f", "id", "extra", "extra")  # a duplicated non-feature column is fine
    got = _sorted(distribute(model, "predict_proba", df), "probability")
    assert_same(np.stack(got["probability"]), model.predict_proba(frame))


def test_rdd_of_records(spark):
    model = MODELS["encoders-imputers-logistic"]
    records = SCORE.astype(object).where(SCORE.notna(), None).to_dict("records")  # missing values as None
    rows = [Row(**{**r, "extra": i}) for i, r in enumerate(records)]  # with an extra field
    expected = model.predict_proba(SCORE)
    for data in (records, rows):
        rdd = spark.sparkContext.parallelize(data, 3)
        assert_same(np.stack(distribute(model, "predict_proba", rdd, chunk_size=16).collect()), expected)


def test_any_column_name_in_neighbors(spark):
    X = np.random.default_rng(9).normal(size=(30, 3))
    table = pa.table({"item.id": np.arange(30) * 10, "emb vec": pa.array(list(X), pa.list_(pa.float64()))})
    df = spark.createDataFrame(table).repartition(2)
    result = all_neighbors(df, 2, id_col="item.id", features_col="emb vec")
    assert result.columns == ["item.id", "neighbor_ids", "distances"]
    edges = to_edges(result, id_col="item.id").toPandas().sort_values(["src", "rank"])
    distances, indices = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(X)
    np.testing.assert_array_equal(edges["dst"].to_numpy().reshape(30, 2), indices[:, 1:] * 10)
    assert_same(edges["distance"].to_numpy().reshape(30, 2), distances[:, 1:])


def test_empty_frame_and_stream_take_their_columns_from_the_fitted_estimator(spark, score_df, tmp_path):
    """No rows to probe: a classifier's predict is typed by classes_, predict_proba is array<double>."""
    model = MODELS["encoders-imputers-logistic"]
    empty = score_df.limit(0)
    out = distribute(model, "predict_proba", empty)
    assert out.count() == 0
    assert out.schema["probability"].dataType.simpleString() == "array<double>"
    assert distribute(model, "predict", empty).schema["prediction"].dataType.simpleString() == "string"
    score_df.write.parquet(str(tmp_path / "in"))
    stream = spark.readStream.schema(score_df.schema).parquet(str(tmp_path / "in"))
    scored = distribute(model, "predict", stream)
    query = scored.writeStream.format("memory").queryName("sklspark_named_stream").start()
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    got = _sorted(spark.table("sklspark_named_stream"), "prediction")
    expected = model.predict(SCORE[FEATURES])
    assert got["prediction"].tolist() == expected.tolist()


def test_integer_output_into_a_double_column_when_exact(spark):
    """RadiusNeighborsRegressor on int targets gives int64 -2^63 for a chunk whose rows have no neighbour."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 2))
    radius = RadiusNeighborsRegressor(radius=0.5).fit(X, np.arange(30) % 4)
    far = np.array([[50.0, 50.0], *X[:3]])  # row 0 alone in its 1-row chunk, without neighbours
    df = spark.createDataFrame(pa.table({"id": np.arange(4), "u": far[:, 0], "v": far[:, 1]})).coalesce(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.concatenate([radius.predict(far[i : i + 1]) for i in range(4)])
        got = _sorted(distribute(radius, "predict", df, features=["u", "v"], chunk_size=1), "prediction")
    assert expected[0] == -(2**63)
    assert_same(got["prediction"].to_numpy(), expected.astype(np.float64))
