"""distribute() and udf() on Structured Streaming: no driver-side job, memory and Parquet sinks, restart."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import assert_same, collect_df, no_spark_job
from pyspark.errors import StreamingQueryException
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import sklspark

RNG = np.random.default_rng(2)
X = RNG.normal(size=(80, 3))
Y = (X[:, 0] > 0).astype(int)
CLF = LogisticRegression().fit(X, Y)
SCALER = StandardScaler().fit(X)


def _write_files(folder, parts):
    """One Parquet file per slice of X, with ``id`` and an ``array<double>`` feature column."""
    for i, rows in parts:
        pq.write_table(pa.table({"id": rows, "features": list(X[rows])}), folder / f"part-{i}.parquet")


def _stream(spark, folder):
    schema = "id long, features array<double>"
    return spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(str(folder))


def test_memory_sink(spark, tmp_path):
    _write_files(tmp_path, enumerate(np.array_split(np.arange(len(X)), 3)))
    stream = _stream(spark, tmp_path)
    with no_spark_job(spark.sparkContext):
        scored = sklspark.distribute(CLF, "predict_proba", stream)
        scored = scored.withColumn("scaled", sklspark.udf(SCALER, "transform")("features"))
    assert scored.isStreaming
    query = scored.writeStream.format("memory").queryName("sklspark_scored").start()
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    got = collect_df(spark.table("sklspark_scored"), ["probability", "scaled"], (CLF.predict_proba(X), X))
    assert_same(got, (CLF.predict_proba(X), SCALER.transform(X)))


def test_parquet_sink_restarts_from_its_checkpoint(spark, tmp_path):
    source, sink, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "checkpoint"
    source.mkdir()
    _write_files(source, enumerate(np.array_split(np.arange(len(X)), 4)))
    scored = sklspark.distribute(CLF, "predict", _stream(spark, source))

    def start(writer):
        return writer.format("parquet").option("checkpointLocation", str(checkpoint)).start(str(sink))

    query = start(scored.writeStream)  # one file per micro-batch; stopped once the first one is committed
    try:
        while not any(p["numInputRows"] for p in query.recentProgress):
            query.awaitTermination(0.2)
    finally:
        query.stop()
    start(scored.writeStream.trigger(availableNow=True)).awaitTermination()  # the rest, from the checkpoint
    got = spark.read.parquet(str(sink))
    assert sorted(got.toArrow().column("id").to_pylist()) == list(range(len(X)))  # every row exactly once
    assert_same(collect_df(got, ["prediction"], CLF.predict(X)), CLF.predict(X))


def test_streaming_width_must_be_known_without_reading(spark, tmp_path):
    _write_files(tmp_path, [(0, np.arange(4))])
    summed = FunctionTransformer(lambda Z: Z.sum(axis=1)).fit(None)  # fitted without data: no n_features_in_
    with no_spark_job(spark.sparkContext), pytest.raises(ValueError, match="cannot read the first rows of a streaming"):
        sklspark.distribute(summed, "transform", _stream(spark, tmp_path))


def _write_dirty_files(folder, bad_row):
    """Four Parquet files of X's rows, the one holding ``bad_row`` with a NaN there; modified in file order."""
    dirty = X.copy()
    dirty[bad_row, 1] = np.nan
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(len(X)), 4)):
        path = folder / f"part-{i}.parquet"
        pq.write_table(pa.table({"id": rows, "features": list(dirty[rows])}), path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # the file source takes the oldest first
        paths.append((path, rows))
    return paths


def test_on_error_null_keeps_the_query_running_past_a_bad_row(spark, tmp_path):
    _write_dirty_files(tmp_path, bad_row=45)
    scored = sklspark.distribute(CLF, "predict_proba", _stream(spark, tmp_path), on_error="null")
    query = scored.writeStream.format("memory").queryName("sklspark_on_error_null").start()
    try:
        query.processAllAvailable()
        assert query.isActive and query.exception() is None
    finally:
        query.stop()
    table = spark.table("sklspark_on_error_null").toArrow().sort_by("id")
    assert table.column("id").to_pylist() == list(range(len(X)))
    probability, error = table.column("probability").to_pylist(), table.column("error").to_pylist()
    good = np.setdiff1d(np.arange(len(X)), [45])
    np.testing.assert_allclose(np.array([probability[i] for i in good]), CLF.predict_proba(X[good]), rtol=1e-12)
    assert probability[45] is None and error[45].startswith("predict_proba: ValueError: Input X contains NaN")
    assert [error[i] for i in good] == [None] * len(good)


def test_raise_stops_the_query_and_a_restart_without_the_bad_file_scores_the_rest_once(spark, tmp_path):
    source, sink, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "checkpoint"
    source.mkdir()
    files = _write_dirty_files(source, bad_row=45)  # in the third file
    bad_file = next(path for path, rows in files if 45 in rows)
    stream = (
        spark.readStream.schema("id long, features array<double>")
        .option("maxFilesPerTrigger", 1)
        .option("ignoreMissingFiles", "true")  # the failed batch names the bad file: it is read as empty once removed
        .parquet(str(source))
    )
    scored = sklspark.distribute(CLF, "predict", stream)

    def start(writer):
        return writer.format("parquet").option("checkpointLocation", str(checkpoint)).start(str(sink))

    query = start(scored.writeStream)
    with pytest.raises(StreamingQueryException, match="Input X contains NaN"):
        assert query.awaitTermination(600), "the query did not stop at the bad row"
    committed = sorted(spark.read.parquet(str(sink)).toArrow().column("id").to_pylist())
    assert committed == [i for path, rows in files[:2] for i in rows]  # the files before the bad one
    bad_file.unlink()
    start(scored.writeStream.trigger(availableNow=True)).awaitTermination()
    got = spark.read.parquet(str(sink))
    expected_ids = sorted(i for path, rows in files if path != bad_file for i in rows)
    assert sorted(got.toArrow().column("id").to_pylist()) == expected_ids  # every remaining row exactly once
    assert_same(collect_df(got, ["prediction"], CLF.predict(X[expected_ids])), CLF.predict(X[expected_ids]))
