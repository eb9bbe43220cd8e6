"""distribute() and udf() on Structured Streaming: no driver-side job, memory and Parquet sinks, restart."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import assert_same, collect_df, no_spark_job
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
