"""distribute(), udf() and all_neighbors over Spark Connect, where there is no SparkContext and no broadcast.

The model travels in the closure, or as an uploaded artifact when large; ANN index files as artifacts.

A Connect session cannot share a process with the classic test session, so the job runs in a subprocess
against ``SparkSession.builder.remote("local[2]")``, which starts a local Spark Connect server.
"""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("grpc", reason="Spark Connect needs pyspark[connect]")

# A local Connect server listens on a fixed port: one Connect test at a time.
pytestmark = pytest.mark.xdist_group("connect")

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["PYSPARK_PYTHON"] = sys.executable
    import numpy as np, pyarrow as pa
    from pyspark.sql import SparkSession
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestNeighbors
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    import sklspark

    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    assert type(spark).__module__.startswith("pyspark.sql.connect")
    X = np.random.default_rng(0).normal(size=(600, 6))
    df = spark.createDataFrame(pa.table({"id": np.arange(600), "features": list(X)})).repartition(3)

    nn = NearestNeighbors(n_neighbors=4).fit(X)
    got = sklspark.distribute(nn, "kneighbors", df, chunk_size=50).toArrow().sort_by("id")
    dist, ind = nn.kneighbors(X)
    assert np.array_equal(np.stack(got.column("indices").to_numpy(zero_copy_only=False)), ind)
    assert np.allclose(np.stack(got.column("distances").to_numpy(zero_copy_only=False)), dist)

    clf = make_pipeline(FunctionTransformer(lambda Z: Z * 2), LogisticRegression()).fit(X, X[:, 0] > 0)
    got = sklspark.distribute(clf, "predict_proba", df).toArrow().sort_by("id")
    assert np.allclose(np.stack(got.column("probability").to_numpy(zero_copy_only=False)), clf.predict_proba(X))

    # udf(): a struct Column for kneighbors, and a SQL function over named columns.
    knn = df.select("id", sklspark.udf(nn, "kneighbors")("features").alias("knn")).select("id", "knn.*")
    got = knn.toArrow().sort_by("id")
    assert np.array_equal(np.stack(got.column("indices").to_numpy(zero_copy_only=False)), ind)
    spark.udf.register("score", sklspark.udf(clf))
    df.select("id", *(df.features[i].alias(f"x{i}") for i in range(6))).createOrReplaceTempView("t")
    got = spark.sql("SELECT id, score(x0, x1, x2, x3, x4, x5) AS p FROM t").toArrow().sort_by("id")
    assert np.array_equal(got.column("p").to_numpy(), clf.predict(X))

    # a model per key, in the closure: each row scored by its key's model
    fleet = {k: LogisticRegression(C=1.0 + k).fit(X, X[:, 1] > 0) for k in range(3)}
    keyed = df.withColumn("shop", (df.id % 3).cast("long"))
    got = sklspark.distribute(fleet, "predict", keyed, key="shop").toArrow().sort_by("id")
    expected = [fleet[i % 3].predict(X[i : i + 1])[0] for i in range(600)]
    assert got.column("prediction").to_pylist() == expected

    try:
        sklspark.distribute(nn, "kneighbors", spark.createDataFrame(
            pa.table({"id": [0, 1], "features": [[float("nan")] * 6, [0.0] * 6]})
        )).collect()
    except Exception as exc:
        assert "NearestNeighbors.kneighbors failed in partition" in str(exc), str(exc)
        assert "Input X contains NaN" in str(exc), str(exc)
    else:
        raise AssertionError("a NaN row did not fail the job")

    # on_error="null": a NaN row becomes nulls and its reason, in distribute() and in a udf() struct.
    dirty = spark.createDataFrame(pa.table({"id": [0, 1, 2], "features": [[0.1] * 6, [float("nan")] * 6, [0.2] * 6]}))
    got = sklspark.distribute(clf, "predict_proba", dirty, on_error="null").toArrow().sort_by("id")
    assert got.column("error").to_pylist()[0::2] == [None, None]
    assert got.column("error")[1].as_py().startswith("predict_proba: ValueError: Input X contains NaN")
    assert got.column("probability")[1].as_py() is None
    clean = np.array([[0.1] * 6, [0.2] * 6])
    assert np.allclose(np.stack(got.column("probability").to_pylist()[0::2]), clf.predict_proba(clean))
    knn_or_null = sklspark.udf(nn, "kneighbors", on_error="null")
    got = dirty.select("id", knn_or_null("features").alias("k")).select("id", "k.*").toArrow().sort_by("id")
    assert got.column("indices").to_pylist()[0::2] == nn.kneighbors(clean)[1].tolist()
    assert got.column("indices")[1].as_py() is None and "Input X contains NaN" in got.column("error")[1].as_py()

    # A model too big for the closure travels as an uploaded artifact (threshold lowered to force it).
    import sklspark._shipping as shipping
    shipping.CLOSURE_MAX_BYTES = 1000
    assert shipping.ShippedModel(nn, df).via == "file"
    got = sklspark.distribute(nn, "kneighbors", df, n_neighbors=2).toArrow().sort_by("id")
    assert np.array_equal(np.stack(got.column("indices").to_numpy(zero_copy_only=False)), ind[:, :2])

    # all_neighbors: broadcast (size from a count, no plan statistics here), sharded, file-shipped indexes, and a
    # shard index built once per shard (written by the tasks, read by the tasks).
    from sklspark.neighbors import all_neighbors
    expected = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(X).kneighbors(X)[1][:, 1:]
    for options in ({}, {"shards": 3}, {"backend": "faiss"}, {"backend": "annoy"}, {"backend": "faiss", "shards": 2}):
        got = all_neighbors(df, 5, **options).toArrow().sort_by("id")
        found = np.stack(got.column("neighbor_ids").to_numpy(zero_copy_only=False))
        if options.get("backend") == "annoy":
            assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, expected)]) > 0.9, options
        else:
            assert np.array_equal(found, expected), options
    spark.stop()
    print("CONNECT OK")
    """
)


def test_distribute_over_spark_connect(tmp_path):
    script = tmp_path / "connect_job.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "CONNECT OK" in proc.stdout
