"""Many models keyed by a column: every row scored by its own key's model, equal to calling it in-process."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import no_spark_job
from pyspark.errors import PythonException
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import sklspark
from sklspark import _shipping
from sklspark._shipping import ShippedFleet

RNG = np.random.default_rng(11)
N, WIDTH = 300, 4
X = RNG.normal(size=(N, WIDTH))
STORES = np.array(["north", "south", "east"])[RNG.integers(0, 3, N)]
MODELS = {
    s: Ridge(alpha=1.0 + i).fit(X[:60] * (i + 1), X[:60, 0] * (i + 1)) for i, s in enumerate(["north", "south", "east"])
}


def _expected(models, keys, X):
    return np.array([models[k].predict(X[i : i + 1])[0] for i, k in enumerate(keys)])


def _frame(spark, keys=STORES, partitions=3):
    table = pa.table({"id": np.arange(N), "store": keys, "features": list(X)})
    return spark.createDataFrame(table).repartition(partitions)


def _predictions(df, column="prediction"):
    table = df.toArrow().sort_by("id")
    return np.array(table.column(column).to_pylist(), dtype=float)


def test_dataframe_rows_scored_by_their_keys_model(spark):
    out = sklspark.distribute(MODELS, "predict", _frame(spark), key="store", chunk_size=37)
    np.testing.assert_allclose(_predictions(out), _expected(MODELS, STORES, X), rtol=1e-12)


def test_integer_keys_rdd_pairs_and_file_shipping(spark, monkeypatch):
    models = dict(enumerate(MODELS.values()))
    keys = RNG.integers(0, 3, N)
    rdd = spark.sparkContext.parallelize(list(zip(keys.tolist(), X)), 4)
    got = np.array(sklspark.distribute(models, "predict", rdd).collect())
    np.testing.assert_allclose(got, _expected(models, keys, X), rtol=1e-12)
    monkeypatch.setattr(_shipping, "BROADCAST_MAX_BYTES", 0)  # a mapping above the limit travels as one file
    table = pa.table({"id": np.arange(N), "shop": keys, "features": list(X)})
    out = sklspark.distribute(models, "predict", spark.createDataFrame(table), key="shop")
    np.testing.assert_allclose(_predictions(out), _expected(models, keys, X), rtol=1e-12)


def test_udf_and_sql_take_the_key_first(spark):
    df = _frame(spark)
    score = sklspark.udf(MODELS, "predict")
    out = df.select("id", score("store", "features").alias("prediction"))
    np.testing.assert_allclose(_predictions(out), _expected(MODELS, STORES, X), rtol=1e-12)
    spark.udf.register("store_score", score)
    df.createOrReplaceTempView("sales")
    out = spark.sql("SELECT id, store_score(store, features) AS prediction FROM sales")
    np.testing.assert_allclose(_predictions(out), _expected(MODELS, STORES, X), rtol=1e-12)


def test_udf_chunks_of_another_width_fail_naming_the_rows(spark):
    """A ``udf()`` meets its columns in the task: each chunk is checked against the fleet's n_features_in_."""
    wide = spark.createDataFrame(pa.table({"id": np.arange(N), "store": STORES, "features": list(np.c_[X, X[:, :1]])}))
    score = sklspark.udf(MODELS, "predict")
    with pytest.raises(
        PythonException, match=rf"has {X.shape[1] + 1} features at rows 0-.*fitted on {X.shape[1]} features"
    ):
        wide.select(score("store", "features")).collect()


