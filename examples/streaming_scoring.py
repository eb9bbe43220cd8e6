"""Streaming scoring: files arriving in a folder, scored as they land into Parquet, with a checkpoint.

Run as ``python examples/streaming_scoring.py`` (``--n-files 4 --rows-per-file 200`` for a quick try).
A fitted classifier is registered as a SQL function with ``sklspark.udf()``; a Structured Streaming query
reads new Parquet files from an ``incoming`` folder (one file per micro-batch), scores them in SQL and
appends the scores to a Parquet folder. The query is stopped half-way, more files arrive, and it restarts
from its checkpoint: every row is scored exactly once.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import HistGradientBoostingClassifier

import sklspark

FEATURES = ["age", "visits", "spend", "tenure"]


def make_events(first_id: int, n_rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {
        "age": rng.integers(18, 80, n_rows).astype(np.float64),
        "visits": rng.poisson(5, n_rows).astype(np.float64),
        "spend": rng.gamma(2.0, 50.0, n_rows),
        "tenure": rng.uniform(0, 10, n_rows),
    }
    return pa.table({"customer_id": np.arange(first_id, first_id + n_rows), **columns})


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-files", type=int, default=20)
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    history = make_events(0, 20_000, seed=12345)
    X = np.column_stack([history.column(c).to_numpy() for c in FEATURES])
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X, (X[:, 1] < 3) & (X[:, 3] < 2))

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-streaming-scoring")
        spark.sparkContext.setLogLevel("ERROR")
    spark.udf.register("churn_score", sklspark.udf(model, "predict"))  # the return type comes from the model

    with tempfile.TemporaryDirectory() as tmp:
        incoming, scores, checkpoint = Path(tmp, "incoming"), Path(tmp, "scores"), Path(tmp, "checkpoint")
        incoming.mkdir()
        files = [make_events(i * args.rows_per_file, args.rows_per_file, seed=i) for i in range(args.n_files)]

        def arrive(numbers) -> None:
            for i in numbers:  # write then rename: the stream never sees a half-written file
                pq.write_table(files[i], incoming / f".part-{i:04d}.tmp")
                (incoming / f".part-{i:04d}.tmp").rename(incoming / f"part-{i:04d}.parquet")

        arrive([0])
        schema = "customer_id long, " + ", ".join(f"{c} double" for c in FEATURES)
        events = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(str(incoming))
        events.createOrReplaceTempView("events")
        scored = spark.sql(f"SELECT customer_id, churn_score({', '.join(FEATURES)}) AS churn FROM events")

        def start():
            writer = scored.writeStream.format("parquet").option("checkpointLocation", str(checkpoint))
            return writer.start(str(scores))

        half = args.n_files // 2
        query = start()
        arrive(range(1, half))  # more files land while the query runs
        query.processAllAvailable()
        query.stop()
        print(f"first run: {spark.read.parquet(str(scores)).count():,} rows scored, query stopped")
        arrive(range(half, args.n_files))  # files keep arriving while it is down
        query = start()  # restarts from the checkpoint: only the new files are read
        query.processAllAvailable()
        query.stop()

        result = pq.read_table(scores).sort_by("customer_id")
        events_all = pa.concat_tables(files)
        X_all = np.column_stack([events_all.column(c).to_numpy() for c in FEATURES])
        same = np.array_equal(result.column("customer_id").to_numpy(), events_all.column("customer_id").to_numpy())
        same = same and np.array_equal(result.column("churn").to_numpy(), model.predict(X_all))
        churners = int(result.column("churn").to_numpy().sum())
        print(f"after the restart: {result.num_rows:,} rows scored once each; {churners:,} predicted to churn")
        print(f"equals in-process scikit-learn: {same}")
    if own_session:
        spark.stop()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