def test_named_column_pipelines_per_key(spark):
    frame = pd.DataFrame(
        {
            "city": pd.Series(RNG.choice(["a", "b", "-"], N)).replace("-", np.nan),  # missing as read_csv has it
            "amount": np.where(RNG.random(N) < 0.1, np.nan, RNG.normal(size=N)),
            "region": RNG.choice(["r1", "r2"], N),
        }
    )
    y = (RNG.random(N) > 0.5).astype(int)
    features = frame[["city", "amount"]]

    def pipeline():
        encode = make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["city"]), (SimpleImputer(), ["amount"])
        )
        return make_pipeline(encode, LogisticRegression())

    models = {r: pipeline().fit(features[frame.region == r], y[frame.region == r]) for r in ("r1", "r2")}
    df = spark.createDataFrame(frame.assign(id=np.arange(N)))
    out = sklspark.distribute(models, "predict_proba", df, key="region").toArrow().sort_by("id")
    got = np.stack(out.column("probability").to_numpy(zero_copy_only=False))
    expected = np.stack([models[r].predict_proba(features.iloc[[i]])[0] for i, r in enumerate(frame.region)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_streaming_fleet(spark, tmp_path):
    for i, rows in enumerate(np.array_split(np.arange(N), 3)):
        table = pa.table({"id": rows, "store": STORES[rows], "features": list(X[rows])})
        pq.write_table(table, tmp_path / f"part-{i}.parquet")
    stream = spark.readStream.schema("id long, store string, features array<double>").parquet(str(tmp_path))
    with no_spark_job(spark.sparkContext):
        scored = sklspark.distribute(MODELS, "predict", stream, key="store")
    query = scored.writeStream.format("memory").queryName("sklspark_fleet").start()
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    np.testing.assert_allclose(_predictions(spark.table("sklspark_fleet")), _expected(MODELS, STORES, X), rtol=1e-12)


def test_a_key_without_a_model_fails_naming_it_or_becomes_a_null_with_its_reason(spark):
    keys = STORES.copy()
    keys[[5, 77]] = "west"
    df = _frame(spark, keys, partitions=1)
    with pytest.raises(PythonException, match=r"no model for key 'west', at row\(s\) 5, 77"):
        sklspark.distribute(MODELS, "predict", df, key="store").collect()
    out = sklspark.distribute(MODELS, "predict", df, key="store", on_error="null").toArrow().sort_by("id")
    errors = out.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [5, 77]
    assert errors[5].startswith("predict: LookupError: no model for key 'west'")
    got = out.column("prediction").to_pylist()
    assert got[5] is None and got[77] is None
    good = [i for i in range(N) if i not in (5, 77)]
    np.testing.assert_allclose([got[i] for i in good], _expected(MODELS, keys[good], X[good]), rtol=1e-12)


def test_a_null_key_fails_naming_the_rows(spark):
    keys = STORES.astype(object)
    keys[9] = None
    with pytest.raises(PythonException, match=r"the key is null at row\(s\) 9"):
        sklspark.distribute(MODELS, "predict", _frame(spark, keys, partitions=1), key="store").collect()


def test_models_that_disagree_are_refused_before_the_job(spark):
    mixed = {"a": MODELS["north"], "b": LogisticRegression().fit(X, X[:, 0] > 0)}
    with no_spark_job(spark.sparkContext), pytest.raises(ValueError, match=r"keys 'a' and 'b' disagree"):
        sklspark.distribute(mixed, "predict", _frame(spark), key="store")
    narrow = {"a": MODELS["north"], "b": LogisticRegression().fit(X[:, :-1], STORES == "north")}
    with pytest.raises(ValueError, match=r"keys 'a' and 'b' disagree on their feature counts \(n_features_in_\)"):
        sklspark.udf(narrow, "predict")  # no data to check widths against: the models must agree
    with pytest.raises(ValueError, match=r"key column 'shop' not found"):
        sklspark.distribute(MODELS, "predict", _frame(spark), key="shop")
    with pytest.raises(TypeError, match=r"key= names the column"):
        sklspark.distribute(MODELS["north"], "predict", _frame(spark), key="store")


def test_worker_cache_keeps_the_recently_used_models_within_its_bound(spark, monkeypatch):
    fleet = ShippedFleet(dict.fromkeys(range(5), MODELS["north"]), spark)
    size = fleet.offsets[0][1]
    monkeypatch.setattr(_shipping, "FLEET_CACHE_BYTES", 2 * size)
    monkeypatch.setattr(_shipping, "_fleet_cache", type(_shipping._fleet_cache)())
    for key in range(5):
        fleet.get(key)
    assert [k for _, k in _shipping._fleet_cache] == [3, 4]
    assert fleet.get(4) is fleet.get(4)  # cached: loaded once
